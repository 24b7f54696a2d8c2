"""Training jobs: the stage-1 detector now; stage-2 fine-tuning from corrections later."""

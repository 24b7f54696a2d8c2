"""Stage-2 backends, one module each; ``core.stage2.registry`` maps their names to factories."""

"""Stage 2: each detected object's condition, with probabilities and a rationale; backends in ``backends/``."""

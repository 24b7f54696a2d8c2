"""Stage 1: the YOLO object detector (rock toe, slope drain, toe drain, vegetation)."""

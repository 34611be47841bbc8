"""Models and text: loading model specs (embedded GGUF, hub, local, random shapes), the block/linear layout, calibration and evaluation data."""

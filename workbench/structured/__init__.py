"""Structured pruning: fewer GLU neurons per block (width) and fewer blocks (depth). Pure functions on
weights and hidden states: neuron importance and kept counts (`width`), block scores and which blocks to
drop (`depth`)."""

"""workbench: a terminal workbench for pruning large language models."""

__version__ = "0.1.0"

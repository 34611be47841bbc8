"""Evaluations built on one engine: side-by-side comparisons, sensitivity scans, lm-evaluation-harness runs."""

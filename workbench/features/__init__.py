"""The app's features, one folder each: a feature's screen and its `Feature` (textual), and beside them the
UI-free parts that headless code also uses: its job body (`job.py`) and its session section (`section.py`)."""

"""The blocks feature: the main screen of panes and sliders, its rendering and its structural edits."""

"""The app's UI-free logic: the controller, plan edits, undo history, formatting, theme files and recovery files. Never imports textual."""

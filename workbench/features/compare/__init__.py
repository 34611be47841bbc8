"""The Compare feature: its screen, its comparison job's handling, its command and help section."""

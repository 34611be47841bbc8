"""The Agent feature: its screen, its run's job handling, its command and help section."""

"""The Plots feature: its screen (allocation, |W| histogram, probe history), its command and help section."""

"""Healing after pruning: the session's [heal] table (section.py); the app's job and screen come with it."""

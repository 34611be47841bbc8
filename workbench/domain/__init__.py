"""What the user asks for and keeps, as plain data: plans, sessions (TOML), and what replay accepts. No torch in `plan`."""

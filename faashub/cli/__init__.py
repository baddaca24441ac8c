"""The `faashub` command: one entry point for every component and user command."""

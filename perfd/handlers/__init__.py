"""The commands: what each does with the daemon's parts, and the one table of them."""

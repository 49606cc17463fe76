"""The sampling thread, verdicts, trends, alerts and their sinks."""

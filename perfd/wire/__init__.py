"""The wire format, both sides: envelope and codes, array frames, CURVE key files, shared values."""

"""Tiny models for the loader and cache tests; ``tests.models.toy`` holds the factories."""

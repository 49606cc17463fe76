"""Pooled HTTP: the session maker and the provider client."""

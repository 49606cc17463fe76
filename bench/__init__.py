"""perfd's benchmarks; run them all with ``python bench/run.py`` (see bench/README.md)."""

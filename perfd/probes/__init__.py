"""One module per hardware library; values out (perfd.probes.samples), no part imported."""

"""Human output for each command: pure ``format_<command>(result, style) -> str`` functions.

``base`` is the toolkit (styles, terminal width, sizes, durations, bars, tables); one module per
command group imports it: ``status`` (ping, status, reload, config; ``toml`` writes the config),
``stats``, ``alerts``, ``cache`` (ps, load, pin, evict, infer), ``providers``, ``recommend`` and
``catalog`` (its model and GPU lists). ``safe`` makes text from perfd safe for a terminal.
Nothing is imported here: each command loads only the module it needs.
"""

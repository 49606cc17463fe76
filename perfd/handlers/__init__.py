"""The commands: one module per command group, each handler a top-level function
``(view, args) -> dict`` over the small protocols of perfd.handlers.view.

status (ping, status, config, reload), stats (stats, alerts), cache (ps, load, evict, pin,
unpin, infer), recommend, providers; ``table.build`` is the one table of them, and
``errors`` the one table from the parts' domain errors to wire codes.
"""

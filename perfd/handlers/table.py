"""The one table of commands: each name, its handler (a top-level function of
perfd.handlers.<group>, called as ``handler(view, args)``), who may run it and its arguments.

``build(view)`` binds every handler to the daemon's view and maps the parts' domain errors
to wire codes (perfd.handlers.errors); docs/protocol.md shows the replies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from perfd.handlers import cache, engines, errors, providers, recommend, stats, status
from perfd.handlers.view import ConfigView, DaemonView, View
from perfd.server.commands import Command

__all__ = ["DaemonView", "View", "build", "commands"]

_JSON = (dict, list, str, int, float, bool, type(None))
_MODEL: dict[str, tuple[type, ...]] = {"model": (str,)}
_NEED_MODEL = frozenset({"model"})

RECOMMEND_ARGS: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "config": (dict,),
    "quant": (str,),
    "kv_dtype": (str,),
    "context": (int,),
    "gpu": (str, int),
    "gpus": (int,),
    "memory": (int, str),
    "kv_budget": (int, str),
    "engine": (str,),
    "utilization": (float, int),
}
LOAD_ARGS: dict[str, tuple[type, ...]] = {
    **_MODEL,
    "loader": (str,),
    "target": (str,),
    "path": (str,),
    "device": (str,),
    "options": (dict,),
    "size_hint": (int,),
}


def loading_time(view: ConfigView) -> Callable[[], float]:
    """load and infer may load a model: give them load_timeout, plus time to run."""

    def timeout() -> float:
        cfg = view.loaded.config
        return max(cfg.server.command_timeout, cfg.cache.load_timeout + 30)

    return timeout


def commands(view: View) -> list[Command]:
    """Every command, its handler bound to ``view``."""

    def bound(handler: Callable[..., Any]) -> Callable[..., Any]:
        return errors.run(handler, view)

    timeout = loading_time(view)
    return [
        Command("ping", bound(status.ping)),
        Command("status", bound(status.status)),
        Command("config", bound(status.show_config)),
        Command("reload", bound(status.reload), admin=True),
        Command("stats", bound(stats.stats)),
        Command("alerts", bound(stats.alerts)),
        Command("ps", bound(cache.ps)),
        Command(
            "load",
            bound(cache.load),
            admin=True,
            slow=True,
            timeout=timeout,
            args=LOAD_ARGS,
            required=_NEED_MODEL,
        ),
        Command(
            "evict",
            bound(cache.evict),
            admin=True,
            slow=True,
            args={**_MODEL, "all": (bool,), "idle": (bool,), "dry_run": (bool,)},
        ),
        Command("pin", bound(cache.pin), admin=True, args=_MODEL, required=_NEED_MODEL),
        Command("unpin", bound(cache.unpin), admin=True, args=_MODEL, required=_NEED_MODEL),
        Command(
            "infer",
            bound(cache.infer),
            admin=True,
            slow=True,
            frames=True,
            timeout=timeout,
            args={**_MODEL, "inputs": _JSON, "options": (dict,), "arrays": (list,)},
            required=_NEED_MODEL,
            audit="debug",  # runs a model, changes nothing: one log line per request is noise
        ),
        Command("recommend", bound(recommend.recommend), slow=True, args=RECOMMEND_ARGS),
        Command("providers", bound(providers.providers)),
        # slow: engines NAME reads the model's header and runs the recommender (the plan check)
        Command("engines", bound(engines.engines), slow=True, args={"name": (str,)}),
    ]


def build(view: View) -> dict[str, Command]:
    """The command table for a daemon (or any View)."""
    return {c.name: c for c in commands(view)}

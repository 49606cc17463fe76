"""What the handlers may reach of the daemon: one small protocol per command group.

The running parts (perfd.parts.Parts) are the one real view; the tests pass fakes
(tests/test_handlers.py). A handler reads facts and calls parts through these, nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the cache (ctypes, statistics, loaders) is imported when first used
    from perfd import config
    from perfd.cache.core import ModelCache
    from perfd.engines.watcher import Watcher
    from perfd.monitor.sampler import Monitor
    from perfd.net.provider import Providers  # requests: imported when a provider is first used


class ConfigView(Protocol):
    """The config in force (``config``, and every group's view of its settings)."""

    @property
    def loaded(self) -> config.LoadedConfig: ...


class StatusView(ConfigView, Protocol):
    """The daemon's own facts: ``status`` and ``reload``."""

    @property
    def started_at(self) -> float: ...  # time.time() at start

    @property
    def started_monotonic(self) -> float: ...

    @property
    def runtime_dir(self) -> Path: ...

    def components(self) -> dict[str, str]: ...

    def request_counts(self) -> dict[str, Any]: ...

    def reload(self) -> dict[str, Any]: ...


class MonitorView(Protocol):
    """The monitor, None until it has started (its ``snapshot()`` is None until a sample)."""

    @property
    def monitor(self) -> Monitor | None: ...


class CacheView(ConfigView, Protocol):
    """The model cache; ``cache`` builds it, ``cache_started`` says whether it exists."""

    @property
    def cache(self) -> ModelCache: ...

    @property
    def cache_started(self) -> bool: ...


class ProvidersView(ConfigView, Protocol):
    """The provider clients; ``providers`` builds them, ``providers_started`` says whether
    they exist (a handler that only reports never builds them)."""

    @property
    def providers(self) -> Providers: ...

    @property
    def providers_started(self) -> bool: ...


class EnginesView(MonitorView, Protocol):
    """The engine watcher, None until it has started (after READY)."""

    @property
    def engines(self) -> Watcher | None: ...


class StatsView(CacheView, ProvidersView, EnginesView, Protocol):
    """``stats``: the monitor's snapshot, with the cache's, the providers' and the engines'."""


class View(StatusView, StatsView, Protocol):
    """Everything the command table reaches: what perfd.handlers.table.build takes."""


DaemonView = View  # the name the daemon's side knew it by

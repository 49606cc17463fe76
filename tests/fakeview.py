"""A fake of what the handlers reach (perfd.handlers.view.View): a config, a monitor whose
snapshot the test sets, a model cache that keeps its calls, providers with set counters.

The cache fake answers as perfd.cache.core.ModelCache does for what the handlers use:
unknown names are not_found, ``ps`` rows have name, state, pinned and leases."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perfd import config
from perfd.errors import CommandError
from perfd.loaders.base import ModelSpec
from perfd.monitor.snapshot import Snapshot
from perfd.wire import protocol
from tests.fakeprobes import host_sample, make_snapshot

# A GPU-less host with 64 GiB, 48 GiB of it available, as the monitor's snapshot shows it.
HOST_SNAPSHOT: Snapshot = make_snapshot(host_sample(total=64 << 30, used_percent=25.0))


def loaded(data: dict[str, Any] | None = None, path: str = "/etc/perfd/perfd.toml") -> Any:
    return config.LoadedConfig(config.parse(data or {}, path), Path(path), data is not None)


class FakeMonitor:
    def __init__(self, snapshot: Snapshot | None) -> None:
        self.sample = snapshot
        self.alert_states: dict[str, Any] = {"alerts": []}
        self.process_lookup: Any = None  # no process table: owners by engine pid and name

    def snapshot(self) -> Snapshot | None:
        return self.sample

    def alerts(self) -> dict[str, Any]:
        return self.alert_states


@dataclass
class Row:
    name: str
    state: str = "ready"
    pinned: bool = False
    leases: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "pinned": self.pinned,
            "leases": self.leases,
        }


class FakeLease:
    def __init__(self, run: Any) -> None:
        self.run = run

    def infer(self, inputs: Any, options: dict[str, Any]) -> Any:
        return self.run(inputs, options)


@dataclass
class FakeCache:
    configured: tuple[str, ...] = ()
    rows: dict[str, Row] = field(default_factory=dict)
    runtime: dict[str, ModelSpec] = field(default_factory=dict)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    model: Any = field(default=None)  # what infer runs: (inputs, options) -> outputs

    def spec(self, name: str) -> ModelSpec:
        if name in self.runtime:
            return self.runtime[name]
        if name not in self.configured:
            known = ", ".join(sorted({*self.configured, *self.runtime})) or "none"
            raise CommandError(protocol.NOT_FOUND, f"unknown model '{name}'; known: {known}")
        return ModelSpec(name=name, loader="python")

    def define(self, spec: ModelSpec) -> None:
        self.calls.append(("define", spec))
        self.runtime[spec.name] = spec

    def load(self, name: str) -> dict[str, Any]:
        self.spec(name)
        self.calls.append(("load", name))
        self.rows.setdefault(name, Row(name))
        return {"name": name, "state": "ready"}

    def loaded_names(self) -> list[str]:
        return [name for name, row in self.rows.items() if row.state == "ready"]

    def evictable(self, *, idle_only: bool) -> list[str]:
        self.calls.append(("evictable", idle_only))
        return [r.name for r in self.rows.values() if r.state == "ready" and not r.pinned]

    def evict(self, name: str) -> dict[str, Any]:
        self.spec(name)
        row = self.rows.get(name)
        if row is None:
            raise CommandError(protocol.NOT_FOUND, f"'{name}' is not loaded")
        if row.pinned:
            raise CommandError(protocol.BUSY, f"'{name}' is pinned; unpin it first")
        del self.rows[name]
        self.calls.append(("evict", name))
        return {"model": name, "reason": "manual"}

    def evict_many(self, names: list[str]) -> list[dict[str, Any]]:
        self.calls.append(("evict_many", tuple(names)))
        return [self.evict(name) for name in names if name in self.rows]

    def pin(self, name: str, pinned: bool) -> dict[str, Any]:
        self.spec(name)
        self.calls.append(("pin", name, pinned))
        return {"name": name, "pinned": pinned}

    def ps(self) -> list[dict[str, Any]]:
        return [row.as_dict() for row in self.rows.values()]

    def runtime_overhead(self) -> list[dict[str, Any]]:
        return [{"device": "cpu", "runtime_overhead_bytes": 0}] if self.rows else []

    def stats(self) -> dict[str, Any]:
        return {"models": len(self.rows)}

    @contextlib.contextmanager
    def lease(self, name: str) -> Iterator[FakeLease]:
        self.spec(name)
        self.calls.append(("lease", name))
        yield FakeLease(self.model or (lambda inputs, _options: inputs))


class FakeProviders:
    def __init__(self, counters: dict[str, dict[str, Any]]) -> None:
        self.counters = counters

    def stats(self) -> dict[str, dict[str, Any]]:
        return self.counters


class FakeView:
    """Every part the handlers may reach; ``cache`` and ``providers`` count their builds
    (a handler that only reports must not build them)."""

    def __init__(
        self,
        data: dict[str, Any] | None = None,
        *,
        snapshot: Snapshot | None = None,
        monitor: bool = True,
        cache: FakeCache | None = None,
        providers: FakeProviders | None = None,
        engines: Any = None,
    ) -> None:
        self.loaded = loaded(data)
        self.engines = engines  # a watcher: records() and discovery()
        self.started_at = 1700000000.0
        self.started_monotonic = 0.0
        self.runtime_dir = Path("/run/perfd")
        self.monitor = FakeMonitor(snapshot) if monitor else None
        self._cache = cache
        self._providers = providers
        self.builds: list[str] = []
        self.reloads = 0

    @property
    def cache(self) -> FakeCache:
        if self._cache is None:
            self.builds.append("cache")
            self._cache = FakeCache(tuple(self.loaded.config.models))
        return self._cache

    @property
    def cache_started(self) -> bool:
        return self._cache is not None

    @property
    def providers(self) -> FakeProviders:
        if self._providers is None:
            self.builds.append("providers")
            self._providers = FakeProviders({})
        return self._providers

    @property
    def providers_started(self) -> bool:
        return self._providers is not None

    def components(self) -> dict[str, str]:
        return {"server": "started"}

    def request_counts(self) -> dict[str, Any]:
        return {"total": 3}

    def reload(self) -> dict[str, Any]:
        self.reloads += 1
        return {"changed": []}

"""One function per command, each returning plain data (docs/protocol.md shows the replies)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Protocol

from perfd import __version__, config, protocol
from perfd.errors import CommandError
from perfd.monitor import Monitor
from perfd.server import Command


class DaemonView(Protocol):
    """What the handlers may see of the daemon."""

    started_at: float  # time.time() at start
    started_monotonic: float
    runtime_dir: Path
    loaded: config.Loaded
    monitor: Monitor | None

    def components(self) -> dict[str, str]: ...

    def request_counts(self) -> dict[str, Any]: ...

    def reload(self) -> dict[str, Any]: ...


def build(daemon: DaemonView) -> dict[str, Command]:
    """The command table for a daemon."""

    def ping(_: dict[str, Any]) -> dict[str, Any]:
        return {"pong": True, "version": __version__, "pid": os.getpid()}

    def status(_: dict[str, Any]) -> dict[str, Any]:
        loaded = daemon.loaded
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": daemon.started_at,
            "uptime_s": round(time.monotonic() - daemon.started_monotonic, 3),
            "config_path": str(loaded.path),
            "config_file_present": loaded.exists,
            "runtime_dir": str(daemon.runtime_dir),
            "components": daemon.components(),
            "requests": daemon.request_counts(),
        }

    def show_config(_: dict[str, Any]) -> dict[str, Any]:
        loaded = daemon.loaded
        return {
            "path": str(loaded.path),
            "file_present": loaded.exists,
            "config": config.to_dict(loaded.config, redact=True),
        }

    def reload(_: dict[str, Any]) -> dict[str, Any]:
        return daemon.reload()

    def running_monitor() -> Monitor:
        if daemon.monitor is None:
            raise CommandError(protocol.BUSY, "the monitor has not started yet; retry shortly")
        return daemon.monitor

    def stats(_: dict[str, Any]) -> dict[str, Any]:
        snapshot = running_monitor().snapshot()
        if snapshot is None:
            raise CommandError(protocol.BUSY, "no sample yet; retry shortly")
        return snapshot

    def alerts(_: dict[str, Any]) -> dict[str, Any]:
        return running_monitor().alerts()

    commands = [
        Command("ping", ping),
        Command("status", status),
        Command("config", show_config),
        Command("reload", reload, admin=True),
        Command("stats", stats),
        Command("alerts", alerts),
    ]
    return {c.name: c for c in commands}

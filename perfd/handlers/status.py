"""ping, status, config and reload: the daemon's own facts and its config."""

from __future__ import annotations

import os
import time
from typing import Any

from perfd import __version__, config
from perfd.handlers.view import ConfigView, StatusView
from perfd.server.access import user_name


def ping(_view: object, _args: dict[str, Any]) -> dict[str, Any]:
    return {"pong": True, "version": __version__, "pid": os.getpid()}


def status(view: StatusView, _args: dict[str, Any]) -> dict[str, Any]:
    loaded = view.loaded
    return {
        "version": __version__,
        "pid": os.getpid(),
        "uid": os.geteuid(),
        "user": user_name(os.geteuid()),
        "started_at": view.started_at,
        "uptime_s": round(time.monotonic() - view.started_monotonic, 3),
        "config_path": str(loaded.path),
        "config_file_present": loaded.exists,
        "runtime_dir": str(view.runtime_dir),
        "components": view.components(),
        "requests": view.request_counts(),
    }


def show_config(view: ConfigView, _args: dict[str, Any]) -> dict[str, Any]:
    """``config``: the config in force, secrets redacted."""
    loaded = view.loaded
    return {
        "path": str(loaded.path),
        "file_present": loaded.exists,
        "config": config.to_dict(loaded.config, redact=True),
    }


def reload(view: StatusView, _args: dict[str, Any]) -> dict[str, Any]:
    return view.reload()

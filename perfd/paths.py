"""Default locations, shared by perfd and perfctl (standard library only)."""

from __future__ import annotations

import os
from pathlib import Path

RUNTIME_DIR_ENV = "PERFD_RUNTIME_DIR"


def is_root() -> bool:
    return os.geteuid() == 0


def default_config_path() -> Path:
    """/etc/perfd/perfd.toml for root, $XDG_CONFIG_HOME/perfd/perfd.toml otherwise."""
    if is_root():
        return Path("/etc/perfd/perfd.toml")
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "perfd" / "perfd.toml"


def default_runtime_dir() -> Path:
    """/run/perfd for root, $XDG_RUNTIME_DIR/perfd otherwise (/tmp/perfd-UID without one)."""
    if is_root():
        return Path("/run/perfd")
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return Path(base) / "perfd"
    return Path(f"/tmp/perfd-{os.geteuid()}")


def runtime_dir(cli: str | None = None, configured: str = "") -> Path:
    """The runtime directory: --runtime-dir, then $PERFD_RUNTIME_DIR, then config, then default."""
    for candidate in (cli, os.environ.get(RUNTIME_DIR_ENV), configured):
        if candidate:
            return Path(candidate)
    return default_runtime_dir()

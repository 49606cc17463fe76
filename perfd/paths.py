"""Default locations, shared by perfd and perfctl (standard library only)."""

from __future__ import annotations

import os
from pathlib import Path

RUNTIME_DIR_ENV = "PERFD_RUNTIME_DIR"


def is_root() -> bool:
    return os.geteuid() == 0


def default_config_path() -> Path:
    """/etc/perfd/perfd.toml for root, $XDG_CONFIG_HOME/perfd/perfd.toml otherwise.

    Under systemd, $CONFIGURATION_DIRECTORY (set by ConfigurationDirectory=) wins.
    """
    systemd_dir = os.environ.get("CONFIGURATION_DIRECTORY")
    if systemd_dir:
        return Path(systemd_dir.split(":")[0]) / "perfd.toml"
    if is_root():
        return Path("/etc/perfd/perfd.toml")
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "perfd" / "perfd.toml"


def default_runtime_dir() -> Path:
    """/run/perfd for root, $XDG_RUNTIME_DIR/perfd otherwise (/tmp/perfd-UID without one).

    Under systemd, $RUNTIME_DIRECTORY (set by RuntimeDirectory=) wins.
    """
    systemd_dir = os.environ.get("RUNTIME_DIRECTORY")
    if systemd_dir:
        return Path(systemd_dir.split(":")[0])
    if is_root():
        return SYSTEM_RUNTIME_DIR
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return Path(base) / "perfd"
    return Path(f"/tmp/perfd-{os.geteuid()}")


SYSTEM_RUNTIME_DIR = Path("/run/perfd")


def client_runtime_dir() -> Path:
    """Where perfctl looks: $PERFD_RUNTIME_DIR, else the user's own perfd if one runs, else
    the system perfd's /run/perfd (a normal user asking the systemd service)."""
    explicit = os.environ.get(RUNTIME_DIR_ENV)
    if explicit:
        return Path(explicit)
    own = default_runtime_dir()
    if own != SYSTEM_RUNTIME_DIR and not (own / "perfd.sock").exists():
        return SYSTEM_RUNTIME_DIR
    return own


def runtime_dir(cli: str | None = None, configured: str = "") -> Path:
    """The runtime directory: --runtime-dir, then $PERFD_RUNTIME_DIR, then config, then default."""
    for candidate in (cli, os.environ.get(RUNTIME_DIR_ENV), configured):
        if candidate:
            return Path(candidate)
    return default_runtime_dir()

"""Default locations, shared by perfd and perfctl.

Standard library only, and plain strings rather than pathlib: perfctl imports this module, and
pathlib would add about 5 ms to every perfctl run.
"""

from __future__ import annotations

import os

RUNTIME_DIR_ENV = "PERFD_RUNTIME_DIR"
SYSTEM_RUNTIME_DIR = "/run/perfd"


def is_root() -> bool:
    return os.geteuid() == 0


def default_config_path() -> str:
    """/etc/perfd/perfd.toml for root, $XDG_CONFIG_HOME/perfd/perfd.toml otherwise.

    Under systemd, $CONFIGURATION_DIRECTORY (set by ConfigurationDirectory=) wins.
    """
    systemd_dir = os.environ.get("CONFIGURATION_DIRECTORY")
    if systemd_dir:
        return os.path.join(systemd_dir.split(":")[0], "perfd.toml")
    if is_root():
        return "/etc/perfd/perfd.toml"
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(base, "perfd", "perfd.toml")


def default_runtime_dir() -> str:
    """/run/perfd for root, $XDG_RUNTIME_DIR/perfd otherwise (/tmp/perfd-UID without one).

    Under systemd, $RUNTIME_DIRECTORY (set by RuntimeDirectory=) wins.
    """
    systemd_dir = os.environ.get("RUNTIME_DIRECTORY")
    if systemd_dir:
        return systemd_dir.split(":")[0]
    if is_root():
        return SYSTEM_RUNTIME_DIR
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return os.path.join(base, "perfd")
    return f"/tmp/perfd-{os.geteuid()}"


def client_runtime_dir() -> str:
    """Where perfctl looks: $PERFD_RUNTIME_DIR, else the user's own perfd if one runs, else
    the system perfd's /run/perfd (a normal user asking the systemd service)."""
    explicit = os.environ.get(RUNTIME_DIR_ENV)
    if explicit:
        return explicit
    own = default_runtime_dir()
    if own != SYSTEM_RUNTIME_DIR and not os.path.exists(os.path.join(own, "perfd.sock")):
        return SYSTEM_RUNTIME_DIR
    return own


def runtime_dir(cli: str | None = None, configured: str = "") -> str:
    """The runtime directory: --runtime-dir, then $PERFD_RUNTIME_DIR, then config, then default."""
    for candidate in (cli, os.environ.get(RUNTIME_DIR_ENV), configured):
        if candidate:
            return candidate
    return default_runtime_dir()

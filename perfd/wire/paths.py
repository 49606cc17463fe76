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


def own_runtime_dirs() -> list[tuple[str, str]]:
    """The runtime directories perfd defaults to for this user, each with its origin, in
    perfd's order: /run/perfd for root; $XDG_RUNTIME_DIR/perfd (when set) and /tmp/perfd-UID
    for other users. perfd takes the first; perfctl looks in each (then in /run/perfd), so a
    perfd started where XDG_RUNTIME_DIR is unset (``su -``) is found from a login shell.
    """
    if is_root():
        return [(SYSTEM_RUNTIME_DIR, "root's default")]
    dirs = []
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        dirs.append((os.path.join(base, "perfd"), "$XDG_RUNTIME_DIR/perfd"))
    dirs.append((f"/tmp/perfd-{os.geteuid()}", "without XDG_RUNTIME_DIR"))
    return dirs


def default_runtime_dir() -> str:
    """/run/perfd for root, $XDG_RUNTIME_DIR/perfd otherwise (/tmp/perfd-UID without one).

    Under systemd, $RUNTIME_DIRECTORY (set by RuntimeDirectory=) wins.
    """
    systemd_dir = os.environ.get("RUNTIME_DIRECTORY")
    if systemd_dir:
        return systemd_dir.split(":")[0]
    return own_runtime_dirs()[0][0]


def client_runtime_dirs() -> list[tuple[str, str]]:
    """Where perfctl looks, in order, each with its origin: $PERFD_RUNTIME_DIR alone when it
    is set; else the user's own perfd's directories (own_runtime_dirs), then the system
    perfd's /run/perfd (a normal user asking the systemd service). $RUNTIME_DIRECTORY is
    never used: under systemd it belongs to whatever service runs perfctl."""
    explicit = os.environ.get(RUNTIME_DIR_ENV)
    if explicit:
        return [(explicit, f"${RUNTIME_DIR_ENV}")]
    dirs = own_runtime_dirs()
    if all(path != SYSTEM_RUNTIME_DIR for path, _ in dirs):
        dirs.append((SYSTEM_RUNTIME_DIR, "the system service"))
    return dirs


def runtime_dir(cli: str | None = None, configured: str = "") -> str:
    """The runtime directory: --runtime-dir, then $PERFD_RUNTIME_DIR, then config, then default."""
    for candidate in (cli, os.environ.get(RUNTIME_DIR_ENV), configured):
        if candidate:
            return candidate
    return default_runtime_dir()

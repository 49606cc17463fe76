"""The sockets perfd serves: its runtime directory and lock, the two unix sockets, the tcp
endpoint with CURVE, and who may use the admin socket (perfd.server.access's policy).

``Endpoints`` binds them at start and applies a reloaded ``[server]``/``[access]`` to the
running server; the server (perfd.server.loop) only polls and answers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from perfd import config, log, systemd
from perfd.errors import StartupError
from perfd.server import rundir
from perfd.server.access import AdminPolicy
from perfd.server.loop import Server
from perfd.wire import protocol

if TYPE_CHECKING:
    from perfd.wire.keys import AuthorizedKey

_log = log.get("perfd.daemon")


class Endpoints:
    def __init__(self, server: Server, runtime_dir: Path, initial: config.Config) -> None:
        self.server = server
        self.runtime_dir = runtime_dir
        self._initial = initial  # start-only settings ([remote] listen) stay as at start
        self.admin_group = initial.server.group  # the group resolved at bind time
        self.remote_endpoint: str | None = None  # tcp endpoint bound, with the port chosen
        self.admin_socket = runtime_dir / protocol.MAIN_SOCKET
        self.readonly_socket = runtime_dir / protocol.READONLY_SOCKET
        self._lock_fd: int | None = None

    def open(self, cfg: config.Config, *, bind: bool) -> None:
        """Fit the connection cap to the file limit; with ``bind``, take the runtime directory
        (prepare, lock) and bind the sockets."""
        self.server.watch.set_cap(self.fit_connections(cfg.server.max_connections))
        if not bind:
            return
        prepared = rundir.prepare(self.runtime_dir)
        if not prepared.created and not prepared.mode & 0o001:
            _log.info(
                "runtime_dir.private",
                path=str(self.runtime_dir),
                mode=f"{prepared.mode:04o}",
                note="other users cannot reach perfd-ro.sock; perfd leaves the mode as is",
            )
        self._lock_fd = rundir.lock(self.runtime_dir)
        self._bind(cfg)

    def apply(self, cfg: config.Config) -> None:
        """A reloaded config, on the running server: a lower limit cancels nothing in flight."""
        self.server.command_timeout = cfg.server.command_timeout
        shares = self.server.shares
        shares.total, shares.admin_reserve = cfg.server.max_in_flight, cfg.server.admin_reserve
        shares.per_client = cfg.server.max_in_flight_per_client
        self.server.watch.set_cap(self.fit_connections(cfg.server.max_connections))
        if self.server.gate.policy is not None:
            self.server.gate.policy = self.policy(cfg)

    def close(self) -> None:
        """Close and unlink the sockets, release the lock."""
        self.server.close()
        if self._lock_fd is not None:
            rundir.unlock(self.runtime_dir, self._lock_fd)
            self._lock_fd = None

    def fit_connections(self, cap: int) -> int:
        """``cap`` connections per socket, lowered (with a warning) to fit the file limit."""
        from perfd.server import sockwatch

        try:
            return sockwatch.fit_to_fd_limit(cap, 3 if self._initial.remote.listen else 2)
        except ValueError as exc:
            raise StartupError(str(exc)) from None

    def policy(self, cfg: config.Config) -> AdminPolicy:
        policy = AdminPolicy(
            users=cfg.access.admin_users, groups=(self.admin_group, *cfg.access.admin_groups)
        )
        unknown = policy.unknown_names()
        if unknown:
            _log.warning("access.unknown_names", names=unknown, action="ignored")
        return policy

    def remote_keys(self, cfg: config.Config) -> dict[str, AuthorizedKey] | None:
        """The authorized client keys, when the tcp endpoint is on (at start: when it is
        configured); StartupError naming the file and line when they cannot be used."""
        listen = self._initial.remote.listen
        if not listen or not cfg.remote.authorized_keys:
            return None
        from perfd.wire import keys

        try:
            return keys.read_authorized(Path(cfg.remote.authorized_keys))
        except keys.KeyFileError as exc:
            raise StartupError(f"[remote] authorized_keys: {exc}") from None

    def _bind(self, cfg: config.Config) -> None:
        group = rundir.resolve_group(cfg.server.group)
        if group.fallback and _group_matters(cfg):
            _log.warning(
                "access.group_missing",
                group=cfg.server.group,
                using=group.name,
                hint="create it (systemd/perfd.sysusers) so operators can be added to it",
            )
        for path in (self.admin_socket, self.readonly_socket):
            if rundir.clear_socket(path):
                _log.warning("socket.stale_removed", path=str(path))
        old_umask = os.umask(0o077)  # sockets are born private, then opened up below
        try:
            self.server.bind(self.admin_socket, readonly=False)
            self.server.bind(self.readonly_socket, readonly=True)
        finally:
            os.umask(old_umask)
        rundir.set_modes(self.admin_socket, self.readonly_socket, group)
        self.admin_group = group.name
        self.server.gate.policy = self.policy(cfg)
        if self._initial.remote.listen:
            self._bind_remote(cfg)

    def _bind_remote(self, cfg: config.Config) -> None:
        """The tcp endpoint, with CURVE: refuse to start without usable keys."""
        from perfd.wire import keys

        remote = self._initial.remote
        if not keys.curve_available():
            raise StartupError("[remote] listen: this libzmq was built without CURVE support")
        try:
            pair = keys.read_secret_pair(Path(remote.secret_key_file))
        except keys.KeyFileError as exc:
            raise StartupError(f"[remote] secret_key_file: {exc}") from None
        allowed = self.remote_keys(cfg)
        assert allowed is not None, "config validation requires authorized_keys with listen"
        self.remote_endpoint = self.server.bind_remote(remote.listen, pair, allowed)
        roles = sorted(k.role for k in allowed.values())
        _log.info(
            "remote.listening",
            endpoint=self.remote_endpoint,
            server_key=pair.public.decode(),
            keys=len(roles),
            admin_keys=roles.count("admin"),
        )


def _group_matters(cfg: config.Config) -> bool:
    """Whether a missing admin group is worth a warning: when it was configured (not the
    default `perfd`), or when perfd runs as a systemd service (systemd.service_stop_command
    has the rule), where operators expect the group. A user's own perfd stays quiet."""
    default = config.ServerConfig().group
    return cfg.server.group != default or systemd.service_stop_command() is not None

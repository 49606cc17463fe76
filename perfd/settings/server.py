"""The settings of the daemon's edges: logging, the control sockets, access, remote, metrics."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from perfd.schema import option
from perfd.settings import DAY
from perfd.wire import protocol

LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS: Final = ("json", "console")


@dataclass(frozen=True)
class LogConfig:
    level: str = option("info", "Lowest level written.", kind="choice", choices=LOG_LEVELS)
    format: str = option(
        "json",
        "`json`: one JSON object per line; `console`: for humans. `perfd --log-format` wins.",
        kind="choice",
        choices=LOG_FORMATS,
    )
    file: str = option(
        "",
        "Append JSON lines to this file, reopened when logrotate moves it. Empty: stdout only. "
        "A regular file: a symlink, FIFO or device is refused.",
        kind="path",
    )


@dataclass(frozen=True)
class ServerConfig:
    group: str = option(
        "perfd",
        "Group owning the admin socket `perfd.sock` (mode 0660). If it does not exist, the "
        "user's own group is used, with a warning when the group was set here or perfd runs "
        "as a systemd service.",
        kind="str",
    )
    workers: int = option(
        4,
        "Threads that run slow commands off the socket thread.",
        kind="int",
        minimum=1,
        maximum=256,
    )
    max_message_bytes: int = option(
        protocol.DEFAULT_MAX_MESSAGE_BYTES,
        "Largest message (all its frames together) accepted on the read-only socket and the "
        "tcp endpoint: a bigger frame drops the sender's connection (ZMQ_MAXMSGSIZE), a "
        "bigger message gets `bad_request`.",
        kind="size",
        minimum=1024,
        maximum=1 << 30,
    )
    max_admin_message_bytes: int = option(
        protocol.DEFAULT_MAX_ADMIN_MESSAGE_BYTES,
        "Largest message (all its frames together) accepted on the admin socket, where `infer` "
        "sends arrays as raw frames.",
        kind="size",
        minimum=1024,
        maximum=4 << 30,
    )
    max_in_flight: int = option(
        64,
        "Slow commands (load, infer, evict, reload...) running or queued for a worker, counting "
        "those that timed out but still hold one; one more gets a `busy` reply.",
        kind="int",
        minimum=1,
        maximum=100_000,
    )
    max_in_flight_per_client: int = option(
        16,
        "Slow commands one caller (a uid on the local sockets, a key on the tcp endpoint) may "
        "have in flight (at most `max_in_flight`); one more gets `busy`. root and perfd's own "
        "user are not counted. One caller runs on at most `workers - 1` threads at once.",
        kind="int",
        minimum=1,
        maximum=100_000,
    )
    admin_reserve: int = option(
        16,
        "Slots of `max_in_flight` only admin commands (load, evict, infer...) may take (at "
        "most `max_in_flight - 1`): read-only ones get `busy` past `max_in_flight - "
        "admin_reserve`, and run on at most `workers - 1` threads together.",
        kind="int",
        minimum=0,
        maximum=100_000,
    )
    max_connections: int = option(
        256,
        "Connections each socket (perfd.sock, perfd-ro.sock, the tcp endpoint) keeps; past "
        "it the oldest idle one is dropped (never one awaiting a reply). Lowered at start, "
        "with a warning, to fit perfd's file limit.",
        kind="int",
        minimum=8,
        maximum=1_000_000,
    )
    max_buffered_bytes: int = option(
        256 << 20,
        "How far perfd's RSS may pass its size at start plus its models' before every "
        "connection not awaiting a reply is dropped (bounds a message that never ends).",
        kind="size",
        minimum=16 << 20,
        maximum=1 << 40,
    )
    command_timeout: float = option(
        60.0,
        "A slow command still running after this gets a `timeout` reply.",
        kind="duration",
        minimum=0.001,
        maximum=DAY,
    )
    shutdown_timeout: float = option(
        10.0,
        "On SIGTERM, how long in-flight commands may run before perfd exits anyway.",
        kind="duration",
        minimum=0,
        maximum=300,
    )


@dataclass(frozen=True)
class AccessConfig:
    admin_users: tuple[str, ...] = option(
        (),
        "Users (names or numeric uids) who may also run admin commands. root, perfd's own "
        "user and members of `[server] group` always may; anyone else is refused even when "
        "the socket's mode lets them connect.",
        kind="names",
    )
    admin_groups: tuple[str, ...] = option(
        (),
        "Groups (names or numeric gids) whose members may also run admin commands.",
        kind="names",
    )


_TCP: Final = re.compile(r"^tcp://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+|\*):([0-9]{1,5})$")


@dataclass(frozen=True)
class RemoteConfig:
    listen: str = option(
        "",
        'Also serve perfd on this `tcp://HOST:PORT` endpoint (e.g. "tcp://10.0.0.5:7710"), '
        "encrypted and authenticated with CURVE. Empty: off. perfd refuses to start with it "
        "set and no keys.",
        kind="str",
    )
    secret_key_file: str = option(
        "",
        "perfd's CURVE key pair: the `.key_secret` file `perfctl keygen NAME` writes (mode "
        "0600). Clients need its public half, the `.key` file.",
        kind="path",
    )
    authorized_keys: str = option(
        "",
        "The client public keys let in, one per line: `KEY read|admin [NAME]`; `read` keys "
        "run read-only commands only. Re-read on reload.",
        kind="path",
    )

    def problems(self) -> list[tuple[str, str]]:
        if not self.listen:
            return []
        match = _TCP.match(self.listen)
        if not match or not 0 <= int(match.group(2)) < 65536:
            return [
                (
                    "listen",
                    f'must be "tcp://HOST:PORT" (e.g. "tcp://10.0.0.5:7710"), not {self.listen!r}',
                )
            ]
        if not self.secret_key_file:
            return [
                (
                    "secret_key_file",
                    "a tcp endpoint needs perfd's CURVE key pair (perfctl keygen); "
                    "perfd never serves tcp without it",
                )
            ]
        if not self.authorized_keys:
            return [
                (
                    "authorized_keys",
                    "a tcp endpoint needs a list of client public keys; "
                    "perfd never serves tcp to anyone",
                )
            ]
        return []


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = option(
        "",
        'Serve Prometheus metrics at http://HOST:PORT/metrics, e.g. "127.0.0.1:9464". Empty: off.',
        kind="str",
    )
    allow_remote: bool = option(
        False,
        "Allow a listen address beyond loopback (metrics show host and GPU details).",
        kind="bool",
    )
    max_connections: int = option(
        64,
        "Connections held at once; one more closes the oldest that has not sent a complete "
        "request (or, when every one is taking its reply, is closed itself).",
        kind="int",
        minimum=1,
        maximum=4096,
    )
    timeout: float = option(
        5.0,
        "A client must send its whole request within this from connecting, and take its "
        "whole reply within it again; else it is dropped (slowloris).",
        kind="duration",
        minimum=0.1,
        maximum=300,
    )
    max_request_bytes: int = option(
        8192,
        "Largest request line and headers together; a bigger request gets 431 and is closed.",
        kind="size",
        minimum=1024,
        maximum=1 << 20,
    )

    def problems(self) -> list[tuple[str, str]]:
        if not self.listen:
            return []
        host, sep, port = self.listen.rpartition(":")
        host = host.strip("[]")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
            return [("listen", f'must be "HOST:PORT" (e.g. "127.0.0.1:9464"), not {self.listen!r}')]
        if not self.allow_remote and host not in ("127.0.0.1", "::1", "localhost"):
            return [("listen", f"{host} is beyond loopback; set allow_remote = true to allow it")]
        return []

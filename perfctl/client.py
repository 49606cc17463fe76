"""The Python client API for perfd (perfctl's CLI uses it too).

    from perfctl import Client

    with Client() as perfd:
        print(perfd.status()["uptime_s"])
        perfd.load("embedder")
        vectors = perfd.infer("embedder", ["hello", "world"])

The exceptions are in perfctl.errors (re-exported here and by ``perfctl``); numpy arrays
travel as raw frames (perfd.wire.arrays).

Imports only the standard library, pyzmq and perfd.wire (protocol, paths, arrays), so perfctl
starts fast; numpy is imported only when a reply carries arrays.
"""

from __future__ import annotations

import itertools
import os
import time
from types import TracebackType
from typing import Any, Final

import zmq

from perfctl import locate
from perfctl.errors import (
    BAD_REPLY,
    BadReply,
    DaemonTimeout,
    KeyRefused,
    for_code,
)
from perfd.wire import paths, protocol
from perfd.wire.arrays import ArrayError, decode, has_array, nbytes, to_frames

DEFAULT_TIMEOUT = 3.0
LONG_TIMEOUT = 300.0  # seconds: loading a model (or inferring through a load) takes long

# Commands that may be sent again after a timeout: the read-only ones, and reload (re-reading
# the same file twice ends in the same state). A load, an inference or an eviction is never
# re-sent: the first one may still be running in perfd, and a second could double its effect.
RETRYABLE_COMMANDS: Final = protocol.READ_ONLY_COMMANDS | {"reload"}
# Commands that wait max(timeout, long_timeout): they load, run or unload models.
LONG_COMMANDS: Final = frozenset({"load", "infer", "evict"})


_HANDSHAKE_EVENTS: Final = zmq.EVENT_HANDSHAKE_FAILED_AUTH


def _endpoint(socket: str | os.PathLike[str]) -> tuple[str, str | None]:
    """The ZeroMQ endpoint and, for ipc, the socket file's path."""
    text = os.fspath(socket)
    if text.startswith("ipc://"):
        return text, text[len("ipc://") :]
    if "://" in text:
        return text, None
    return f"ipc://{text}", text


class Curve:
    """The keys for perfd's tcp:// endpoint: this client's pair and perfd's public key
    (Z85 text, as ``perfctl keygen`` writes them)."""

    __slots__ = ("public", "secret", "server")

    def __init__(self, public: bytes, secret: bytes, server: bytes) -> None:
        self.public = public
        self.secret = secret
        self.server = server


class Client:
    """A connection to perfd.

    ``socket`` is a path or an ipc:// endpoint; by default the admin socket in the runtime
    directory, or the read-only socket for read-only commands when the admin one is not
    accessible. A ``tcp://HOST:PORT`` endpoint needs ``curve`` keys (docs/security.md).

    Timeouts and retries follow one rule:

    - Each call waits ``timeout`` seconds for the reply; ``load``, ``infer`` and ``evict``
      (LONG_COMMANDS) wait ``max(timeout, long_timeout)``, since loading a model takes long.
    - After a timeout, only RETRYABLE_COMMANDS (the read-only ones and ``reload``) are sent
      again, ``retries`` times, each on a fresh socket. ``load``, ``infer``, ``evict``, ``pin``
      and ``unpin`` are never re-sent: the first request may still be running in perfd, and a
      second could double an inference. Either way the call ends in DaemonTimeout.
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        long_timeout: float = LONG_TIMEOUT,
        retries: int = 1,
        runtime_dir: str | os.PathLike[str] | None = None,
        curve: Curve | None = None,
    ) -> None:
        if curve is None and os.fspath(socket or "").startswith("tcp://"):
            raise ValueError("a tcp:// endpoint needs curve keys (perfctl keygen)")
        self.curve = curve
        self.timeout = timeout
        self.long_timeout = long_timeout
        self.retries = retries
        self._explicit = socket
        self._runtime_dirs = paths.client_runtime_dirs()
        if runtime_dir:
            self._runtime_dirs = [(os.fspath(runtime_dir), "runtime_dir")]
        self.last_endpoint: str | None = None  # where the last request went
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sockets: dict[str, zmq.Socket[bytes]] = {}
        self._monitors: dict[str, zmq.Socket[bytes]] = {}  # tcp: handshake events
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}"

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for endpoint in list(self._sockets):
            self._drop(endpoint)
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # -- one method per command -------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        return self.call("ping")

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def config(self) -> dict[str, Any]:
        return self.call("config")

    def reload(self) -> dict[str, Any]:
        return self.call("reload")

    def stats(self) -> dict[str, Any]:
        """The monitor's latest snapshot: host memory, PSI, CPU, GPUs, trends, alert counts."""
        return self.call("stats")

    def alerts(self) -> dict[str, Any]:
        """Firing alerts and the recent history of alert transitions, newest first."""
        return self.call("alerts")

    def ps(self) -> dict[str, Any]:
        """The loaded models (``models``, most recently used first) and the ``configured`` names."""
        return self.call("ps")

    def load(
        self,
        name: str,
        *,
        loader: str | None = None,
        target: str | None = None,
        path: str | None = None,
        device: str | None = None,
        options: dict[str, Any] | None = None,
        size_hint: int | None = None,
    ) -> dict[str, Any]:
        """Load a model (a configured one by name; with a spec, one named at run time) and
        return its ps entry. Raises NoCapacity, LoadFailed, NotFound."""
        spec = {
            "loader": loader,
            "target": target,
            "path": path,
            "device": device,
            "options": options,
            "size_hint": size_hint,
        }
        return self.call("load", model=name, **{k: v for k, v in spec.items() if v is not None})

    def evict(
        self,
        name: str | None = None,
        *,
        all: bool = False,
        idle: bool = False,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Unload ``name``, or every evictable model (``all``), or those past their keep-alive
        (``idle``): exactly one. ``dry_run`` only lists them. Returns ``evicted`` (names)."""
        args: dict[str, Any] = {"model": name} if name is not None else {}
        args.update((k, True) for k, v in (("all", all), ("idle", idle), ("dry_run", dry_run)) if v)
        return self.call("evict", **args)

    def pin(self, name: str) -> dict[str, Any]:
        """Keep a loaded model loaded (no LRU, keep-alive or pressure eviction) until unpinned."""
        return self.call("pin", model=name)

    def unpin(self, name: str) -> dict[str, Any]:
        return self.call("unpin", model=name)

    def infer(self, name: str, inputs: Any, options: dict[str, Any] | None = None) -> Any:
        """Run ``name`` on ``inputs`` (loading it first if needed) and return its outputs.

        ``inputs`` is a JSON value, or holds numpy arrays anywhere in dicts, lists and tuples:
        those travel as raw frames, and arrays in the outputs come back as numpy arrays
        (writable views on the received message, no copy). Without arrays in, arrays out come
        back as nested lists.
        """
        args: dict[str, Any] = {"model": name}
        if options:
            args["options"] = options
        if not has_array(inputs):
            args["inputs"] = inputs
            return self.call("infer", **args)["outputs"]
        try:
            args["inputs"], args["arrays"], frames = to_frames(inputs, zero_copy=True)
        except ArrayError as exc:  # an array of Python objects
            raise TypeError(str(exc)) from None
        result, extra = self._exchange("infer", args, frames)
        if not extra:
            return result.get("outputs")
        return _outputs(result, extra)

    def providers(self) -> dict[str, Any]:
        """Each configured provider (``providers``: name -> facts): its ``base_url``, where its
        API key comes from (``key_from``) and whether it is set (``key_set``; never the key),
        and once ``used``, its client's counters: requests, retries, failures, latency,
        connections."""
        return self.call("providers")

    def recommend(self, model: str | None = None, **args: Any) -> dict[str, Any]:
        """Context and concurrency for ``model`` on perfd's host (read-only: any local user).

        ``args`` are the command's: ``config`` (a config.json's contents, instead of or with
        ``model`` as its name), ``quant``, ``kv_dtype``, ``context``, ``gpu`` (a live index or
        a GPU model), ``gpus``, ``memory`` and ``kv_budget`` (bytes or "24GiB"), ``engine``,
        ``utilization``; None values are left out. Raises InvalidArgs for an unknown model,
        GPU or format. The result is described in ``perfd.recommend``.
        """
        sent = {k: v for k, v in args.items() if v is not None}
        if model is not None:
            sent["model"] = model
        return self.call("recommend", **sent)

    # -- the exchange -----------------------------------------------------------------------

    def endpoint_for(self, cmd: str) -> tuple[str, str | None]:
        """Which endpoint a command goes to (see the class docstring)."""
        target = self._target(cmd)
        return target.endpoint, target.path

    def _target(self, cmd: str) -> locate.Target:
        """The endpoint for ``cmd``: the explicit one, or a socket in the first runtime
        directory that has one (NoSocket lists every place looked at, Untrusted refuses a
        directory another user could have made)."""
        if self._explicit is not None:
            endpoint, path = _endpoint(self._explicit)
            return locate.Target(endpoint, path, None)
        directory, owner = locate.find(self._runtime_dirs)
        admin = os.path.join(directory, protocol.MAIN_SOCKET)
        readonly = os.path.join(directory, protocol.READONLY_SOCKET)
        if cmd in protocol.READ_ONLY_COMMANDS and not _usable(admin) and os.path.exists(readonly):
            admin = readonly
        return locate.Target(f"ipc://{admin}", admin, owner)

    def timeout_for(self, cmd: str) -> float:
        """Seconds to wait for ``cmd``'s reply (see the class docstring)."""
        if cmd in LONG_COMMANDS:
            return max(self.timeout, self.long_timeout)
        return self.timeout

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send one command and return its result; raise a PerfctlError subclass otherwise."""
        return self._exchange(cmd, args)[0]

    def _exchange(
        self, cmd: str, args: dict[str, Any], frames: list[Any] | None = None
    ) -> tuple[dict[str, Any], list[zmq.Frame]]:
        """One request (plus raw ``frames``), one reply: its result and its extra frames."""
        target = self._target(cmd)
        endpoint = self.last_endpoint = target.endpoint
        if target.path is not None:
            locate.check_socket(target)
        request = protocol.Request(id=f"{self._prefix}-{next(self._ids)}", cmd=cmd, args=args)
        frame = protocol.encode_request(request)
        timeout = self.timeout_for(cmd)
        attempts = 1 + (self.retries if cmd in RETRYABLE_COMMANDS else 0)
        for _attempt in range(attempts):
            sock = self._socket(endpoint)
            if frames:
                sock.send_multipart([frame, *frames], copy=False)
            else:
                sock.send(frame)
            if self._wait(sock, endpoint, timeout):
                head = sock.recv()
                extra = sock.recv_multipart(copy=False) if sock.get(zmq.RCVMORE) else []
                return self._result(request.id, head), extra
            # REQ is stuck waiting for this reply: throw it away and start afresh.
            self._drop(endpoint)
        message = f"no reply from perfd on {endpoint} within {timeout * attempts:g}s"
        if attempts > 1:
            message += f" ({attempts} tries of {timeout:g}s each)"
        else:
            message += f"; '{cmd}' is not retried: it may still be running in perfd"
        largest = max([len(frame), *(nbytes(f) for f in frames or ())])
        readonly = endpoint.endswith(protocol.READONLY_SOCKET)
        limit = (
            protocol.DEFAULT_MAX_MESSAGE_BYTES
            if readonly
            else protocol.DEFAULT_MAX_ADMIN_MESSAGE_BYTES
        )
        if largest > limit:
            setting = "max_message_bytes" if readonly else "max_admin_message_bytes"
            message += (
                f"; a {largest}-byte frame is over perfd's default server.{setting} ({limit}), "
                "and perfd drops such a request unanswered"
            )
        if self.curve is not None and endpoint.startswith("tcp://"):
            message += "; is perfd's public key (--server-key) the right one?"
        raise DaemonTimeout(message)

    def _socket(self, endpoint: str) -> zmq.Socket[bytes]:
        sock = self._sockets.get(endpoint)
        if sock is None:
            if self._ctx is None:
                self._ctx = zmq.Context()
            sock = self._ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            if self.curve is not None and endpoint.startswith("tcp://"):
                sock.curve_publickey = self.curve.public
                sock.curve_secretkey = self.curve.secret
                sock.curve_serverkey = self.curve.server
                self._monitors[endpoint] = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
            sock.connect(endpoint)
            self._sockets[endpoint] = sock
        return sock

    def _drop(self, endpoint: str) -> None:
        sock = self._sockets.pop(endpoint)
        monitor = self._monitors.pop(endpoint, None)
        if monitor is not None:
            sock.disable_monitor()
            monitor.close(linger=0)
        sock.close(linger=0)

    def _wait(self, sock: zmq.Socket[bytes], endpoint: str, timeout: float) -> bool:
        """Wait up to ``timeout`` for the reply; on tcp, raise AccessDenied as soon as perfd
        refuses our key (ZeroMQ would otherwise retry the handshake until the timeout)."""
        monitor = self._monitors.get(endpoint)
        if monitor is None:
            return bool(sock.poll(int(timeout * 1000)))
        from zmq.utils.monitor import parse_monitor_message

        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            events = dict(poller.poll(int(left * 1000) + 1))
            if sock in events:
                return True
            if monitor in events:
                event = parse_monitor_message(monitor.recv_multipart())["event"]
                if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    self._drop(endpoint)
                    raise KeyRefused(
                        f"perfd on {endpoint} refused this client key: it is not in perfd's "
                        "[remote] authorized_keys"
                    )
        return False

    def _result(self, request_id: str, frame: bytes) -> dict[str, Any]:
        try:
            reply = protocol.decode_reply(frame)
        except protocol.ProtocolError as exc:
            raise BadReply(BAD_REPLY, exc.message) from None
        if reply.id != request_id:
            raise BadReply(BAD_REPLY, f"reply id {reply.id!r} != {request_id!r}")
        if reply.ok:
            assert reply.result is not None
            return reply.result
        code = reply.error_code or protocol.INTERNAL
        raise for_code(code, reply.error_message or "")


def _usable(path: str) -> bool:
    return os.access(path, os.R_OK | os.W_OK)


def _outputs(result: dict[str, Any], frames: list[zmq.Frame]) -> Any:
    """The reply's outputs with each {"$frame": i} replaced by frame i as a numpy array."""
    try:
        return decode(result.get("outputs"), result.get("arrays"), list(frames))
    except ArrayError as exc:
        if exc.problem == "undescribed":
            message = f"'arrays' does not describe the reply's {exc.count} frames"
        elif exc.problem == "no_frame":
            message = f"reply names frame {exc.index!r}; it has {exc.count}"
        else:
            message = f"reply array {exc.index}: {exc.detail}"
        raise BadReply(BAD_REPLY, message) from None

"""perfctl: ask perfd for its status, its config, its stats and alerts, or to reload; list,
load, evict, pin and run the models in its cache (local or remote); show the remote model
providers; size a model's context and concurrency.

Exit codes: 0 ok; 1 perfd answered with an error; 2 usage; 3 perfd not running or not
answering; 4 permission denied on the socket.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from perfctl import recommend as rec
from perfctl import remote
from perfctl.args import ALERT_HISTORY, build_parser
from perfctl.client import DEFAULT_TIMEOUT, LONG_TIMEOUT, Client
from perfctl.errors import (
    AccessDenied,
    CommandFailed,
    DaemonNotRunning,
    Forbidden,
    InvalidArgs,
    PerfctlError,
    UsageError,
)
from perfctl.format import alerts as fmt_alerts
from perfctl.format import cache as fmt_cache
from perfctl.format import engines as fmt_engines
from perfctl.format import providers as fmt_providers
from perfctl.format import safe
from perfctl.format import stats as fmt_stats
from perfctl.format import status as fmt_status
from perfctl.format.base import Style
from perfd.wire.protocol import MAIN_SOCKET

JSON_SCHEMA = 1

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_DENIED = 0, 1, 2, 3, 4

GLYPHS = "█░↑↓→°·…"  # what the stats screen draws when the stream can encode it

Formatter = Callable[[dict[str, Any], Style], str]

_FORMATTERS: dict[str, Formatter] = {
    "status": fmt_status.format_status,
    "config": fmt_status.format_config,
    "reload": fmt_status.format_reload,
    "stats": fmt_stats.format_stats,
    "alerts": fmt_alerts.format_alerts,
    "ps": fmt_cache.format_ps,
    "load": fmt_cache.format_load,
    "evict": fmt_cache.format_evict,
    "pin": fmt_cache.format_pin,
    "unpin": fmt_cache.format_pin,
    "infer": fmt_cache.format_infer,
    "providers": fmt_providers.format_providers,
    "engines": fmt_engines.format_engines,
}


def _style() -> Style:
    return Style(
        colour=sys.stdout.isatty() and "NO_COLOR" not in os.environ,
        unicode=_encodes(getattr(sys.stdout, "encoding", None), GLYPHS),
    )


def _encodes(encoding: str | None, text: str) -> bool:
    try:
        text.encode(encoding or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _render(args: argparse.Namespace, style: Style) -> Callable[[dict[str, Any]], str]:
    """The human output of ``args.command``'s result."""
    if args.command == "alerts":
        limit = None if args.all else ALERT_HISTORY
        return lambda result: fmt_alerts.format_alerts(result, style, history_limit=limit)
    if args.command == "load":
        return lambda result: fmt_cache.format_load(result, style, name=args.name)
    if args.command == "engines" and args.name is not None:
        return lambda result: fmt_engines.format_engine(result, style)
    if args.command == "infer":
        pretty = sys.stdout.isatty()
        return lambda result: fmt_cache.format_infer(result, style, pretty=pretty)
    formatter = _FORMATTERS[args.command]
    return lambda result: formatter(result, style)


def _request(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments ``args.command`` sends."""
    cmd = args.command
    if cmd == "evict":
        flags = {k: True for k in ("all", "idle", "dry_run") if getattr(args, k)}
        return {"model": args.name, **flags} if args.name is not None else flags
    if cmd == "engines":
        return {} if args.name is None else {"name": args.name}
    if cmd not in ("load", "pin", "unpin", "infer"):
        return {}
    request: dict[str, Any] = {"model": args.name}
    if cmd == "load":
        for key in ("loader", "target", "path", "device", "size_hint"):
            if getattr(args, key) is not None:
                request[key] = getattr(args, key)
    if cmd == "infer":
        request["inputs"] = args.input
    if getattr(args, "option", None):
        request["options"] = dict(args.option)
    return request


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `perfctl` alone: what it can do
        sys.stderr.write(parser.format_help())
        return EXIT_USAGE
    if args.command == "evict" and (args.name is not None) + args.all + args.idle != 1:
        args.parser.error("give exactly one of NAME, --all or --idle")
    as_json = getattr(args, "json", False)
    socket = getattr(args, "socket", None)
    timeout = getattr(args, "timeout", None)  # given: it holds for every command
    watch = getattr(args, "watch", None)
    style = _style()
    if not style.unicode:  # a process or GPU name the stream cannot encode must not crash us
        reconfigure = getattr(sys.stdout, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="replace")

    host = getattr(args, "host", None)
    try:
        if args.command == "keygen":
            return remote.keygen(args.name, args.role, as_json)
        curve = remote.curve(host, getattr(args, "key", None), getattr(args, "server_key", None))
        if host is not None and socket is not None:
            raise UsageError("give --host or --socket, not both")
    except UsageError as exc:
        getattr(args, "parser", parser).error(str(exc))

    def connect() -> Client:
        return Client(
            host or socket,
            timeout=timeout or DEFAULT_TIMEOUT,
            long_timeout=timeout or LONG_TIMEOUT,
            curve=curve,
        )

    if args.command == "recommend":
        return _recommend(args, style, as_json, connect)
    try:
        with connect() as client:
            if watch is not None:
                from perfctl import watch as watching

                if args.command == "engines":
                    render = _render(args, style)

                    def fetch() -> dict[str, Any]:
                        return client.call("engines", **_request(args))

                    def draw(result: dict[str, Any]) -> str:
                        return _human(result, render)

                    return watching.run(fetch, watch, as_json, draw, schema=JSON_SCHEMA)

                def screen(result: dict[str, Any]) -> str:
                    return _human(result, lambda r: fmt_stats.format_stats(r, style, redraw=watch))

                return watching.run(client.stats, watch, as_json, screen, schema=JSON_SCHEMA)
            started = time.perf_counter()
            result = client.call(args.command, **_request(args))
            elapsed_ms = (time.perf_counter() - started) * 1000
            asked = client.last_endpoint
    except PerfctlError as exc:
        return _fail(exc, as_json, _admin_socket_hint(exc, socket))
    if args.command == "ping":
        return _print(result, as_json, lambda r: fmt_status.format_ping(r, style, elapsed_ms))
    if args.command == "status":  # whose perfd answered: its pid and user, and where we asked
        return _print(result, as_json, lambda r: fmt_status.format_status(r, style, socket=asked))
    # infer's outputs are printed as JSON, made terminal-safe as JSON (format_infer)
    return _print(result, as_json, _render(args, style), escape=args.command != "infer")


def _human(result: dict[str, Any], render: Callable[[dict[str, Any]], str]) -> str:
    """``result`` as ``render`` draws it, every string in it (names, units, messages: text
    from outside) escaped for the terminal first (perfctl.format.safe)."""
    return render(safe.tree(result))


def _print(
    result: dict[str, Any],
    as_json: bool,
    render: Callable[[dict[str, Any]], str],
    *,
    escape: bool = True,
) -> int:
    """Print ``result`` as JSON (with its schema) or as ``render`` draws it, its strings made
    safe for a terminal (``escape``: False for a ``render`` that does it itself); exit 0.

    The JSON escapes every control and non-ASCII character itself (``ensure_ascii``)."""
    try:
        if as_json:
            print(json.dumps({"schema": JSON_SCHEMA, **result}, indent=2, sort_keys=False))
        else:
            print(_human(result, render) if escape else render(result))
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (perfctl ps --json | head -1)
        from perfctl.watch import quiet_stdout

        quiet_stdout()
    return EXIT_OK


def _recommend(
    args: argparse.Namespace, style: Style, as_json: bool, connect: Callable[[], Client]
) -> int:
    """perfd's answer, or one computed here (--offline, --weights, --list-*: perfctl.recommend).

    A model that does not fit is an answer (exit 0); usage mistakes exit 2 with the usage line.
    """
    # only here: perfctl's other commands skip them
    from perfctl.format import catalog
    from perfctl.format import recommend as fmt_rec

    formatter: Formatter = fmt_rec.format_recommend
    try:
        rec.check(args)
        if args.list_models or args.list_gpus:
            result = rec.listing(args)
            formatter = catalog.format_models if args.list_models else catalog.format_gpus
        elif args.offline:
            result = rec.compute(args, None)
        elif args.weights is not None:  # perfd never opens client files: its stats, our math
            with connect() as client:
                stats = client.stats()
            result = rec.compute(args, stats)
        else:
            request = rec.daemon_args(args)
            with connect() as client:
                result = client.recommend(**request)
    except UsageError as exc:  # may quote a --weights or --config-json file's contents
        args.parser.error(safe.text(str(exc)))
    except DaemonNotRunning as exc:
        return _fail(exc, as_json, f"{exc.hint}; {rec.OFFLINE_HINT}")
    except InvalidArgs as exc:
        return _fail(exc, as_json, rec.LIST_HINT)
    except PerfctlError as exc:
        return _fail(exc, as_json)
    return _print(result, as_json, lambda r: formatter(r, style))


def _admin_socket_hint(exc: PerfctlError, socket: str | None) -> str | None:
    """An admin command sent to --socket perfd-ro.sock: the group of perfd.sock beside it."""
    if not isinstance(exc, Forbidden) or socket is None or "read-only socket" not in str(exc):
        return None
    from perfctl import hints

    path = os.path.join(os.path.dirname(socket.removeprefix("ipc://")), MAIN_SOCKET)
    found = hints.for_socket(path)
    return None if found is None else f"admin commands go to {path}; {found}"


def _fail(exc: PerfctlError, as_json: bool, hint: str | None = None) -> int:
    if isinstance(exc, AccessDenied | Forbidden):
        code, status = "permission_denied", EXIT_DENIED
    elif isinstance(exc, DaemonNotRunning):
        code, status = "not_running", EXIT_NOT_RUNNING
    else:
        code, status = (exc.code if isinstance(exc, CommandFailed) else "error"), EXIT_ERROR
    if isinstance(exc, Forbidden):
        code = exc.code
    if as_json:
        print(json.dumps({"schema": JSON_SCHEMA, "error": {"code": code, "message": str(exc)}}))
    # perfd's message and hint may quote a model name, a path, an engine's reply: escaped
    print(f"perfctl: {safe.text(str(exc))}", file=sys.stderr)
    hint = exc.hint if hint is None else hint
    if hint:
        print(f"  hint: {safe.text(hint)}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())

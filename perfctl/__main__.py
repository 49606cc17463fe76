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

from perfctl import format as fmt
from perfctl import format_cache as fmt_cache
from perfctl import format_providers as fmt_providers
from perfctl import recommend as rec
from perfctl import remote
from perfctl.client import DEFAULT_TIMEOUT, LONG_TIMEOUT, Client
from perfctl.errors import (
    AccessDenied,
    CommandFailed,
    DaemonNotRunning,
    Forbidden,
    InvalidArgs,
    PerfctlError,
)
from perfd import __version__

JSON_SCHEMA = 1

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_DENIED = 0, 1, 2, 3, 4

DEFAULT_WATCH = 2.0  # seconds between `perfctl stats --watch` refreshes
ALERT_HISTORY = 10  # history entries `perfctl alerts` shows without --all
CLEAR = "\033[H\033[2J"  # cursor home, clear screen
GLYPHS = "█░↑↓→°·…"  # what the stats screen draws when the stream can encode it

Formatter = Callable[[dict[str, Any], fmt.Style], str]

_COMMANDS: dict[str, tuple[str, Formatter]] = {
    "status": ("show perfd's version, uptime, config path and components", fmt.format_status),
    "config": ("show the effective config as TOML (secrets redacted)", fmt.format_config),
    "reload": ("re-read the config file (admin: perfd group)", fmt.format_reload),
    "stats": (
        "show host memory, PSI, CPU, GPUs, trends, top processes and the model cache",
        fmt.format_stats,
    ),
    "alerts": ("show firing alerts and the recent alert history", fmt.format_alerts),
    "ps": ("list the loaded models, then the configured ones not loaded", fmt_cache.format_ps),
    "load": ("load a model, by name or from --target/--path (admin)", fmt_cache.format_load),
    "evict": ("unload a model, --all or --idle ones (admin)", fmt_cache.format_evict),
    "pin": ("keep a loaded model loaded until unpinned (admin)", fmt_cache.format_pin),
    "unpin": ("let a pinned model expire and be evicted again (admin)", fmt_cache.format_pin),
    "infer": ("run a model on JSON inputs and print its outputs (admin)", fmt_cache.format_infer),
    "providers": (
        "show the remote model APIs: base URL, requests, retries, failures, latency, connections",
        fmt_providers.format_providers,
    ),
}


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, sized without importing shutil (and bz2, lzma, zlib with it)."""

    def __init__(self, prog: str) -> None:
        try:
            width = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size(1).columns
        except (ValueError, OSError):
            width = 80
        super().__init__(prog, width=max(width - 2, 40))


class _Paragraphs(argparse.RawDescriptionHelpFormatter, _Formatter):
    """The same, keeping a description's and an epilog's paragraphs as written."""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, formatter_class=_Formatter)
    common.add_argument(
        "--socket",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="perfd's socket (default: perfd.sock in $PERFD_RUNTIME_DIR, else in your own "
        "perfd's runtime dir if one runs, else in /run/perfd; perfd-ro.sock for read-only "
        "commands when perfd.sock is not accessible)",
    )
    remote.add_arguments(common)
    common.add_argument(
        "--timeout",
        type=_seconds,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help=f"wait this long for a reply (default {DEFAULT_TIMEOUT:g}; {LONG_TIMEOUT:g} for "
        "load, infer and evict); read-only commands and reload are then retried once, the "
        "others never",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the reply's result as JSON",
    )
    parser = argparse.ArgumentParser(
        prog="perfctl",
        description="Control and query perfd, the performance daemon for AI inference hosts.",
        epilog="exit codes: 0 ok, 1 perfd answered with an error, 2 usage, "
        "3 perfd not running or not answering, 4 permission denied",
        parents=[common],
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"perfctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser(
        "ping", help="check that perfd answers", parents=[common], formatter_class=_Formatter
    )
    commands = {
        name: sub.add_parser(name, help=help_text, parents=[common], formatter_class=_Formatter)
        for name, (help_text, _) in _COMMANDS.items()
    }
    commands["stats"].add_argument(
        "--watch",
        nargs="?",
        const=DEFAULT_WATCH,
        type=_seconds,
        metavar="SECONDS",
        help=f"redraw every SECONDS (default {DEFAULT_WATCH:g}) until Ctrl-C; "
        "with --json, print one JSON object per line per refresh",
    )
    commands["alerts"].add_argument(
        "--all",
        action="store_true",
        help=f"show the whole alert history, not only the {ALERT_HISTORY} newest entries",
    )
    _cache_arguments(commands)
    recommend = sub.add_parser(
        "recommend",
        help="how much context and how many sequences a model gets here, with settings for "
        "vLLM, llama.cpp and Ollama (--offline: no daemon needed)",
        description=rec.DESCRIPTION,
        epilog=rec.EPILOG,
        parents=[common],
        formatter_class=_Paragraphs,
    )
    rec.add_arguments(recommend)
    recommend.set_defaults(parser=recommend)
    remote.add_keygen(sub, parents=[common], formatter_class=_Formatter)
    return parser


def _cache_arguments(commands: dict[str, argparse.ArgumentParser]) -> None:
    for name in ("load", "pin", "unpin", "infer"):
        commands[name].add_argument("name", metavar="NAME", help="the model's name")
    load = commands["load"]
    for option, text in (
        (
            "--loader",
            "python (default), onnx, openai (a remote model: --option provider=NAME "
            "--option model=ID), or a registered loader",
        ),
        ("--target", "python loader: module:callable that builds the model"),
        ("--path", "the model file (onnx and file-based loaders)"),
        ("--device", "cpu (default) or cuda:N"),
    ):
        load.add_argument(option, metavar=option[2:].upper(), help=f"for a new model: {text}")
    load.add_argument(
        "--size-hint",
        type=_size,
        metavar="SIZE",
        help="for a new model: its size when the loader cannot estimate it (4GiB, 512MiB)",
    )
    evict = commands["evict"]
    evict.add_argument("name", nargs="?", metavar="NAME", help="the model to unload")
    evict.add_argument("--all", action="store_true", help="unload every unpinned, idle model")
    evict.add_argument("--idle", action="store_true", help="unload models past their keep-alive")
    evict.add_argument(
        "--dry-run", action="store_true", help="list what would be unloaded, unload nothing"
    )
    evict.set_defaults(parser=evict)
    commands["infer"].add_argument(
        "--input",
        type=_json_input,
        metavar="JSON",
        help="the inputs as JSON, @FILE to read them from a file, - from stdin (default: null)",
    )
    for name in ("load", "infer"):
        commands[name].add_argument(
            "--option",
            action="append",
            type=_option,
            default=[],
            metavar="KEY=VALUE",
            help="a model option (load: the factory's; infer: the request's); VALUE is JSON "
            "when it parses (64, true, [1,2]), else a string; repeat for more",
        )


def _option(text: str) -> tuple[str, Any]:
    key, equals, value = text.partition("=")
    if not key or not equals:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _size(text: str) -> int:
    from perfd.units import parse_size  # only here: pure and stdlib-only, but needs re

    try:
        value = parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 4GiB, 512MiB)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 bytes: {text!r}")
    return value


def _json_input(text: str) -> Any:
    """--input: JSON itself, @FILE, or - for stdin."""
    source = ""
    if text == "-":
        source, raw = "stdin", sys.stdin.read()
    elif text.startswith("@"):
        source = text[1:]
        try:
            with open(source, encoding="utf-8") as file:
                raw = file.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise argparse.ArgumentTypeError(f"cannot read {source}: {exc}") from None
    else:
        raw = text
    try:
        return json.loads(raw)
    except ValueError as exc:
        where = f" in {source}" if source else ""
        raise argparse.ArgumentTypeError(f"not valid JSON{where}: {exc}") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 3600 seconds: {text}")
    return value


def _style() -> fmt.Style:
    return fmt.Style(
        colour=sys.stdout.isatty() and "NO_COLOR" not in os.environ,
        unicode=_encodes(getattr(sys.stdout, "encoding", None), GLYPHS),
    )


def _encodes(encoding: str | None, text: str) -> bool:
    try:
        text.encode(encoding or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _render(args: argparse.Namespace, style: fmt.Style) -> Callable[[dict[str, Any]], str]:
    """The human output of ``args.command``'s result."""
    if args.command == "alerts":
        limit = None if args.all else ALERT_HISTORY
        return lambda result: fmt.format_alerts(result, style, history_limit=limit)
    if args.command == "load":
        return lambda result: fmt_cache.format_load(result, style, name=args.name)
    if args.command == "infer":
        pretty = sys.stdout.isatty()
        return lambda result: fmt_cache.format_infer(result, style, pretty=pretty)
    formatter = _COMMANDS[args.command][1]
    return lambda result: formatter(result, style)


def _request(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments ``args.command`` sends."""
    cmd = args.command
    if cmd == "evict":
        flags = {k: True for k in ("all", "idle", "dry_run") if getattr(args, k)}
        return {"model": args.name, **flags} if args.name is not None else flags
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
            raise remote.UsageError("give --host or --socket, not both")
    except remote.UsageError as exc:
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
                return _watch(client, watch, as_json, _render(args, style))
            started = time.perf_counter()
            result = client.call(args.command, **_request(args))
            elapsed_ms = (time.perf_counter() - started) * 1000
            asked = client.last_endpoint
    except PerfctlError as exc:
        return _fail(exc, as_json)
    if args.command == "ping":
        return _print(result, as_json, lambda r: fmt.format_ping(r, style, elapsed_ms))
    if args.command == "status":  # whose perfd answered: its pid and user, and where we asked
        return _print(result, as_json, lambda r: fmt.format_status(r, style, socket=asked))
    return _print(result, as_json, _render(args, style))


def _print(result: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], str]) -> int:
    """Print ``result`` as JSON (with its schema) or as ``render`` draws it; exit 0."""
    try:
        if as_json:
            print(json.dumps({"schema": JSON_SCHEMA, **result}, indent=2, sort_keys=False))
        else:
            print(render(result))
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (perfctl ps --json | head -1)
        _quiet_stdout()
    return EXIT_OK


def _recommend(
    args: argparse.Namespace, style: fmt.Style, as_json: bool, connect: Callable[[], Client]
) -> int:
    """perfd's answer, or one computed here (--offline, --weights, --list-*: perfctl.recommend).

    A model that does not fit is an answer (exit 0); usage mistakes exit 2 with the usage line.
    """
    from perfctl import format_recommend as fmt_rec  # only here: perfctl's other commands skip it

    formatter: Formatter = fmt_rec.format_recommend
    try:
        rec.check(args)
        if args.list_models or args.list_gpus:
            result = rec.listing(args)
            formatter = fmt_rec.format_models if args.list_models else fmt_rec.format_gpus
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
    except rec.UsageError as exc:
        args.parser.error(str(exc))
    except DaemonNotRunning as exc:
        return _fail(exc, as_json, f"{exc.hint}; {rec.OFFLINE_HINT}")
    except InvalidArgs as exc:
        return _fail(exc, as_json, rec.LIST_HINT)
    except PerfctlError as exc:
        return _fail(exc, as_json)
    return _print(result, as_json, lambda r: formatter(r, style))


def _watch(
    client: Client, interval: float, as_json: bool, render: Callable[[dict[str, Any]], str]
) -> int:
    """Print ``stats`` every ``interval`` seconds on one client until Ctrl-C (exit 0).

    On a TTY each screen replaces the last; otherwise screens follow each other, a blank line
    apart, and with --json each refresh is one JSON line. PerfctlError propagates: the daemon
    stopped answering, and main() reports it with the usual exit code.
    """
    import signal  # only here: the one-shot commands never need it

    # Ctrl-C ends the watch even when started with SIGINT ignored (a script's background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    tty = sys.stdout.isatty()
    due = time.monotonic()
    first = True
    try:
        while True:
            result = client.stats()
            if as_json:
                text = json.dumps({"schema": JSON_SCHEMA, **result})
            elif tty:
                text = CLEAR + render(result)
            else:
                text = render(result) if first else "\n" + render(result)
            print(text, flush=True)
            first = False
            due += interval
            now = time.monotonic()
            due = max(due, now)  # after a slow reply or a suspended terminal: no catching up
            time.sleep(due - now)
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # the reader went away (perfctl stats --watch | head)
        _quiet_stdout()
        return EXIT_OK


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush of a closed pipe is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


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
    print(f"perfctl: {exc}", file=sys.stderr)
    hint = exc.hint if hint is None else hint
    if hint:
        print(f"  hint: {hint}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())

"""perfctl's command line: the parser, its help texts and the argument types.

Each command's ``--help`` starts with what it does. The options that reach perfd (``--socket``,
``--host``, ``--key``, ``--server-key``, ``--timeout``) are one argument group, "connection",
and ``keygen``, which never contacts perfd, has none of them. A near-miss command or choice
gets a "did you mean".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from perfctl import recommend as rec
from perfctl import remote
from perfctl.client import DEFAULT_TIMEOUT, LONG_TIMEOUT
from perfd import __version__

DEFAULT_WATCH = 2.0  # seconds between `perfctl stats --watch` refreshes
ALERT_HISTORY = 10  # history entries `perfctl alerts` shows without --all

EXIT_CODES = (
    "exit codes: 0 ok, 1 perfd answered with an error, 2 usage, "
    "3 perfd not running or not answering, 4 permission denied"
)

# What each command does: the line in `perfctl --help` and the first line of its own --help.
HELP: dict[str, str] = {
    "ping": "check that perfd answers, with the round-trip time",
    "status": "show perfd's version, uptime, config path and components",
    "config": "show the effective config as TOML (secrets redacted)",
    "reload": "re-read the config file (admin)",
    "stats": "show host memory, PSI, CPU, GPUs, trends, top processes and the model cache",
    "alerts": "show firing alerts and the recent alert history",
    "ps": "list the loaded models, then the configured ones not loaded",
    "load": "load a model, by name or from --target/--path (admin)",
    "evict": "unload a model, or --all or --idle ones; never a pinned or in-use one (admin)",
    "pin": "keep a loaded model loaded until unpinned (admin)",
    "unpin": "let a pinned model expire and be evicted again (admin)",
    "infer": "run a model on JSON inputs and print its outputs (admin)",
    "providers": "show the remote model APIs: base URL, requests, retries, failures, latency, "
    "connections",
    "engines": "show the inference engines on the host (vLLM, llama.cpp, Ollama, SGLang): "
    "model, context, KV cache, queue, preemptions, GPU memory, state; NAME: one in detail "
    "with its plan check",
    "recommend": "how much context and how many sequences a model gets here, with settings "
    "for vLLM, llama.cpp and Ollama (--offline: no daemon needed)",
    "keygen": "write a CURVE key pair for perfd's tcp endpoint: NAME.key and NAME.key_secret, "
    "mode 0600 (no daemon needed)",
}
CONNECTION = "connection (how perfctl reaches perfd)"


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


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help starts with the description, and whose "invalid choice"
    says which choice was probably meant."""

    def format_help(self) -> str:
        if not self.description:
            return super().format_help()
        description, self.description = self.description, None
        try:
            body = super().format_help()
        finally:
            self.description = description
        formatter = self._get_formatter()
        formatter.add_text(description)
        return formatter.format_help() + "\n" + body

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        choices = action.choices
        if choices is not None and isinstance(value, str) and value not in choices:
            import difflib  # only here: a mistyped command or choice

            names = [str(choice) for choice in choices]
            close = difflib.get_close_matches(value, names, n=1)
            if close:
                raise argparse.ArgumentError(
                    action, f"invalid choice: {value!r}; did you mean {close[0]!r}?"
                )
        super()._check_value(action, value)


def build_parser() -> Parser:
    connection = Parser(add_help=False, formatter_class=_Formatter)
    group = connection.add_argument_group(CONNECTION)
    group.add_argument(
        "--socket",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="perfd's socket (default: perfd.sock in $PERFD_RUNTIME_DIR, else in your own "
        "perfd's runtime dir if one runs, else in /run/perfd; perfd-ro.sock for read-only "
        "commands when perfd.sock is not accessible)",
    )
    remote.add_arguments(group)
    group.add_argument(
        "--timeout",
        type=_seconds,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help=f"wait this long for a reply (default {DEFAULT_TIMEOUT:g}; {LONG_TIMEOUT:g} for "
        "load, infer and evict); read-only commands and reload are then retried once, the "
        "others never",
    )
    output = Parser(add_help=False, formatter_class=_Formatter)
    output.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the result as JSON",
    )
    common = [connection, output]
    parser = Parser(
        prog="perfctl",
        description="Control and query perfd, the performance daemon for AI inference hosts.",
        epilog=EXIT_CODES,
        parents=common,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"perfctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    commands = {
        name: sub.add_parser(
            name,
            help=HELP[name],
            description=HELP[name][0].upper() + HELP[name][1:] + ".",
            epilog=EXIT_CODES,
            parents=common,
            formatter_class=_Formatter,
        )
        for name in HELP
        if name not in ("recommend", "keygen")
    }
    for command in commands.values():
        command.set_defaults(parser=command)
    commands["stats"].add_argument(
        "--watch",
        nargs="?",
        const=DEFAULT_WATCH,
        type=_seconds,
        metavar="SECONDS",
        help=f"redraw every SECONDS (default {DEFAULT_WATCH:g}) until q or Ctrl-C; "
        "with --json, print one JSON object per line for each new sample",
    )
    commands["engines"].add_argument(
        "name", nargs="?", metavar="NAME", help="one engine in detail, with its plan check"
    )
    commands["engines"].add_argument(
        "--watch",
        nargs="?",
        const=DEFAULT_WATCH,
        type=_seconds,
        metavar="SECONDS",
        help=f"redraw every SECONDS (default {DEFAULT_WATCH:g}) until q or Ctrl-C; "
        "with --json, print one JSON object per line for each redraw",
    )
    commands["alerts"].add_argument(
        "--all",
        action="store_true",
        help=f"show the whole alert history, not only the {ALERT_HISTORY} newest entries",
    )
    _cache_arguments(commands)
    recommend = sub.add_parser(
        "recommend",
        help=HELP["recommend"],
        description=rec.DESCRIPTION,
        epilog=rec.EPILOG,
        parents=common,
        formatter_class=_Paragraphs,
    )
    rec.add_arguments(recommend)
    recommend.set_defaults(parser=recommend)
    for each in recommend._action_groups:  # the same options; say when they are not used
        if each.title == CONNECTION:
            each.description = "not used with --offline, --list-models or --list-gpus"
    keygen = remote.add_keygen(
        sub,
        help=HELP["keygen"],
        description=HELP["keygen"][0].upper() + HELP["keygen"][1:] + ".",
        parents=[output],
        formatter_class=_Formatter,
    )
    keygen.set_defaults(parser=keygen)
    return parser


def _cache_arguments(commands: Mapping[str, argparse.ArgumentParser]) -> None:
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
    evict.add_argument(
        "--all",
        action="store_true",
        help="unload every model not pinned and not in use; says which ones it skipped",
    )
    evict.add_argument(
        "--idle",
        action="store_true",
        help="unload the models past their keep-alive now (housekeeping does it every "
        "[cache] housekeeping interval anyway)",
    )
    evict.add_argument(
        "--dry-run", action="store_true", help="list what would be unloaded, unload nothing"
    )
    commands["infer"].add_argument(
        "--input",
        type=_json_input,
        required=True,
        metavar="JSON",
        help="the inputs as JSON (a string needs its quotes: --input '\"hello\"'), @FILE to "
        "read them from a file, - from stdin",
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
    from perfd.wire.units import parse_size  # only here: pure and stdlib-only, but needs re

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
        message = f"not valid JSON{where}: {exc}"
        if _bare_word(raw):
            import shlex  # only here: it imports re, which perfctl's start-up skips

            quoted = json.dumps(raw.strip())
            shown = f"--input {shlex.quote(quoted)}" if not source else quoted
            message += f"; a JSON string needs its quotes: {shown}"
        raise argparse.ArgumentTypeError(message) from None


def _bare_word(text: str) -> bool:
    """Text meant as a string but typed without JSON's quotes: hello, not "hello"."""
    stripped = text.strip()
    return bool(stripped) and stripped[0] not in '{["-0123456789' and "\n" not in stripped


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 3600 seconds: {text}")
    return value

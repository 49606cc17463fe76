"""`perfctl recommend`: its flags, the request it sends perfd, and the local computations.

By default perfd answers (the ``recommend`` command, read-only): it plans on the host's live
hardware, or on hardware the flags name. Three cases run here instead, with
``perfd.recommend`` (pure and stdlib-only, imported only for them, so perfctl's other commands
stay thin):

- ``--offline``: no daemon at all; ``--gpu NAME``, ``--gpus N``, ``--memory SIZE`` or
  ``--kv-budget SIZE`` describe the machine.
- ``--weights PATH``: perfd never opens a client's paths, so perfctl reads the file's headers
  itself, on live hardware from perfd's ``stats`` (or, with ``--offline``, planned hardware).
- ``--list-models`` and ``--list-gpus``: the built-in tables.

``--config-json PATH`` is read here too; perfd gets its contents, never the path.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import Any

from perfctl.errors import UsageError
from perfd.wire import protocol

ENGINES = ("vllm", "llamacpp", "llama.cpp", "ollama")
LIST_HINT = "perfctl recommend --list-models lists the models it knows, --list-gpus the GPUs"
OFFLINE_HINT = "or use --offline with --gpu NAME / --memory SIZE"
_SENT = ("quant", "kv_dtype", "context", "gpu", "gpus", "memory", "kv_budget", "engine")

DESCRIPTION = """\
How much context and how many concurrent sequences a model gets: the memory
budget, the context table, the recommended point, tips ranked by memory saved,
and ready-to-paste settings for vLLM, llama.cpp and Ollama.

perfd plans on this host's live GPUs and RAM, or on the hardware that
--gpu NAME, --gpus and --memory name. --offline asks no daemon: describe the
machine with --gpu NAME, --gpus N, --memory SIZE or --kv-budget SIZE.

--weights reads the file's headers here, in perfctl (perfd never opens a
client's files), and plans on the live hardware perfd's stats report (with
--offline: on the hardware named). --config-json is read here too; perfd gets
its contents."""

EPILOG = """\
exit codes: 0 an answer, also when the model does not fit (the output says
why, by how much, and the smallest change that fits); 1 perfd (or, with
--offline or --weights, perfctl) rejected the request: an unknown model, GPU
or format; 2 usage: bad flags, --offline without hardware, an unreadable
--config-json or --weights; 3 perfd not running (or use --offline); 4
permission denied"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The recommend command's MODEL and flags."""
    parser.add_argument(
        "model",
        nargs="?",
        metavar="MODEL",
        help="a built-in model or alias (--list-models); with --config-json, the name shown; "
        "with --weights, the architecture when the file does not say",
    )
    parser.add_argument(
        "--quant",
        metavar="Q",
        help="weight format: fp16, bf16, fp8, int8, int4, awq, gptq, Q4_K_M...",
    )
    parser.add_argument(
        "--kv-dtype", metavar="D", help="KV cache format: fp16, bf16, fp8, q8_0, q4_0"
    )
    parser.add_argument(
        "--context",
        type=_positive_int,
        metavar="N",
        help="plan for this context length (tokens); default: the recommended one",
    )
    parser.add_argument(
        "--gpu",
        metavar="IDX|NAME",
        help="live GPU index (0, or 0,1) or a GPU model to plan for (--list-gpus), or a size",
    )
    parser.add_argument(
        "--gpus", type=_count, metavar="N", help="plan for N such GPUs (0: a CPU-only host)"
    )
    parser.add_argument(
        "--memory", type=_size_text, metavar="SIZE", help="host RAM to plan for (64GiB, 512MiB)"
    )
    parser.add_argument(
        "--kv-budget",
        type=_size_text,
        metavar="SIZE",
        help="no hardware: how many tokens fit in this much KV cache (24GiB)",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        metavar="vllm|llamacpp|ollama",
        help="the engine to plan for (default vllm)",
    )
    parser.add_argument(
        "--config-json",
        metavar="PATH",
        help="a Hugging Face config.json (or its directory); perfctl sends its contents",
    )
    parser.add_argument(
        "--weights",
        metavar="PATH",
        help="a .safetensors file or directory, or a .gguf file: read and planned here, in "
        "perfctl, on perfd's live hardware (perfd never opens client files)",
    )
    parser.add_argument(
        "--utilization",
        type=_fraction,
        metavar="F",
        help="the share of GPU memory to use, in (0, 1] (default 0.9)",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="ask no daemon: plan here for the hardware --gpu NAME, --gpus, --memory or "
        "--kv-budget describe",
    )
    listing = parser.add_mutually_exclusive_group()
    listing.add_argument(
        "--list-models", action="store_true", help="list the built-in models (no daemon needed)"
    )
    listing.add_argument(
        "--list-gpus", action="store_true", help="list the built-in GPUs (no daemon needed)"
    )


def _whole(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more: {text}")
        return value

    return parse


_positive_int = _whole(1)
_count = _whole(0)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 1: {text}")
    return value


def _size_text(text: str) -> str:
    """A size, checked here and sent as written: perfd parses "24GiB", "80GB", bytes."""
    from perfd.wire.units import TextTooLong, parse_size  # only here: pure and stdlib-only

    try:
        value = parse_size(text)
    except TextTooLong as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 24GiB, 512MiB)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 bytes: {text!r}")
    return text


def is_local(args: argparse.Namespace) -> bool:
    """Whether perfctl computes the answer itself (it may still ask perfd for ``stats``)."""
    return bool(args.offline or args.weights or args.list_models or args.list_gpus)


def check(args: argparse.Namespace) -> None:
    """The checks argparse cannot make; UsageError says what to give instead."""
    if args.list_models or args.list_gpus:
        given = [name for name in ("model", "config_json", "weights") if getattr(args, name)]
        if given:
            flag = "--list-models" if args.list_models else "--list-gpus"
            raise UsageError(f"{flag} takes no MODEL, --config-json or --weights")
        return
    if args.model is None and args.config_json is None and args.weights is None:
        raise UsageError(
            "give a MODEL (perfctl recommend --list-models), --config-json PATH or --weights PATH"
        )
    if args.weights is not None and not os.path.exists(args.weights):
        raise UsageError(f"--weights {args.weights}: no such file or directory")


def read_config(path: str) -> dict[str, Any]:
    """A config.json's contents (a directory: its config.json); UsageError if unusable."""
    where = os.path.join(path, "config.json") if os.path.isdir(path) else path
    try:
        with open(where, encoding="utf-8") as file:
            data = json.load(file)
    except OSError as exc:
        raise UsageError(f"--config-json {where}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"--config-json {where}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config-json {where}: not a JSON object")
    return data


def display_name(args: argparse.Namespace, config: dict[str, Any]) -> str | None:
    """MODEL, else the config's own name, else its directory's (``.../llama-2-7b/config.json``)."""
    if args.model is not None:
        return str(args.model)
    named = config.get("_name_or_path")
    if isinstance(named, str) and named:
        return None  # perfd names it from _name_or_path itself
    path = os.path.abspath(args.config_json)
    if os.path.isdir(path):
        return os.path.basename(path.rstrip(os.sep)) or None
    stem, _ = os.path.splitext(os.path.basename(path))
    parent = os.path.basename(os.path.dirname(path))
    return (parent if stem == "config" and parent else stem) or None


def daemon_args(args: argparse.Namespace) -> dict[str, Any]:
    """The ``recommend`` command's arguments: the flags as given, sizes as the user wrote them,
    a --config-json's contents as ``config``."""
    request: dict[str, Any] = {}
    if args.config_json is not None:
        request["config"] = read_config(args.config_json)
        name = display_name(args, request["config"])
        if name is not None:
            request["model"] = name
    elif args.model is not None:
        request["model"] = args.model
    for key in _SENT:
        if getattr(args, key) is not None:
            request[key] = getattr(args, key)
    if args.utilization is not None:
        request["utilization"] = args.utilization
    return request


def compute(args: argparse.Namespace, stats: dict[str, Any] | None) -> dict[str, Any]:
    """The recommendation, computed here: on ``stats``' live hardware (perfd's snapshot), or
    on the hardware the flags name when ``stats`` is None.

    UsageError when the hardware is not described and for an unreadable --weights;
    ``InvalidArgs`` for the rest (an unknown model, GPU or format, a --gpu index that is not
    live), as perfd answers them, so both exit 1.
    """
    from perfctl.errors import InvalidArgs
    from perfd import recommend as rec

    config = read_config(args.config_json) if args.config_json is not None else None
    try:
        request = rec.build_request(  # the one builder perfd's command uses too
            model=display_name(args, config) if config is not None else args.model,
            config=config,
            weights_path=args.weights,
            quant=args.quant,
            kv_dtype=args.kv_dtype,
            context=args.context,
            gpu=args.gpu,
            gpus=args.gpus,
            memory=args.memory,
            kv_budget=args.kv_budget,
            engine=args.engine or "vllm",
            utilization=0.9 if args.utilization is None else args.utilization,
        )
        live = None if stats is None else rec.hardware_from_stats(stats)
        try:
            hardware = rec.plan_hardware(request, live)
        except rec.RecommendError as exc:
            if _undescribed(exc):
                raise UsageError(str(exc)) from None
            raise  # a GPU that is not known or not live: rejected, as perfd rejects it
        return rec.recommend(request, hardware)
    except rec.RecommendError as exc:
        if exc.option in ("weights_path", "config_json"):
            raise UsageError(str(exc)) from None
        raise InvalidArgs(protocol.INVALID_ARGS, str(exc)) from None
    except rec.UNUSABLE as exc:
        raise InvalidArgs(protocol.INVALID_ARGS, str(rec.unusable(exc))) from None


def _undescribed(exc: Exception) -> bool:
    """plan_hardware's "no hardware to plan for" and "--gpus N: which GPU?": flags missing."""
    option, value = getattr(exc, "option", None), getattr(exc, "value", None)
    return (option == "gpu" and value is None) or (option == "gpus" and "which GPU?" in str(exc))


def listing(args: argparse.Namespace) -> dict[str, Any]:
    """``{"models": [...]}`` or ``{"gpus": [...]}``: the built-in tables."""
    from perfd import recommend as rec

    if args.list_models:
        return {"models": rec.list_models()}
    return {"gpus": rec.list_gpus()}

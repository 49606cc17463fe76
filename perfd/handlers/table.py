"""One function per command, each returning plain data (docs/protocol.md shows the replies)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from perfd import __version__, config
from perfd.errors import CommandError
from perfd.handlers.cache_errors import wire_errors
from perfd.loaders.base import LoaderError, ModelSpec
from perfd.monitor.sampler import Monitor
from perfd.server.access import user_name
from perfd.server.commands import Command, WithFrames
from perfd.wire import arrays, protocol

if TYPE_CHECKING:  # the cache (ctypes, statistics, loaders) is imported when first used
    from perfd.cache.core import ModelCache
    from perfd.net.provider import Providers  # requests: imported when a provider is first used

_JSON = (dict, list, str, int, float, bool, type(None))
_DEVICE = re.compile(r"cpu|cuda:[0-9]+")  # fullmatch: "$" would let "cpu\n" through
_SIZE_HINT_MAX = 1 << 50  # what [models.NAME] size_hint allows (perfd.config.ModelConfig)


class DaemonView(Protocol):
    """What the handlers may see of the daemon."""

    started_at: float  # time.time() at start
    started_monotonic: float
    runtime_dir: Path
    loaded: config.Loaded
    monitor: Monitor | None

    @property
    def cache(self) -> ModelCache: ...

    @property
    def cache_started(self) -> bool: ...

    @property
    def providers(self) -> Providers: ...

    @property
    def providers_started(self) -> bool: ...

    def components(self) -> dict[str, str]: ...

    def request_counts(self) -> dict[str, Any]: ...

    def reload(self) -> dict[str, Any]: ...


def build(daemon: DaemonView) -> dict[str, Command]:
    """The command table for a daemon."""

    def ping(_: dict[str, Any]) -> dict[str, Any]:
        return {"pong": True, "version": __version__, "pid": os.getpid()}

    def status(_: dict[str, Any]) -> dict[str, Any]:
        loaded = daemon.loaded
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uid": os.geteuid(),
            "user": user_name(os.geteuid()),
            "started_at": daemon.started_at,
            "uptime_s": round(time.monotonic() - daemon.started_monotonic, 3),
            "config_path": str(loaded.path),
            "config_file_present": loaded.exists,
            "runtime_dir": str(daemon.runtime_dir),
            "components": daemon.components(),
            "requests": daemon.request_counts(),
        }

    def show_config(_: dict[str, Any]) -> dict[str, Any]:
        loaded = daemon.loaded
        return {
            "path": str(loaded.path),
            "file_present": loaded.exists,
            "config": config.to_dict(loaded.config, redact=True),
        }

    def reload(_: dict[str, Any]) -> dict[str, Any]:
        return daemon.reload()

    def running_monitor() -> Monitor:
        if daemon.monitor is None:
            raise CommandError(protocol.BUSY, "the monitor has not started yet; retry shortly")
        return daemon.monitor

    def stats(_: dict[str, Any]) -> dict[str, Any]:
        snapshot = running_monitor().snapshot()
        if snapshot is None:
            raise CommandError(protocol.BUSY, "no sample yet; retry shortly")
        if daemon.cache_started:
            cache: dict[str, Any] = {"started": True, **daemon.cache.stats()}
        else:
            cache = {"started": False, "configured": sorted(daemon.loaded.config.models)}
        result = {**snapshot, "cache": cache}
        counts = provider_counts(daemon.providers.stats()) if daemon.providers_started else {}
        if counts:  # only once a provider has been used
            result["providers"] = counts
        return result

    def alerts(_: dict[str, Any]) -> dict[str, Any]:
        return running_monitor().alerts()

    commands = [
        Command("ping", ping),
        Command("status", status),
        Command("config", show_config),
        Command("reload", reload, admin=True),
        Command("stats", stats),
        Command("alerts", alerts),
        *cache_commands(daemon),
        recommend_command(daemon),
        providers_command(daemon),
    ]
    return {c.name: c for c in commands}


def providers_command(daemon: DaemonView) -> Command:
    """providers: each [providers.NAME]'s base URL, where its API key comes from and whether it
    is set in perfd's environment (never the key), and once it has been ``used``, its client's
    counters (perfd.net.provider.Provider.stats). Nothing here builds a provider."""

    def providers(_: dict[str, Any]) -> dict[str, Any]:
        from perfd.net.provider import safe_url  # no requests: that comes with a built provider

        configured = daemon.loaded.config.providers
        used = daemon.providers.stats() if daemon.providers_started else {}
        out: dict[str, Any] = {}
        for name in sorted(configured):
            cfg = configured[name]
            out[name] = {
                "base_url": safe_url(cfg.base_url),
                **_key_facts(cfg, os.environ),
                "used": False,
                **used.get(name, {}),
            }
        return {"providers": out}

    return Command("providers", providers)


def provider_counts(stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ``providers`` section of ``stats``: the counters of the providers used so far."""
    return {
        name: {k: v for k, v in facts.items() if k not in ("used", "base_url")}
        for name, facts in stats.items()
        if facts.get("used")
    }


def _key_facts(cfg: config.ProviderConfig, environ: Mapping[str, str]) -> dict[str, Any]:
    """Where a provider's API key comes from and whether it is there: never the key itself."""
    if cfg.api_key_env:
        present = bool(environ.get(cfg.api_key_env, "").strip())
        return {"key_from": f"env {cfg.api_key_env}", "key_set": present}
    if cfg.api_key_file:
        try:
            present = Path(cfg.api_key_file).stat().st_size > 0
            present = present and os.access(cfg.api_key_file, os.R_OK)
        except OSError:
            present = False
        return {"key_from": f"file {cfg.api_key_file}", "key_set": present}
    return {"key_from": None, "key_set": False}


def recommend_command(daemon: DaemonView) -> Command:
    """recommend: batch and context sizing for a model on this host's live hardware (or on
    hardware named in the args). Files are never opened here: perfctl sends a config.json's
    contents as ``config`` (any local user may reach the read-only socket)."""

    def recommend(args: dict[str, Any]) -> dict[str, Any]:
        from perfd import recommend as rec  # pure, stdlib-only; loaded on first use

        try:
            request = rec.Request(
                model=args.get("model"),
                config=args.get("config"),
                quant=args.get("quant"),
                kv_dtype=args.get("kv_dtype"),
                context=args.get("context"),
                gpu=None if args.get("gpu") is None else str(args["gpu"]),
                gpus=args.get("gpus"),
                memory=_size_arg(rec, "memory", args.get("memory")),
                kv_budget=_size_arg(rec, "kv_budget", args.get("kv_budget")),
                engine=args.get("engine", "vllm"),
                utilization=args.get("utilization", 0.9),
            )
            rec.check_limits(request)  # every field bounded before anything reads it
            if request.model is None and request.config is None:
                raise rec.RecommendError("name a model (perfctl recommend --list-models)")
            monitor = daemon.monitor
            snapshot = monitor.snapshot() if monitor is not None else None
            live = rec.hardware_from_snapshot(snapshot) if snapshot is not None else None
            return rec.recommend(request, rec.plan_hardware(request, live))
        except rec.RecommendError as exc:
            raise CommandError(protocol.INVALID_ARGS, str(exc)) from None
        except (ArithmeticError, TypeError, ValueError, KeyError, AttributeError) as exc:
            # A config whose fields make no sense (zero heads, wrong types): the caller's
            # input, not a perfd bug; anyone on the read-only socket can send one.
            raise CommandError(
                protocol.INVALID_ARGS,
                f"this model description cannot be used: {type(exc).__name__}: {exc}",
            ) from None

    return Command(
        "recommend",
        recommend,
        slow=True,
        args={
            "model": (str,),
            "config": (dict,),
            "quant": (str,),
            "kv_dtype": (str,),
            "context": (int,),
            "gpu": (str, int),
            "gpus": (int,),
            "memory": (int, str),
            "kv_budget": (int, str),
            "engine": (str,),
            "utilization": (float, int),
        },
    )


def _size_arg(rec: Any, option: str, value: int | str | None) -> int | None:
    """Bytes from an int or a size string ("24GiB"); RecommendError for anything else, with
    no more of the text than the limit allows (perfd.wire.units.MAX_TEXT)."""
    if value is None or isinstance(value, int):
        return value
    try:
        return int(rec.parse_size(value))
    except ValueError as exc:
        if len(value) > rec.MAX_SIZE_TEXT:
            raise rec.RecommendError(f"{option}: {exc}", option=option) from None
        raise rec.RecommendError(
            f"{option}: not a size: {value!r} (use bytes or 24GiB, 512MiB, 80GB)", option=option
        ) from None


def _kept(models: list[dict[str, Any]], evicted: list[str]) -> list[dict[str, str]]:
    """`evict --all` / `--idle`: the loaded models it left, pinned or in use, and why."""
    kept = []
    for model in models:
        if model["name"] in evicted or model["state"] != "ready":
            continue
        if model["pinned"]:
            kept.append({"model": model["name"], "why": "pinned"})
        elif model["leases"]:
            leases = model["leases"]
            why = f"in use by {leases} request{'s' if leases != 1 else ''}"
            kept.append({"model": model["name"], "why": why})
    return kept


def _runtime_spec(args: dict[str, Any]) -> ModelSpec | None:
    """The model a ``load`` names at run time (any of loader, target, path, device, options,
    size_hint given), checked; None when it names a model already defined."""
    if not {"loader", "target", "path", "device", "options", "size_hint"} & set(args):
        return None
    device = args.get("device", "cpu")
    if not _DEVICE.fullmatch(device):
        raise CommandError(
            protocol.INVALID_ARGS, f'device must be "cpu" or "cuda:N", not {device!r}'
        )
    size_hint = args.get("size_hint")
    if size_hint is not None and not 0 <= size_hint <= _SIZE_HINT_MAX:
        raise CommandError(
            protocol.INVALID_ARGS,
            f"size_hint must be bytes from 0 (unknown) to {_SIZE_HINT_MAX}, not {size_hint}",
        )
    return ModelSpec(
        name=args["model"],
        loader=args.get("loader", "python"),
        target=args.get("target", ""),
        path=args.get("path", ""),
        device=device,
        options=args.get("options") or {},
        size_hint=size_hint or None,
    )


def _infer_reply(name: str, outputs: Any, *, as_frames: bool) -> Any:
    """infer's result: outputs as JSON, or as raw frames when the request sent frames."""
    try:
        if as_frames:
            value, meta, frames = arrays.to_frames(outputs)
            return WithFrames({"model": name, "outputs": value, "arrays": meta}, frames)
        return {"model": name, "outputs": arrays.to_json(outputs)}
    except RecursionError:  # an echo of deeply nested inputs, or a model's own structure
        raise CommandError(
            protocol.INFER_FAILED, f"'{name}': its outputs are nested too deeply to send"
        ) from None
    except (TypeError, ValueError) as exc:  # numpy values with no list form (datetime64)
        raise CommandError(
            protocol.INFER_FAILED,
            f"'{name}': its outputs cannot be sent: {type(exc).__name__}: {exc}",
        ) from None


def cache_commands(daemon: DaemonView) -> list[Command]:
    """ps, load, evict, pin, unpin, infer."""

    def ps(_: dict[str, Any]) -> dict[str, Any]:
        models = daemon.cache.ps() if daemon.cache_started else []
        return {"models": models, "configured": sorted(daemon.loaded.config.models)}

    @wire_errors  # the cache's exceptions as wire codes (perfd.handlers.cache_errors)
    def load(args: dict[str, Any]) -> dict[str, Any]:
        spec = _runtime_spec(args)
        if spec is not None:
            daemon.cache.define(spec)
        return daemon.cache.load(args["model"])

    @wire_errors
    def evict(args: dict[str, Any]) -> dict[str, Any]:
        chosen = [k for k in ("model", "all", "idle") if args.get(k)]
        if len(chosen) != 1:
            raise CommandError(
                protocol.INVALID_ARGS, "give exactly one of 'model', 'all': true or 'idle': true"
            )
        if not daemon.cache_started:
            return {"evicted": [], "dry_run": bool(args.get("dry_run"))}
        cache = daemon.cache
        names = (
            [args["model"]] if "model" in chosen else cache.evictable(idle_only="idle" in chosen)
        )
        if args.get("dry_run"):
            if "model" in chosen and args["model"] not in cache.loaded_names():
                cache.spec(args["model"])  # not_found for an unknown name
                raise CommandError(protocol.NOT_FOUND, f"'{args['model']}' is not loaded")
            result: dict[str, Any] = {"evicted": names, "dry_run": True}
        elif "model" in chosen:
            records = [cache.evict(args["model"])]
            return {"evicted": [args["model"]], "records": records, "dry_run": False}
        else:  # --all / --idle: a model that got a lease meanwhile simply stays
            records = cache.evict_many(names)
            evicted = [r["model"] for r in records]
            result = {"evicted": evicted, "records": records, "dry_run": False}
        if "model" not in chosen:
            result["skipped"] = _kept(cache.ps(), result["evicted"])
        return result

    @wire_errors
    def pin(args: dict[str, Any]) -> dict[str, Any]:
        return daemon.cache.pin(args["model"], True)

    @wire_errors
    def unpin(args: dict[str, Any]) -> dict[str, Any]:
        return daemon.cache.pin(args["model"], False)

    @wire_errors
    def infer(args: dict[str, Any], frames: list[bytes]) -> Any:
        try:
            inputs = arrays.decode(args.get("inputs"), args.get("arrays"), frames)
        except ImportError:
            raise CommandError(
                protocol.INVALID_ARGS,
                "array frames need numpy in perfd's environment (pip install numpy); "
                "send JSON inputs instead",
            ) from None
        except RecursionError:
            raise CommandError(protocol.INVALID_ARGS, "'inputs' is nested too deeply") from None
        name = args["model"]
        with daemon.cache.lease(name) as lease:
            try:
                outputs = lease.infer(inputs, args.get("options") or {})
            except Exception as exc:  # the model's own failure, whatever the loader
                message = (
                    str(exc) if isinstance(exc, LoaderError) else f"{type(exc).__name__}: {exc}"
                )
                raise CommandError(protocol.INFER_FAILED, f"'{name}': {message}") from None
        return _infer_reply(name, outputs, as_frames=bool(frames))

    model = {"model": (str,)}
    need_model = frozenset({"model"})

    def loading_time() -> float:
        """load and infer may load a model: give them load_timeout, plus time to run."""
        cfg = daemon.loaded.config
        return max(cfg.server.command_timeout, cfg.cache.load_timeout + 30)

    return [
        Command("ps", ps),
        Command(
            "load",
            load,
            admin=True,
            slow=True,
            timeout=loading_time,
            args={
                **model,
                "loader": (str,),
                "target": (str,),
                "path": (str,),
                "device": (str,),
                "options": (dict,),
                "size_hint": (int,),
            },
            required=need_model,
        ),
        Command(
            "evict",
            evict,
            admin=True,
            slow=True,
            args={**model, "all": (bool,), "idle": (bool,), "dry_run": (bool,)},
        ),
        Command("pin", pin, admin=True, args=model, required=need_model),
        Command("unpin", unpin, admin=True, args=model, required=need_model),
        Command(
            "infer",
            infer,
            admin=True,
            slow=True,
            frames=True,
            timeout=loading_time,
            args={**model, "inputs": _JSON, "options": (dict,), "arrays": (list,)},
            required=need_model,
            audit="debug",  # runs a model, changes nothing: one log line per request is noise
        ),
    ]

"""ps, load, evict, pin, unpin and infer: the model cache's commands.

The cache's own errors (unknown model, no capacity, pinned...) come up unchanged and are
mapped to wire codes in perfd.handlers.errors; the errors here are about the arguments and
about what a model's outputs can be sent as.
"""

from __future__ import annotations

from typing import Any

from perfd import config
from perfd.errors import CommandError, ConfigError
from perfd.handlers.view import CacheView
from perfd.loaders.base import LoaderError, ModelSpec
from perfd.server.commands import WithFrames
from perfd.wire import arrays, protocol

RUNTIME_FIELDS = ("loader", "target", "path", "device", "options", "size_hint")


def ps(view: CacheView, _args: dict[str, Any]) -> dict[str, Any]:
    models = view.cache.ps() if view.cache_started else []
    runtime = view.cache.runtime_overhead() if view.cache_started else []
    return {"models": models, "configured": sorted(view.loaded.config.models), "runtime": runtime}


def load(view: CacheView, args: dict[str, Any]) -> dict[str, Any]:
    spec = runtime_spec(args)
    if spec is not None:
        view.cache.define(spec)
    return view.cache.load(args["model"])


def runtime_spec(args: dict[str, Any]) -> ModelSpec | None:
    """The model a ``load`` names at run time (any of RUNTIME_FIELDS given), its fields
    checked by the code that checks a [models.NAME] table (perfd.config.check_model_fields);
    None when it names a model already defined."""
    given = {key: args[key] for key in RUNTIME_FIELDS if key in args}
    if not given:
        return None
    try:
        fields = config.check_model_fields(given)
    except ConfigError as exc:
        allowed = f"; allowed: {exc.allowed}" if exc.allowed else ""
        raise CommandError(protocol.INVALID_ARGS, f"{exc.key}: {exc.problem}{allowed}") from None
    return ModelSpec(
        name=args["model"],
        loader=fields.get("loader", "python"),
        target=fields.get("target", ""),
        path=fields.get("path", ""),
        device=fields.get("device", "cpu"),
        options=fields.get("options") or {},
        size_hint=fields.get("size_hint") or None,
    )


def evict(view: CacheView, args: dict[str, Any]) -> dict[str, Any]:
    chosen = [k for k in ("model", "all", "idle") if args.get(k)]
    if len(chosen) != 1:
        raise CommandError(
            protocol.INVALID_ARGS, "give exactly one of 'model', 'all': true or 'idle': true"
        )
    if not view.cache_started:
        return {"evicted": [], "dry_run": bool(args.get("dry_run"))}
    cache = view.cache
    names = [args["model"]] if "model" in chosen else cache.evictable(idle_only="idle" in chosen)
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
        result["skipped"] = kept(cache.ps(), result["evicted"])
    return result


def kept(models: list[dict[str, Any]], evicted: list[str]) -> list[dict[str, str]]:
    """`evict --all` / `--idle`: the loaded models it left, pinned or in use, and why."""
    out = []
    for model in models:
        if model["name"] in evicted or model["state"] != "ready":
            continue
        if model["pinned"]:
            out.append({"model": model["name"], "why": "pinned"})
        elif model["leases"]:
            leases = model["leases"]
            why = f"in use by {leases} request{'s' if leases != 1 else ''}"
            out.append({"model": model["name"], "why": why})
    return out


def pin(view: CacheView, args: dict[str, Any]) -> dict[str, Any]:
    return view.cache.pin(args["model"], True)


def unpin(view: CacheView, args: dict[str, Any]) -> dict[str, Any]:
    return view.cache.pin(args["model"], False)


def infer(view: CacheView, args: dict[str, Any], frames: list[bytes]) -> Any:
    try:
        inputs = arrays.decode(args.get("inputs"), args.get("arrays"), frames)
    except arrays.ArrayError as exc:
        raise CommandError(protocol.INVALID_ARGS, str(exc)) from None
    except ImportError:
        raise CommandError(
            protocol.INVALID_ARGS,
            "array frames need numpy in perfd's environment (pip install numpy); "
            "send JSON inputs instead",
        ) from None
    except RecursionError:
        raise CommandError(protocol.INVALID_ARGS, "'inputs' is nested too deeply") from None
    name = args["model"]
    with view.cache.lease(name) as lease:
        try:
            outputs = lease.infer(inputs, args.get("options") or {})
        except Exception as exc:  # the model's own failure, whatever the loader
            message = str(exc) if isinstance(exc, LoaderError) else f"{type(exc).__name__}: {exc}"
            raise CommandError(protocol.INFER_FAILED, f"'{name}': {message}") from None
    return infer_reply(name, outputs, as_frames=bool(frames))


def infer_reply(name: str, outputs: Any, *, as_frames: bool) -> Any:
    """infer's result: outputs as JSON, or as raw frames when the request sent frames."""
    try:
        if as_frames:
            value, meta, out = arrays.to_frames(outputs)
            return WithFrames({"model": name, "outputs": value, "arrays": meta}, out)
        return {"model": name, "outputs": arrays.to_json(outputs)}
    except arrays.ArrayError as exc:  # an array of Python objects
        raise CommandError(protocol.INFER_FAILED, f"'{name}': {exc}") from None
    except RecursionError:  # an echo of deeply nested inputs, or a model's own structure
        raise CommandError(
            protocol.INFER_FAILED, f"'{name}': its outputs are nested too deeply to send"
        ) from None
    except (TypeError, ValueError) as exc:  # numpy values with no list form (datetime64)
        raise CommandError(
            protocol.INFER_FAILED,
            f"'{name}': its outputs cannot be sent: {type(exc).__name__}: {exc}",
        ) from None

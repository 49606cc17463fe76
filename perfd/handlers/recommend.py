"""recommend: batch and context sizing for a model on this host's live hardware (or on
hardware named in the args). Files are never opened here: perfctl sends a config.json's
contents as ``config`` (any local user may reach the read-only socket)."""

from __future__ import annotations

from typing import Any

from perfd.handlers.view import MonitorView


def recommend(view: MonitorView, args: dict[str, Any]) -> dict[str, Any]:
    """RecommendError (invalid_args, perfd.handlers.errors) for a bad request or a model
    description that fails the math; perfctl --offline builds the same request."""
    from perfd import recommend as rec  # pure, stdlib-only; loaded on first use

    try:
        request = rec.build_request(
            model=args.get("model"),
            config=args.get("config"),
            quant=args.get("quant"),
            kv_dtype=args.get("kv_dtype"),
            context=args.get("context"),
            gpu=args.get("gpu"),
            gpus=args.get("gpus"),
            memory=args.get("memory"),
            kv_budget=args.get("kv_budget"),
            engine=args.get("engine", "vllm"),
            utilization=args.get("utilization", 0.9),
        )
        monitor = view.monitor
        snapshot = monitor.snapshot() if monitor is not None else None
        live = rec.hardware_from_snapshot(snapshot) if snapshot is not None else None
        return rec.recommend(request, rec.plan_hardware(request, live))
    except rec.RecommendError:
        raise
    except rec.UNUSABLE as exc:
        raise rec.unusable(exc) from None

"""recommend: batch and context sizing for a model on this host's live hardware (or on
hardware named in the args). Files are never opened here: perfctl sends a config.json's
contents as ``config`` (any local user may reach the read-only socket)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from perfd.handlers.view import MonitorView

if TYPE_CHECKING:
    from perfd.monitor.snapshot import Snapshot
    from perfd.recommend import Hardware


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
        live = hardware_from_snapshot(snapshot) if snapshot is not None else None
        return rec.recommend(request, rec.plan_hardware(request, live))
    except rec.RecommendError:
        raise
    except rec.UNUSABLE as exc:
        raise rec.unusable(exc) from None


def hardware_from_snapshot(snapshot: Snapshot) -> Hardware:
    """The live hardware, as values for the recommender, from the monitor's typed snapshot
    (perfctl reads the same figures from a ``stats`` reply: recommend.hardware_from_stats)."""
    from perfd.recommend.hardware import Gpu, Hardware

    host = snapshot.host
    gpus: list[Gpu] = []
    for gpu in snapshot.gpus:
        if not gpu.ok:
            continue
        capability = gpu.compute_capability
        if gpu.mig_enabled and gpu.mig:
            for inst in gpu.mig:
                free = max(0, inst.total_bytes - inst.used_bytes)
                name = f"{gpu.name} MIG {inst.index}"
                gpus.append(Gpu(gpu.index, name, inst.total_bytes, free, capability, True))
            continue
        gpus.append(
            Gpu(
                index=gpu.index,
                name=gpu.name or "GPU",
                total_bytes=gpu.memory.total_bytes,
                free_bytes=gpu.memory.free_bytes,
                compute_capability=capability,
            )
        )
    return Hardware(
        gpus=tuple(gpus),
        ram_total_bytes=host.memory.total_bytes,
        ram_available_bytes=host.memory.available_bytes,
        cgroup_limit_bytes=None if host.cgroup is None else host.cgroup.limit_bytes,
        cpu_count=host.cpu_count or 1,
        source="live",
    )

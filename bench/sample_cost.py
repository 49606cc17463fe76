"""Benchmark 6: what one monitor sample costs, in-process, on a busy host and a small one.

A real ``perfd.monitor.sampler.Monitor`` with a real ``perfd.probes.host.HostProbe(top_n=5)``
and a real ``perfd.probes.nvml.GpuProbe`` over the fake NVML (``tests.fakenvml.FakeNvml``), in
two scenarios:

    A  8 fake GPUs, 500 extra idle processes on the host
    B  1 fake GPU,   50 extra idle processes on the host

Each fake GPU lists ``GPU_PROCESSES`` compute processes, real pids from the pool of idle
processes (``bench.sleepers``), so the probe's name look-ups hit /proc as they would. The pool
grows and shrinks between blocks of rounds (A B B A A B...), and each block starts with an
untimed round, so both scenarios see the same drift of the machine.

Each round times, in a shuffled order, with perf_counter (wall) and process_time (CPU, all
threads of this process, the NVML thread included): (i) ``sample_once()`` of a monitor that
does not scan the processes (processes_interval "1d", after its first sample), ``sample_once()``
of one that scans on every sample (processes_interval "50ms"), ``HostProbe.sample(False)``,
``HostProbe.sample(True)``, (iii) ``GpuProbe.sample()`` alone and, in full runs, (iv)
``sample_once()`` of a monitor at interval = "1s". (ii), the scan alone, is the per-round
difference sample(True) - sample(False).

The monitors run on clocks the bench moves by their interval per sample (5 s; 1 s for (iv))
and start with a full trend history (history / interval samples, taken before timing, the
first and last minute of them timed), as in a perfd that has run for an hour or more.
"""

from __future__ import annotations

import collections
import contextlib
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.common import (
    PYTHON,
    ROOT,
    Check,
    helper_env,
    median,
    percentile,
    print_table,
    stop_process,
    wait_exit,
)

GPU_PROCESSES = 3  # compute processes listed per fake GPU
# The timed lines (calls), by key.
SAMPLE, SAMPLE_SCAN, SAMPLE_1S = "sample_once", "sample_once_scan", "sample_once_1s"
HOST, HOST_SCAN, GPU = "host_false", "host_true", "gpu"
SCAN = "scan"  # derived: HOST_SCAN - HOST, per round


@dataclass(frozen=True)
class Options:
    samples: int = 200  # timed rounds per scenario
    blocks: int = 5  # blocks per scenario (the pool is resized between blocks)
    one_second: bool = True  # also time a monitor at interval = "1s" (its fill takes ~20 s)


@dataclass(frozen=True)
class Scenario:
    name: str
    gpus: int
    extra: int  # idle processes added to the host


SCENARIOS = (Scenario("A", gpus=8, extra=500), Scenario("B", gpus=1, extra=50))


class StepClock:
    """A monotonic clock that moves only when told: the monitor's ``now``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1.7e9 + self.now


@dataclass
class Clocked:
    """A monitor, the clock it runs on and the step per sample; how the history fill went."""

    monitor: Any  # perfd.monitor.sampler.Monitor
    clock: StepClock
    step: float
    fill_first: float = 0.0  # median seconds of sample_once() over the fill's first minute
    fill_last: float = 0.0  # ... and over its last minute (an hour of history held)


@dataclass
class Subject:
    """One scenario's probes and monitors, and its timings (seconds per call, by line)."""

    scenario: Scenario
    host: Any  # probes.HostProbe
    gpu: Any  # probes.GpuProbe
    monitors: dict[str, Clocked]  # SAMPLE (no scan), SAMPLE_SCAN, SAMPLE_1S (full runs)
    wall: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    cpu: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    process_counts: list[int] = field(default_factory=list)
    last_scan_at: str | None = None

    def calls(self) -> dict[str, Callable[[], object]]:
        calls: dict[str, Callable[[], object]] = {
            name: m.monitor.sample_once for name, m in self.monitors.items()
        }
        calls[HOST] = lambda: self.host.sample(False)
        calls[HOST_SCAN] = lambda: self.host.sample(True)
        calls[GPU] = self.gpu.sample
        return calls

    def round(self, rng: random.Random, *, timed: bool) -> None:
        for m in self.monitors.values():
            m.clock.now += m.step
        calls = list(self.calls().items())
        rng.shuffle(calls)
        for name, call in calls:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            call()
            wall1, cpu1 = time.perf_counter(), time.process_time()
            if timed:
                self.wall[name].append(wall1 - wall0)
                self.cpu[name].append(cpu1 - cpu0)
        self._check()

    def _check(self) -> None:
        """The scan monitor scanned, and every fake GPU answered with named processes."""
        snap = self.monitors[SAMPLE_SCAN].monitor.snapshot()
        assert snap is not None, "sampled above"
        at = snap.host.top_processes_at
        if at == self.last_scan_at or not snap.host.top_processes:
            raise RuntimeError(
                f"scenario {self.scenario.name}: the forced process scan did not run"
            )
        self.last_scan_at = at
        latest = self.monitors[SAMPLE].monitor.snapshot()
        assert latest is not None, "sampled above"
        gpus = latest.gpus
        if len(gpus) != self.scenario.gpus or any(
            not g.ok or any(p.name is None for p in g.processes) for g in gpus
        ):
            raise RuntimeError(f"scenario {self.scenario.name}: unexpected GPU reading {gpus}")


class Pool:
    """The ``bench.sleepers`` process: idle processes on demand."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "bench.sleepers"],
            env=helper_env(),
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def resize(self, count: int) -> list[int]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(f"{count}\n")
        self.proc.stdin.flush()
        pids = [int(p) for p in self.proc.stdout.readline().split()]
        if len(pids) != count:
            raise RuntimeError(f"the process pool has {len(pids)} processes, not {count}")
        return pids

    def close(self) -> None:
        """EOF: the pool kills and reaps its children and exits; else SIGTERM, SIGKILL."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):  # a broken pipe: the pool is gone already
                self.proc.stdin.close()
        code = wait_exit(self.proc, 15.0)  # at EOF the pool ends its children, then exits
        if code is None:
            code = stop_process(self.proc, timeout=15.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if code not in (0, -2, -15):  # done, or ended by Ctrl-C or SIGTERM
            print(f"warning: the process pool exited {code}", file=sys.stderr)


def _build(scenario: Scenario, gpu_pids: list[int], *, one_second: bool) -> Subject:
    if str(ROOT) not in sys.path:  # tests.fakenvml lives in the repository, beside bench
        sys.path.insert(0, str(ROOT))
    from perfd import config
    from perfd.monitor.sampler import Monitor
    from perfd.probes import host as host_probes
    from perfd.probes import nvml as nvml_probes
    from tests.fakenvml import FakeGpu, FakeNvml, GiB

    gpus = [
        FakeGpu(
            used=40 * GiB,
            compute_processes=[
                (pid, 12 * GiB)
                for pid in gpu_pids[index * GPU_PROCESSES : (index + 1) * GPU_PROCESSES]
            ],
        )
        for index in range(scenario.gpus)
    ]
    host = host_probes.HostProbe(top_n=5)
    gpu = nvml_probes.GpuProbe(nvml=FakeNvml(gpus))
    # processes_interval: "1d" is the largest allowed (no scan after the first sample), "50ms"
    # the smallest (a scan on every sample, as the clock moves 5 s per sample).
    quiet = config.parse({"monitor": {"processes_interval": "1d"}})
    scan = config.parse({"monitor": {"processes_interval": "50ms"}})
    fast = config.parse({"monitor": {"interval": "1s", "processes_interval": "1d"}})
    plan = {SAMPLE: quiet, SAMPLE_SCAN: quiet}  # the scan monitor is switched after its fill
    if one_second:
        plan[SAMPLE_1S] = fast
    monitors = {}
    for name, cfg in plan.items():
        clock = StepClock()
        monitor = Monitor(
            cfg.monitor, cfg.alerts, host_probe=host, gpu_probe=gpu, clock=clock, wall=clock.wall
        )
        monitors[name] = _fill(Clocked(monitor, clock, cfg.monitor.interval))
    monitors[SAMPLE_SCAN].monitor.reconfigure(scan.monitor, scan.alerts)
    return Subject(scenario, host, gpu, monitors)


def _fill(m: Clocked) -> Clocked:
    """Sample until the trend history is full (history / interval points per series), as in a
    perfd that has run for an hour; time the first and the last minute of it."""
    history = m.monitor.cfg.history
    count = int(history / m.step) + 2
    minute = max(3, int(60 / m.step))
    times = []
    for _ in range(count):
        m.clock.now += m.step
        started = time.perf_counter()
        m.monitor.sample_once()
        times.append(time.perf_counter() - started)
    m.fill_first = median(times[1 : minute + 1])  # the first sample scans the processes
    m.fill_last = median(times[-minute:])
    return m


def _p50(values: list[float]) -> float:
    return 1e6 * median(values)


def _p90(values: list[float]) -> float:
    return 1e6 * percentile(values, 90)


def run(opts: Options) -> tuple[dict[str, Any], list[Check]]:
    import psutil

    rng = random.Random(6)
    blocks = max(1, opts.blocks)
    sizes = [opts.samples // blocks + (i < opts.samples % blocks) for i in range(blocks)]
    pool = Pool()
    subjects: list[Subject] = []
    try:
        pids = pool.resize(max(s.extra for s in SCENARIOS))
        if len(pids) < max(s.gpus for s in SCENARIOS) * GPU_PROCESSES:
            raise RuntimeError("not enough idle processes for the fake GPUs' process lists")
        # The oldest pids outlive every resize: they are the GPU processes of both scenarios.
        subjects = [_build(s, pids, one_second=opts.one_second) for s in SCENARIOS]
        for number, size in enumerate(sizes):
            order = subjects if number % 2 == 0 else subjects[::-1]
            for subject in order:
                pool.resize(subject.scenario.extra)
                subject.round(rng, timed=False)  # psutil meets the new pids untimed
                subject.process_counts.append(len(psutil.pids()))
                for _ in range(size):
                    subject.round(rng, timed=True)
    finally:
        for subject in subjects:
            subject.gpu.close()
        pool.close()

    return _report(subjects, opts)


def _report(subjects: list[Subject], opts: Options) -> tuple[dict[str, Any], list[Check]]:
    stats: dict[str, dict[str, dict[str, float]]] = {}
    for s in subjects:
        lines = {name: (s.wall[name], s.cpu[name]) for name in s.wall}
        lines[SCAN] = (
            [t - f for t, f in zip(s.wall[HOST_SCAN], s.wall[HOST], strict=True)],
            [t - f for t, f in zip(s.cpu[HOST_SCAN], s.cpu[HOST], strict=True)],
        )
        stats[s.scenario.name] = {
            name: {"p50_us": _p50(w), "p90_us": _p90(w), "cpu_p50_us": _p50(c)}
            for name, (w, c) in lines.items()
        }
    a, b = subjects
    sa, sb = stats[a.scenario.name], stats[b.scenario.name]
    procs = {s.scenario.name: int(median(s.process_counts)) for s in subjects}

    labels = {
        SAMPLE: "(i) sample_once(), no process scan",
        SCAN: "(ii) process scan alone: sample(True) - sample(False)",
        GPU: "(iii) GpuProbe.sample() alone",
        SAMPLE_1S: '(iv) sample_once(), interval = "1s", no scan',
        SAMPLE_SCAN: "sample_once() with the scan (forced)",
        HOST: "HostProbe.sample(False)",
        HOST_SCAN: "HostProbe.sample(True)",
    }
    rows = []
    for key, label in labels.items():
        if key not in sa:  # (iv) is left out of --quick runs
            continue
        x, y = sa[key], sb[key]
        rows.append(
            (
                label,
                x["p50_us"],
                x["p90_us"],
                x["cpu_p50_us"],
                y["p50_us"],
                y["p90_us"],
                y["cpu_p50_us"],
                f"{x['p50_us'] / y['p50_us']:.2f}" if y["p50_us"] > 0 else "-",
            )
        )
    print_table(
        f"6. sample_cost: one monitor sample, in-process ({opts.samples} rounds per scenario, "
        "trend history full)",
        [
            "line",
            "A p50 µs",
            "A p90 µs",
            "A CPU µs",
            "B p50 µs",
            "B p90 µs",
            "B CPU µs",
            "A/B p50",
        ],
        rows,
    )
    for s in subjects:
        print(
            f"{s.scenario.name}: {s.scenario.gpus} fake GPU{'s' if s.scenario.gpus > 1 else ''} "
            f"({GPU_PROCESSES} GPU processes each), {procs[s.scenario.name]} processes on the "
            f"host ({s.scenario.extra} idle ones added; {min(s.process_counts)}-"
            f"{max(s.process_counts)} over the blocks)"
        )
    print("CPU µs: median process_time per call (all the bench's threads, NVML's included)")

    # The trend history's weight: sample_once() while the history filled (not interleaved).
    growth = {}
    for s in subjects:
        for key, m in s.monitors.items():
            if key == SAMPLE_SCAN:
                continue  # filled exactly as SAMPLE's
            growth[f"{s.scenario.name} {m.step:g}s"] = {
                "first_minute_us": 1e6 * m.fill_first,
                "after_an_hour_us": 1e6 * m.fill_last,
            }
    print(
        "sample_once() as the trend history fills (first minute -> after an hour): "
        + "; ".join(
            f"{name} interval: {g['first_minute_us']:,.0f} -> {g['after_an_hour_us']:,.0f} µs"
            for name, g in growth.items()
        )
    )

    # What it costs a perfd: one sample per interval plus one scan per processes_interval.
    load: dict[str, dict[str, float | None]] = {}
    for name, st in stats.items():
        scan = max(0.0, st[SCAN]["p50_us"]) / 1e6 / 30.0
        per_5s = st[SAMPLE]["p50_us"] / 1e6 / 5.0
        per_1s = st[SAMPLE_1S]["p50_us"] / 1e6 / 1.0 if SAMPLE_1S in st else None
        load[name] = {
            "default_pct": 100 * (per_5s + scan),
            "samples_pct": 100 * per_5s,
            "scans_pct": 100 * scan,
            "interval_1s_pct": None if per_1s is None else 100 * (per_1s + scan),
            "scan_us_per_process": st[SCAN]["p50_us"] / procs[name],
        }
    for name, f in load.items():
        fast = f["interval_1s_pct"]
        print(
            f"{name} at the defaults (interval 5 s, processes_interval 30 s): "
            f"{f['default_pct']:.3f} % of one core (samples {f['samples_pct']:.3f} % + "
            f"scans {f['scans_pct']:.3f} %); "
            + (f'at interval = "1s": {fast:.3f} %; ' if fast is not None else "")
            + f"the scan: {f['scan_us_per_process']:.1f} µs per process"
        )

    base_name = f"B: {b.scenario.gpus} GPU, {procs[b.scenario.name]} procs"
    tag = f"(A: {a.scenario.gpus} GPUs, {procs[a.scenario.name]} procs)"

    def info(figure: str, key: str) -> Check:
        return Check(
            "6 sample_cost",
            f"{figure} {tag}",
            "µs",
            sa[key]["p50_us"],
            base_name,
            sb[key]["p50_us"],
        )

    def cpu(figure: str, key: str) -> Check:
        ours, theirs = load[a.scenario.name][key], load[b.scenario.name][key]
        assert ours is not None
        return Check("6 sample_cost", f"{figure} {tag}", "% of a core", ours, base_name, theirs)

    checks = [
        info("sample_once, no scan", SAMPLE),
        info("process scan", SCAN),
        info("GpuProbe.sample()", GPU),
        cpu("CPU, 5 s / 30 s defaults", "default_pct"),
    ]
    if SAMPLE_1S in sa:
        checks += [
            info('sample_once, interval "1s"', SAMPLE_1S),
            cpu('CPU, "1s"', "interval_1s_pct"),
        ]
    data = {
        "samples": opts.samples,
        "blocks": opts.blocks,
        "gpu_processes_per_gpu": GPU_PROCESSES,
        "history_growth": growth,
        "scenarios": {
            s.scenario.name: {
                "gpus": s.scenario.gpus,
                "extra_processes": s.scenario.extra,
                "process_counts": s.process_counts,
                "stats": stats[s.scenario.name],
                "load": load[s.scenario.name],
                "wall_s": dict(s.wall),
                "cpu_s": dict(s.cpu),
            }
            for s in subjects
        },
    }
    return data, checks

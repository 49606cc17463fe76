"""The monitor: a thread that samples the host and GPUs, keeps trends, and raises alerts.

Each turn: probes (perfd.probes.host and perfd.probes.nvml, the only modules touching psutil
and NVML) -> figures and verdicts (perfd.monitor.verdicts) -> trends (perfd.monitor.trends) ->
alert transitions (perfd.monitor.alerts), logged at the priority of their severity, kept in a
history ring and optionally appended to a JSON Lines alert log -> a new typed, frozen snapshot
(perfd.monitor.snapshot; ``stats_reply`` is its wire view) -> verdict changes published to
subscribers through bounded queues that never block the monitor.

The thread waits on an Event, so stop() acts at once, and beats a heartbeat at least every
few seconds so a hung probe withholds systemd's watchdog.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from perfd import log
from perfd.config import AlertsConfig, MonitorConfig
from perfd.engines.record import EngineRecord
from perfd.monitor import engine_alerts, trends
from perfd.monitor import verdicts as assess
from perfd.monitor.alerts import (
    CRITICAL,
    Alert,
    AlertMachine,
    AlertRecord,
    Transition,
)
from perfd.monitor.sinks import Sinks
from perfd.monitor.snapshot import AlertCounts, Gpu, SelfUse, Snapshot, TopProcess
from perfd.probes.samples import GpuReading, HostSample, ProcessEntry
from perfd.systemd import Heartbeat
from perfd.wire.values import rfc3339

_log = log.get("perfd.monitor")

_MAX_WAIT = 5.0  # the longest the thread sleeps between heartbeats


class HostProbe(Protocol):
    def sample(self, with_processes: bool) -> HostSample: ...


class GpuProbe(Protocol):
    def sample(self) -> GpuReading: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class VerdictChange:
    """What subscribers receive: a resource whose verdict changed."""

    resource: str  # "host" or "gpu<index>"
    verdict: str
    previous: str | None
    used_percent: float
    at: float  # wall clock


class Subscription:
    """A bounded queue of VerdictChange; the oldest is dropped when the reader falls behind."""

    def __init__(self, maxsize: int = 64) -> None:
        self._queue: queue.Queue[VerdictChange | None] = queue.Queue(maxsize)
        self.dropped = 0

    def wake(self) -> None:
        """Wake a reader blocked in get() (it receives None)."""
        self.put(None)

    def put(self, change: VerdictChange | None) -> None:
        while True:
            try:
                self._queue.put_nowait(change)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def get(self, timeout: float | None = None) -> VerdictChange | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None


class Monitor:
    def __init__(
        self,
        cfg: MonitorConfig,
        alerts_cfg: AlertsConfig,
        *,
        host_probe: HostProbe | None = None,
        gpu_probe: GpuProbe | None = None,
        heartbeat: Heartbeat | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sinks: Sinks | None = None,
        engines: Callable[[], Sequence[EngineRecord]] | None = None,
    ) -> None:
        self.cfg, self.alerts_cfg = cfg, alerts_cfg
        self._sinks = sinks  # webhook / Alertmanager delivery; never blocks _record
        self.engines = engines  # the watcher's latest records (never waits on a read)
        # pid -> its process facts (the process probe's ``process``: cgroup, parent), for the
        # owners of the GPU processes; set by perfd.parts with the engines.
        self.process_lookup: Callable[[int], ProcessEntry | None] | None = None
        if host_probe is None or (gpu_probe is None and cfg.gpu):
            from perfd.probes import (  # psutil (and later pynvml) load here, not at import
                host,
                nvml,
            )

            host_probe = host_probe or host.HostProbe(top_n=cfg.top_processes)
            if gpu_probe is None and cfg.gpu:
                gpu_probe = nvml.GpuProbe(timeout=cfg.nvml_timeout)
        self._host_probe = host_probe
        self._gpu_probe = gpu_probe
        self._heartbeat = heartbeat
        self._clock, self._wall = clock, wall
        self._stop = threading.Event()
        self.first_sample = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._machine = AlertMachine()
        self._history: collections.deque[AlertRecord] = collections.deque(maxlen=alerts_cfg.history)
        self._alert_file = (
            log.AppendFile(alerts_cfg.log_file, "alert log") if alerts_cfg.log_file else None
        )
        self._series: dict[str, trends.Series] = {}
        self._verdicts: dict[str, str] = {}
        self._subscribers: list[Subscription] = []
        self._prev_host: HostSample | None = None
        self._processes: tuple[TopProcess, ...] = ()
        self._processes_at: tuple[float, str] | None = None
        self._snapshot: Snapshot | None = None
        self.samples = 0
        self.sample_seconds = 0.0

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="perfd-monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                _log.warning("thread.still_alive", thread="perfd-monitor", action="exiting anyway")
        if self._gpu_probe is not None:
            self._gpu_probe.close()
        if self._alert_file is not None:
            self._alert_file.close()
        if self._sinks is not None:
            self._sinks.stop(timeout)

    def reconfigure(self, cfg: MonitorConfig, alerts_cfg: AlertsConfig) -> None:
        """Apply a reloaded config from the next turn on (probes and history keep running)."""
        with self._lock:
            self.cfg, self.alerts_cfg = cfg, alerts_cfg
            self._history = collections.deque(self._history, maxlen=alerts_cfg.history)
            if (self._alert_file.path if self._alert_file else "") != alerts_cfg.log_file:
                if self._alert_file is not None:
                    self._alert_file.close()
                self._alert_file = (
                    log.AppendFile(alerts_cfg.log_file, "alert log")
                    if alerts_cfg.log_file
                    else None
                )
        if self._sinks is not None:  # outside the lock: replaced sinks get time to drain
            self._sinks.reconfigure(alerts_cfg)

    def _run(self) -> None:
        next_due = self._clock()
        while not self._stop.is_set():
            now = self._clock()
            if now >= next_due:
                try:
                    self.sample_once()
                except Exception:  # a bug must not kill monitoring; the watchdog still sees us
                    _log.exception("monitor.sample_failed")
                next_due = max(next_due + self.cfg.interval, self._clock())
            if self._heartbeat is not None:
                self._heartbeat.beat()
            self._stop.wait(min(_MAX_WAIT, max(0.0, next_due - self._clock())))

    # -- one turn ---------------------------------------------------------------------------

    def sample_once(self) -> Snapshot:
        """Sample, assess, alert, publish; return the new snapshot."""
        started = time.perf_counter()
        with self._lock:
            cfg, alerts_cfg = self.cfg, self.alerts_cfg
        now = self._clock()
        scan = self._processes_at is None or now - self._processes_at[0] >= cfg.processes_interval
        host = self._host_probe.sample(with_processes=scan and cfg.top_processes > 0)
        reading = self._gpu_probe.sample() if self._gpu_probe is not None and cfg.gpu else None
        wall = self._wall()
        if host.processes is not None:
            self._processes = tuple(
                TopProcess(p.pid, p.name, p.rss_bytes, p.unit)
                for p in host.processes[: cfg.top_processes]
            )
            self._processes_at = (now, rfc3339(wall))

        judged = self._assess(host, reading, cfg=cfg, alerts_cfg=alerts_cfg, now=now, wall=wall)
        transitions = self._alert(judged, alerts_cfg, now, wall)
        snapshot = dataclasses.replace(judged, alerts=self._alert_counts())
        self._publish(snapshot, wall)
        self._prev_host = host
        self.samples += 1
        self.sample_seconds += time.perf_counter() - started
        self._snapshot = snapshot
        self.first_sample.set()
        for transition in transitions:
            self._record(transition)
        return snapshot

    def _assess(
        self,
        host: HostSample,
        reading: GpuReading | None,
        *,
        cfg: MonitorConfig,
        alerts_cfg: AlertsConfig,
        now: float,
        wall: float,
    ) -> Snapshot:
        """The snapshot of this turn, its alert counts still zero (alerts judge it next)."""
        processes_at = self._processes_at[1] if self._processes_at else None
        host_part = assess.host_figures(
            host, self._prev_host, alerts_cfg, self._processes, processes_at
        )
        memory = host_part.memory
        host_trend = self._trend("host_memory", now, memory.used_bytes, memory.total_bytes, cfg)
        gpus: list[Gpu] = []
        for gpu in reading.gpus if reading is not None else ():
            trend = None
            if gpu.state == "ok":
                trend = self._trend(
                    f"gpu:{gpu.uuid}", now, assess.gpu_unavailable(gpu), gpu.mem_total_bytes, cfg
                )
            gpus.append(assess.gpu_figures(gpu, trend, alerts_cfg))
        prev = self._prev_host
        cpu = None
        if prev is not None and host.t > prev.t:
            cpu = round(
                100 * (host.self_cpu_seconds - prev.self_cpu_seconds) / (host.t - prev.t), 3
            )
        gpu_state, gpu_error, driver_version = assess.gpu_fields(reading)
        return Snapshot(
            sampled_at=rfc3339(wall),
            sampled_at_unix=wall,
            interval_s=cfg.interval,
            host=host_part,
            gpu_state=gpu_state,
            gpu_error=gpu_error,
            driver_version=driver_version,
            gpus=tuple(gpus),
            host_trend=host_trend,
            perfd=SelfUse(host.self_rss_bytes, cpu),
            alerts=AlertCounts(0, 0),
            engines=tuple(self.engines()) if self.engines is not None else (),
        )

    def _trend(
        self, key: str, now: float, used: float, capacity: float, cfg: MonitorConfig
    ) -> trends.Trend:
        series = self._series.get(key)
        if series is None or (series.history, series.interval) != (cfg.history, cfg.interval):
            series = self._series[key] = trends.Series(cfg.history, cfg.interval)
        series.add(now, used)
        return trends.classify(series.window(cfg.trend_window), capacity, cfg.trend_noise_percent)

    def _alert(
        self, snapshot: Snapshot, alerts_cfg: AlertsConfig, now: float, wall: float
    ) -> list[Transition]:
        observations = assess.observations(snapshot, alerts_cfg)
        out = []
        with self._lock:  # the socket thread reads the machine for `alerts`
            for obs in observations:
                out.extend(self._machine.observe(obs, now, wall))
            # A resource that could not be read this time (a lost GPU, an NVML timeout) keeps
            # its alerts as they are: unknown is not recovered. Only a disabled rule retires.
            out.extend(self._machine.retire(_enabled_rules(alerts_cfg), wall))
        return out

    def _alert_counts(self) -> AlertCounts:
        with self._lock:
            firing = self._machine.firing()
        return AlertCounts(len(firing), sum(1 for a in firing if a.severity == CRITICAL))

    def _record(self, transition: Transition) -> None:
        entry = transition.as_dict()
        with self._lock:
            self._history.append(entry)
            alert_file = self._alert_file
        fields = dict(entry)
        event = str(fields.pop("event"))
        if transition.kind == "resolved":
            _log.info(event, **fields)
        elif transition.alert.severity == CRITICAL:
            _log.critical(event, **fields)
        else:
            _log.warning(event, **fields)
        if alert_file is not None:
            alert_file.write_line(json.dumps(entry, default=str))
        if self._sinks is not None:
            self._sinks.deliver(dict(entry))

    # -- subscribers ------------------------------------------------------------------------

    def subscribe(self, maxsize: int = 64) -> Subscription:
        sub = Subscription(maxsize)
        with self._lock:
            self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    def _publish(self, snapshot: Snapshot, wall: float) -> None:
        memory = snapshot.host.memory
        current = {"host": (memory.verdict, memory.used_percent)}
        for gpu in snapshot.gpus:
            if gpu.verdict is not None:
                current[f"gpu{gpu.index}"] = (gpu.verdict, gpu.memory.used_percent)
        with self._lock:
            subscribers = list(self._subscribers)
        for resource, (verdict, used) in current.items():
            previous = self._verdicts.get(resource)
            if previous == verdict:
                continue
            self._verdicts[resource] = verdict
            change = VerdictChange(resource, verdict, previous, used, wall)
            for sub in subscribers:
                sub.put(change)

    # -- what commands read -----------------------------------------------------------------

    def own_gpu_bytes(self, device: str) -> int | None:
        """This process's memory on "cuda:N" as NVML reports it (a fresh NVML read), for the
        cache to measure a model's real cost the way nvidia-smi shows it."""
        if self._gpu_probe is None or not device.startswith("cuda:"):
            return None
        index = int(device.split(":")[1])
        for gpu in self._gpu_probe.sample().gpus:
            if gpu.index == index and gpu.state == "ok":
                return sum(p.used_bytes or 0 for p in gpu.processes if p.pid == os.getpid())
        return None

    def gpu_bytes_by_pid(self) -> dict[int, int]:
        """Each GPU process's memory in the latest snapshot (NVML's per-process figures, every
        GPU summed), by pid: what the engines' processes hold."""
        snapshot = self._snapshot
        out: dict[int, int] = {}
        for gpu in snapshot.gpus if snapshot is not None else ():
            for p in gpu.processes:
                if p.used_bytes is not None:
                    out[p.pid] = out.get(p.pid, 0) + p.used_bytes
        return out

    @property
    def sinks(self) -> Sinks | None:
        """The alert sinks this monitor delivers to (for their metrics)."""
        return self._sinks

    def snapshot(self) -> Snapshot | None:
        """The latest sample, judged; None before the first."""
        return self._snapshot

    def firing(self) -> list[Alert]:
        """The firing alerts, most severe first, then oldest first."""
        with self._lock:
            return self._machine.firing()

    def alerts(self) -> dict[str, list[AlertRecord]]:
        """The `alerts` reply: firing alerts and the history, newest first."""
        with self._lock:
            history = list(self._history)
            firing = self._machine.firing()
        return {"firing": [a.as_dict() for a in firing], "history": history[::-1]}

    def status_line(self) -> str | None:
        snapshot = self._snapshot
        return None if snapshot is None else assess.status_line(snapshot)


def _enabled_rules(cfg: AlertsConfig) -> set[str]:
    rules: tuple[str, ...] = ("host_memory", "swap", "psi", "gpu_memory", "gpu_temperature")
    rules = (*rules, "exhaustion", *engine_alerts.RULES)
    return {name for name in rules if getattr(cfg, name).enabled}

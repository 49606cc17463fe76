"""The watcher: a thread that reads every known engine each ``read_interval`` and runs
discovery each ``[discovery] interval``, keeping one ``EngineRecord`` per engine.

Reads run on a small bounded pool of daemon threads (perfd.engines.pool, ``[discovery]
workers`` of them), each bounded by
``[discovery] timeout``: the turn waits for the reads until that deadline and no longer, so a
hung engine is ``timeout`` and delays no other engine; a read still in flight is not started
again until it ends (the real fetcher's own socket timeouts end it). Discovery runs on the same
pool, so a slow process scan delays no read. ``records()`` returns the latest records under a
lock held only to copy them: it never waits on a read, nor does the monitor or a reply.

Each state change is logged once (``engine.up``, ``engine.down``, ``engine.timeout``,
``engine.error`` with the reason), never per read.

The I/O comes in through the constructor (``read``, ``fetch``, ``discover``, ``processes``:
the GPU memory per pid from the monitor's latest snapshot). ``read`` and ``fetch`` default to
the real ones (perfd.engines.readers and .fetch, imported when first used); the real
``discover`` (a process scan through perfd.probes.processes, then each kind's health endpoint:
perfd.engines.discovery and .health) is built by perfd.parts, as the engines may not import a
probe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from perfd import log
from perfd.config import DiscoveryConfig, EngineConfig
from perfd.engines import discovery
from perfd.engines import state as states
from perfd.engines.errors import EngineTimeout, EngineUnavailable, PayloadError
from perfd.engines.pool import Pool
from perfd.engines.record import DOWN, EngineRecord, Reading, Target
from perfd.wire.values import rfc3339

if TYPE_CHECKING:
    from perfd.engines.readers import Get
    from perfd.systemd import Heartbeat

_log = log.get("perfd.engines")

Read = Callable[[Target, "Get"], Reading]
Fetch = Callable[[Target, float], "Get"]
Discover = Callable[[], list[Target]]
Processes = Callable[[], Mapping[int, int]]  # pid -> GPU bytes (NVML, every GPU summed)

_MAX_WAIT = 5.0  # the longest the thread goes between heartbeats (less under a short watchdog)


def configured(engines: Mapping[str, EngineConfig]) -> dict[str, Target]:
    """The ``[engines.NAME]`` tables as targets."""
    return {
        name: Target(
            name=name,
            kind=e.kind,
            url=e.url.rstrip("/"),
            pids=(e.pid,) if e.pid else (),
            unit=e.unit or None,
            api_key_env=e.api_key_env or None,
            source="config",
        )
        for name, e in engines.items()
    }


def _nothing_found() -> list[Target]:
    """Discovery without a process table (perfd.parts passes the real one in)."""
    return []


def _real_read(target: Target, get: Get) -> Reading:
    from perfd.engines import readers

    return readers.reader(target.kind)(target, get)


def _real_fetch(target: Target, timeout: float) -> Get:
    from perfd.engines import fetch  # type: ignore[attr-defined,unused-ignore]

    get: Get = fetch.fetcher(target, timeout)
    return get


@dataclass
class _Engine:
    target: Target
    record: EngineRecord | None = None
    counters: states.Counters | None = None
    inflight: Future[Reading] | None = None
    started: float = 0.0  # time.monotonic() at the start of the read in flight
    lost_at: float | None = None  # a discovered engine no longer found: when (monotonic)


class Watcher:
    """The engines part (built in perfd.parts, started after READY)."""

    def __init__(
        self,
        cfg: DiscoveryConfig,
        engines: Mapping[str, EngineConfig],
        *,
        read: Read | None = None,
        fetch: Fetch | None = None,
        discover: Discover | None = None,
        processes: Processes | None = None,
        heartbeat: Heartbeat | None = None,
        beat_every: float = _MAX_WAIT,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self._read = read or _real_read
        self._fetch = fetch or _real_fetch
        self._discover = discover or _nothing_found
        self._processes = processes or (lambda: {})
        self._heartbeat = heartbeat
        self._beat_every = min(_MAX_WAIT, beat_every)  # within the watchdog's period
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self._hints = configured(engines)  # the [engines.NAME] tables, as given
        self._engines: dict[str, _Engine] = {name: _Engine(t) for name, t in self._hints.items()}
        self._found: dict[str, Target] = {}  # discovery's last answer, by name
        self._discovery: Future[list[Target]] | None = None
        self._last_discovery: float | None = None  # wall clock
        # Threads start with the first read: building the pool costs nothing.
        self._pool = Pool(cfg.workers, "perfd-engine-read")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.turns = 0

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="perfd-engines", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                _log.warning("thread.still_alive", thread="perfd-engines", action="exiting anyway")
        self._pool.shutdown()  # daemon threads: a hung read is not waited on, even at exit

    def reconfigure(self, cfg: DiscoveryConfig, engines: Mapping[str, EngineConfig]) -> None:
        """Apply a reloaded config from the next turn on: engines added, changed or removed."""
        wanted = configured(engines)
        with self._lock:
            self.cfg = cfg
            self._hints = wanted
            for name in [n for n, e in self._engines.items() if e.target.source == "config"]:
                if name not in wanted:
                    del self._engines[name]
            for name, target in wanted.items():
                known = self._engines.get(name)
                if known is None or known.target.source != "config" or _moved(known, target):
                    self._engines[name] = _Engine(target)
                else:
                    known.target = target
            if not cfg.enabled:
                self._found = {}
                for name in [n for n, e in self._engines.items() if e.target.source != "config"]:
                    del self._engines[name]
        self._wake.set()

    # -- what the rest of perfd reads -------------------------------------------------------

    def records(self) -> list[EngineRecord]:
        """The latest record of every known engine, by name (never waits on a read)."""
        with self._lock:
            out = [e.record or _unread(e.target) for e in self._engines.values()]
        return sorted(out, key=lambda r: r.target.name)

    def discovery(self) -> dict[str, object]:
        """The ``discovery`` part of the ``engines`` reply."""
        last = self._last_discovery
        return {
            "enabled": self.cfg.enabled,
            "interval_s": self.cfg.interval,
            "last_run": None if last is None else rfc3339(last),
        }

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        next_read = next_discovery = self._clock()
        while not self._stop.is_set():
            cfg = self.cfg
            now = self._clock()
            try:
                if cfg.enabled and now >= next_discovery:
                    self._start_discovery()
                    next_discovery = now + cfg.interval
                self._apply_discovery()
                if now >= next_read:
                    self.read_once()
                    next_read = max(next_read + cfg.read_interval, self._clock())
            except Exception:  # a bug must not stop the engines being watched
                _log.exception("engines.turn_failed")
                next_read = self._clock() + cfg.read_interval
            self._beat()
            due = min(next_read, next_discovery) if cfg.enabled else next_read
            self._wake.wait(min(self._beat_every, max(0.0, due - self._clock())))
            self._wake.clear()

    def _beat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.beat()

    def read_once(self) -> None:
        """One turn: start a read of every engine not already being read, wait for them
        until the timeout, then record each finished read (and each overdue one as timeout)."""
        pool = self._pool
        cfg = self.cfg
        started = time.monotonic()  # how long reads take is real time, whatever the clock
        with self._lock:
            engines = list(self._engines.values())
        for engine in engines:
            if engine.inflight is None:
                engine.started = time.monotonic()
                engine.inflight = pool.submit(self._one, engine.target, cfg.timeout)
        pending = [e.inflight for e in engines if e.inflight is not None]
        while (left := started + cfg.timeout - time.monotonic()) > 0:
            _, waiting = wait_for(pending, timeout=min(left, self._beat_every))
            self._beat()  # a turn waiting on slow engines is still alive
            if not waiting:
                break
        processes = self._gpu_processes()
        for engine in engines:
            future = engine.inflight
            if future is None:
                continue
            if future.done():
                engine.inflight = None
                outcome: Reading | EngineUnavailable = _outcome(future)
            elif time.monotonic() - engine.started >= cfg.timeout:
                outcome = EngineTimeout(f"no answer within {cfg.timeout:g}s")
            else:
                continue
            self._update(engine, outcome, processes)
        self.turns += 1

    def _one(self, target: Target, timeout: float) -> Reading:
        return self._read(target, self._fetch(target, timeout))

    def _update(
        self, engine: _Engine, outcome: Reading | EngineUnavailable, processes: Mapping[int, int]
    ) -> None:
        with self._lock:
            if self._engines.get(engine.target.name) is not engine:
                return  # removed or replaced by a reload meanwhile
            target = engine.target
        previous = engine.record
        record, counters = states.advance(
            previous,
            engine.counters,
            target,
            outcome,
            now=self._clock(),
            wall=self._wall(),
            processes=processes,
        )
        with self._lock:
            engine.record, engine.counters = record, counters
        event = states.transition(previous, record)
        if event is not None:
            fields = {"engine": target.name, "kind": target.kind, "url": _shown_url(target.url)}
            if record.reason:
                fields["reason"] = record.reason
            if previous is not None:
                fields["previous"] = previous.state
            if record.state == "up":
                _log.info(event, **fields)
            else:
                _log.warning(event, **fields)

    def _gpu_processes(self) -> Mapping[int, int]:
        try:
            return self._processes()
        except Exception:  # the snapshot is the monitor's: a bug there is not the engines'
            _log.exception("engines.gpu_processes_failed")
            return {}

    # -- discovery --------------------------------------------------------------------------

    def _start_discovery(self) -> None:
        if self._discovery is None:
            self._discovery = self._pool.submit(self._discover)

    def _apply_discovery(self) -> None:
        future = self._discovery
        if future is None or not future.done():
            return
        self._discovery = None
        self._last_discovery = self._wall()
        try:
            found = future.result()
        except Exception as exc:  # discovery is best effort; the configured engines stay read
            _log.warning("engines.discovery_failed", error=f"{type(exc).__name__}: {exc}")
            return
        self.merge(found)

    def merge(self, found: list[Target]) -> None:
        """Discovery's answer: a configured engine found (at its URL, holding its pid hint, or
        in its unit: perfd.engines.discovery.merge) takes the found pids and unit; a new one
        is added; a discovered engine no longer found stays (it reads down) and is forgotten
        after ten discovery intervals without being found."""
        now = self._clock()
        with self._lock:
            if not self.cfg.enabled:
                return
            seen: set[str] = set()
            hints = list(self._hints.values())
            merged = discovery.merge(hints, found)  # the configured ones first, as given
            for given in merged[: len(hints)]:
                known = self._engines.get(given.name)
                if known is not None and known.target.source == "config":
                    known.target = given
            for target in (replace(t, source="discovered") for t in merged[len(hints) :]):
                known = self._engines.get(target.name)
                seen.add(target.name)
                if known is not None:
                    known.lost_at = None
                    known.target = target
                    continue
                self._engines[target.name] = _Engine(target)
                _log.info(
                    "engine.discovered",
                    engine=target.name,
                    kind=target.kind,
                    url=_shown_url(target.url),
                    pids=list(target.pids),
                    unit=target.unit,
                )
            forget = 10 * self.cfg.interval
            for name, engine in list(self._engines.items()):
                if engine.target.source != "discovered" or name in seen:
                    continue
                engine.lost_at = engine.lost_at if engine.lost_at is not None else now
                down = engine.record is not None and engine.record.state == DOWN
                if down and now - engine.lost_at >= forget:
                    del self._engines[name]
                    _log.info("engine.forgotten", engine=name, after_s=round(now - engine.lost_at))


def _outcome(future: Future[Reading]) -> Reading | EngineUnavailable:
    try:
        return future.result()
    except EngineUnavailable as exc:
        return exc
    except Exception as exc:  # a reader's bug: shown as an error, the daemon keeps going
        _log.exception("engines.reader_failed")
        return PayloadError(f"the reader failed: {type(exc).__name__}: {exc}")


def _unread(target: Target) -> EngineRecord:
    """An engine not read yet: ``starting`` until its first read answers."""
    return EngineRecord(target=target, state="starting", reason="not read yet")


def _moved(known: _Engine, target: Target) -> bool:
    return (known.target.kind, known.target.url) != (target.kind, target.url)


def _shown_url(url: str) -> str:
    from perfd.redaction import redact_url

    return redact_url(url)

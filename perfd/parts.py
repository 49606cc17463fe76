"""perfd's composition root: every part, built from the config and the boundaries.

``Parts`` builds the server (with its command table, perfd.handlers.table) and the sockets
(perfd.endpoints), then, in ``start()``: the monitor (the first sample awaited: READY=1 waits
for it) and the /metrics endpoint; in ``start_models()``, after READY=1 and before the first
request is read: the providers, the loader registry, the model cache and its housekeeping
(a ``Keeper``), and the preload thread. No part is built inside a request. ``reload()`` fans a
new config out to every part; ``close()`` stops them in one ordered list; ``components()``
says what runs.

The cache and the providers are built at start but report ``not_started`` (docs/protocol.md)
until first used: the cache by ``load``, ``infer``, ``pin``, ``unpin`` or a preload (its
housekeeping thread starts then, so an idle perfd without models wakes no more often), the
providers when a remote model first needs one. Nothing heavy is imported before then: numpy
and onnxruntime load with a model, requests with a provider's first call.

``Boundaries`` is what perfd reads of the world outside it: the probes, the loader registry,
the clocks. Each default is the real thing; tests inject fakes there (tests/launcher.py starts
a real perfd with a controlled NVML), never by patching a module.
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perfd import config, log
from perfd.endpoints import Endpoints
from perfd.errors import CommandError, ConfigError, StartupError
from perfd.handlers import table as handlers
from perfd.monitor.sampler import Monitor
from perfd.server.loop import Server
from perfd.systemd import Liveness, Notifier
from perfd.wire import protocol

if TYPE_CHECKING:  # built by start_models(), after READY: kept off the start-up path
    from perfd.cache.core import ModelCache
    from perfd.cache.housekeeping import Keeper
    from perfd.cache.meter import Meter
    from perfd.engines.watcher import Discover, Fetch, Read, Watcher
    from perfd.loaders.base import Loader
    from perfd.metrics.exporter import MetricsServer
    from perfd.monitor.sampler import GpuProbe, HostProbe
    from perfd.net.provider import Providers

_log = log.get("perfd.daemon")

LoaderFor = Callable[[str], "Loader"]  # a loader's name -> the loader


@dataclass(frozen=True)
class Boundaries:
    """What perfd reads of the world outside it; None is the real thing.

    ``host_probe`` and ``gpu_probe`` build a probe from ``[monitor]`` (the real ones:
    perfd.probes.host with psutil, perfd.probes.nvml with pynvml); ``loaders`` builds the
    loader lookup from the loaders perfd adds itself (``openai``: the default is
    perfd.loaders.registry with its entry points); ``engine_read``, ``engine_fetch`` and
    ``engine_discover`` are the engine watcher's I/O (the real ones: perfd.engines' readers,
    fetcher, and a process scan with perfd.probes.processes then perfd.engines.health);
    ``meter`` measures what a model load costs this process (the real one:
    perfd.cache.meter.ProcessMeter over /proc and NVML); ``clock`` and ``wall`` are monotonic
    and wall-clock time for the monitor, the cache and the engines.
    """

    host_probe: Callable[[config.MonitorConfig], HostProbe] | None = None
    gpu_probe: Callable[[config.MonitorConfig], GpuProbe] | None = None
    loaders: Callable[[Mapping[str, Loader]], LoaderFor] | None = None
    meter: Meter | None = None
    engine_read: Read | None = None
    engine_fetch: Fetch | None = None
    engine_discover: Discover | None = None
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time


class Parts:
    """Every part of a running perfd; also what the handlers see (handlers.table.DaemonView)."""

    def __init__(
        self,
        loaded: config.LoadedConfig,
        *,
        runtime_dir: Path,
        config_arg: str | None = None,
        notifier: Notifier,
        liveness: Liveness,
        boundaries: Boundaries | None = None,
        log_format: str | None = None,
        configure_logging: bool = True,
    ) -> None:
        self.loaded = loaded
        self.initial = loaded.config  # start-only settings stay as they were at start
        self.runtime_dir = runtime_dir
        self.boundaries = boundaries or Boundaries()
        self.started_at = self.boundaries.wall()
        self.started_monotonic = self.boundaries.clock()
        self._config_arg = config_arg
        self._log_format = log_format
        self._configure_logging = configure_logging  # False: an application's own structlog
        self.notifier, self.liveness = notifier, liveness
        cfg = loaded.config.server
        self.server = Server(
            handlers.build(self),
            max_message_bytes=cfg.max_message_bytes,
            max_admin_message_bytes=cfg.max_admin_message_bytes,
            workers=cfg.workers,
            max_in_flight=cfg.max_in_flight,
            max_in_flight_per_client=cfg.max_in_flight_per_client,
            admin_reserve=cfg.admin_reserve,
            max_connections=cfg.max_connections,
            rss_limit=self._rss_limit,
            rss_allowance=4 * cfg.max_buffered_bytes,
            command_timeout=cfg.command_timeout,
        )
        self.endpoints = Endpoints(self.server, runtime_dir, loaded.config)
        self._start_rss = 0  # perfd's RSS when its sockets were bound
        self.monitor: Monitor | None = None
        self.metrics: MetricsServer | None = None
        self._cache: ModelCache | None = None
        self._keeper: Keeper | None = None
        self._providers: Providers | None = None
        self.engines: Watcher | None = None
        self._cache_used = self._providers_used = False
        self._lock = threading.Lock()  # first uses, and a reload meanwhile

    # -- start and stop ---------------------------------------------------------------------

    def start(self, *, bind: bool = True) -> None:
        """Before READY=1: the sockets (with ``bind``), the monitor, the /metrics endpoint."""
        from perfd.server import sockwatch

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # raised by main(), not embedded
        _log.info("limits.files", soft=soft, hard=hard)
        self.endpoints.open(self.loaded.config, bind=bind)
        self._start_rss = sockwatch.rss_bytes()
        self._start_monitor()
        if self.initial.metrics.listen:
            self._start_metrics(self.initial.metrics.listen)

    def start_models(self) -> None:
        """After READY=1, before the first request is read: the providers, the loaders, the
        model cache and its housekeeping; then the preload thread."""
        from perfd.cache import housekeeping
        from perfd.cache.core import ModelCache
        from perfd.cache.meter import ProcessMeter
        from perfd.loaders.openai import OpenAILoader
        from perfd.net.provider import Providers

        monitor = self.monitor
        assert monitor is not None, "the monitor starts before the cache"
        cfg = self.loaded.config
        self._providers = Providers(cfg.providers)
        extra: dict[str, Loader] = {"openai": OpenAILoader(lambda: self.providers)}
        if self.boundaries.loaders is not None:
            loader_for = self.boundaries.loaders(extra)
        else:
            from perfd.loaders.registry import Registry

            loader_for = Registry(extra=extra).get
        self._cache = ModelCache(
            cfg.cache,
            cfg.models,
            loader_for,
            lambda device: housekeeping.capacity(monitor.snapshot(), device),
            clock=self.boundaries.clock,
            wall=self.boundaries.wall,
            meter=self.boundaries.meter or ProcessMeter(gpu_use=monitor.own_gpu_bytes),
            on_load=self.metrics.observe_load if self.metrics is not None else None,
        )
        self._keeper = housekeeping.Keeper(self._cache, monitor, None)
        self._start_engines()
        self.preload()

    def close(self) -> None:
        """Stop every part, in order: the /metrics endpoint (no scrape reads parts that are
        stopping), the housekeeping, the cache (every model unloaded), the providers (no request
        can use them any more), the monitor, then the sockets and the lock."""
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        if self._keeper is not None and self._cache_used:
            self._keeper.stop()
        cache = self._used_cache()
        if cache is not None:
            cache.close()
        providers = self._used_providers()
        if providers is not None:
            providers.close()
        if self.engines is not None:
            if self.monitor is not None:
                self.monitor.engines = None
            self.engines.stop(self.loaded.config.discovery.timeout + 2)
        if self.monitor is not None:
            self.monitor.stop(self.loaded.config.monitor.nvml_timeout + 2)
        self.endpoints.close()

    def preload(self) -> None:
        """Load the models marked preload = true, on a thread of their own."""
        names = [n for n, m in self.loaded.config.models.items() if m.preload]
        if not names:
            return

        def run() -> None:
            from perfd.cache.errors import CacheError

            for name in names:
                try:
                    self.cache.load(name)
                except CacheError as exc:
                    _log.error("cache.preload_failed", model=name, error=exc.message)

        threading.Thread(target=run, name="perfd-preload", daemon=True).start()

    # -- what handlers see ------------------------------------------------------------------

    def components(self) -> dict[str, str]:
        return {
            "server": "started",
            "monitor": "started" if self.monitor is not None else "not_started",
            "cache": "started" if self._cache_used else "not_started",
            "providers": "started" if self._providers_used else "not_started",
            "workers": "started" if self.server.pool_started else "not_started",
            "metrics": "started" if self.metrics is not None else "off",
            "engines": "started" if self.engines is not None else "not_started",
            "remote": self.endpoints.remote_endpoint or "off",
        }

    @property
    def cache_started(self) -> bool:
        return self._cache_used

    @property
    def providers_started(self) -> bool:
        return self._providers_used

    @property
    def cache(self) -> ModelCache:
        """The model cache; its first use starts the housekeeping thread."""
        cache, keeper = self._cache, self._keeper
        assert cache is not None, "start_models() builds the cache"
        assert keeper is not None, "start_models() builds the housekeeping"
        if self._cache_used:
            return cache
        with self._lock:
            if not self._cache_used:
                keeper.start(self.liveness.register("keeper"))
                self._cache_used = True
                names = sorted(self.loaded.config.models)
                _log.info("component.started", component="cache", models=names)
        return cache

    @property
    def providers(self) -> Providers:
        """The [providers.NAME] clients (the openai loader's); each provider, and requests
        with the first one, is built when a model first needs it."""
        providers = self._providers
        assert providers is not None, "start_models() builds the providers"
        if self._providers_used:
            return providers
        with self._lock:
            if not self._providers_used:
                self._providers_used = True
                names = sorted(self.loaded.config.providers)
                _log.info("component.started", component="providers", providers=names)
        return providers

    def request_counts(self) -> dict[str, Any]:
        c = self.server.counters
        return {"total": c.requests, "errors": c.errors, "dropped": c.dropped}

    def status_line(self) -> str:
        line = self.monitor.status_line() if self.monitor is not None else None
        if line is not None:
            return line
        c = self.server.counters
        return f"serving on {self.runtime_dir} · {c.requests} requests · {c.errors} errors"

    def reload(self) -> dict[str, Any]:
        """Re-read the config and apply it; a bad file leaves the old config in force."""
        self.notifier.reloading()
        try:
            new = config.load(self._config_arg)
            log.check_files(new)  # a log path turned FIFO or symlink: refused, never opened
        except ConfigError as exc:
            _log.error(
                "config.invalid",
                path=exc.path,
                key=exc.key,
                value=exc.value,
                allowed=exc.allowed,
                error=str(exc),
                action="keeping the previous config",
            )
            self.notifier.ready(self.status_line())
            raise CommandError(
                protocol.CONFIG_INVALID, f"{exc}; the previous config stays"
            ) from None
        try:
            keys = self.endpoints.remote_keys(new.config)
        except StartupError as exc:
            _log.error("config.invalid", error=str(exc), action="keeping the previous config")
            self.notifier.ready(self.status_line())
            raise CommandError(
                protocol.CONFIG_INVALID, f"{exc}; the previous config stays"
            ) from None
        changed = config.changed_keys(self.loaded.config, new.config)
        differs = config.changed_keys(self.initial, new.config)
        restart = sorted(k for k in differs if k in config.RESTART_ONLY)
        self._apply(new)
        if keys is not None:
            self.server.gate.remote_keys = keys
        _log.info("config.reloaded", path=str(new.path), file_present=new.exists, changed=changed)
        if restart:
            _log.warning("config.restart_required", keys=restart)
        self.notifier.ready(self.status_line())
        return {
            "reloaded": True,
            "path": str(new.path),
            "changed": changed,
            "restart_required": restart,
        }

    # -- inside -----------------------------------------------------------------------------

    def _apply(self, new: config.LoadedConfig) -> None:
        """A reloaded config, fanned out to every part."""
        cfg = new.config
        if self._configure_logging:
            log.configure(cfg.log.level, self._log_format or cfg.log.format, cfg.log.file)
        self.endpoints.apply(cfg)
        if self.monitor is not None:
            self.monitor.reconfigure(cfg.monitor, cfg.alerts)
        with self._lock:  # no first use meanwhile logs the old config
            if self._cache is not None:
                self._cache.reconfigure(cfg.cache, cfg.models)
            if self._providers is not None:
                self._providers.reconfigure(cfg.providers)
            if self.engines is not None:
                self.engines.reconfigure(cfg.discovery, cfg.engines)
            self.loaded = new

    def _rss_limit(self, rss: int) -> int | None:
        """The limit ``rss`` is over, when it is (then idle connections are dropped): perfd's
        RSS at start, plus what its models and runtime hold in host memory
        (perfd.cache.report.host_bytes), plus [server] max_buffered_bytes."""
        limit = self._start_rss + self.loaded.config.server.max_buffered_bytes
        if not self._start_rss or rss <= limit:
            return None
        cache = self._used_cache()
        if cache is not None:
            from perfd.cache.report import host_bytes  # the cache is imported once used

            limit += host_bytes(cache.ps(), cache.runtime_overhead())
        return limit if rss > limit else None

    def _used_cache(self) -> ModelCache | None:
        """The cache once used (what scrapes and the memory limit read), else None."""
        return self._cache if self._cache_used else None

    def _used_providers(self) -> Providers | None:
        return self._providers if self._providers_used else None

    def _start_monitor(self) -> None:
        """Start sampling; READY=1 waits for the first sample (bounded by the NVML timeout)."""
        cfg = self.loaded.config
        from perfd.monitor.sinks import Sinks  # requests is imported when the first alert is sent

        b = self.boundaries
        sinks = Sinks(cfg.alerts)  # empty and idle without a url; a reload may add one
        self.monitor = Monitor(
            cfg.monitor,
            cfg.alerts,
            host_probe=b.host_probe(cfg.monitor) if b.host_probe is not None else None,
            gpu_probe=b.gpu_probe(cfg.monitor) if b.gpu_probe and cfg.monitor.gpu else None,
            heartbeat=self.liveness.register("monitor"),
            clock=b.clock,
            wall=b.wall,
            sinks=sinks,
        )
        self.monitor.start()
        wait = max(cfg.monitor.nvml_timeout, probes_init_timeout()) + 5.0
        if not self.monitor.first_sample.wait(wait):
            _log.warning("monitor.slow_first_sample", waited_s=wait, action="ready anyway")

    def _start_engines(self) -> None:
        """Watch the engines (after READY); the monitor reads their records at each sample."""
        monitor = self.monitor
        assert monitor is not None, "the monitor starts before the engines"
        cfg = self.loaded.config
        from perfd.engines.health import found_now
        from perfd.engines.watcher import Watcher
        from perfd.probes.processes import ProcessProbe

        b, table = self.boundaries, ProcessProbe()
        monitor.process_lookup = table.process  # the GPU processes' owners (cgroup, parent)
        watcher = Watcher(
            cfg.discovery,
            cfg.engines,
            read=b.engine_read,
            fetch=b.engine_fetch,
            discover=b.engine_discover
            or (lambda: found_now(table.scan, self.loaded.config.discovery.timeout)),
            processes=monitor.gpu_bytes_by_pid,
            heartbeat=self.liveness.register("engines"),
            beat_every=(self.notifier.watchdog_interval or 10.0) / 2,
            clock=b.clock,
            wall=b.wall,
        )
        watcher.start()
        self.engines = watcher
        monitor.engines = watcher.records
        _log.info("component.started", component="engines", discovery=cfg.discovery.enabled)

    def _start_metrics(self, listen: str) -> None:
        """Serve /metrics (prometheus_client is imported only here); a bind error is a
        StartupError. Scrapes read the parts' stats; they never start the cache or providers."""
        from perfd.metrics.exporter import MetricsServer, Sources
        from perfd.metrics.server import Limits

        monitor = self.monitor
        assert monitor is not None, "the monitor starts before the metrics"
        sinks = monitor.sinks  # built once, at start; reloads reconfigure it in place
        metrics = self.initial.metrics
        server = MetricsServer(
            listen,
            Sources(
                monitor,
                cache=lambda: None if (c := self._used_cache()) is None else c.stats(),
                configured_models=lambda: self.loaded.config.models,
                providers=lambda: None if (p := self._used_providers()) is None else p.stats(),
                sinks=sinks.stats if sinks is not None else lambda: None,
            ),
            Limits(metrics.max_connections, metrics.timeout, metrics.max_request_bytes),
        )
        server.start()
        self.metrics = server


def probes_init_timeout() -> float:
    """How long the first GPU sample may take (NVML init); imported lazily with the probes."""
    from perfd.probes.nvml import INIT_TIMEOUT

    return INIT_TIMEOUT

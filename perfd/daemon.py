"""perfd's entry point: config, logging, sockets, the main loop and an ordered shutdown.

Signal handlers only enqueue the signal (and wake the poll through the server's wake-up fd);
the main loop takes them off the queue and dispatches ``_on_<name>``. Shutdown always runs in
this order: STOPPING=1, stop taking requests, finish in-flight replies, stop threads, close
and unlink the sockets, release the lock, exit 0.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perfd import __version__, config, log, systemd
from perfd.errors import CommandError, ConfigError, StartupError
from perfd.handlers import table as handlers
from perfd.monitor.sampler import Monitor
from perfd.server import rundir
from perfd.server.access import AdminPolicy
from perfd.server.loop import Server
from perfd.systemd import Liveness, Notifier, Watchdog, raise_fd_limit
from perfd.wire import paths, protocol

if TYPE_CHECKING:  # built on first use, after READY: kept off the start-up path
    from perfd.cache.core import ModelCache
    from perfd.cache.housekeeping import Keeper
    from perfd.metrics.exporter import MetricsServer
    from perfd.net.provider import Providers
    from perfd.wire.keys import AuthorizedKey

_log = log.get("perfd.daemon")

_SIGNALS: dict[int, str] = {signal.SIGTERM: "term", signal.SIGINT: "int", signal.SIGHUP: "hup"}


class Daemon:
    def __init__(
        self,
        loaded: config.LoadedConfig,
        *,
        config_arg: str | None,
        runtime_dir: Path,
        log_format: str | None = None,
        notify: bool = True,
        configure_logging: bool = True,
    ) -> None:
        self.loaded = loaded
        self._initial = loaded.config  # start-only settings stay as they were at start
        self.runtime_dir = runtime_dir
        self.started_at = time.time()
        self.started_monotonic = time.monotonic()
        self._config_arg = config_arg
        self._log_format = log_format
        self._configure_logging = configure_logging  # False: an application's own structlog
        self._signals: collections.deque[int] = collections.deque()
        self._stop_reason: str | None = None
        self.notifier = Notifier(enabled=notify)
        self.liveness = Liveness()
        self.watchdog = Watchdog(self.notifier, self.liveness)
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
        self._start_rss = 0  # perfd's RSS when its sockets were bound
        self.monitor: Monitor | None = None
        self._cache: ModelCache | None = None
        self._keeper: Keeper | None = None
        self._cache_lock = threading.Lock()
        self._providers: Providers | None = None
        self._providers_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._metrics: MetricsServer | None = None
        self._status_samples = -1
        self._admin_group = loaded.config.server.group  # the group resolved at bind time
        self.remote_endpoint: str | None = None  # tcp endpoint bound, with the port chosen
        self.admin_socket = runtime_dir / protocol.MAIN_SOCKET
        self.readonly_socket = runtime_dir / protocol.READONLY_SOCKET

    # -- what handlers see ------------------------------------------------------------------

    def components(self) -> dict[str, str]:
        return {
            "server": "started",
            "monitor": "started" if self.monitor is not None else "not_started",
            "cache": "started" if self._cache is not None else "not_started",
            "providers": "started" if self._providers is not None else "not_started",
            "workers": "started" if self.server.pool_started else "not_started",
            "metrics": "started" if self._metrics is not None else "off",
            "remote": self.remote_endpoint or "off",
        }

    @property
    def cache_started(self) -> bool:
        return self._cache is not None

    @property
    def providers_started(self) -> bool:
        return self._providers is not None

    @property
    def providers(self) -> Providers:
        """The [providers.NAME] clients, built on first use (by the openai loader); each
        provider, and requests with the first one, is built when a model first needs it."""
        with self._providers_lock:
            if self._providers is None:
                from perfd.net.provider import Providers

                self._providers = Providers(self.loaded.config.providers)
                _log.info(
                    "component.started",
                    component="providers",
                    providers=sorted(self.loaded.config.providers),
                )
            return self._providers

    @property
    def cache(self) -> ModelCache:
        """The model cache, built on first use (with its housekeeping thread)."""
        with self._cache_lock:
            if self._cache is None:
                from perfd.cache import housekeeping as keeper
                from perfd.cache.core import ModelCache
                from perfd.cache.meter import ProcessMeter
                from perfd.loaders.openai import OpenAILoader
                from perfd.loaders.registry import Registry

                monitor = self.monitor
                assert monitor is not None, "the monitor starts before the cache"
                cfg = self.loaded.config
                registry = Registry(extra={"openai": OpenAILoader(lambda: self.providers)})
                self._cache = ModelCache(
                    cfg.cache,
                    cfg.models,
                    registry.get,
                    lambda device: keeper.capacity(monitor.snapshot(), device),
                    meter=ProcessMeter(gpu_use=monitor.own_gpu_bytes),
                    on_load=self._metrics.observe_load if self._metrics is not None else None,
                )
                self._keeper = keeper.Keeper(self._cache, monitor, self.liveness.register("keeper"))
                self._keeper.start()
                _log.info("component.started", component="cache", models=sorted(cfg.models))
            return self._cache

    def request_counts(self) -> dict[str, Any]:
        c = self.server.counters
        return {"total": c.requests, "errors": c.errors, "dropped": c.dropped}

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
            keys = self._remote_keys(new.config)
        except StartupError as exc:
            _log.error("config.invalid", error=str(exc), action="keeping the previous config")
            self.notifier.ready(self.status_line())
            raise CommandError(
                protocol.CONFIG_INVALID, f"{exc}; the previous config stays"
            ) from None
        changed = config.changed_keys(self.loaded.config, new.config)
        differs = config.changed_keys(self._initial, new.config)
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

    def _apply(self, new: config.LoadedConfig) -> None:
        cfg = new.config
        if self._configure_logging:
            log.configure(cfg.log.level, self._log_format or cfg.log.format, cfg.log.file)
        self.server.command_timeout = cfg.server.command_timeout
        shares = self.server.shares  # a lower limit cancels nothing already in flight
        shares.total, shares.admin_reserve = cfg.server.max_in_flight, cfg.server.admin_reserve
        shares.per_client = cfg.server.max_in_flight_per_client
        self.server.watch.set_cap(self._fit_connections(cfg.server.max_connections))
        if self.server.gate.policy is not None:
            self.server.gate.policy = self._policy(cfg)
        if self.monitor is not None:
            self.monitor.reconfigure(cfg.monitor, cfg.alerts)
        if self._cache is not None:
            self._cache.reconfigure(cfg.cache, cfg.models)
        with self._providers_lock:  # not built meanwhile from the old config
            if self._providers is not None:
                self._providers.reconfigure(cfg.providers)
            self.loaded = new

    def _rss_limit(self, rss: int) -> int | None:
        """The limit ``rss`` is over, when it is (then idle connections are dropped): perfd's
        RSS at start, plus its host models' (measured, else estimated), plus [server]
        max_buffered_bytes."""
        limit = self._start_rss + self.loaded.config.server.max_buffered_bytes
        if not self._start_rss or rss <= limit:
            return None
        cache = self._cache
        if cache is not None:
            for m in cache.ps():
                if m["device"] == "cpu":
                    limit += m["measured_bytes"] or m["estimated_bytes"] or 0
        return limit if rss > limit else None

    def _fit_connections(self, cap: int) -> int:
        """``cap`` connections per socket, lowered (with a warning) to fit the file limit."""
        from perfd.server import sockwatch

        try:
            return sockwatch.fit_to_fd_limit(cap, 3 if self._initial.remote.listen else 2)
        except ValueError as exc:
            raise StartupError(str(exc)) from None

    def _policy(self, cfg: config.Config) -> AdminPolicy:
        policy = AdminPolicy(
            users=cfg.access.admin_users, groups=(self._admin_group, *cfg.access.admin_groups)
        )
        unknown = policy.unknown_names()
        if unknown:
            _log.warning("access.unknown_names", names=unknown, action="ignored")
        return policy

    def _remote_keys(self, cfg: config.Config) -> dict[str, AuthorizedKey] | None:
        """The authorized client keys, when the tcp endpoint is on (at start: when it is
        configured); StartupError naming the file and line when they cannot be used."""
        listen = self._initial.remote.listen
        if not listen or not cfg.remote.authorized_keys:
            return None
        from perfd.wire import keys

        try:
            return keys.read_authorized(Path(cfg.remote.authorized_keys))
        except keys.KeyFileError as exc:
            raise StartupError(f"[remote] authorized_keys: {exc}") from None

    def status_line(self) -> str:
        line = self.monitor.status_line() if self.monitor is not None else None
        if line is not None:
            return line
        c = self.server.counters
        return f"serving on {self.runtime_dir} · {c.requests} requests · {c.errors} errors"

    # -- lifecycle --------------------------------------------------------------------------

    def run(self) -> int:
        """The daemon: signals, sockets, parts, the main loop, an ordered shutdown."""
        for signum in _SIGNALS:
            signal.signal(signum, self._enqueue)
        signal.set_wakeup_fd(self.server.wakeup_fd, warn_on_full_buffer=False)
        try:
            self.open()
            return self._serve()
        finally:
            self.close()
            signal.set_wakeup_fd(-1)

    def open(self, *, bind: bool = True) -> None:
        """Take the runtime directory, bind the sockets, start the monitor."""
        from perfd.server import sockwatch

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # raised by main(), not embedded
        _log.info("limits.files", soft=soft, hard=hard)
        cfg = self.loaded.config.server
        self.server.watch.set_cap(self._fit_connections(cfg.max_connections))
        if bind:
            prepared = rundir.prepare(self.runtime_dir)
            if not prepared.created and not prepared.mode & 0o001:
                _log.info(
                    "runtime_dir.private",
                    path=str(self.runtime_dir),
                    mode=f"{prepared.mode:04o}",
                    note="other users cannot reach perfd-ro.sock; perfd leaves the mode as is",
                )
            self._lock_fd = rundir.lock(self.runtime_dir)
            self._bind()
        self._start_rss = sockwatch.rss_bytes()
        self._start_monitor()
        if self._initial.metrics.listen:
            self._start_metrics(self._initial.metrics.listen)

    def close(self) -> None:
        """Stop threads, unload models, close and unlink the sockets, release the lock."""
        if self._metrics is not None:  # first: no scrape reads parts that are stopping
            self._metrics.stop()
            self._metrics = None
        if self._keeper is not None:
            self._keeper.stop()
        if self._cache is not None:
            self._cache.close()
        with self._providers_lock:
            if self._providers is not None:  # after the cache: no request can still use them
                self._providers.close()
                self._providers = None
        if self.monitor is not None:
            self.monitor.stop(self.loaded.config.monitor.nvml_timeout + 2)
        self.server.close()
        if self._lock_fd is not None:
            rundir.unlock(self.runtime_dir, self._lock_fd)
            self._lock_fd = None
        self.notifier.close()

    def preload(self) -> None:
        """Load the models marked preload = true, on a thread of their own, after READY."""
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

    def _bind(self) -> None:
        group = rundir.resolve_group(self.loaded.config.server.group)
        if group.fallback and self._group_matters():
            _log.warning(
                "access.group_missing",
                group=self.loaded.config.server.group,
                using=group.name,
                hint="create it (systemd/perfd.sysusers) so operators can be added to it",
            )
        for path in (self.admin_socket, self.readonly_socket):
            if rundir.clear_socket(path):
                _log.warning("socket.stale_removed", path=str(path))
        old_umask = os.umask(0o077)  # sockets are born private, then opened up below
        try:
            self.server.bind(self.admin_socket, readonly=False)
            self.server.bind(self.readonly_socket, readonly=True)
        finally:
            os.umask(old_umask)
        rundir.set_modes(self.admin_socket, self.readonly_socket, group)
        self._admin_group = group.name
        self.server.gate.policy = self._policy(self.loaded.config)
        if self._initial.remote.listen:
            self._bind_remote()

    def _group_matters(self) -> bool:
        """Whether a missing admin group is worth a warning: when it was configured (not the
        default `perfd`), or when perfd runs as a systemd service (systemd.service_stop_command
        has the rule), where operators expect the group. A user's own perfd stays quiet."""
        default = config.ServerConfig().group
        return self.loaded.config.server.group != default or (
            systemd.service_stop_command() is not None
        )

    def _bind_remote(self) -> None:
        """The tcp endpoint, with CURVE: refuse to start without usable keys."""
        from perfd.wire import keys

        remote = self._initial.remote
        if not keys.curve_available():
            raise StartupError("[remote] listen: this libzmq was built without CURVE support")
        try:
            pair = keys.read_secret_pair(Path(remote.secret_key_file))
        except keys.KeyFileError as exc:
            raise StartupError(f"[remote] secret_key_file: {exc}") from None
        allowed = self._remote_keys(self.loaded.config)
        assert allowed is not None, "config validation requires authorized_keys with listen"
        self.remote_endpoint = self.server.bind_remote(remote.listen, pair, allowed)
        roles = sorted(k.role for k in allowed.values())
        _log.info(
            "remote.listening",
            endpoint=self.remote_endpoint,
            server_key=pair.public.decode(),
            keys=len(roles),
            admin_keys=roles.count("admin"),
        )

    def _start_monitor(self) -> None:
        """Start sampling; READY=1 waits for the first sample (bounded by the NVML timeout)."""
        cfg = self.loaded.config
        from perfd.monitor.sinks import Sinks  # requests is imported when the first alert is sent

        sinks = Sinks(cfg.alerts)  # empty and idle without a url; a reload may add one
        self.monitor = Monitor(
            cfg.monitor, cfg.alerts, heartbeat=self.liveness.register("monitor"), sinks=sinks
        )
        self.monitor.start()
        wait = max(cfg.monitor.nvml_timeout, probes_init_timeout()) + 5.0
        if not self.monitor.first_sample.wait(wait):
            _log.warning("monitor.slow_first_sample", waited_s=wait, action="ready anyway")

    def _start_metrics(self, listen: str) -> None:
        """Serve /metrics (prometheus_client is imported only here); a bind error is a
        StartupError. Scrapes read the parts' stats; they never build the cache or providers."""
        from perfd.metrics.exporter import MetricsServer, Sources
        from perfd.metrics.server import Limits

        monitor = self.monitor
        assert monitor is not None, "the monitor starts before the metrics"
        sinks = monitor.sinks  # built once, at start; reloads reconfigure it in place
        server = MetricsServer(
            listen,
            Sources(
                monitor,
                cache=lambda: None if (c := self._cache) is None else c.stats(),
                configured_models=lambda: self.loaded.config.models,
                providers=lambda: None if (p := self._providers) is None else p.stats(),
                sinks=sinks.stats if sinks is not None else lambda: None,
            ),
            Limits(
                self._initial.metrics.max_connections,
                self._initial.metrics.timeout,
                self._initial.metrics.max_request_bytes,
            ),
        )
        server.start()
        self._metrics = server

    def _poll_timeout(self) -> float | None:
        """Wake for the watchdog, and to refresh STATUS= once per sample under systemd."""
        timeout = self.watchdog.timeout()
        if self.notifier.enabled:
            interval = self.loaded.config.monitor.interval
            timeout = interval if timeout is None else min(timeout, interval)
        return timeout

    def _refresh_status(self) -> None:
        """STATUS= after each new sample (the notifier sends only a changed line)."""
        samples = self.monitor.samples if self.monitor is not None else 0
        if self.notifier.enabled and samples != self._status_samples:
            self._status_samples = samples
            self.notifier.status(self.status_line())

    def _serve(self) -> int:
        beat = self.liveness.register("main")
        self.notifier.ready(self.status_line())
        _log.info(
            "daemon.started",
            version=__version__,
            pid=os.getpid(),
            config_path=str(self.loaded.path),
            config_file_present=self.loaded.exists,
            admin_socket=str(self.admin_socket),
            readonly_socket=str(self.readonly_socket),
            admin_group=self._admin_group,
            watchdog_interval_s=self.watchdog.interval,
        )
        self.preload()
        from perfd.cache import meter as memory  # ctypes: after READY, off the start-up path

        memory.fix_mmap_threshold()
        while self._stop_reason is None:
            self.server.poll(self._poll_timeout())
            beat.beat()
            while self._signals:
                getattr(self, f"_on_{_SIGNALS[self._signals.popleft()]}")()
            self._refresh_status()
            if not self.watchdog.tick() and self.watchdog.withheld:
                _log.error("watchdog.withheld", stale=self.watchdog.withheld)
        return self._shutdown()

    def _enqueue(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    def _on_term(self) -> None:
        self._stop_reason = "SIGTERM"

    def _on_int(self) -> None:
        self._stop_reason = "SIGINT"

    def _on_hup(self) -> None:
        _log.info("config.reload_requested", signal="SIGHUP")
        with contextlib.suppress(CommandError):  # logged as config.invalid; the old config stays
            self.reload()

    def _shutdown(self) -> int:
        self.notifier.stopping()
        _log.info("daemon.stopping", reason=self._stop_reason)
        self.server.stop_accepting()
        left = self.server.drain(self.loaded.config.server.shutdown_timeout)
        if left:
            _log.warning("daemon.unfinished", in_flight=left)
        _log.info("daemon.stopped", uptime_s=round(time.monotonic() - self.started_monotonic, 3))
        return 0


def probes_init_timeout() -> float:
    """How long the first GPU sample may take (NVML init); imported lazily with the probes."""
    from perfd.probes.nvml import INIT_TIMEOUT

    return INIT_TIMEOUT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perfd", description="The performance daemon for AI inference hosts."
    )
    parser.add_argument("--version", action="version", version=f"perfd {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"config file (default: {paths.default_config_path()}; none there means defaults)",
    )
    parser.add_argument(
        "--runtime-dir",
        metavar="DIR",
        help=f"socket directory (default: ${paths.RUNTIME_DIR_ENV}, then config, "
        f"then {paths.default_runtime_dir()})",
    )
    parser.add_argument(
        "--log-format", choices=config.LOG_FORMATS, help="overrides [log] format from the config"
    )
    parser.add_argument(
        "--check-config",
        nargs="?",
        const="",
        metavar="PATH",
        help="validate the config (PATH, --config or the default) and exit 0 if valid, 1 if not",
    )
    return parser


def check_config(path: str | None) -> int:
    try:
        loaded = config.load(path)
        log.check_files(loaded)
    except ConfigError as exc:
        print(f"perfd: {exc}", file=sys.stderr)
        return 1
    if loaded.exists:
        print(f"perfd: {loaded.path}: valid")
    else:
        print(f"perfd: no config file at {loaded.path}; the defaults apply")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.check_config is not None:
        return check_config(args.check_config or args.config)
    try:
        loaded = config.load(args.config)
        log.check_files(loaded)
    except ConfigError as exc:
        # Like every other start failure: one JSON line on stdout (the journal), and stderr.
        log.configure(fmt=args.log_format or "json")
        _log.error("daemon.start_failed", error=str(exc), path=exc.path, key=exc.key)
        print(f"perfd: {exc}", file=sys.stderr)
        return 1
    cfg = loaded.config
    log.configure(cfg.log.level, args.log_format or cfg.log.format, cfg.log.file)
    before, now = raise_fd_limit()  # the unit's LimitNOFILE=, before any socket is opened
    if now != before:
        _log.info("daemon.fd_limit_raised", soft_before=before, soft=now)
    runtime_dir = Path(paths.runtime_dir(args.runtime_dir, cfg.runtime_dir))
    daemon = Daemon(
        loaded, config_arg=args.config, runtime_dir=runtime_dir, log_format=args.log_format
    )
    try:
        return daemon.run()
    except StartupError as exc:
        _log.error("daemon.start_failed", error=str(exc))
        print(f"perfd: {exc}", file=sys.stderr)
        return 1

"""perfd's entry point: config, logging, the main loop and an ordered shutdown; the parts
(sockets, monitor, cache, providers, metrics) are built and started by perfd.parts.

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
import signal
import sys
import time
from pathlib import Path

from perfd import __version__, config, log
from perfd.errors import CommandError, ConfigError, StartupError
from perfd.parts import Boundaries, Parts
from perfd.systemd import Liveness, Notifier, Watchdog, raise_fd_limit
from perfd.wire import paths

_log = log.get("perfd.daemon")

_SIGNALS: dict[int, str] = {signal.SIGTERM: "term", signal.SIGINT: "int", signal.SIGHUP: "hup"}


class Daemon:
    """The lifecycle around the parts (perfd.parts): signals, the main loop, systemd's
    notify and watchdog, an ordered shutdown."""

    def __init__(
        self,
        loaded: config.LoadedConfig,
        *,
        config_arg: str | None,
        runtime_dir: Path,
        log_format: str | None = None,
        boundaries: Boundaries | None = None,
    ) -> None:
        self._signals: collections.deque[int] = collections.deque()
        self._stop_reason: str | None = None
        self.notifier = Notifier(enabled=True)
        self.liveness = Liveness()
        self.watchdog = Watchdog(self.notifier, self.liveness)
        self.parts = Parts(
            loaded,
            runtime_dir=runtime_dir,
            config_arg=config_arg,
            notifier=self.notifier,
            liveness=self.liveness,
            boundaries=boundaries,
            log_format=log_format,
        )
        self._status_samples = -1

    def run(self) -> int:
        """The daemon: signals, sockets, parts, the main loop, an ordered shutdown."""
        server = self.parts.server
        for signum in _SIGNALS:
            signal.signal(signum, self._enqueue)
        signal.set_wakeup_fd(server.wakeup_fd, warn_on_full_buffer=False)
        try:
            self.parts.start()
            return self._serve()
        finally:
            self.parts.close()
            self.notifier.close()
            signal.set_wakeup_fd(-1)

    def _poll_timeout(self) -> float | None:
        """Wake for the watchdog, and to refresh STATUS= once per sample under systemd."""
        timeout = self.watchdog.timeout()
        if self.notifier.enabled:
            interval = self.parts.loaded.config.monitor.interval
            timeout = interval if timeout is None else min(timeout, interval)
        return timeout

    def _refresh_status(self) -> None:
        """STATUS= after each new sample (the notifier sends only a changed line)."""
        monitor = self.parts.monitor
        samples = monitor.samples if monitor is not None else 0
        if self.notifier.enabled and samples != self._status_samples:
            self._status_samples = samples
            self.notifier.status(self.parts.status_line())

    def _serve(self) -> int:
        parts = self.parts
        beat = self.liveness.register("main")
        self.notifier.ready(parts.status_line())
        _log.info(
            "daemon.started",
            version=__version__,
            pid=os.getpid(),
            config_path=str(parts.loaded.path),
            config_file_present=parts.loaded.exists,
            admin_socket=str(parts.endpoints.admin_socket),
            readonly_socket=str(parts.endpoints.readonly_socket),
            admin_group=parts.endpoints.admin_group,
            watchdog_interval_s=self.watchdog.interval,
        )
        parts.start_models()  # before the first request is read
        from perfd.cache import meter as memory  # ctypes: after READY, off the start-up path

        memory.fix_mmap_threshold()
        while self._stop_reason is None:
            parts.server.poll(self._poll_timeout())
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
            self.parts.reload()

    def _shutdown(self) -> int:
        server = self.parts.server
        self.notifier.stopping()
        _log.info("daemon.stopping", reason=self._stop_reason)
        server.stop_accepting()
        left = server.drain(self.parts.loaded.config.server.shutdown_timeout)
        if left:
            _log.warning("daemon.unfinished", in_flight=left)
        uptime = time.monotonic() - self.parts.started_monotonic
        _log.info("daemon.stopped", uptime_s=round(uptime, 3))
        return 0


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


def main(argv: list[str] | None = None, *, boundaries: Boundaries | None = None) -> int:
    """perfd's command line. ``boundaries``: the probes, loaders and clocks the parts use
    (perfd.parts.Boundaries; None: the real ones). tests/launcher.py passes fakes here."""
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
        loaded,
        config_arg=args.config,
        runtime_dir=runtime_dir,
        log_format=args.log_format,
        boundaries=boundaries,
    )
    try:
        return daemon.run()
    except StartupError as exc:
        _log.error("daemon.start_failed", error=str(exc))
        print(f"perfd: {exc}", file=sys.stderr)
        return 1

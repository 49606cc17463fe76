"""perfd inside an application's own process: the same monitor and model cache, serving the
same sockets (so `perfctl ps` shows this process's cache), on background threads.

    import perfd

    with perfd.embed("perfd.toml") as pd:
        with pd.cache.lease("embedder") as model:  # held: cannot be evicted meanwhile
            vectors = model.infer(["hello"])

Unlike the daemon, an embedded perfd installs no signal handlers and sends nothing to systemd
(the host process may be a service of its own). Its log lines go through the application's
structlog configuration, which it leaves alone, also on a reload; an application that has not
configured structlog gets perfd's own lines in the format of ``perfd --log-format console``
(level, file and redaction from ``[log]``) while perfd runs, and structlog's defaults back after.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from perfd import config, log
from perfd.cache.core import ModelCache
from perfd.monitor.sampler import Monitor
from perfd.parts import Parts
from perfd.systemd import Liveness, Notifier
from perfd.wire import paths

CONSOLE = "console"  # perfd's log format for an application that has not configured structlog


class Embedded:
    """What ``embed`` yields: the running parts."""

    def __init__(self, parts: Parts) -> None:
        self._parts = parts

    @property
    def cache(self) -> ModelCache:
        return self._parts.cache

    @property
    def monitor(self) -> Monitor:
        assert self._parts.monitor is not None
        return self._parts.monitor

    @property
    def runtime_dir(self) -> Path:
        return self._parts.runtime_dir

    def stats(self) -> dict[str, Any]:
        """The same data `perfctl stats --json` shows."""
        return self._parts.server.commands["stats"].handler({})  # type: ignore[no-any-return]


@contextlib.contextmanager
def embed(
    settings: str | Path | config.Config | None = None,
    *,
    runtime_dir: str | Path | None = None,
    serve: bool = True,
) -> Iterator[Embedded]:
    """Start perfd's parts in this process; stop them (and unload every model) on exit.

    ``settings``: a perfd.toml path, a ``config.Config``, or None for the defaults.
    ``serve=False`` runs the monitor and cache without sockets.
    """
    if isinstance(settings, config.Config):
        loaded = config.LoadedConfig(settings, Path("<embedded>"), exists=False)
        config_arg = None
    else:
        config_arg = None if settings is None else str(settings)
        loaded = (
            config.load(config_arg)
            if config_arg
            else config.LoadedConfig(config.Config(), Path("<embedded>"), exists=False)
        )
    where = Path(
        paths.runtime_dir(str(runtime_dir) if runtime_dir else None, loaded.config.runtime_dir)
    )
    own_log = not structlog.is_configured()  # the application's own logging wins
    if own_log:
        cfg = loaded.config.log
        log.configure(cfg.level, CONSOLE, cfg.file)
    parts = Parts(
        loaded,
        config_arg=config_arg,
        runtime_dir=where,
        notifier=Notifier(enabled=False),
        liveness=Liveness(),
        log_format=CONSOLE,
        configure_logging=own_log,
    )
    stop = threading.Event()
    thread: threading.Thread | None = None
    try:
        parts.start(bind=serve)
        parts.start_models()
        if serve:
            thread = threading.Thread(
                target=_serve, args=(parts, stop), name="perfd-server", daemon=True
            )
            thread.start()
        yield Embedded(parts)
    finally:
        stop.set()
        if thread is not None:
            thread.join(10)
            parts.server.stop_accepting()
            parts.server.drain(loaded.config.server.shutdown_timeout)
        parts.close()
        if own_log:
            log.configure()  # closes a [log] file
            structlog.reset_defaults()


def _serve(parts: Parts, stop: threading.Event) -> None:
    """The embedded main loop: answer requests until ``stop`` (no signals, no watchdog)."""
    while not stop.is_set():
        parts.server.poll(0.1)

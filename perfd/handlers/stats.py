"""stats and alerts: the monitor's latest snapshot with the cache's and providers' counters,
and the alert states."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from perfd.errors import CommandError
from perfd.handlers import engines
from perfd.handlers.providers import provider_counts
from perfd.handlers.view import MonitorView, StatsView
from perfd.monitor.snapshot import stats_reply
from perfd.wire import protocol

if TYPE_CHECKING:
    from perfd.monitor.sampler import Monitor


def running_monitor(view: MonitorView) -> Monitor:
    """The monitor; busy until it has started."""
    if view.monitor is None:
        raise CommandError(protocol.BUSY, "the monitor has not started yet; retry shortly")
    return view.monitor


def stats(view: StatsView, _args: dict[str, Any]) -> dict[str, Any]:
    monitor = running_monitor(view)
    snapshot = monitor.snapshot()
    if snapshot is None:
        raise CommandError(protocol.BUSY, "no sample yet; retry shortly")
    if view.cache_started:
        cache: dict[str, Any] = {"started": True, **view.cache.stats()}
    else:
        cache = {"started": False, "configured": sorted(view.loaded.config.models)}
    result = {**stats_reply(snapshot), "cache": cache}
    result["engines"] = engines.section(snapshot.engines)
    engines.owners(result, snapshot, monitor.process_lookup)
    counts = provider_counts(view.providers.stats()) if view.providers_started else {}
    if counts:  # only once a provider has been used
        result["providers"] = counts
    return result


def alerts(view: MonitorView, _args: dict[str, Any]) -> dict[str, Any]:
    return running_monitor(view).alerts()

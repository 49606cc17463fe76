"""The alert state machine: for, escalation, hysteresis, repeat, retirement."""

from __future__ import annotations

from perfd.monitor import alerts
from perfd.monitor.alerts import AlertMachine, Observation, Policy


def obs(
    value: float | None,
    *,
    for_s: float = 0.0,
    clear: int = 3,
    repeat_s: float = 3600.0,
    warn: float = 80.0,
    crit: float = 95.0,
) -> Observation:
    level, threshold = alerts.level_above(value, warn, crit)
    return Observation(
        "host_memory", "host", level, value, threshold, "%", Policy(for_s, clear, repeat_s)
    )


def feed(
    machine: AlertMachine,
    values: list[float | None],
    start: float = 0.0,
    step: float = 1.0,
    **kw: float,
) -> list[tuple[float, str, str | None]]:
    """Observe values one second apart; return (time, transition kind, severity)."""
    out = []
    for i, value in enumerate(values):
        now = start + i * step
        for t in machine.observe(obs(value, **kw), now, 1e9 + now):
            out.append((now, t.kind + ("+repeat" if t.repeat else ""), t.alert.severity))
    return out


def test_fires_at_once_without_for() -> None:
    """for = 0: the first sample above warn fires a warning."""
    assert feed(AlertMachine(), [50, 85]) == [(1.0, "firing", "warning")]


def test_for_delays_firing() -> None:
    """The condition must hold for `for` seconds; a dip resets it."""
    machine = AlertMachine()
    assert feed(machine, [85, 85, 50, 85, 85, 85, 85], for_s=2.5) == [(6.0, "firing", "warning")]


def test_escalation_and_deescalation() -> None:
    """warning -> critical at once; back to warning after `clear` samples below crit."""
    kinds = feed(AlertMachine(), [85, 97, 90, 90, 90], clear=3)
    assert kinds == [
        (0.0, "firing", "warning"),
        (1.0, "escalated", "critical"),
        (4.0, "deescalated", "warning"),
    ]


def test_straight_to_critical() -> None:
    """A first sample above crit fires as critical."""
    assert feed(AlertMachine(), [99]) == [(0.0, "firing", "critical")]


def test_hysteresis_needs_clear_samples() -> None:
    """Resolving takes `clear` consecutive samples below warn; one sample back above resets."""
    kinds = feed(AlertMachine(), [85, 70, 70, 85, 70, 70, 70], clear=3)
    assert kinds == [(0.0, "firing", "warning"), (6.0, "resolved", "warning")]


def test_flapping_around_the_threshold_is_one_alert() -> None:
    """Values flapping around warn produce one firing, not a storm."""
    kinds = feed(AlertMachine(), [81, 79, 81, 79, 81, 79, 81], clear=3)
    assert kinds == [(0.0, "firing", "warning")]


def test_repeat_for_still_firing_alerts() -> None:
    """A still-firing alert is logged again every `repeat` seconds, counting repeats."""
    kinds = feed(AlertMachine(), [85] * 8, step=1.0, repeat_s=3.0)
    assert kinds == [
        (0.0, "firing", "warning"),
        (3.0, "firing+repeat", "warning"),
        (6.0, "firing+repeat", "warning"),
    ]


def test_firing_list_and_stable_ids() -> None:
    """firing() lists alerts with stable ids, most severe first."""
    machine = AlertMachine()
    machine.observe(obs(85), 0, 1e9)
    crit = Observation(
        "gpu_memory", "gpu1", "critical", 99.0, 98.0, "%", Policy(0, 3, 3600), {"uuid": "GPU-1"}
    )
    machine.observe(crit, 1, 1e9 + 1)
    firing = [a.as_dict() for a in machine.firing()]
    assert [a["id"] for a in firing] == ["gpu_memory/gpu1", "host_memory/host"]
    assert firing[0]["uuid"] == "GPU-1"
    assert firing[1]["since"] == "2001-09-09T01:46:40Z"
    assert set(firing[1]) >= {"id", "rule", "resource", "severity", "value", "threshold", "since"}


def test_retire_resolves_alerts_of_removed_rules() -> None:
    """A rule disabled on reload resolves its firing alert."""
    machine = AlertMachine()
    machine.observe(obs(85), 0, 1e9)
    (transition,) = machine.retire({"swap"}, 1e9 + 5)  # host_memory no longer enabled
    assert transition.kind == "resolved"
    assert machine.firing() == []


def test_level_below_for_time_to_full() -> None:
    """Time-to-full levels: lower is worse."""
    assert alerts.level_below(100, 1800, 300) == ("critical", 300)
    assert alerts.level_below(1000, 1800, 300) == ("warning", 1800)
    assert alerts.level_below(5000, 1800, 300) == (None, 1800)
    assert alerts.level_below(None, 1800, 300) == (None, 1800)

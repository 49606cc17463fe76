"""Alerts: a state machine per (rule, resource), fed one observation per sample.

An observation says which level the condition is at now (``critical``, ``warning`` or None).
The machine adds what makes alerts trustworthy rather than noisy (netdata's and Prometheus'
lessons): a ``for`` duration before firing, ``clear`` consecutive samples outside the condition
before resolving (hysteresis), and a ``repeat`` interval for still-firing alerts. Only
transitions come out: firing, escalated, deescalated, resolved, and repeats.

    inactive --level--> pending --held `for`--> firing --higher level--> escalated
        ^                  |                      |  \\--`clear` lower samples--> deescalated
        +----no level------+                      +--`clear` samples without--> resolved

Pure logic: times come in as arguments; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from perfd.wire.values import rfc3339

WARNING: Final = "warning"
CRITICAL: Final = "critical"
_RANK: Final = {None: 0, WARNING: 1, CRITICAL: 2}

# An alert or a transition as the `alerts` reply, the alert log and the sinks carry it
# (Alert.as_dict, Transition.as_dict): JSON values only.
AlertRecord = dict[str, object]

FIRING: Final = "firing"
ESCALATED: Final = "escalated"
DEESCALATED: Final = "deescalated"
RESOLVED: Final = "resolved"


@dataclass(frozen=True)
class Policy:
    """The timing part of a rule."""

    for_s: float
    clear: int
    repeat_s: float


@dataclass(frozen=True)
class Observation:
    rule: str
    resource: str
    level: str | None  # WARNING, CRITICAL or None (condition not met)
    value: float | None
    threshold: float  # the threshold of ``level``, or of warning when level is None
    unit: str
    policy: Policy
    labels: dict[str, object] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.rule}/{self.resource}"


@dataclass
class _State:
    obs: Observation
    pending_since: float
    firing: bool = False
    severity: str | None = None
    since_wall: float = 0.0
    outside: int = 0  # consecutive samples without the condition
    lower: int = 0  # consecutive samples at a lower level than ``severity``
    notified: float = 0.0
    repeats: int = 0


@dataclass(frozen=True)
class Alert:
    """One alert as it stands: firing now, or as a transition left it."""

    id: str  # "rule/resource"
    rule: str
    resource: str
    severity: str  # WARNING or CRITICAL
    value: float | None  # rounded to 0.001
    threshold: float
    unit: str
    since: str  # RFC 3339: when it fired
    labels: Mapping[str, object]  # the observation's: uuid, free_percent

    def as_dict(self) -> AlertRecord:
        return {
            "id": self.id,
            "rule": self.rule,
            "resource": self.resource,
            "severity": self.severity,
            "value": self.value,
            "threshold": self.threshold,
            "unit": self.unit,
            "since": self.since,
            **self.labels,
        }


@dataclass(frozen=True)
class Transition:
    kind: str  # FIRING, ESCALATED, DEESCALATED, RESOLVED; repeats are FIRING with repeat > 0
    alert: Alert
    at: float  # wall clock
    repeat: int = 0
    previous: str | None = None

    def as_dict(self) -> AlertRecord:
        out = {"event": f"alert.{self.kind}", "at": rfc3339(self.at), **self.alert.as_dict()}
        if self.repeat:
            out["repeat"] = self.repeat
        if self.previous:
            out["previous_severity"] = self.previous
        return out


class AlertMachine:
    """The alert states of every (rule, resource) seen so far."""

    def __init__(self) -> None:
        self._states: dict[str, _State] = {}

    def observe(self, obs: Observation, now: float, wall: float) -> list[Transition]:
        """Feed one observation taken at monotonic ``now``; return the transitions it caused."""
        state = self._states.get(obs.id)
        if state is None:
            if obs.level is None:
                return []
            state = self._states[obs.id] = _State(obs, pending_since=now)
        state.obs = obs if obs.level is not None or not state.firing else _keep_level(state, obs)
        if not state.firing:
            return self._pending(state, obs, now, wall)
        return self._firing(state, obs, now, wall)

    def _pending(
        self, state: _State, obs: Observation, now: float, wall: float
    ) -> list[Transition]:
        if obs.level is None:
            del self._states[obs.id]  # never fired: nothing to tell
            return []
        if now - state.pending_since < obs.policy.for_s:
            return []
        state.firing, state.severity = True, obs.level
        state.since_wall, state.notified = wall, now
        return [Transition(FIRING, self._alert(state), wall)]

    def _firing(self, state: _State, obs: Observation, now: float, wall: float) -> list[Transition]:
        if obs.level is None:
            state.outside += 1
            state.lower = 0
            if state.outside >= obs.policy.clear:
                del self._states[obs.id]
                return [Transition(RESOLVED, self._alert(state, value=obs.value), wall)]
            return self._maybe_repeat(state, now, wall)
        state.outside = 0
        if _RANK[obs.level] > _RANK[state.severity]:
            previous, state.severity, state.lower = state.severity, obs.level, 0
            state.notified = now
            return [Transition(ESCALATED, self._alert(state), wall, previous=previous)]
        if _RANK[obs.level] < _RANK[state.severity]:
            state.lower += 1
            if state.lower >= obs.policy.clear:
                previous, state.severity, state.lower = state.severity, obs.level, 0
                state.notified = now
                return [Transition(DEESCALATED, self._alert(state), wall, previous=previous)]
        else:
            state.lower = 0
        return self._maybe_repeat(state, now, wall)

    def _maybe_repeat(self, state: _State, now: float, wall: float) -> list[Transition]:
        if now - state.notified < state.obs.policy.repeat_s:
            return []
        state.notified = now
        state.repeats += 1
        return [Transition(FIRING, self._alert(state), wall, repeat=state.repeats)]

    def retire(self, rules: set[str], wall: float) -> list[Transition]:
        """Resolve the alerts of rules no longer enabled (disabled on reload)."""
        out = []
        for alert_id in [i for i, s in self._states.items() if s.obs.rule not in rules]:
            state = self._states.pop(alert_id)
            if state.firing:
                out.append(Transition(RESOLVED, self._alert(state), wall))
        return out

    def firing(self) -> list[Alert]:
        """Firing alerts, most severe first, then oldest first."""
        states = [s for s in self._states.values() if s.firing]
        states.sort(key=lambda s: (-_RANK[s.severity], s.since_wall))
        return [self._alert(s) for s in states]

    @staticmethod
    def _alert(state: _State, value: float | None = None) -> Alert:
        obs = state.obs
        shown = obs.value if value is None else value
        assert state.severity is not None, "an alert exists once its state has fired"
        return Alert(
            id=obs.id,
            rule=obs.rule,
            resource=obs.resource,
            severity=state.severity,
            value=None if shown is None else round(shown, 3),
            threshold=obs.threshold,
            unit=obs.unit,
            since=rfc3339(state.since_wall),
            labels=obs.labels,
        )


def _keep_level(state: _State, obs: Observation) -> Observation:
    """While resolving, keep the firing threshold on the alert (the new one is the warn one)."""
    return Observation(
        obs.rule,
        obs.resource,
        obs.level,
        obs.value,
        state.obs.threshold,
        obs.unit,
        obs.policy,
        obs.labels,
    )


def level_above(value: float | None, warn: float, crit: float) -> tuple[str | None, float]:
    """The level of a value that is bad when high, and the threshold it crossed."""
    if value is None:
        return None, warn
    if value >= crit:
        return CRITICAL, crit
    if value >= warn:
        return WARNING, warn
    return None, warn


def level_below(value: float | None, warn: float, crit: float) -> tuple[str | None, float]:
    """The level of a value that is bad when low (time to full), and the threshold it crossed."""
    if value is None:
        return None, warn
    if value <= crit:
        return CRITICAL, crit
    if value <= warn:
        return WARNING, warn
    return None, warn

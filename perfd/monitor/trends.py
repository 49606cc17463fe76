"""Memory trends: a ring buffer of (time, used bytes) and a least-squares fit over a window.

Pure functions of values: no clock, no threads. Direction is ``increasing`` or
``decreasing`` only when the fitted change over the window exceeds a noise band (a percent of
capacity), so a flat line with jitter stays ``stable``. ``time_to_full_s`` extrapolates the
slope to capacity, and is None unless increasing (Prometheus' predict_linear, with the fit
quality ``r2`` beside it so a reader can judge it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

INCREASING: Final = "increasing"
DECREASING: Final = "decreasing"
STABLE: Final = "stable"

MIN_POINTS: Final = 3
# The fit uses at most this many evenly spaced points of the window: plenty for a slope, and
# a 1 s interval over 5 minutes costs no more than 5 s would.
MAX_FIT_POINTS: Final = 120


@dataclass(frozen=True)
class Trend:
    direction: str
    rate_bytes_per_s: float
    r2: float | None
    time_to_full_s: float | None
    points: int
    span_s: float

    def as_dict(self) -> dict[str, object]:
        return {
            "direction": self.direction,
            "rate_bytes_per_s": round(self.rate_bytes_per_s, 3),
            "r2": None if self.r2 is None else round(self.r2, 4),
            "time_to_full_s": None
            if self.time_to_full_s is None
            else round(self.time_to_full_s, 1),
            "points": self.points,
            "span_s": round(self.span_s, 3),
        }


class Series:
    """The last ``history`` seconds of (t, used bytes) for one resource."""

    def __init__(self, history: float, interval: float) -> None:
        self._points: deque[tuple[float, float]] = deque(maxlen=max(8, int(history / interval) + 2))
        self.history = history
        self.interval = interval

    def add(self, t: float, used: float) -> None:
        self._points.append((t, used))
        while self._points and t - self._points[0][0] > self.history:
            self._points.popleft()

    def window(self, span: float) -> list[tuple[float, float]]:
        """The points of the last ``span`` seconds (walks back from the newest only)."""
        if not self._points:
            return []
        end = self._points[-1][0]
        out = []
        for point in reversed(self._points):
            if end - point[0] > span:
                break
            out.append(point)
        out.reverse()
        return out

    def __len__(self) -> int:
        return len(self._points)


def fit(points: Iterable[tuple[float, float]]) -> tuple[float, float, float | None]:
    """Least-squares line through the points: (slope, intercept, r2); r2 None when undefined."""
    pts = list(points)
    n = len(pts)
    if n < 2:
        return 0.0, pts[0][1] if pts else 0.0, None
    t0 = pts[0][0]  # shift time for numerical stability (monotonic clocks are large numbers)
    xs = [t - t0 for t, _ in pts]
    ys = [y for _, y in pts]
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, mean_y, None
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    intercept = mean_y - slope * (mean_x + t0)
    syy = sum((y - mean_y) ** 2 for y in ys)
    r2 = 1.0 if syy == 0 else (sxy * sxy) / (sxx * syy)
    return slope, intercept, r2


def thin(points: list[tuple[float, float]], most: int) -> list[tuple[float, float]]:
    """At most ``most`` points, evenly spaced, always keeping the first and the last."""
    if len(points) <= most:
        return points
    step = (len(points) - 1) / (most - 1)
    return [points[round(i * step)] for i in range(most)]


def classify(points: list[tuple[float, float]], capacity: float, noise_percent: float) -> Trend:
    """The trend of ``points`` against ``capacity`` bytes."""
    if len(points) < MIN_POINTS or capacity <= 0:
        span = points[-1][0] - points[0][0] if points else 0.0
        return Trend(STABLE, 0.0, None, None, len(points), span)
    slope, _, r2 = fit(thin(points, MAX_FIT_POINTS))
    span = points[-1][0] - points[0][0]
    band = capacity * noise_percent / 100.0
    change = slope * span
    if change > band:
        direction = INCREASING
    elif change < -band:
        direction = DECREASING
    else:
        direction = STABLE
    time_to_full = None
    if direction == INCREASING and slope > 0:
        time_to_full = max(0.0, (capacity - points[-1][1]) / slope)
    return Trend(direction, slope, r2, time_to_full, len(points), span)

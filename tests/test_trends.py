"""Trend fitting and classification: pure functions of points."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perfd.monitor import trends

GiB = 1 << 30


def _line(
    slope: float, start: float = 10 * GiB, n: int = 61, step: float = 5.0
) -> list[tuple[float, float]]:
    return [(1000.0 + i * step, start + slope * i * step) for i in range(n)]


def test_fit_recovers_a_line() -> None:
    """A perfect line gives its slope and r2 = 1."""
    slope, _, r2 = trends.fit(_line(1e6))
    assert slope == pytest.approx(1e6)
    assert r2 == pytest.approx(1.0)


def test_increasing_with_time_to_full() -> None:
    """10 MB/s towards 64 GiB: increasing, and time to full is the remaining bytes / rate."""
    points = _line(10e6)
    trend = trends.classify(points, 64 * GiB, noise_percent=1.0)
    assert trend.direction == trends.INCREASING
    assert trend.rate_bytes_per_s == pytest.approx(10e6)
    assert trend.time_to_full_s == pytest.approx((64 * GiB - points[-1][1]) / 10e6)


def test_decreasing_has_no_time_to_full() -> None:
    """A falling line is decreasing and never 'full'."""
    trend = trends.classify(_line(-10e6), 64 * GiB, noise_percent=1.0)
    assert trend.direction == trends.DECREASING
    assert trend.time_to_full_s is None


def test_jitter_within_the_noise_band_is_stable() -> None:
    """Jitter of a few MB around a flat line over 5 minutes is stable."""
    points = [(1000.0 + i * 5, 10 * GiB + (4e6 if i % 2 else -4e6)) for i in range(61)]
    trend = trends.classify(points, 64 * GiB, noise_percent=1.0)
    assert trend.direction == trends.STABLE
    assert trend.time_to_full_s is None


def test_slow_growth_under_the_band_is_stable() -> None:
    """Growth smaller than the band over the window (1% of 64 GiB in 5 min) is stable."""
    per_s = 0.5 * 0.01 * 64 * GiB / 300
    assert trends.classify(_line(per_s), 64 * GiB, 1.0).direction == trends.STABLE
    assert trends.classify(_line(4 * per_s), 64 * GiB, 1.0).direction == trends.INCREASING


def test_too_few_points() -> None:
    """Fewer than three points: stable, no fit quality."""
    trend = trends.classify(_line(1e9, n=2), 64 * GiB, 1.0)
    assert (trend.direction, trend.r2, trend.points) == (trends.STABLE, None, 2)


def test_series_keeps_history_and_windows() -> None:
    """The ring buffer drops points older than history; window() returns the recent span."""
    series = trends.Series(history=60, interval=5)
    for i in range(100):
        series.add(i * 5.0, float(i))
    assert len(series) <= 14
    window = series.window(20)
    assert [t for t, _ in window] == [475.0, 480.0, 485.0, 490.0, 495.0]


@given(
    st.lists(st.floats(min_value=0, max_value=1e12), min_size=3, max_size=50),
    st.floats(min_value=0.1, max_value=100),
)
def test_classify_invariants(values: list[float], noise: float) -> None:
    """Any series: r2 in [0, 1]; time to full only when increasing, and never negative."""
    points = [(float(i), v) for i, v in enumerate(values)]
    trend = trends.classify(points, 1e12, noise)
    assert trend.r2 is None or -1e-9 <= trend.r2 <= 1 + 1e-9
    if trend.time_to_full_s is not None:
        assert trend.direction == trends.INCREASING
        assert trend.time_to_full_s >= 0


def test_thin_keeps_ends_and_slope() -> None:
    """Thinning a long window keeps its ends and its fitted slope."""
    points = _line(1e6, n=3601, step=1.0)
    thinned = trends.thin(points, trends.MAX_FIT_POINTS)
    assert len(thinned) == trends.MAX_FIT_POINTS
    assert (thinned[0], thinned[-1]) == (points[0], points[-1])
    assert trends.fit(thinned)[0] == pytest.approx(trends.fit(points)[0])

"""CPU and memory right-sizing, VPA's way: decayed p90 plus a margin per workload and
container, a quick shrink after a sustained drop, tolerance before a request is called
wrong; and random broken series never crash it."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optimizer.forecast.resources import (
    FLOOR,
    MARGIN,
    MIB,
    ContainerSeries,
    decayed_percentile,
    quantity,
    recommend_resources,
    target,
)
from optimizer.forecast.rightsizing import Workload

HOUR = 3600.0
NOW = 100 * HOUR
GIB = 1024**3


def _series(
    pod: str, cpu: list[float], memory: list[float], *, step: float = 300
) -> ContainerSeries:
    """Samples every ``step`` seconds, the last one now."""
    n = len(cpu)
    times = tuple(NOW - step * (n - 1 - i) for i in range(n))
    return ContainerSeries("ml", pod, "trainer", times, tuple(cpu), tuple(memory))


def test_decayed_percentile_weighs_the_recent_more() -> None:
    times = [NOW - 10 * 86_400.0, NOW]  # ten half-lives apart
    assert decayed_percentile(times, [8.0, 1.0], now_s=NOW, q=0.5, half_life_s=86_400) == 1.0
    assert decayed_percentile(times, [8.0, 1.0], now_s=NOW, q=0.5, half_life_s=math.inf) == 1.0
    assert decayed_percentile(times, [1.0, 8.0], now_s=NOW, q=0.5, half_life_s=86_400) == 8.0


def test_a_sustained_drop_resets_the_history() -> None:
    """A day at 8 cores, then seven hours at 1: the target follows the drop."""
    times = [NOW - 300.0 * k for k in range(31 * 12)][::-1]
    values = [1.0 if t > NOW - 7 * HOUR else 8.0 for t in times]
    level, dropped = target(times, values, now_s=NOW, resource="cpu")
    assert dropped
    assert level == pytest.approx(1.0 * (1 + MARGIN))
    # two hours at the lower level are not yet sustained
    values = [1.0 if t > NOW - 2 * HOUR else 8.0 for t in times]
    level, dropped = target(times, values, now_s=NOW, resource="cpu")
    assert not dropped
    assert level == pytest.approx(8.0 * (1 + MARGIN))


@pytest.mark.parametrize(
    ("resource", "value", "want"),
    [
        ("cpu", 0.0123, "20m"),
        ("cpu", 2.0, "2"),
        ("cpu", 13.8, "13800m"),
        ("memory", 512 * MIB, "512Mi"),
        ("memory", 2 * GIB + 1, "2049Mi"),
        ("memory", 16 * GIB, "16Gi"),
    ],
)
def test_quantity(resource: str, value: float, want: str) -> None:
    assert quantity(resource, value) == want


JOB = Workload("PyTorchJob", "bert", "kubeflow.org/v1")


@pytest.mark.parametrize(
    ("requests", "cpu", "memory", "want"),
    [
        pytest.param(
            {"cpu": 32.0, "memory": 256 * GIB},
            4.0,
            30 * GIB,
            {("cpu", "32", "4600m"), ("memory", "256Gi", "35328Mi")},
            id="oversized",
        ),
        pytest.param(
            {"cpu": 2.0, "memory": 8 * GIB},
            4.0,
            30 * GIB,
            {("cpu", "2", "4600m"), ("memory", "8Gi", "35328Mi")},
            id="undersized",
        ),
        pytest.param(
            {},
            4.0,
            30 * GIB,
            {("cpu", "none requested", "4600m"), ("memory", "none requested", "35328Mi")},
            id="best-effort-gets-requests",
        ),
        pytest.param({"cpu": 5.0, "memory": 36 * GIB}, 4.0, 30 * GIB, set(), id="within-tolerance"),
    ],
)
def test_recommend_resources(
    requests: dict[str, float], cpu: float, memory: float, want: set[tuple[str, str, str]]
) -> None:
    pods = {("ml", f"bert-{i}"): (JOB, {"trainer": requests}) for i in range(2)}
    series = [_series(f"bert-{i}", [cpu] * 24, [memory] * 24) for i in range(2)]
    found = recommend_resources(series, now_s=NOW, min_window_s=HOUR, pods=pods)
    assert {(r.kind, r.current, r.recommended) for r in found} == want
    for r in found:
        assert (r.workload, r.pods, r.container, r.signal) == (
            "PyTorchJob/bert",
            ("bert-0", "bert-1"),
            "trainer",
            "cgroup",
        )


def test_pods_the_leader_has_not_seen_or_observed_briefly_are_not_judged() -> None:
    series = [_series("stranger", [4.0] * 24, [GIB] * 24), _series("new", [4.0] * 6, [GIB] * 6)]
    pods = {("ml", "new"): (JOB, {"trainer": {}})}
    assert recommend_resources(series, now_s=NOW, min_window_s=HOUR, pods=pods) == []


values = st.one_of(st.none(), st.floats(min_value=0, max_value=1e12, allow_nan=False))


@settings(max_examples=200, deadline=None)
@given(
    points=st.lists(st.tuples(st.floats(min_value=0, max_value=NOW), values, values), max_size=40),
    request=st.one_of(st.none(), st.floats(min_value=0, max_value=1e12, allow_nan=False)),
)
def test_any_series_gives_a_target_at_least_the_floor(
    points: list[tuple[float, float | None, float | None]], request: float | None
) -> None:
    series = [
        ContainerSeries(
            "ml",
            "p",
            "c",
            tuple(t for t, _, _ in points),
            tuple(c for _, c, _ in points),
            tuple(m for _, _, m in points),
        )
    ]
    requested = {} if request is None else {"cpu": request, "memory": request}
    found = recommend_resources(
        series, now_s=NOW, min_window_s=0, pods={("ml", "p"): (JOB, {"c": requested})}
    )
    for r in found:
        assert r.kind in FLOOR
        assert r.recommended not in {"0", "0m", "0Mi"}

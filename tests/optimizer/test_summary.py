"""The cluster summary's arithmetic, on plain rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from optimizer.summary import GpuState, summarize, usable_gpus

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("free", "shapes", "usable"),
    [
        (0, (8, 4, 2), 0),
        (1, (8, 4, 2), 0),
        (5, (8, 4, 2), 4),
        (7, (8, 4, 2), 6),
        (8, (8, 4, 2), 8),
        (7, (4, 3), 7),
        (5, (3,), 3),
        (6, (1,), 6),
    ],
)
def test_usable_gpus_is_the_best_mix_of_shapes(
    free: int, shapes: tuple[int, ...], usable: int
) -> None:
    assert usable_gpus(free, shapes) == usable


def _state(node: str, *, seen_s_ago: float = 0, **kwargs: object) -> GpuState:
    values: dict[str, object] = {
        "node_name": node,
        "pool": None,
        "node_last_seen": NOW - timedelta(seconds=seen_s_ago),
        "product": "H100",
        "health": "ok",
        "allocated": False,
        "busy": True,
        "count": 1,
        "power_w": 100.0,
        "energy_j": 1000.0,
    }
    values.update(kwargs)
    return GpuState(**values)  # type: ignore[arg-type]


def test_counts_fragmentation_and_staleness() -> None:
    rows = [
        _state("a", count=3),  # 3 free
        _state("a", allocated=True, busy=False, count=2),  # allocated, idle
        _state("a", allocated=True, count=2, pool="train"),
        _state("a", health="lost"),
        _state("b", count=8, product="L40S"),
        _state("c", count=8, seen_s_ago=120),  # stale: listed, not counted
    ]
    summary = summarize(rows, now=NOW, stale_after=timedelta(seconds=60), request_shapes=[2, 8, 4])
    assert summary.nodes == 2
    assert summary.stale_nodes == ["c"]
    assert (summary.gpus.total, summary.gpus.free, summary.gpus.allocated) == (16, 11, 4)
    assert (summary.gpus.allocated_idle, summary.gpus.unhealthy) == (2, 1)
    assert summary.by_model["L40S"].free == 8
    assert summary.by_pool["train"].allocated == 2
    assert summary.by_pool["default"].total == 14
    assert summary.fragmented_gpus == 1  # node a: 3 free, shapes use 2
    assert summary.fragmented_by_pool == {"default": {"H100": 1, "L40S": 0}}
    assert summary.request_shapes == [8, 4, 2]
    assert summary.power_w == pytest.approx(500.0)

"""Rollups folded per closed bucket, on SQLite and PostgreSQL: every stored report counts
once, whenever it arrives and whenever the fold runs, and readers see what is pending."""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from optimizer.store.models import Rollup, RollupPending
from optimizer.store.queries import gpu_series
from optimizer.store.reports import ingest_report
from optimizer.store.rollups import ROLLUP_LEVELS, bucket_start, fold, fold_closed
from shared.report import NodeReport
from tests.optimizer.reports import samples_report, topology_report

T0 = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
_runs = itertools.count()


def _store(engine: Engine, reports: list[NodeReport]) -> None:
    with Session(engine) as session, session.begin():
        for report in reports:
            ingest_report(session, report, received_at=report.collected_at)


def _rollups(engine: Engine, uuids: set[str]) -> dict[tuple[str, str, datetime], tuple[Any, ...]]:
    with Session(engine) as session:
        return {
            (r.gpu_uuid, r.level, r.bucket_start): (
                r.samples,
                round(r.util_sum, 9),
                r.util_max,
                r.memory_used_max,
                r.temperature_max_c,
            )
            for r in session.scalars(select(Rollup).where(Rollup.gpu_uuid.in_(uuids)))
        }


def _expected(reports: list[NodeReport]) -> dict[tuple[str, str, datetime], tuple[Any, ...]]:
    """The rollups worked out from the reports in Python."""
    acc: dict[tuple[str, str, datetime], list[Any]] = defaultdict(lambda: [0, 0.0, 0.0, 0, 0.0])
    for report in reports:
        for s in report.samples:
            for level, size in ROLLUP_LEVELS.items():
                a = acc[(s.gpu_uuid, level, bucket_start(report.collected_at, size))]
                a[0] += 1
                a[1] += s.util_ratio or 0.0
                a[2] = max(a[2], s.util_ratio or 0.0)
                a[3] = max(a[3], s.memory_used_bytes or 0)
                a[4] = max(a[4], s.temperature_c or 0.0)
    return {k: (v[0], round(v[1], 9), v[2], v[3], v[4]) for k, v in acc.items()}


def _pending(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(RollupPending)) or 0)


def test_a_closed_bucket_is_folded_and_an_open_one_waits(engine: Engine) -> None:
    base = topology_report("gpu-node-1", at=T0, utils=[0.5] * 8)
    open_one = samples_report(base, at=T0 + timedelta(minutes=5, seconds=10), sequence=2)
    _store(engine, [base, open_one])
    assert _pending(engine) == 2
    now = T0 + timedelta(minutes=7)  # the first 5-minute bucket has closed, the second not
    assert fold_closed(engine, now=now, chunk=1) == 1
    assert _pending(engine) == 1
    uuid = base.gpus[0].uuid
    five = _rollups(engine, {uuid})
    assert five[(uuid, "5m", T0)][0] == 1
    assert (uuid, "5m", T0 + timedelta(minutes=5)) not in five
    assert five[(uuid, "1h", T0)][0] == 1  # the hour so far, from the closed bucket
    with Session(engine) as session:  # a reader adds the pending one
        points = gpu_series(
            session,
            uuid=uuid,
            start=T0,
            end=T0 + timedelta(hours=1),
            step=timedelta(hours=1),
            source="1h",
        )
    assert [p.samples for p in points] == [2]


def test_a_late_report_into_a_folded_bucket_is_added_at_the_next_fold(engine: Engine) -> None:
    base = topology_report("gpu-node-1", at=T0 + timedelta(seconds=30), utils=[0.2] * 8)
    _store(engine, [base])
    assert fold_closed(engine, now=T0 + timedelta(minutes=10)) == 1
    late = samples_report(
        topology_report("gpu-node-1", at=T0, utils=[0.8] * 8), at=T0, sequence=9
    )  # buffered by the agent, sent after the fold
    _store(engine, [late])
    assert fold_closed(engine, now=T0 + timedelta(minutes=10)) == 1
    uuid = base.gpus[0].uuid
    assert _rollups(engine, {uuid})[(uuid, "5m", T0)][:3] == (2, 1.0, 0.8)


def test_a_resend_adds_nothing_pending(engine: Engine) -> None:
    base = topology_report("gpu-node-1", at=T0)
    again = samples_report(base, at=T0 + timedelta(seconds=10), sequence=2)
    _store(engine, [base, again, again])
    assert _pending(engine) == 2


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 7200),  # seconds after T0 the report was collected
            st.sampled_from([None, 0.0, 0.25, 1.0]),  # utilisation (None: not read)
            st.integers(0, 4),  # folds after this report: 0 none, else up to that many chunks
        ),
        min_size=1,
        max_size=25,
    ),
    chunk=st.integers(1, 4),
)
def test_every_stored_report_counts_once_whenever_the_fold_runs(
    engine: Engine, steps: list[tuple[int, float | None, int]], chunk: int
) -> None:
    node = f"fold-{next(_runs)}"
    base = topology_report(node, at=T0, utils=[0.0] * 8)
    _store(engine, [base])
    stored = [base]
    for sequence, (offset, util, folds) in enumerate(steps, start=2):
        data = base.model_dump(mode="json")
        for sample in data["samples"]:
            sample["util_ratio"] = util
        report = samples_report(
            NodeReport.model_validate(data),
            at=T0 + timedelta(seconds=offset, microseconds=sequence),
            sequence=sequence,
        )
        _store(engine, [report])
        stored.append(report)
        for _ in range(folds):  # a fold at the latest report's time, in chunks
            with engine.begin() as connection:
                fold(
                    connection,
                    before=bucket_start(report.collected_at, ROLLUP_LEVELS["5m"]),
                    limit=chunk,
                )
    uuids = {g.uuid for g in base.gpus}
    expected = _expected(stored)
    uuid = base.gpus[3].uuid
    with Session(engine) as session:  # before the last fold: rollups + pending
        points = gpu_series(
            session,
            uuid=uuid,
            start=T0,
            end=T0 + timedelta(hours=3),
            step=timedelta(minutes=5),
            source="5m",
        )
    assert {p.t: p.samples for p in points} == {
        key[2]: value[0] for key, value in expected.items() if key[:2] == (uuid, "5m")
    }
    with engine.begin() as connection:
        fold(connection, before=None, limit=None)
    assert _rollups(engine, uuids) == expected


def test_replicas_folding_at_once_take_different_reports(
    replica_engines: tuple[Engine, Engine],
) -> None:
    one, two = replica_engines
    base = topology_report("gpu-node-1", at=T0, utils=[0.5] * 8)
    reports = [base] + [
        samples_report(base, at=T0 + timedelta(seconds=10 * i), sequence=i + 1) for i in range(1, 6)
    ]
    _store(one, reports)
    with one.begin() as first:
        # a fold on the first replica has taken its two reports and not committed yet
        first.execute(
            select(RollupPending.id).order_by(RollupPending.id).limit(2).with_for_update()
        )
        with two.begin() as second:  # those two are skipped, not waited for
            assert fold(second, before=None, limit=None) == 4
        assert fold(first, before=None, limit=None) == 2
    assert _pending(one) == 0
    uuid = base.gpus[0].uuid
    assert _rollups(one, {uuid})[(uuid, "5m", T0)][0] == 6


@pytest.mark.parametrize("level", ["5m", "1h"])
def test_both_levels_agree_after_the_fold(engine: Engine, level: str) -> None:
    base = topology_report("gpu-node-1", at=T0, utils=[0.3] * 8)
    reports = [base] + [
        samples_report(base, at=T0 + timedelta(seconds=40 * i), sequence=i + 1)
        for i in range(1, 20)
    ]
    _store(engine, reports)
    uuid = base.gpus[0].uuid

    def series() -> list[tuple[datetime, int, float]]:
        with Session(engine) as session:
            return [
                (p.t, p.samples, round(p.util_ratio, 9))
                for p in gpu_series(
                    session,
                    uuid=uuid,
                    start=T0,
                    end=T0 + timedelta(hours=1),
                    step=ROLLUP_LEVELS[level],
                    source=level,
                )
            ]

    before = series()
    with engine.begin() as connection:
        fold(connection, before=None, limit=None)
    assert series() == before
    assert sum(samples for _, samples, _ in before) == 20

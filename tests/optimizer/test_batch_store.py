"""A batch of samples reports stored at once leaves the store exactly as storing them one by
one does: the same outcome per report and the same rows, on SQLite and PostgreSQL.

Random batches mix resends (of a stored report, and twice in one batch), late reports,
reports for unknown nodes and GPUs, several reports of one node and per-pod processes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from optimizer.store.batch import store_samples_batch
from optimizer.store.models import Gpu, Node, ReportReceipt, Rollup, Sample, WorkloadUsage
from optimizer.store.reports import IngestResult, TopologyUnknownError, ingest_report
from optimizer.store.rollups import fold
from shared.report import NodeReport
from tests.optimizer.reports import samples_report, topology_report, with_process

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
RECEIVED = T0 + timedelta(hours=1)
NODES = 3  # node index NODES names a node that never sent its topology
_runs = itertools.count()

#: (node, sequence, seconds after T0, which GPUs, utilisation, a process on GPU 0)
spec = st.tuples(
    st.integers(0, NODES),
    st.integers(1, 4),
    st.sampled_from([0, 10, 20, 290, 310, 3600]),
    st.sampled_from(["all", "first-four", "foreign"]),
    st.floats(0, 1),
    st.booleans(),
)


def _node(prefix: str, k: int) -> str:
    return f"{prefix}-n{k}"


def _reports(prefix: str, specs: Sequence[tuple[Any, ...]]) -> list[NodeReport]:
    reports = []
    for k, sequence, seconds, gpus, util, process in specs:
        base = topology_report(_node(prefix, k), at=T0, utils=[util] * 8)
        report = samples_report(base, at=T0 + timedelta(seconds=seconds), sequence=sequence)
        if process:
            report = with_process(report, 0, namespace="ml", pod=f"p{k}", container="c")
        if gpus == "first-four":
            report = report.model_copy(update={"samples": report.samples[:4]})
        elif gpus == "foreign":  # another node's GPU
            other = topology_report(_node(prefix, (k + 1) % NODES), at=T0)
            sample = report.samples[1].model_copy(update={"gpu_uuid": other.gpus[1].uuid})
            report = report.model_copy(update={"samples": [report.samples[0], sample]})
        reports.append(report)
    return reports


def _setup(session: Session, prefix: str) -> None:
    for k in range(NODES):
        ingest_report(session, topology_report(_node(prefix, k), at=T0), received_at=T0)


def _pool(report: NodeReport) -> str | None:
    return "train" if report.node_name.endswith(("n0", "n2")) else None


def _outcome(outcome: object) -> tuple[Any, ...]:
    if isinstance(outcome, IngestResult):
        return ("result", outcome.stored, outcome.topology_changed, outcome.samples)
    assert isinstance(outcome, TopologyUnknownError)
    return ("topology_unknown",)


def _assert_same(got: Any, expected: Any, path: str = "") -> None:
    """``got == expected``, floats within what adding a bucket's samples in another order can
    change (a batch sums them together, one by one sums them in arrival order)."""
    if isinstance(expected, float) and isinstance(got, float):
        assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12), (path, got, expected)
    elif isinstance(expected, dict) and isinstance(got, dict):
        assert sorted(got) == sorted(expected), path
        for key in expected:
            _assert_same(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list | tuple) and isinstance(got, list | tuple):
        assert len(got) == len(expected), (path, got, expected)
        for index, (one, other) in enumerate(zip(got, expected, strict=True)):
            _assert_same(one, other, f"{path}[{index}]")
    else:
        assert got == expected, (path, got, expected)


def _state(session: Session, prefix: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row the reports of ``prefix``'s nodes wrote, with names made comparable."""
    uuids = {
        uuid: (name.removeprefix(prefix), index)
        for uuid, name, index in session.execute(
            select(Gpu.uuid, Gpu.node_name, Gpu.index).where(Gpu.node_name.like(f"{prefix}-%"))
        )
    }

    def comparable(value: Any) -> Any:
        if isinstance(value, float):  # rounded for sorting; compared by _assert_same
            return float(f"{value:.12g}")
        if isinstance(value, str):
            return uuids.get(value, value.removeprefix(prefix))
        if isinstance(value, dict):
            return {k: comparable(v) for k, v in value.items()}
        return value

    def rows(statement: Any) -> list[tuple[Any, ...]]:
        out = [tuple(comparable(value) for value in row) for row in session.execute(statement)]
        return sorted(out, key=repr)

    mine = f"{prefix}-%"
    return {
        "samples": rows(
            select(*[c for c in Sample.__table__.c if c.name != "id"]).where(
                Sample.node_name.like(mine)
            )
        ),
        "usage": rows(
            select(*[c for c in WorkloadUsage.__table__.c if c.name != "id"]).where(
                WorkloadUsage.node_name.like(mine)
            )
        ),
        "rollups": rows(
            select(Rollup)
            .where(Rollup.gpu_uuid.in_(list(uuids)))
            .with_only_columns(*Rollup.__table__.c)
        ),
        "gpus": rows(
            select(
                *[c for c in Gpu.__table__.c if c.name.startswith("latest_") or c.name == "uuid"]
            ).where(Gpu.node_name.like(mine))
        ),
        "nodes": rows(
            select(
                Node.name,
                Node.agent_version,
                Node.pool,
                Node.last_seen,
                Node.last_collected_at,
                Node.last_sequence,
            ).where(Node.name.like(mine))
        ),
        "receipts": rows(
            select(ReportReceipt)
            .where(ReportReceipt.node_name.like(mine))
            .with_only_columns(*ReportReceipt.__table__.c)
        ),
    }


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(first=st.lists(spec, max_size=12), second=st.lists(spec, max_size=12))
def test_a_batch_stores_what_report_by_report_stores(
    engine: Engine, first: list[tuple[Any, ...]], second: list[tuple[Any, ...]]
) -> None:
    run = next(_runs)
    batched, single = f"b{run}", f"s{run}"
    with Session(engine) as session, session.begin():
        _setup(session, batched)
        _setup(session, single)
    for specs in (first, second):  # two batches: the second meets the first's rows
        with Session(engine) as session, session.begin():
            reports = _reports(batched, specs)
            got = store_samples_batch(
                session.connection(), reports, [_pool(r) for r in reports], received_at=RECEIVED
            )
        expected = []
        with Session(engine) as session, session.begin():
            for report in _reports(single, specs):
                try:
                    with session.begin_nested():
                        outcome: object = ingest_report(
                            session, report, received_at=RECEIVED, pool=_pool(report)
                        )
                except TopologyUnknownError as error:
                    outcome = error
                expected.append(outcome)
        assert [_outcome(o) for o in got] == [_outcome(o) for o in expected]
    with engine.begin() as connection:  # both ways' pending samples, into the rollups
        fold(connection, before=None, limit=None)
    with Session(engine) as session:
        _assert_same(_state(session, batched), _state(session, single))


def test_a_topology_report_is_refused(engine: Engine) -> None:
    with (
        Session(engine) as session,
        session.begin(),
        pytest.raises(ValueError, match="samples reports only"),
    ):
        store_samples_batch(
            session.connection(),
            [topology_report("x-n0", at=T0)],
            [None],
            received_at=RECEIVED,
        )

"""Group commit: a batch commits together, a bad report fails alone, a dead database fails all."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from optimizer.ingest import IngestOverloadedError, IngestQueue
from optimizer.store.engine import make_engine, make_session_factory
from optimizer.store.models import ReportReceipt, Sample
from optimizer.store.reports import TopologyUnknownError, ingest_report
from shared.report import NodeReport
from tests.optimizer.reports import samples_report, topology_report

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def _count(engine: Engine, model: type) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _one_batch(writer: IngestQueue, reports: list[NodeReport]) -> list[object]:
    """Queue every report before the writer starts (so they share batches), then run it;
    each report's result or error, in order."""

    async def scenario() -> list[object]:
        tasks = [asyncio.ensure_future(writer.submit(r)) for r in reports]
        await asyncio.sleep(0)
        writer.start()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(scenario())
    writer.stop()
    return results


def test_one_batch_one_bad_report(engine: Engine) -> None:
    batches: list[int] = []
    writer = IngestQueue(
        sessions=make_session_factory(engine),
        clock=lambda: T0,
        observe=lambda _s, n: batches.append(n),
    )
    good = [topology_report(f"gpu-node-{i}", at=T0) for i in range(3)]
    orphan = samples_report(topology_report("gpu-node-9", at=T0), at=T0, sequence=4)

    results = _one_batch(writer, [good[0], orphan, *good[1:]])
    assert batches == [4]  # one transaction for all of them
    assert isinstance(results[1], TopologyUnknownError)
    assert [r.stored for r in (results[0], results[2], results[3])] == [True] * 3  # type: ignore[union-attr]
    assert _count(engine, ReportReceipt) == 3
    assert _count(engine, Sample) == 24


def test_a_failed_commit_fails_every_report_and_stores_nothing(tmp_path: object) -> None:
    dead = make_engine("postgresql+psycopg://127.0.0.1:1/test", connect_args={"connect_timeout": 2})
    writer = IngestQueue(sessions=make_session_factory(dead), clock=lambda: T0)
    writer.start()

    async def scenario() -> list[object]:
        reports = [topology_report(f"gpu-node-{i}", at=T0) for i in range(2)]
        return await asyncio.gather(*(writer.submit(r) for r in reports), return_exceptions=True)

    results = asyncio.run(scenario())
    writer.stop()
    assert all(isinstance(r, OperationalError) for r in results)


def test_a_full_queue_refuses_at_once(engine: Engine) -> None:
    writer = IngestQueue(sessions=make_session_factory(engine), clock=lambda: T0, max_queue=1)

    async def scenario() -> None:
        first = asyncio.ensure_future(writer.submit(topology_report("gpu-node-1", at=T0)))
        await asyncio.sleep(0)
        with pytest.raises(IngestOverloadedError):
            await writer.submit(topology_report("gpu-node-2", at=T0))
        writer.start()
        await first

    asyncio.run(scenario())
    writer.stop()
    assert _count(engine, ReportReceipt) == 1


def test_poisoned_reports_fail_alone_and_every_good_one_is_acknowledged(engine: Engine) -> None:
    """Reports whose values break a statement (here a time past year 9999 in UTC, as a
    contract-valid "9999-12-31T23:59:59-14:00" once was) are answered with their own error;
    every other report of their batches is stored."""
    from datetime import timedelta, timezone

    from optimizer.ingest import ReportNotStorableError

    writer = IngestQueue(sessions=make_session_factory(engine), clock=lambda: T0, max_batch=16)
    edge = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-14)))
    reports = []
    for i in range(50):
        report = topology_report(f"gpu-node-{i}", at=T0)
        if i % 5 == 2:
            report = report.model_copy(update={"collected_at": edge})
        reports.append(report)

    results = _one_batch(writer, reports)
    poisoned = [r for i, r in enumerate(results) if i % 5 == 2]
    good = [r for i, r in enumerate(results) if i % 5 != 2]
    assert all(isinstance(r, ReportNotStorableError) for r in poisoned), poisoned[:2]
    assert all(getattr(r, "stored", False) for r in good), [
        r for r in good if not hasattr(r, "stored")
    ][:2]
    assert _count(engine, ReportReceipt) == 40


def test_a_poisoned_samples_report_fails_alone_in_a_batch_of_samples(engine: Engine) -> None:
    """Samples reports are stored together; when one breaks the batch's statements, the
    batch is stored again report by report and only that one fails."""
    from datetime import timedelta, timezone

    from optimizer.ingest import ReportNotStorableError

    sessions = make_session_factory(engine)
    topologies = [topology_report(f"gpu-node-{i}", at=T0) for i in range(20)]
    with sessions.begin() as session:
        for report in topologies:
            ingest_report(session, report, received_at=T0)
    batches: list[int] = []
    writer = IngestQueue(
        sessions=sessions, clock=lambda: T0, max_batch=64, observe=lambda _s, n: batches.append(n)
    )
    edge = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-14)))
    reports = [
        samples_report(t, at=edge if i % 7 == 3 else T0 + timedelta(seconds=10), sequence=2)
        for i, t in enumerate(topologies)
    ]

    results = _one_batch(writer, reports)
    assert batches == [20]
    for i, result in enumerate(results):
        if i % 7 == 3:
            assert isinstance(result, ReportNotStorableError), result
        else:
            assert getattr(result, "stored", False), result
    assert _count(engine, Sample) == 8 * (20 + 17)  # the topologies' samples and the good ones

"""Two optimizer replicas serve ingest against one PostgreSQL: every report is stored once.

Each replica has its own writer (group commit) and engine; an agent whose request timed out
on one replica may resend to the other, so both get the same reports at the same moment.
Leadership (only the leader runs the controller) is tested in test_controller.py; ingest
needs none: the receipts' unique key decides which replica stores a report.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from optimizer.ingest import IngestQueue
from optimizer.settings import OptimizerSettings
from optimizer.store.engine import make_session_factory
from optimizer.store.models import ReportReceipt, Sample
from optimizer.store.reports import IngestResult
from tests.optimizer.conftest import WallClock, auth, build_app
from tests.optimizer.reports import samples_report, topology_report

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
NODES = 24


def _count(engine: Engine, model: type) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_two_writers_store_each_report_once_when_both_receive_it(
    replica_engines: tuple[Engine, Engine],
) -> None:
    writers = [
        IngestQueue(sessions=make_session_factory(engine), clock=lambda: T0, max_batch=16)
        for engine in replica_engines
    ]
    topologies = [topology_report(f"gpu-node-{i}", at=T0) for i in range(NODES)]
    rounds = [
        [samples_report(t, at=T0 + timedelta(seconds=10 * k), sequence=k + 1) for t in topologies]
        for k in range(1, 6)
    ]
    rng = random.Random(7)

    async def scenario() -> list[list[object]]:
        for writer in writers:
            writer.start()
        await asyncio.gather(*(writers[i % 2].submit(t) for i, t in enumerate(topologies)))
        answers = []
        for reports in rounds:
            # every report to both replicas, each in its own order, so the two writers'
            # batches overlap in different ways
            orders = [rng.sample(reports, len(reports)) for _ in writers]
            tasks = {
                (id(report), side): asyncio.ensure_future(writer.submit(report))
                for side, (writer, order) in enumerate(zip(writers, orders, strict=True))
                for report in order
            }
            results = await asyncio.gather(*tasks.values(), return_exceptions=True)
            by_key = dict(zip(tasks, results, strict=True))
            answers.extend([by_key[(id(r), 0)], by_key[(id(r), 1)]] for r in reports)
        return answers

    answers = asyncio.run(scenario())
    for writer in writers:
        writer.stop()
    failures = [a for pair in answers for a in pair if not isinstance(a, IngestResult)]
    assert failures == []  # no deadlock, no unique violation: nothing answered 5xx
    stored = [[a.stored for a in pair if isinstance(a, IngestResult)] for pair in answers]
    assert all(sorted(pair) == [False, True] for pair in stored)  # one replica stored each
    reports = len(topologies) + sum(len(r) for r in rounds)
    assert _count(replica_engines[0], ReportReceipt) == reports
    assert _count(replica_engines[1], Sample) == 8 * reports


def test_what_one_replica_stores_the_other_serves(
    replica_engines: tuple[Engine, Engine], settings: OptimizerSettings, clock: WallClock
) -> None:
    first_engine, second_engine = replica_engines
    with (
        TestClient(build_app(settings, first_engine, clock)) as first,
        TestClient(build_app(settings, second_engine, clock)) as second,
    ):
        topology = topology_report("gpu-node-1", at=clock.now - timedelta(seconds=20))
        body = topology.model_dump_json()
        headers = {**auth("gpu-node-1"), "Content-Type": "application/json"}
        assert first.post("/v1/reports", content=body, headers=headers).status_code == 202
        later = samples_report(topology, at=clock.now - timedelta(seconds=10), sequence=2)
        answer = second.post("/v1/reports", content=later.model_dump_json(), headers=headers)
        assert answer.status_code == 202, answer.text
        again = first.post("/v1/reports", content=later.model_dump_json(), headers=headers)
        assert again.status_code == 200  # the other replica stored it: a resend
        node = first.get("/v1/nodes/gpu-node-1", headers=auth("sre@example.com")).json()
        assert node["last_sequence"] == 2

"""A frozen PostgreSQL (every server process stopped with SIGSTOP): the optimizer answers 503
with Retry-After in bounded time on ingest and /readyz, and loses nothing once it thaws.

Runs a throwaway cluster of its own (never the shared server), so it needs PostgreSQL's
binaries and, as root, the ``postgres`` user to own it; it skips with the reason elsewhere.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bench import pgcluster
from optimizer.settings import OptimizerSettings
from optimizer.store import migrate
from optimizer.store.engine import make_engine
from optimizer.store.models import ReportReceipt
from tests.optimizer.conftest import WallClock, auth, build_app
from tests.optimizer.reports import topology_report


@pytest.fixture
def throwaway_postgres() -> Iterator[tuple[str, Path]]:
    """A private PostgreSQL on a free port: (URL, data directory)."""
    try:
        with pgcluster.throwaway_postgres() as cluster:
            yield cluster
    except pgcluster.ClusterUnavailableError as why:
        pytest.skip(str(why))


def test_a_frozen_postgresql_gives_503_in_bounded_time_and_loses_nothing(
    throwaway_postgres: tuple[str, Path], settings: OptimizerSettings, clock: WallClock
) -> None:
    url, data = throwaway_postgres
    engine = make_engine(url)
    migrate.upgrade(engine)
    quick = settings.model_copy(update={"ingest_answer_s": 2.0, "database_url": url})
    first = topology_report("gpu-node-1", at=clock())
    second = topology_report("gpu-node-2", at=clock())
    agent = {**auth("gpu-node-1"), "Content-Type": "application/json"}
    with TestClient(build_app(quick, engine, clock)) as client:
        assert (
            client.post("/v1/reports", content=first.model_dump_json(), headers=agent).status_code
            == 202
        )
        assert client.get("/readyz").status_code == 200
        pgcluster.signal_cluster(data, signal.SIGSTOP)
        try:
            started = time.monotonic()
            frozen = client.post(
                "/v1/reports",
                content=second.model_dump_json(),
                headers={**auth("gpu-node-2"), "Content-Type": "application/json"},
            )
            ingest_s = time.monotonic() - started
            started = time.monotonic()
            ready = client.get("/readyz")
            ready_s = time.monotonic() - started
            again = client.get("/readyz")  # the first check still hangs: no second thread
        finally:
            pgcluster.signal_cluster(data, signal.SIGCONT)
        assert frozen.status_code == 503
        assert frozen.headers["Retry-After"]
        assert ingest_s < 10
        assert ready.status_code == 503
        assert "no answer within 2 s" in ready.json()["reason"]
        assert ready_s < 10
        assert again.status_code == 503
        for _ in range(100):  # thawed: the writer finishes, /readyz recovers
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.1)
        resend = client.post(
            "/v1/reports",
            content=second.model_dump_json(),
            headers={**auth("gpu-node-2"), "Content-Type": "application/json"},
        )
        assert resend.status_code in (200, 202)
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(ReportReceipt)) == 2  # once each
    engine.dispose()

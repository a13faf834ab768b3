"""A frozen PostgreSQL (every server process stopped with SIGSTOP): the optimizer answers 503
with Retry-After in bounded time on ingest and /readyz, and loses nothing once it thaws.

Runs a throwaway cluster of its own (never the shared server), so it needs PostgreSQL's
binaries and, as root, the ``postgres`` user to own it; it skips with the reason elsewhere.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from optimizer.settings import OptimizerSettings
from optimizer.store import migrate
from optimizer.store.engine import make_engine
from optimizer.store.models import ReportReceipt
from tests.conftest import free_port
from tests.optimizer.conftest import WallClock, auth, build_app
from tests.optimizer.reports import topology_report

BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)


def _as_postgres(*command: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


@pytest.fixture
def throwaway_postgres() -> Iterator[tuple[str, Path]]:
    """A private PostgreSQL on a free port: (URL, data directory)."""
    if BIN is None or not (BIN / "initdb").exists():
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
    if os.geteuid() == 0 and (shutil.which("runuser") is None or not _has_user("postgres")):
        pytest.skip("running as root needs runuser and the postgres user to own the cluster")
    folder = Path(tempfile.mkdtemp(prefix="stowage-frozen-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    data = folder / "data"
    port = free_port()
    subprocess.run(
        _as_postgres(str(BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"),
        check=True,
        capture_output=True,
        timeout=120,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    log = folder / "server.log"  # the server must not inherit our pipes
    subprocess.run(
        _as_postgres(
            str(BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"
        ),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", data
    finally:
        _signal_cluster(data, signal.SIGCONT)
        subprocess.run(
            _as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        shutil.rmtree(folder, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _signal_cluster(data: Path, sig: signal.Signals) -> None:
    """Send ``sig`` to the postmaster and every process it started."""
    pid_file = data / "postmaster.pid"
    if not pid_file.exists():
        return
    postmaster = int(pid_file.read_text().split()[0])
    pids = {postmaster}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            pids.add(int(stat.parent.name))
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue


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
        _signal_cluster(data, signal.SIGSTOP)
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
            _signal_cluster(data, signal.SIGCONT)
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

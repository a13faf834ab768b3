"""Real processes: an agent against ``stowage-optimizer serve``, and a killed optimizer."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.profile import load_profile
from agent.reporter import Reporter
from optimizer.store.engine import make_engine
from optimizer.store.models import ReportReceipt
from tests.agent.helpers import ManualClock, fake_collector
from tests.conftest import free_port

BIN = Path(sys.executable).parent


class Optimizer:
    """``stowage-optimizer serve`` on a SQLite file, started and killed at will."""

    def __init__(self, database: Path) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "STOWAGE_AUTH": "none",
            "STOWAGE_DATABASE_URL": f"sqlite:///{database}",
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(BIN / "stowage-optimizer"), "serve", "--port", str(self.port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("optimizer did not become ready")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def optimizer(tmp_path: Path) -> Iterator[Optimizer]:
    server = Optimizer(tmp_path / "stowage.db")
    server.start()
    yield server
    server.stop()


def test_fake_agent_appears_with_full_topology_within_one_interval(optimizer: Optimizer) -> None:
    done = subprocess.run(
        [
            str(BIN / "stowage-agent"),
            "run",
            "--fake-profile",
            "dgx-h100",
            "--node-name",
            "gpu-h100-1",
            "--optimizer-url",
            optimizer.url,
            "--metrics-port",
            "0",
            "--interval",
            "10",
            "--cycles",
            "1",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    node = httpx.get(f"{optimizer.url}/v1/nodes/gpu-h100-1").json()
    assert node["status"] == "ready"
    assert node["gpu_count"] == 8
    assert len(node["links"]) == 28
    assert {lk["nvlink_count"] for lk in node["links"]} == {18}
    pods = {p["pod"] for g in node["gpus"] for p in (g["latest_sample"] or {}).get("processes", [])}
    assert pods == {"llama-pretrain-0", "eval-sweep-7"}


def test_killing_the_optimizer_loses_no_acknowledged_report(
    optimizer: Optimizer, tmp_path: Path
) -> None:
    clock = ManualClock()
    collector, _ = fake_collector(load_profile("dgx-a100"), tmp_path, clock=clock)
    reporter = Reporter(url=optimizer.url, clock=clock, backoff_max_s=2.0)
    acknowledged = 0
    for cycle in range(20):
        if cycle == 8:
            optimizer.kill()  # SIGKILL: no shutdown, no flush
        if cycle == 12:
            optimizer.start()
        reporter.submit(collector.collect().report)
        acknowledged += reporter.flush()
        clock.advance(10)
    clock.advance(60)
    acknowledged += reporter.flush()
    reporter.close()
    assert acknowledged == 20
    engine = make_engine(optimizer.env["STOWAGE_DATABASE_URL"])
    with Session(engine) as session:
        stored = sorted(session.scalars(select(ReportReceipt.sequence)))
    engine.dispose()
    assert stored == list(range(1, 21))


def test_tls_when_a_certificate_is_configured(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed (needed to make a test certificate)")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    server = Optimizer(tmp_path / "tls.db")
    server.env.update(STOWAGE_TLS_CERT_FILE=str(cert), STOWAGE_TLS_KEY_FILE=str(key))
    server.process = subprocess.Popen(
        [str(BIN / "stowage-optimizer"), "serve", "--port", str(server.port)],
        env=server.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                trusted = ssl.create_default_context(cafile=str(cert))
                response = httpx.get(f"https://127.0.0.1:{server.port}/healthz", verify=trusted)
                break
            except httpx.ConnectError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert response.status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=2)
    finally:
        server.stop()

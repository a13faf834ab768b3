"""The reporter over real HTTP: outages, bounded buffer, topology on change, rejections."""

from __future__ import annotations

import functools
import random
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.collector import Collector
from agent.exporter import AgentMetrics
from agent.profile import load_profile
from agent.reporter import Reporter
from tests.agent.fake_optimizer import FakeOptimizer
from tests.agent.helpers import ManualClock, fake_collector

INTERVAL_S = 10.0


_OPEN: list[Reporter] = []


@pytest.fixture
def optimizer() -> Iterator[FakeOptimizer]:
    server = FakeOptimizer()
    yield server
    while _OPEN:
        _OPEN.pop().close()
    server.stop()


def _setup(
    tmp_path: Path, optimizer: FakeOptimizer, *, buffer_size: int = 360, profile: str = "dgx-h100"
) -> tuple[Collector, Reporter, ManualClock, AgentMetrics]:
    clock = ManualClock()
    collector, _ = fake_collector(load_profile(profile), tmp_path, clock=clock)
    metrics = AgentMetrics(CollectorRegistry())
    reporter = Reporter(
        url=optimizer.url,
        metrics=metrics,
        buffer_size=buffer_size,
        clock=clock,
        rng=random.Random(7),
        backoff_max_s=8.0,
    )
    _OPEN.append(reporter)
    return collector, reporter, clock, metrics


def _cycle(collector: Collector, reporter: Reporter, clock: ManualClock) -> None:
    reporter.submit(collector.collect().report)
    reporter.flush()
    clock.advance(INTERVAL_S)


def test_no_sample_lost_across_a_30s_outage(tmp_path: Path, optimizer: FakeOptimizer) -> None:
    collector, reporter, clock, metrics = _setup(tmp_path, optimizer)
    for _ in range(3):
        _cycle(collector, reporter, clock)
    optimizer.stop()  # 30 s outage: three cycles fail
    for _ in range(3):
        _cycle(collector, reporter, clock)
    assert len(reporter.buffer) >= 3
    assert metrics.report_failures._value.get() >= 1
    optimizer.start()
    for _ in range(3):
        _cycle(collector, reporter, clock)
    clock.advance(60)
    reporter.flush()
    sequences = [r["sequence"] for r in optimizer.received]
    assert sequences == list(range(1, 10))
    assert reporter.buffer == type(reporter.buffer)()
    assert metrics.reports_sent._value.get() == 9
    assert reporter.dropped == 0
    # Every sample of every cycle arrived exactly once.
    assert sum(len(r["samples"]) for r in optimizer.received) == 9 * 8


def test_topology_is_sent_first_and_again_only_when_it_changes(
    tmp_path: Path, optimizer: FakeOptimizer
) -> None:
    collector, reporter, clock, _ = _setup(tmp_path, optimizer, profile="dgx-a100")
    for _ in range(15):  # dgx-a100 loses GPU 6 at 120 s
        _cycle(collector, reporter, clock)
    with_topology = [r["sequence"] for r in optimizer.received if "gpus" in r]
    assert with_topology[0] == 1
    assert len(with_topology) == 2  # at start, and when GPU 6 was lost
    changed = next(r for r in optimizer.received if r["sequence"] == with_topology[1])
    assert changed["gpus"][6]["health"] == "lost"
    assert all("host" not in r for r in optimizer.received if "gpus" not in r)


def test_buffer_is_bounded_and_drops_oldest_first(tmp_path: Path, optimizer: FakeOptimizer) -> None:
    collector, reporter, clock, metrics = _setup(tmp_path, optimizer, buffer_size=4)
    optimizer.stop()
    for _ in range(10):
        _cycle(collector, reporter, clock)
    assert len(reporter.buffer) == 4
    assert reporter.dropped == 6
    assert metrics.reports_dropped._value.get() == 6
    assert metrics.buffered._value.get() == 4
    optimizer.start()
    clock.advance(60)
    reporter.flush()
    received = optimizer.received
    assert [r["sequence"] for r in received] == [7, 8, 9, 10]
    # The topology report was dropped, so the oldest survivor carries the topology again.
    assert "gpus" in received[0]


def test_rejected_report_is_dropped_not_retried(tmp_path: Path, optimizer: FakeOptimizer) -> None:
    collector, reporter, clock, _ = _setup(tmp_path, optimizer)
    optimizer.status = 422
    _cycle(collector, reporter, clock)
    assert len(reporter.buffer) == 0
    optimizer.status = 202
    _cycle(collector, reporter, clock)
    assert [r["sequence"] for r in optimizer.received] == [2]


def test_a_resend_the_optimizer_already_stored_counts_as_delivered(
    tmp_path: Path, optimizer: FakeOptimizer
) -> None:
    collector, reporter, clock, _ = _setup(tmp_path, optimizer)
    optimizer.status = 200  # what POST /v1/reports answers for a report it already has
    _cycle(collector, reporter, clock)
    assert len(reporter.buffer) == 0
    assert reporter.failures == 0


@pytest.mark.parametrize("status", [409, 412])
def test_a_refused_topology_is_kept_and_retried_never_dropped(
    tmp_path: Path, optimizer: FakeOptimizer, status: int
) -> None:
    collector, reporter, clock, _ = _setup(tmp_path, optimizer)
    optimizer.status = status  # e.g. 409: another node still owns these GPUs
    _cycle(collector, reporter, clock)
    assert len(reporter.buffer) == 1
    assert reporter.buffer[0].report.is_topology_report
    assert reporter.failures == 1
    optimizer.status = 202
    clock.advance(600)  # past any backoff
    _cycle(collector, reporter, clock)
    assert len(reporter.buffer) == 0
    assert "gpus" in optimizer.received[-2]  # the kept topology went first


def test_retry_after_and_backoff_are_respected(tmp_path: Path, optimizer: FakeOptimizer) -> None:
    collector, reporter, clock, _ = _setup(tmp_path, optimizer)
    optimizer.status, optimizer.retry_after = 503, "45"
    reporter.submit(collector.collect().report)
    assert reporter.flush() == 0
    assert reporter.next_attempt_at >= clock() + 45
    optimizer.status, optimizer.retry_after = 202, None
    clock.advance(30)
    assert reporter.flush() == 0  # still backing off: no request made
    assert optimizer.received == []
    clock.advance(20)
    assert reporter.flush() == 1


def test_backoff_grows_with_jitter_up_to_the_cap(tmp_path: Path, optimizer: FakeOptimizer) -> None:
    _, reporter, clock, _ = _setup(tmp_path, optimizer)
    delays = []
    for _ in range(8):
        before = clock()
        reporter.next_attempt_at = 0.0
        reporter._back_off()
        delays.append(reporter.next_attempt_at - before)
    assert delays[0] <= 1.0
    assert delays[3] > delays[0]
    assert max(delays) <= 8.0
    assert len(set(delays)) == len(delays)


def test_bearer_token_is_read_from_file_each_time(tmp_path: Path, optimizer: FakeOptimizer) -> None:
    collector, _, clock, _ = _setup(tmp_path, optimizer)
    token = tmp_path / "token"
    token.write_text("first\n")
    reporter = Reporter(url=optimizer.url, token_file=token, clock=clock)
    _OPEN.append(reporter)
    _cycle(collector, reporter, clock)
    token.write_text("rotated")
    _cycle(collector, reporter, clock)
    assert optimizer.auth == ["Bearer first", "Bearer rotated"]


def test_topology_is_resent_when_the_optimizer_lost_it(
    tmp_path: Path, optimizer: FakeOptimizer
) -> None:
    collector, reporter, clock, _ = _setup(tmp_path, optimizer)
    for _ in range(2):
        _cycle(collector, reporter, clock)
    optimizer.require_topology = True  # as if its database had been wiped
    optimizer.known_nodes.clear()
    for _ in range(2):
        _cycle(collector, reporter, clock)
    sequences_with_topology = [r["sequence"] for r in optimizer.received if "gpus" in r]
    assert sequences_with_topology == [1, 3]
    assert [r["sequence"] for r in optimizer.received] == [1, 2, 3, 4]


def _certificate_authority(folder: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate it signed for 127.0.0.1 (openssl): ca, cert, key."""
    folder.mkdir()
    ca, ca_key = folder / "ca.crt", folder / "ca.key"
    cert, key, request = folder / "tls.crt", folder / "tls.key", folder / "tls.csr"
    run = functools.partial(subprocess.run, check=True, capture_output=True)
    new_key = ["openssl", "req", "-newkey", "rsa:2048", "-nodes"]
    run([*new_key, "-x509", "-days", "1", "-subj", f"/CN={name}", "-keyout", ca_key, "-out", ca])
    run([*new_key, "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", request])
    extensions = folder / "san.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    sign = ["openssl", "x509", "-req", "-days", "1", "-CA", ca, "-CAkey", ca_key, "-CAcreateserial"]
    run([*sign, "-in", request, "-extfile", extensions, "-out", cert])
    return ca, cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_the_optimizer_certificate_is_checked_against_the_configured_ca(tmp_path: Path) -> None:
    ca, cert, key = _certificate_authority(tmp_path / "ours", "stowage-ca")
    stranger, _, _ = _certificate_authority(tmp_path / "other", "someone-else")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = FakeOptimizer(tls=context)
    collector, _ = fake_collector(load_profile("dgx-h100"), tmp_path / "node")
    try:
        report = collector.collect().report
        trusting = Reporter(url=server.url, ca_file=ca, clock=ManualClock())
        wary = Reporter(url=server.url, ca_file=stranger, clock=ManualClock())
        _OPEN.extend([trusting, wary])
        wary.submit(report)
        wary.flush()
        assert (server.received, wary.failures, len(wary.buffer)) == ([], 1, 1)  # kept
        trusting.submit(report)
        trusting.flush()
        assert [r["node_name"] for r in server.received] == [report.node_name]
    finally:
        while _OPEN:
            _OPEN.pop().close()
        server.stop()

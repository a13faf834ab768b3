"""Sends node reports to the optimizer without losing them while it is away.

Reports go into a bounded buffer (oldest dropped first, drops counted) and are POSTed in
order to ``<optimizer>/v1/reports``. Whether a report carries the full topology is decided
when it is sent: yes when its fingerprint differs from the last topology the optimizer
acknowledged (at start, whenever it changes, and after the report that carried it was
dropped), otherwise only samples. A failed send schedules the next attempt with jittered
exponential backoff and never blocks collection or the exporter: :meth:`Reporter.flush` is
called every cycle and returns at once while backing off.
"""

from __future__ import annotations

import random
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
import structlog

from agent.exporter import AgentMetrics
from shared.report import NodeReport

log = structlog.get_logger(__name__)

REPORTS_PATH: Final = "/v1/reports"
#: Statuses after which the same report may succeed later.
_RETRYABLE: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
#: The optimizer's answers for a delivered report: 202 stored now, 200 a resend of a
#: report it had already stored (POST /v1/reports is idempotent by node and sequence).
_STORED: Final = frozenset({200, 202})
#: The optimizer lacks the topology these samples refer to (it lost its state): resend it.
_RESEND_TOPOLOGY: Final = 412
#: Answers to a topology report that a later try may turn (an owner going stale, the
#: optimizer's state restored): kept and retried, never dropped.
_TOPOLOGY_REFUSED: Final = frozenset({409, 412})


@dataclass(frozen=True)
class _Queued:
    report: NodeReport
    fingerprint: str


class Reporter:
    """Buffers and sends reports.

    Args:
        url: the optimizer's base URL, e.g. ``https://stowage-optimizer:8080``.
        token_file: a bearer token file, re-read on every send (projected tokens rotate).
        metrics: the agent's health metrics (sent, failures, buffered, dropped).
        buffer_size: reports kept while the optimizer is unreachable.
        ca_file: the CA bundle (PEM) the optimizer's certificate must chain to; None: the
            system's trust store.
        client: an ``httpx.Client`` (tests pass their own); timeouts are the caller's.
        clock: monotonic seconds; ``rng``: jitter source. Both injectable.
        backoff_base_s, backoff_max_s: the first retry delay and its cap.
    """

    def __init__(
        self,
        *,
        url: str,
        token_file: Path | None = None,
        metrics: AgentMetrics | None = None,
        buffer_size: int = 360,
        ca_file: Path | None = None,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
    ) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        self.url = url.rstrip("/") + REPORTS_PATH
        self.token_file = token_file
        self.metrics = metrics
        self.buffer: deque[_Queued] = deque()
        self.buffer_size = buffer_size
        self.client = client or httpx.Client(
            timeout=httpx.Timeout(10.0, connect=3.0),
            verify=ssl.create_default_context(cafile=ca_file) if ca_file else True,
        )
        self.clock = clock
        self.rng = rng or random.Random()
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.failures = 0
        self.dropped = 0
        self.next_attempt_at = 0.0
        self._acked_fingerprint: str | None = None

    def submit(self, report: NodeReport) -> None:
        """Queue a (topology) report; the oldest is dropped and counted when full."""
        self.buffer.append(_Queued(report, report.topology_fingerprint()))
        while len(self.buffer) > self.buffer_size:
            self.buffer.popleft()
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.reports_dropped.inc()
        self._update_gauge()

    def flush(self) -> int:
        """Send queued reports in order until one fails; returns how many were accepted.

        Returns 0 at once while a backoff is in progress.
        """
        if self.clock() < self.next_attempt_at:
            return 0
        sent = 0
        while self.buffer:
            queued = self.buffer[0]
            with_topology = queued.fingerprint != self._acked_fingerprint
            outcome = self._send(queued.report if with_topology else _samples_only(queued.report))
            if outcome == "resend_topology" and not with_topology:
                self._acked_fingerprint = None  # the next attempt carries the topology
                continue
            if outcome == "retry":
                self._back_off()
                break
            self.buffer.popleft()
            if outcome == "accepted":
                sent += 1
                self.failures = 0
                if with_topology:
                    self._acked_fingerprint = queued.fingerprint
                if self.metrics is not None:
                    self.metrics.reports_sent.inc()
        self._update_gauge()
        return sent

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()

    def _send(self, report: NodeReport) -> str:
        headers = {"Content-Type": "application/json"}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        # A samples report leaves the topology fields out entirely.
        skip = set() if report.is_topology_report else {"host", "gpus", "links"}
        try:
            response = self.client.post(
                self.url,
                content=report.model_dump_json(exclude_none=True, exclude=skip),
                headers=headers,
            )
        except httpx.HTTPError as error:
            self._count_failure()
            log.warning("report_send_failed", node=report.node_name, error=str(error))
            return "retry"
        if response.status_code in _STORED:
            return "accepted"
        if response.status_code == _RESEND_TOPOLOGY and not report.is_topology_report:
            log.warning("optimizer_lacks_topology", node=report.node_name)
            return "resend_topology"
        if response.status_code in _TOPOLOGY_REFUSED and report.is_topology_report:
            # e.g. 409: another node owns some of these GPUs. Keep the reports and retry
            # with backoff; an operator must see this, so it is an error, every time.
            self._count_failure()
            log.error(
                "topology_refused",
                node=report.node_name,
                status=response.status_code,
                body=response.text[:500],
            )
            return "retry"
        self._count_failure()
        if response.status_code in _RETRYABLE:
            retry_after = _retry_after_s(response)
            log.warning(
                "report_deferred",
                node=report.node_name,
                status=response.status_code,
                retry_after_s=retry_after,
            )
            if retry_after is not None:
                self.next_attempt_at = self.clock() + retry_after
            return "retry"
        log.error(
            "report_rejected",
            node=report.node_name,
            sequence=report.sequence,
            status=response.status_code,
            body=response.text[:500],
        )
        return "rejected"

    def _back_off(self) -> None:
        self.failures += 1
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (self.failures - 1))
        delay = ceiling * self.rng.uniform(0.5, 1.0)  # jitter spreads a fleet's retries
        self.next_attempt_at = max(self.next_attempt_at, self.clock() + delay)

    def _count_failure(self) -> None:
        if self.metrics is not None:
            self.metrics.report_failures.inc()

    def _token(self) -> str | None:
        if self.token_file is None:
            return None
        try:
            return self.token_file.read_text().strip() or None
        except OSError as error:
            log.warning("token_unreadable", path=str(self.token_file), error=error.strerror)
            return None

    def _update_gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.buffered.set(len(self.buffer))


def _samples_only(report: NodeReport) -> NodeReport:
    return report.model_copy(update={"host": None, "gpus": [], "links": []})


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None

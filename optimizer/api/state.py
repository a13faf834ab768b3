"""What every request handler shares: settings, the session factory, auth, clock, metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from optimizer import metrics as metric_names
from optimizer.api.limits import TokenBuckets
from optimizer.auth import Authenticator
from optimizer.ingest import IngestQueue
from optimizer.settings import OptimizerSettings

T = TypeVar("T")


class Refreshed(Generic[T]):
    """A value read from the store at most every ``seconds`` (scrapes come every few seconds;
    the queries behind /metrics need not). None while the database cannot answer: nothing
    is served then, and the next call tries again."""

    def __init__(self, read: Callable[[], T], *, seconds: float = 60.0) -> None:
        self._read = read
        self._seconds = seconds
        self._value: tuple[float, T] | None = None

    def get(self) -> T | None:
        now = time.monotonic()
        if self._value is None or now - self._value[0] > self._seconds:
            try:
                self._value = (now, self._read())
            except SQLAlchemyError:
                return None
        return self._value[1]


class ApiMetrics:
    """The optimizer's own metrics, on the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.reports = Counter(
            metric_names.OPTIMIZER_REPORTS,
            "Reports received, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.ingest_seconds = Histogram(
            metric_names.INGEST_DURATION_SECONDS,
            "Database time per report (a batch's write and commit over its size).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.batch_size = Histogram(
            metric_names.INGEST_BATCH_REPORTS,
            "Reports committed together (group commit).",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=registry,
        )
        self.denied = Counter(
            metric_names.OPTIMIZER_REQUESTS_DENIED,
            "Requests refused by authentication or authorisation.",
            ["status"],
            registry=registry,
        )
        for status in ("401", "403"):  # known values start at 0, so rates exist from the start
            self.denied.labels(status)


class RefusalWindow:
    """Counts unauthenticated refusals per (source, reason) and minute, so a flood writes
    at most one audit row per source and reason a minute (plus the count of the minute
    before), not one per request."""

    MAX_KEYS: ClassVar[int] = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[int, int]] = {}  # key -> (minute, repeats)

    def admit(self, key: tuple[str, str], minute: int) -> int | None:
        """None when this refusal is a repeat within its minute (not to be audited);
        otherwise how many repeats the key had in its previous minute."""
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and seen[0] == minute:
                self._seen[key] = (minute, seen[1] + 1)
                return None
            if len(self._seen) >= self.MAX_KEYS:
                self._seen = {k: v for k, v in self._seen.items() if v[0] == minute}
            self._seen[key] = (minute, 0)
            return seen[1] if seen is not None else 0


@dataclass
class AppState:
    """Attached to ``app.state.stowage``."""

    settings: OptimizerSettings
    engine: Engine
    sessions: sessionmaker[Session]
    authenticator: Authenticator | None  # None: authentication disabled (auth=none)
    clock: Callable[[], datetime]
    registry: CollectorRegistry
    metrics: ApiMetrics
    ingest: IngestQueue
    #: Unauthenticated refusals this minute, by (source, reason): see deps.refuse.
    refusals: RefusalWindow = field(default_factory=RefusalWindow)
    #: Per-node report rate limits (None: unlimited).
    report_buckets: TokenBuckets | None = None
    #: The one thread /readyz asks the database from, and its last check: a frozen database
    #: holds at most this one thread, never the server's pool.
    readiness_checker: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="stowage-readyz")
    )
    readiness_check: Future[str | None] | None = None

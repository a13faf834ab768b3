"""What every request handler shares: settings, the session factory, auth, clock, metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from optimizer.auth import Authenticator
from optimizer.ingest import IngestQueue
from optimizer.settings import OptimizerSettings


class ApiMetrics:
    """The optimizer's own metrics, on the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.reports = Counter(
            "stowage_optimizer_reports",
            "Reports received, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.ingest_seconds = Histogram(
            "stowage_optimizer_ingest_duration_seconds",
            "Database time per report (a batch's write and commit over its size).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.batch_size = Histogram(
            "stowage_optimizer_ingest_batch_reports",
            "Reports committed together (group commit).",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=registry,
        )
        self.denied = Counter(
            "stowage_optimizer_requests_denied",
            "Requests refused by authentication or authorisation.",
            ["status"],
            registry=registry,
        )


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

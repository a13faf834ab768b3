"""Optimizer fixtures: the same tests on SQLite and on PostgreSQL.

PostgreSQL comes from ``STOWAGE_TEST_POSTGRES_URL`` (default: the local server on
127.0.0.1:5432, database ``test``). Each test gets a schema of its own, migrated from empty
with the shipped Alembic migrations, and dropped afterwards. Without a reachable server the
PostgreSQL leg is skipped with the reason, except under CI, where it fails.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from kubefake import FakeApiServer, serve
from optimizer.api.app import create_app
from optimizer.auth import TokensFile
from optimizer.controller.kube import KubeApi
from optimizer.settings import OptimizerSettings
from optimizer.store import migrate
from optimizer.store.engine import make_engine
from shared.labels import NAMESPACE_ENABLED

POSTGRES_URL = os.environ.get(
    "STOWAGE_TEST_POSTGRES_URL", "postgresql+psycopg://127.0.0.1:5432/test"
)

TOKENS = {
    "agent-gpu-node-1-token-0001": ("gpu-node-1", "agent"),
    "agent-gpu-node-2-token-0002": ("gpu-node-2", "agent"),
    "reader-token-000000000000003": ("sre@example.com", "reader"),
    "admin-token-0000000000000004": ("platform@example.com", "admin"),
}


def auth(token_subject: str) -> dict[str, str]:
    """Headers for the token whose subject is ``token_subject``."""
    token = next(t for t, (subject, _) in TOKENS.items() if subject == token_subject)
    return {"Authorization": f"Bearer {token}"}


class WallClock:
    """A UTC clock tests move by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _postgres_schema_engine() -> Iterator[Engine]:
    for (engine,) in _postgres_schema_engines(1):
        yield engine


def _postgres_schema_engines(count: int) -> Iterator[tuple[Engine, ...]]:
    """``count`` engines (as many optimizer replicas) on one fresh schema."""
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as error:
        admin.dispose()
        reason = f"PostgreSQL at {POSTGRES_URL} unreachable: {type(error.orig).__name__}"
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the PostgreSQL leg: {reason}")
        pytest.skip(reason)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    engines = tuple(
        make_engine(POSTGRES_URL, connect_args={"options": f"-csearch_path={schema}"}, pool_size=5)
        for _ in range(count)
    )
    try:
        yield engines
    finally:
        for engine in engines:
            engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on an empty database of each backend."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'stowage.db'}")
        yield engine
        engine.dispose()
    else:
        yield from _postgres_schema_engine()


@pytest.fixture
def replica_engines() -> Iterator[tuple[Engine, Engine]]:
    """Two engines on one migrated PostgreSQL schema: two optimizer replicas' databases."""
    for first, second in _postgres_schema_engines(2):
        migrate.upgrade(first)
        yield first, second


@pytest.fixture
def engine(empty_engine: Engine) -> Engine:
    """A migrated database of each backend."""
    migrate.upgrade(empty_engine)
    return empty_engine


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.yaml"
    path.write_text(
        yaml.safe_dump([{"token": t, "subject": s, "role": r} for t, (s, r) in TOKENS.items()])
    )
    return path


@pytest.fixture
def clock() -> WallClock:
    return WallClock()


@pytest.fixture
def settings(tokens_file: Path, tmp_path: Path) -> OptimizerSettings:
    return OptimizerSettings(
        database_url=f"sqlite:///{tmp_path / 'unused.db'}",
        tokens_file=tokens_file,
        stale_after_s=60,
        max_body_bytes=256 * 1024,
        pools={"train": "gpu-node-1"},
    )


def build_app(settings: OptimizerSettings, engine: Engine, clock: WallClock) -> FastAPI:
    """The app on ``engine`` with the test tokens and clock, no migration or pruning."""
    assert settings.tokens_file is not None
    return create_app(
        settings,
        authenticator=TokensFile.load(settings.tokens_file),
        engine=engine,
        clock=clock,
        migrate_on_start=False,
        prune_in_background=False,
    )


@pytest.fixture
def client(engine: Engine, settings: OptimizerSettings, clock: WallClock) -> Iterator[TestClient]:
    """The API over each backend, with the test tokens and a hand-moved clock."""
    with TestClient(build_app(settings, engine, clock)) as test_client:
        yield test_client


@pytest.fixture
def opted_in_cluster() -> Iterator[tuple[FakeApiServer, KubeApi]]:
    """The fake API server with namespace ``serving`` opted in and ``research`` not."""
    with serve() as (server, client):
        for name, enabled in (("serving", True), ("research", False)):
            labels = {NAMESPACE_ENABLED: "true"} if enabled else {}
            server.put("v1/namespaces", {"metadata": {"name": name, "labels": labels}})
        yield server, KubeApi(client)

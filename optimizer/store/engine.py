"""One engine and session factory per process; SQLite in WAL mode, PostgreSQL via psycopg."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # SQLAlchemy, not the sqlite3 module, issues BEGIN: SAVEPOINTs then work
            # (SQLAlchemy's documented recipe for pysqlite).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            if not url.endswith(":memory:") and url != "sqlite://":
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    given = kwargs.pop("connect_args", {})
    kwargs["connect_args"] = {
        "connect_timeout": 5,
        # Every statement planned for the table sizes of today: a plan prepared and cached
        # while the tables were small (a fleet starting, or autovacuum off so no statistics)
        # would scan the whole gpus table for each report of a grown fleet.
        "prepare_threshold": None,
        **given,
        # a frozen or overloaded server fails a statement in bounded time instead of
        # holding the single writer (and every request behind it) for ever
        "options": " ".join(
            ["-c statement_timeout=15000 -c lock_timeout=10000", given.get("options", "")]
        ).strip(),
    }
    return create_engine(url, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """The session factory the API and services share (injected, never global)."""
    return sessionmaker(engine, expire_on_commit=False)

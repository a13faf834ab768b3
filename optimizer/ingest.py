"""Group commit for report ingest: one writer thread, one transaction per batch.

Every request's report goes onto a queue; one writer takes whatever is waiting (up to
``max_batch``) and commits it as one transaction: each topology report in its own SAVEPOINT,
then all samples reports together in one statement per table (``store_samples_batch``).
A report that fails (unknown topology, GPUs owned by another node, values a statement
cannot take) is answered with its own error and the others are committed: if a samples
report breaks the batch's statements, the samples are stored again report by report, each
in its own SAVEPOINT, so that it fails alone. Requests are answered only after the
commit, so an acknowledged report is durable; if the commit fails, every report of the
batch gets the error and none is stored. One writer also means SQLite never busy-waits on
its own lock, and PostgreSQL does one commit (one WAL flush) per batch instead of per
report.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import structlog
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from optimizer.store.batch import store_samples_batch
from optimizer.store.reports import (
    DEFAULT_MOVE_AFTER,
    GpuOwnedError,
    IngestResult,
    TopologyUnknownError,
    ingest_report,
)
from shared.report import NodeReport

log = structlog.get_logger(__name__)

DEFAULT_MAX_BATCH: Final = 64
#: A parsed report holds about this many bytes of memory per byte of its JSON (measured:
#: 7.2 for a 2 MiB topology of 256 GPUs, 5.3 for an 8-GPU samples report), so the queue's
#: byte bound is a bound on memory, not on wire bytes.
MEMORY_PER_WIRE_BYTE: Final = 8


class IngestOverloadedError(RuntimeError):
    """The ingest queue is full; the caller should retry later."""


class IngestTimeoutError(TimeoutError):
    """The writer did not answer in time (a frozen or slow database). The report may still
    be stored later; a resend is stored once, so the caller answers 503 and the agent
    retries."""


class ReportNotStorableError(ValueError):
    """The database refused this report's rows (it never reaches the others' transaction)."""


@dataclass
class _Item:
    report: NodeReport
    future: asyncio.Future[IngestResult]
    loop: asyncio.AbstractEventLoop
    held_bytes: int = 0  # the memory it is counted for in the queue


def _database_failed(error: BaseException) -> bool:
    """True when ``error`` is the database's (down, or the connection lost), not one
    report's values."""
    return isinstance(error, OperationalError) or (
        isinstance(error, DBAPIError) and error.connection_invalidated
    )


def _resolve(item: _Item, result: IngestResult | None, error: BaseException | None) -> None:
    def settle() -> None:
        if item.future.done():
            return
        if error is not None:
            item.future.set_exception(error)
        else:
            item.future.set_result(result)  # type: ignore[arg-type]

    item.loop.call_soon_threadsafe(settle)


class IngestQueue:
    """The single writer. Start it with :meth:`start`, stop it with :meth:`stop`.

    Args:
        sessions: the session factory.
        clock: UTC now (the receive time stored with each report).
        observe: called with (seconds per report, batch size) after each commit.
        pool_of: a node's pool from its name (settings' ``pools``).
        max_batch: most reports per transaction.
        max_queue: reports waiting before :class:`IngestOverloadedError`.
        max_queue_bytes: memory of the reports waiting (``MEMORY_PER_WIRE_BYTE`` per byte of
            their JSON) before :class:`IngestOverloadedError` (so a
            flood of large reports cannot grow memory without bound).
        answer_within_s: how long a request waits for its batch before
            :class:`IngestTimeoutError`.
        move_after: a GPU may move to another node once its owner is silent this long.
    """

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        clock: Callable[[], datetime],
        observe: Callable[[float, int], None] = lambda _s, _n: None,
        pool_of: Callable[[str], str | None] = lambda _node: None,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int = 10_000,
        max_queue_bytes: int = 64 * 2**20,
        answer_within_s: float = 10.0,
        move_after: timedelta = DEFAULT_MOVE_AFTER,
    ) -> None:
        self.move_after = move_after
        self.max_queue_bytes = max_queue_bytes
        self.answer_within_s = answer_within_s
        self._queued_bytes = 0
        self._bytes_lock = threading.Lock()
        self.sessions = sessions
        self.clock = clock
        self.observe = observe
        self.pool_of = pool_of
        self.max_batch = max_batch
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="stowage-ingest", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then stop."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    async def submit(self, report: NodeReport, *, size_bytes: int = 0) -> IngestResult:
        """Store ``report`` (``size_bytes`` long on the wire); returns after its batch
        committed.

        Raises:
            IngestOverloadedError: the queue is full (by count or by bytes).
            IngestTimeoutError: no answer within ``answer_within_s``.
            TopologyUnknownError: samples for a topology the store lacks.
            ReportNotStorableError: the database refused the report's rows.
            SQLAlchemyError: the database failed the batch (nothing was stored).
        """
        loop = asyncio.get_running_loop()
        held = size_bytes * MEMORY_PER_WIRE_BYTE
        item = _Item(report=report, future=loop.create_future(), loop=loop, held_bytes=held)
        with self._bytes_lock:
            if self._queued_bytes + held > self.max_queue_bytes and self._queued_bytes:
                raise IngestOverloadedError(f"ingest queue holds {self._queued_bytes} bytes")
            self._queued_bytes += held
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._release(item)
            raise IngestOverloadedError("ingest queue full") from None
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), self.answer_within_s)
        except TimeoutError:
            raise IngestTimeoutError(
                f"the database did not answer within {self.answer_within_s:g} s"
            ) from None

    def _release(self, item: _Item) -> None:
        with self._bytes_lock:
            self._queued_bytes -= item.held_bytes

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            self._release(first)
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                self._release(item)
                batch.append(item)
            self._write(batch)
            if stop:
                return

    def _write(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        outcomes: list[tuple[_Item, IngestResult | None, BaseException | None]] = []
        try:
            with self.sessions.begin() as session:
                received_at = self.clock()
                topology = [item for item in batch if item.report.is_topology_report]
                samples = [item for item in batch if not item.report.is_topology_report]
                outcomes = [self._store_one(session, item, received_at) for item in topology]
                if samples:
                    outcomes.extend(self._store_samples(session, samples, received_at))
        except SQLAlchemyError as error:
            log.error("ingest_batch_failed", reports=len(batch), error=type(error).__name__)
            for item in batch:
                _resolve(item, None, error)
            return
        except Exception as error:  # never leave a request waiting forever
            log.exception("ingest_batch_crashed", reports=len(batch))
            for item in batch:
                _resolve(item, None, error)
            return
        elapsed = time.perf_counter() - started
        self.observe(elapsed / len(batch), len(batch))
        for done, outcome, failure in outcomes:
            _resolve(done, outcome, failure)

    def _store_samples(
        self, session: Session, items: list[_Item], received_at: datetime
    ) -> list[tuple[_Item, IngestResult | None, BaseException | None]]:
        """All samples reports of the batch in a few statements; if one of them breaks a
        statement, report by report (so that it fails alone)."""
        try:
            with session.begin_nested():
                results = store_samples_batch(
                    session.connection(),
                    [item.report for item in items],
                    [self.pool_of(item.report.node_name) for item in items],
                    received_at=received_at,
                )
        except (DBAPIError, StatementError, ValueError, TypeError, ArithmeticError) as error:
            if _database_failed(error):
                raise  # the whole batch fails
            log.warning("ingest_batch_split", reports=len(items), error=type(error).__name__)
        else:
            return [
                (item, result, None) if isinstance(result, IngestResult) else (item, None, result)
                for item, result in zip(items, results, strict=True)
            ]
        return [self._store_one(session, item, received_at) for item in items]

    def _store_one(
        self, session: Session, item: _Item, received_at: datetime
    ) -> tuple[_Item, IngestResult | None, BaseException | None]:
        """One report in its own SAVEPOINT: its failure rolls back only its own rows."""
        try:
            with session.begin_nested():
                result = ingest_report(
                    session,
                    item.report,
                    received_at=received_at,
                    pool=self.pool_of(item.report.node_name),
                    move_after=self.move_after,
                )
            return (item, result, None)
        except (TopologyUnknownError, GpuOwnedError) as error:
            return (item, None, error)
        except DBAPIError as error:
            if _database_failed(error):
                raise  # the whole batch fails
            log.error("report_not_storable", node=item.report.node_name, error=type(error).__name__)
            return (item, None, ReportNotStorableError(type(error).__name__))
        except (StatementError, ValueError, TypeError, ArithmeticError) as error:
            # this report's values broke a statement (its savepoint is rolled back): it
            # fails alone, the rest of the batch goes on
            message = f"{type(error).__name__}: {error}"
            log.error("report_not_storable", node=item.report.node_name, error=message)
            return (item, None, ReportNotStorableError(message[:200]))

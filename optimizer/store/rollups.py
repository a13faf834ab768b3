"""Rollups folded per closed bucket: what a samples report costs the rollups, and the fold.

Upserting two rollup rows (5-minute and 1-hour) per GPU per report was the largest cost of
ingest at fleet scale: every GPU's rows sit on their own index leaves and heap pages, and a
GPU reporting every 10 s rewrote its 5-minute row 30 times. Instead each stored samples
report adds one :class:`~optimizer.store.models.RollupPending` row (its buckets and its GPUs'
values, JSON) in the ingest transaction, and :func:`fold` later aggregates the pending rows
of closed 5-minute buckets and upserts each GPU's rollups once per fold.

The fold is exact: a pending row is deleted in the transaction that adds it to the rollups,
so every stored report counts once, whatever the order in which reports, replicas and folds
commit (a report stored late, into a bucket folded already, is added at the next fold).
On PostgreSQL, replicas folding at once take different rows (``SKIP LOCKED``) and upsert in
key order. Readers see ``rollups`` plus what is pending (:func:`pending_samples`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import Connection, Engine, Float, String, Subquery, select, text

from optimizer.store.models import RollupPending, UtcDateTime
from shared.report import NodeReport

#: Rollup levels and their bucket sizes.
ROLLUP_LEVELS: Final = {"5m": timedelta(minutes=5), "1h": timedelta(hours=1)}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: Pending reports folded per transaction (a fold's locks and memory stay bounded).
FOLD_CHUNK: Final = 2000

PENDING_COLUMNS: Final = ("node_name", "collected_at", "bucket_5m", "bucket_1h", "samples")

_ADDED: Final = ("samples", "util_sum", "memory_used_sum", "power_sum_w")
_KEPT: Final = ("util_max", "memory_used_max", "temperature_max_c")
_ROLLUP_COLUMNS: Final = (
    "gpu_uuid",
    "level",
    "bucket_start",
    "samples",
    "util_sum",
    "util_max",
    "memory_used_sum",
    "memory_used_max",
    "power_sum_w",
    "temperature_max_c",
)


def bucket_start(at: datetime, size: timedelta) -> datetime:
    """The start of the ``size`` bucket containing ``at`` (aligned to the Unix epoch)."""
    seconds = int(size.total_seconds())
    offset = int((at - _EPOCH).total_seconds()) // seconds * seconds
    return _EPOCH + timedelta(seconds=offset)


def pending_row(report: NodeReport) -> tuple[Any, ...]:
    """``report``'s pending row, in :data:`PENDING_COLUMNS` order."""
    at = report.collected_at
    values = [
        [s.gpu_uuid, s.util_ratio, s.memory_used_bytes, s.power_w, s.temperature_c]
        for s in report.samples
    ]
    return (
        report.node_name,
        at,
        bucket_start(at, ROLLUP_LEVELS["5m"]),
        bucket_start(at, ROLLUP_LEVELS["1h"]),
        json.dumps(values, separators=(",", ":")),
    )


def _samples_sql(dialect: str, source: str) -> str:
    """One row per GPU sample of the pending rows in ``source`` (a table expression with
    columns bucket_5m, bucket_1h and samples): gpu_uuid, bucket_5m, bucket_1h, util,
    memory, power, temperature; a value the agent did not read counts as 0, as ever."""
    if dialect == "postgresql":
        return (
            "SELECT e->>0 AS gpu_uuid, p.bucket_5m, p.bucket_1h, "
            "coalesce((e->>1)::float8, 0) AS util, coalesce((e->>2)::bigint, 0) AS memory, "
            "coalesce((e->>3)::float8, 0) AS power, "
            "coalesce((e->>4)::float8, 0) AS temperature "
            f"FROM {source} AS p, json_array_elements(p.samples::json) AS e"
        )
    return (
        "SELECT json_extract(e.value, '$[0]') AS gpu_uuid, p.bucket_5m, p.bucket_1h, "
        "coalesce(json_extract(e.value, '$[1]'), 0.0) AS util, "
        "coalesce(json_extract(e.value, '$[2]'), 0) AS memory, "
        "coalesce(json_extract(e.value, '$[3]'), 0.0) AS power, "
        "coalesce(json_extract(e.value, '$[4]'), 0.0) AS temperature "
        f"FROM {source} AS p, json_each(p.samples) AS e"
    )


def _fold_sql(dialect: str, source: str, *, taken: str = "") -> str:
    """Add the pending rows of ``source`` to the rollups, one upsert per GPU and bucket
    (``taken``: a common table expression that ``source`` names, before ``s``)."""
    levels = " UNION ALL ".join(
        f"SELECT gpu_uuid, '{level}' AS level, bucket_{level} AS bucket_start, "
        "count(*) AS samples, sum(util) AS util_sum, max(util) AS util_max, "
        "sum(CAST(memory AS DOUBLE PRECISION)) AS memory_used_sum, max(memory) AS memory_used_max, "
        "sum(power) AS power_sum_w, max(temperature) AS temperature_max_c "
        f"FROM s GROUP BY gpu_uuid, bucket_{level}"
        for level in ROLLUP_LEVELS
    )
    greatest = "greatest" if dialect == "postgresql" else "max"
    merge = ", ".join(
        [f"{c} = rollups.{c} + excluded.{c}" for c in _ADDED]
        + [f"{c} = {greatest}(rollups.{c}, excluded.{c})" for c in _KEPT]
    )
    names = ", ".join(_ROLLUP_COLUMNS)
    # SQLite needs the WHERE to read ON CONFLICT as the upsert's, not a join's
    return (
        f"WITH {taken}s AS ({_samples_sql(dialect, source)}) "
        f"INSERT INTO rollups ({names}) SELECT {names} FROM ({levels}) AS f WHERE true "
        f"ORDER BY gpu_uuid, level, bucket_start "
        f"ON CONFLICT (gpu_uuid, level, bucket_start) DO UPDATE SET {merge}"
    )


def fold(connection: Connection, *, before: datetime | None, limit: int | None) -> int:
    """Fold up to ``limit`` pending reports collected before ``before`` (None: all) into
    the rollups, in the caller's transaction; returns how many were folded."""
    dialect = connection.dialect.name
    p = RollupPending.__table__.c
    chosen = select(p.id).order_by(p.node_name, p.id)
    if before is not None:
        chosen = chosen.where(p.collected_at < before)
    if limit is not None:
        chosen = chosen.limit(limit)
    if dialect == "postgresql":
        chosen = chosen.with_for_update(skip_locked=True)
        ids = list(connection.execute(chosen).scalars())
        if not ids:
            return 0
        taken = "taken AS (DELETE FROM rollup_pending WHERE id = ANY(%(ids)s) RETURNING *), "
        connection.exec_driver_sql(_fold_sql(dialect, "taken", taken=taken), {"ids": ids})
        return len(ids)
    ids = list(connection.execute(chosen).scalars())
    if not ids:
        return 0
    for start in range(0, len(ids), 500):  # SQLite's limit on bound parameters
        chunk = ids[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        taken = f"(SELECT * FROM rollup_pending WHERE id IN ({marks}))"
        connection.exec_driver_sql(_fold_sql(dialect, taken), tuple(chunk))
        connection.exec_driver_sql(
            f"DELETE FROM rollup_pending WHERE id IN ({marks})", tuple(chunk)
        )
    return len(ids)


def fold_closed(engine: Engine, *, now: datetime, chunk: int = FOLD_CHUNK) -> int:
    """Fold every pending report whose 5-minute bucket has closed by ``now``, ``chunk``
    reports per transaction; returns how many were folded."""
    before = bucket_start(now, ROLLUP_LEVELS["5m"])
    total = 0
    while True:
        with engine.begin() as connection:
            folded = fold(connection, before=before, limit=chunk)
        total += folded
        if folded < chunk:
            return total


def pending_samples(
    connection: Connection, *, node: str, uuid: str, level: str, start: datetime, end: datetime
) -> Iterator[tuple[datetime, Sequence[Any]]]:
    """The not yet folded samples of GPU ``uuid`` on ``node`` whose ``level`` bucket starts
    in ``[start, end)``, as the rollups would count them: (bucket start, [uuid, util,
    memory, power, temperature])."""
    p = RollupPending.__table__.c
    bucket = p.bucket_5m if level == "5m" else p.bucket_1h
    rows = connection.execute(
        select(bucket, p.samples).where(p.node_name == node, bucket >= start, bucket < end)
    )
    for at, encoded in rows:
        for values in json.loads(encoded):
            if values[0] == uuid:
                yield at, values


def pending_subquery(dialect: str) -> Subquery:
    """Every pending GPU sample as a table: gpu_uuid, bucket_5m, bucket_1h, util (for
    readers that aggregate rollups and pending samples together)."""
    return (
        text(_samples_sql(dialect, "rollup_pending"))
        .columns(gpu_uuid=String, bucket_5m=UtcDateTime, bucket_1h=UtcDateTime, util=Float)
        .subquery("pending")
    )

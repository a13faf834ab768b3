"""Writing samples rows: raw samples, per-pod usage, each GPU's latest view and the
reports' pending share of the rollups (folded later: optimizer/store/rollups.py).

:func:`write_samples` writes the rows of any number of samples reports in one statement per
table, whatever their number: on PostgreSQL a multi-row statement over ``unnest`` of one
array per column, on SQLite one ``executemany`` (in-process, a row costs microseconds).
Each GPU's latest view is taken from its newest sample, so no statement touches a row
twice, and rows are written in key order so that two optimizer replicas writing at once
take their row locks in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection, Table, select, tuple_

from optimizer.store.models import (
    ContainerUsageRow,
    ReportReceipt,
    RollupPending,
    Sample,
    WorkloadUsage,
)
from optimizer.store.rollups import PENDING_COLUMNS, pending_row
from shared.report import NodeReport

_RECEIPTS: Final[Table] = ReportReceipt.__table__  # type: ignore[assignment]
_SAMPLES: Final[Table] = Sample.__table__  # type: ignore[assignment]
_USAGE: Final[Table] = WorkloadUsage.__table__  # type: ignore[assignment]
_CONTAINERS: Final[Table] = ContainerUsageRow.__table__  # type: ignore[assignment]
_PENDING: Final[Table] = RollupPending.__table__  # type: ignore[assignment]

#: A report's receipt key: (node, sequence, collected_at).
Key = tuple[str, int, datetime]
Row = tuple[Any, ...]

_SAMPLE_COLUMNS: Final = (
    "gpu_uuid",
    "node_name",
    "at",
    "util_ratio",
    "memory_used_bytes",
    "power_w",
    "energy_j",
    "temperature_c",
    "sm_clock_hz",
    "process_count",
    "xid_total",
    "sm_active_ratio",
)
_USAGE_COLUMNS: Final = (
    "at",
    "node_name",
    "gpu_uuid",
    "namespace",
    "pod",
    "pod_uid",
    "container",
    "pid",
    "memory_used_bytes",
    "sm_util_ratio",
)
_CONTAINER_COLUMNS: Final = (
    "at",
    "node_name",
    "namespace",
    "pod",
    "pod_uid",
    "container",
    "cpu_cores",
    "memory_bytes",
)
_LATEST_COLUMNS: Final = (
    "uuid",
    "node",
    "at",
    "util",
    "memory",
    "power",
    "energy",
    "temperature",
    "processes",
    "sample",
)
_NODE_COLUMNS: Final = ("name", "collected_at", "sequence", "agent_version", "pool")


def report_key(report: NodeReport) -> Key:
    """The key of ``report``'s receipt (a resend has the same key)."""
    return (report.node_name, report.sequence, report.collected_at)


def write_samples(connection: Connection, reports: Sequence[NodeReport]) -> set[tuple[str, str]]:
    """Write the samples, usage, latest views and pending rollups of ``reports`` (whose
    receipts are new) in the caller's transaction.

    Returns the (node, GPU UUID) pairs of samples for a GPU that is not that node's: when
    there is one, only GPUs' latest views have been written, and the caller rolls back
    (its SAVEPOINT) and stores the other reports again. Ownership is read with the latest
    view's update (PostgreSQL: ``RETURNING``), not by a query of its own.
    """
    samples: list[Row] = []
    usage: list[Row] = []
    containers: list[Row] = []
    latest: dict[tuple[str, str], tuple[Row, Any]] = {}  # (node, uuid) -> newest row, sample
    pending: list[Row] = []
    for report in reports:
        at, node = report.collected_at, report.node_name
        if report.samples:
            pending.append(pending_row(report))
        containers.extend(
            (
                at,
                node,
                c.namespace,
                c.pod,
                c.pod_uid,
                c.container,
                c.cpu_cores,
                c.memory_working_set_bytes,
            )
            for c in report.containers
        )
        for s in report.samples:
            row = (
                s.gpu_uuid,
                node,
                at,
                s.util_ratio,
                s.memory_used_bytes,
                s.power_w,
                s.energy_j,
                s.temperature_c,
                s.sm_clock_hz,
                len(s.processes),
                s.xid_total,
                s.sm_active_ratio,
            )
            samples.append(row)
            usage.extend(
                (
                    at,
                    node,
                    s.gpu_uuid,
                    p.namespace,
                    p.pod,
                    p.pod_uid,
                    p.container,
                    p.pid,
                    p.memory_used_bytes,
                    p.sm_util_ratio,
                )
                for p in s.processes
            )
            kept = latest.get((node, s.gpu_uuid))
            if kept is None or at >= kept[0][2]:  # a late report never overwrites
                latest[(node, s.gpu_uuid)] = (row, s)
    if not samples:
        return set()
    writer = writer_for(connection)
    # the samples row's uuid, node, at, util, memory, power, energy, temperature, processes
    owned = writer.latest(
        [(row[0], *row[1:8], row[9], s) for _, (row, s) in sorted(latest.items())]
    )
    if unowned := set(latest) - owned:
        return unowned
    samples.sort(key=lambda row: (row[0], row[2]))
    writer.insert(_SAMPLES, _SAMPLE_COLUMNS, samples)
    if usage:
        usage.sort(key=lambda row: (row[2], row[0], row[7]))
        writer.insert(_USAGE, _USAGE_COLUMNS, usage)
    if containers:
        containers.sort(key=lambda row: (row[0], row[1], str(row[4]), str(row[5])))
        writer.insert(_CONTAINERS, _CONTAINER_COLUMNS, containers)
    writer.insert(_PENDING, PENDING_COLUMNS, pending)
    return set()


def advance_nodes(
    connection: Connection,
    reports: Sequence[NodeReport],
    pools: Sequence[str | None],
    *,
    received_at: datetime,
) -> None:
    """Move each node's progress forward for its samples ``reports``: last seen, and the
    newest report's collected_at, sequence and agent version (a late report never moves
    them back); ``pools[i]`` is report i's node pool."""
    newest: dict[str, tuple[datetime, NodeReport, str | None]] = {}
    for report, pool in zip(reports, pools, strict=True):
        seen = newest.get(report.node_name)
        if seen is None or report.collected_at >= seen[0]:
            newest[report.node_name] = (report.collected_at, report, pool)
    writer_for(connection).nodes(
        [
            (name, at, report.sequence, report.agent_version, pool)
            for name, (at, report, pool) in sorted(newest.items())
        ],
        received_at=received_at,
    )


def stored_receipts(connection: Connection, keys: Sequence[Key]) -> set[Key]:
    """Those of ``keys`` whose report is stored already (a resend)."""
    if not keys:
        return set()
    c = _RECEIPTS.c
    wanted = set(keys)
    found = connection.execute(
        select(c.node_name, c.sequence, c.collected_at).where(
            tuple_(c.node_name, c.sequence).in_(sorted({(n, s) for n, s, _ in wanted}))
        )
    )
    return {key for key in map(tuple, found) if key in wanted}


def writer_for(connection: Connection) -> _Postgres | _Sqlite:
    """The row writer for ``connection``'s database."""
    return _Postgres(connection) if connection.dialect.name == "postgresql" else _Sqlite(connection)


class _Postgres:
    """One statement per table over ``unnest`` of one array per column."""

    _TYPES: Final = {
        "sequence": "bigint",
        "pid": "bigint",
        "xid_total": "bigint",
        "memory_used_bytes": "bigint",
        "memory": "bigint",
        "process_count": "integer",
        "processes": "integer",
        "at": "timestamptz",
        "collected_at": "timestamptz",
        "bucket_5m": "timestamptz",
        "bucket_1h": "timestamptz",
        "util_ratio": "float8",
        "sm_active_ratio": "float8",
        "sm_util_ratio": "float8",
        "cpu_cores": "float8",
        "memory_bytes": "bigint",
        "power_w": "float8",
        "energy_j": "float8",
        "temperature_c": "float8",
        "sm_clock_hz": "float8",
        "util": "float8",
        "power": "float8",
        "energy": "float8",
        "temperature": "float8",
    }

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def _unnest(self, columns: Sequence[str], rows: Sequence[Row]) -> tuple[str, dict[str, Any]]:
        arrays = ", ".join(
            f"%(c{i})b::{self._TYPES.get(name, 'text')}[]" for i, name in enumerate(columns)
        )
        params = {f"c{i}": [row[i] for row in rows] for i in range(len(columns))}
        return f"unnest({arrays}) AS v({', '.join(columns)})", params

    def receipts(self, keys: Sequence[Key], *, received_at: datetime) -> set[Key]:
        """Insert the receipts of ``keys``; returns those that were new (another replica
        may have stored one since the caller looked)."""
        if not keys:
            return set()
        source, params = self._unnest(("node_name", "sequence", "collected_at"), keys)
        params["received_at"] = received_at
        rows = self.connection.exec_driver_sql(
            "INSERT INTO report_receipts (node_name, sequence, collected_at, received_at) "
            f"SELECT v.node_name, v.sequence, v.collected_at, %(received_at)s FROM {source} "
            "ON CONFLICT DO NOTHING RETURNING node_name, sequence, collected_at",
            params,
        )
        return {(name, sequence, at.astimezone(UTC)) for name, sequence, at in rows}

    def insert(self, table: Table, columns: Sequence[str], rows: Sequence[Row]) -> None:
        source, params = self._unnest(columns, rows)
        names = ", ".join(columns)
        self.connection.exec_driver_sql(
            f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {source}", params
        )

    def latest(self, rows: Sequence[Row]) -> set[tuple[str, str]]:
        """Update each row's GPU, where it is the row's node's, to the row's sample unless
        it has a newer one; returns the (node, uuid) pairs that are the node's."""
        source, params = self._unnest(
            _LATEST_COLUMNS, [(*row[:-1], row[-1].model_dump_json()) for row in rows]
        )
        newer = "g.latest_at IS NULL OR g.latest_at <= v.at"
        changes = ", ".join(
            f"latest_{column} = CASE WHEN {newer} THEN {value} ELSE g.latest_{column} END"
            for column, value in (
                ("at", "v.at"),
                ("util_ratio", "v.util"),
                ("memory_used_bytes", "v.memory"),
                ("power_w", "v.power"),
                ("energy_j", "v.energy"),
                ("temperature_c", "v.temperature"),
                ("process_count", "v.processes"),
                ("sample", "v.sample::json"),
            )
        )
        # an owned GPU is updated even where its sample is older (to the same values),
        # so that RETURNING names every GPU that is the node's
        found = self.connection.exec_driver_sql(
            f"UPDATE gpus AS g SET {changes} FROM {source} "
            "WHERE g.uuid = v.uuid AND g.node_name = v.node RETURNING g.node_name, g.uuid",
            params,
        )
        return {(node, uuid) for node, uuid in found}

    def nodes(self, rows: Sequence[Row], *, received_at: datetime) -> None:
        source, params = self._unnest(_NODE_COLUMNS, rows)
        params["received_at"] = received_at
        newer = "v.collected_at >= n.last_collected_at"
        self.connection.exec_driver_sql(
            "UPDATE nodes AS n SET last_seen = greatest(n.last_seen, %(received_at)s), "
            "pool = v.pool, "
            f"last_sequence = CASE WHEN {newer} THEN v.sequence ELSE n.last_sequence END, "
            f"agent_version = CASE WHEN {newer} THEN v.agent_version ELSE n.agent_version END, "
            "last_collected_at = greatest(n.last_collected_at, v.collected_at) "
            f"FROM {source} WHERE n.name = v.name",
            params,
        )


def _sqlite_time(at: datetime) -> str:
    """``at`` as SQLAlchemy's SQLite DateTime stores it (naive UTC, microseconds), so that
    rows written here read back, compare and sort like those the ORM writes."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class _Sqlite:
    """The driver's ``executemany`` with values converted once per report: SQLite runs
    in-process, so a row costs microseconds, and SQLAlchemy's per-row bind processing
    would cost more than the write."""

    _TIMES: Final = frozenset({"at", "collected_at", "bucket_5m", "bucket_1h"})

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def _rows(self, columns: Sequence[str], rows: Sequence[Row]) -> list[Row]:
        times = [i for i, name in enumerate(columns) if name in self._TIMES]
        if not times:
            return list(rows)
        text: dict[datetime, str] = {}  # a report's rows share their times
        converted = []
        for row in rows:
            values = list(row)
            for i in times:
                at = values[i]
                values[i] = text.get(at) or text.setdefault(at, _sqlite_time(at))
            converted.append(tuple(values))
        return converted

    def receipts(self, keys: Sequence[Key], *, received_at: datetime) -> set[Key]:
        """Insert the receipts of ``keys`` (none stored yet: SQLite has one writer, so
        nothing can have stored one since the caller looked)."""
        if keys:
            received = _sqlite_time(received_at)
            self.connection.exec_driver_sql(
                "INSERT INTO report_receipts (node_name, sequence, collected_at, received_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(n, s, _sqlite_time(at), received) for n, s, at in keys],
            )
        return set(keys)

    def insert(self, table: Table, columns: Sequence[str], rows: Sequence[Row]) -> None:
        marks = ", ".join("?" for _ in columns)
        self.connection.exec_driver_sql(
            f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})",
            self._rows(columns, rows),
        )

    def latest(self, rows: Sequence[Row]) -> set[tuple[str, str]]:
        """As :meth:`_Postgres.latest`; ownership is read first (in-process, by key)."""
        uuids = sorted({row[0] for row in rows})
        owned: set[tuple[str, str]] = set()
        for start in range(0, len(uuids), 500):  # SQLite's limit on bound parameters
            chunk = uuids[start : start + 500]
            found = self.connection.exec_driver_sql(
                f"SELECT node_name, uuid FROM gpus WHERE uuid IN ({', '.join('?' for _ in chunk)})",
                tuple(chunk),
            )
            owned.update((node, uuid) for node, uuid in found)
        mine = [
            (*values[:-1], values[-1].model_dump_json())
            for values in self._rows(_LATEST_COLUMNS, rows)
            if (values[1], values[0]) in owned
        ]
        if mine:
            self.connection.exec_driver_sql(
                "UPDATE gpus SET latest_at = ?3, latest_util_ratio = ?4, "
                "latest_memory_used_bytes = ?5, latest_power_w = ?6, latest_energy_j = ?7, "
                "latest_temperature_c = ?8, latest_process_count = ?9, latest_sample = ?10 "
                "WHERE uuid = ?1 AND node_name = ?2 AND (latest_at IS NULL OR latest_at <= ?3)",
                mine,
            )
        return owned

    def nodes(self, rows: Sequence[Row], *, received_at: datetime) -> None:
        # SET expressions read the row as it was before the update
        self.connection.exec_driver_sql(
            "UPDATE nodes SET last_seen = max(last_seen, ?6), pool = ?5, "
            "last_sequence = CASE WHEN ?2 >= last_collected_at THEN ?3 ELSE last_sequence END, "
            "agent_version = CASE WHEN ?2 >= last_collected_at THEN ?4 ELSE agent_version END, "
            "last_collected_at = max(last_collected_at, ?2) WHERE name = ?1",
            [(*values, _sqlite_time(received_at)) for values in self._rows(_NODE_COLUMNS, rows)],
        )

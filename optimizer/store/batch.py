"""Storing a batch of samples reports in a few statements, whatever the batch's size.

:func:`store_samples_batch` does for many samples reports what
:func:`optimizer.store.reports.ingest_report` does for one, with the same outcome for each:
a resend is found by its receipt and changes nothing; samples for a node or GPU the store
does not know are refused with :class:`TopologyUnknownError`; the node's view only moves
forward. The cost is three queries (the batch's receipts, nodes and GPUs) and one statement
per table.

A statement error propagates: the caller rolls back (a SAVEPOINT around this call) and
stores the batch report by report, so that a report the database refuses fails alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from sqlalchemy import Connection, select

from optimizer.store.models import Gpu, Node
from optimizer.store.reports import IngestResult, TopologyUnknownError
from optimizer.store.samples import (
    Key,
    advance_nodes,
    report_key,
    stored_receipts,
    write_samples,
    writer_for,
)
from shared.report import NodeReport

Outcome = IngestResult | TopologyUnknownError
_RESEND: Final = IngestResult(stored=False, topology_changed=False, samples=0)


def store_samples_batch(
    connection: Connection,
    reports: Sequence[NodeReport],
    pools: Sequence[str | None],
    *,
    received_at: datetime,
) -> list[Outcome]:
    """Store samples-only ``reports`` (``pools[i]`` is report i's node pool) in the
    caller's transaction; returns each report's outcome, in order.

    Raises:
        ValueError: a report carries topology (store those with ``ingest_report``).
        sqlalchemy.exc.SQLAlchemyError: a statement failed; roll back and store the
            reports one by one to find the one at fault.
    """
    if any(report.is_topology_report for report in reports):
        raise ValueError("store_samples_batch takes samples reports only")
    names = sorted({report.node_name for report in reports})
    known = set(connection.execute(select(Node.name).where(Node.name.in_(names))).scalars())
    gpus_of: dict[str, set[str]] = defaultdict(set)
    # by primary key: a lookup by node would be planned from the table's statistics, and
    # a table never analysed (autovacuum off) was read whole for every batch
    uuids = sorted({s.gpu_uuid for report in reports for s in report.samples})
    for uuid, node in connection.execute(
        select(Gpu.uuid, Gpu.node_name).where(Gpu.uuid.in_(uuids))
    ):
        gpus_of[node].add(uuid)

    keys = [report_key(report) for report in reports]
    resent = stored_receipts(connection, keys)
    outcomes: dict[int, Outcome] = {}
    accepted: set[Key] = set()  # stored now or before: the same key again is a resend
    valid: list[int] = []
    for i, (report, key) in enumerate(zip(reports, keys, strict=True)):
        if key in accepted or key in resent:  # nothing is checked or written again
            outcomes[i] = _RESEND
        elif report.node_name not in known:
            outcomes[i] = TopologyUnknownError.no_topology(report.node_name)
        elif missing := sorted({s.gpu_uuid for s in report.samples} - gpus_of[report.node_name]):
            outcomes[i] = TopologyUnknownError.foreign_gpus(report.node_name, missing)
        else:
            accepted.add(key)
            valid.append(i)
    new = writer_for(connection).receipts(sorted(keys[i] for i in valid), received_at=received_at)
    stored = []
    for i in valid:
        if keys[i] in new:
            stored.append(i)
            outcomes[i] = IngestResult(
                stored=True, topology_changed=False, samples=len(reports[i].samples)
            )
        else:
            outcomes[i] = _RESEND  # another replica stored it since
    if stored:
        write_samples(connection, [reports[i] for i in stored])
        advance_nodes(
            connection,
            [reports[i] for i in stored],
            [pools[i] for i in stored],
            received_at=received_at,
        )
    return [outcomes[i] for i in range(len(reports))]

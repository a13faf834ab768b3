"""Storing a batch of samples reports in a few statements, whatever the batch's size.

:func:`store_samples_batch` does for many samples reports what
:func:`optimizer.store.reports.ingest_report` does for one, with the same outcome for each:
a resend is found by its receipt and changes nothing; samples for a node or GPU the store
does not know are refused with :class:`TopologyUnknownError`; the node's view only moves
forward. The cost is two queries (the batch's receipts and nodes) and one statement per
table; that the GPUs are their nodes' is read with the latest views' update.

A statement error propagates: the caller rolls back (a SAVEPOINT around this call) and
stores the batch report by report, so that a report the database refuses fails alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from sqlalchemy import Connection, select

from optimizer.store.models import Node
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
    keys = [report_key(report) for report in reports]
    resent = stored_receipts(connection, keys)
    writer = writer_for(connection)
    foreign: dict[int, TopologyUnknownError] = {}
    while True:  # again while a pass finds a report with another node's GPUs
        outcomes: dict[int, Outcome] = {}
        accepted: set[Key] = set()  # stored now or before: the same key again is a resend
        todo: list[int] = []
        for i, (report, key) in enumerate(zip(reports, keys, strict=True)):
            if key in resent:  # nothing is checked or written again
                outcomes[i] = _RESEND
            elif report.node_name not in known:
                outcomes[i] = TopologyUnknownError.no_topology(report.node_name)
            elif i in foreign:
                outcomes[i] = foreign[i]
            elif key in accepted:
                outcomes[i] = _RESEND
            else:
                accepted.add(key)
                todo.append(i)
        with connection.begin_nested() as savepoint:  # rolled back if a statement fails
            new = writer.receipts(sorted(keys[i] for i in todo), received_at=received_at)
            stored = [i for i in todo if keys[i] in new]
            unowned = write_samples(connection, [reports[i] for i in stored])
            if unowned:
                savepoint.rollback()
            elif stored:
                advance_nodes(
                    connection,
                    [reports[i] for i in stored],
                    [pools[i] for i in stored],
                    received_at=received_at,
                )
        if not unowned:
            break
        for i in stored:
            node = reports[i].node_name
            theirs = {uuid for owner, uuid in unowned if owner == node}
            if missing := sorted({s.gpu_uuid for s in reports[i].samples} & theirs):
                foreign[i] = TopologyUnknownError.foreign_gpus(node, missing)
    for i in todo:
        outcomes[i] = (
            IngestResult(stored=True, topology_changed=False, samples=len(reports[i].samples))
            if keys[i] in new
            else _RESEND  # another replica stored it since
        )
    return [outcomes[i] for i in range(len(reports))]

"""The ingest writer's cost per batch, in-process, with each statement's share.

Run: ``.venv/bin/python -m bench.ingest_writer [--nodes 10000] [--batches 250] [--fresh]``.

Stores batches of 64 samples reports (random nodes of a ``--nodes`` fleet of fake 8-GPU
nodes) with :func:`optimizer.store.batch.store_samples_batch`, as the ingest writer does,
on PostgreSQL (``STOWAGE_TEST_POSTGRES_URL``'s server, database ``stowage_writer``), and
prints the median and mean time per batch (the first 20 left out) and the time spent in
each statement. ``--fresh`` recreates the database and stores every node's topology first
(about 5 minutes at 10,000 nodes); without it the fleet of the last run is reused, so two
versions of the code can be compared one after the other on the same database.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.orm import sessionmaker

from bench.ingest import POSTGRES_ADMIN
from bench.loadgen import node_name
from optimizer.store.batch import store_samples_batch
from optimizer.store.engine import make_engine
from optimizer.store.migrate import upgrade
from optimizer.store.reports import ingest_report
from shared.report import NodeReport
from shared.samples import DGX_H100, build_report

DATABASE = "stowage_writer"
BATCH = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=250)
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    url = POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{DATABASE}"
    if args.fresh:
        admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {DATABASE}"))
            connection.execute(text(f"CREATE DATABASE {DATABASE}"))
        admin.dispose()
    engine = make_engine(url)
    upgrade(engine)
    sessions = sessionmaker(engine)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)

    def report(n: int) -> NodeReport:
        return build_report(
            DGX_H100, node_name=node_name(n), collected_at=t0, util_ratios=[(n % 10) / 10] * 8
        )

    if args.fresh:
        started = time.perf_counter()
        for chunk in range(0, args.nodes, 200):
            with sessions.begin() as session:
                for n in range(chunk, min(args.nodes, chunk + 200)):
                    ingest_report(session, report(n), received_at=datetime.now(UTC))
        print(f"topology of {args.nodes} nodes stored in {time.perf_counter() - started:.0f} s")

    spent: dict[str, float] = defaultdict(float)

    @event.listens_for(engine, "before_cursor_execute")
    def _before(connection: Any, *_: Any) -> None:
        connection.info["started"] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def _after(connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        spent[" ".join(statement.split()[:3])[:40]] += (
            time.perf_counter() - connection.info["started"]
        )

    with engine.connect() as connection:
        sequence, last = connection.execute(
            text("SELECT coalesce(max(last_sequence), 0), max(last_collected_at) FROM nodes")
        ).one()
    at = (last or t0).astimezone(UTC) + timedelta(seconds=1)
    bodies = {
        n: report(n).model_dump(
            mode="json",
            exclude_none=True,
            include={"schema_version", "node_name", "agent_version", "samples"},
        )
        for n in range(args.nodes)
    }
    order = list(bodies)
    random.Random(1).shuffle(order)
    times = []
    for b in range(args.batches):
        reports = []
        for k in range(BATCH):
            i = b * BATCH + k
            body = dict(bodies[order[i % args.nodes]])
            body["sequence"] = int(sequence) + 1 + i
            body["collected_at"] = (at + timedelta(milliseconds=i)).isoformat()
            reports.append(NodeReport.model_validate(body))
        started = time.perf_counter()
        with sessions.begin() as session:
            store_samples_batch(
                session.connection(), reports, [None] * BATCH, received_at=datetime.now(UTC)
            )
        times.append(time.perf_counter() - started)
    kept = times[20:]
    print(
        f"{args.nodes} nodes, batch of {BATCH} samples reports: median "
        f"{statistics.median(kept) * 1000:.1f} ms, mean {statistics.mean(kept) * 1000:.1f} ms "
        f"({BATCH / statistics.mean(kept):.0f} reports/s if the writer were all)"
    )
    for statement, seconds in sorted(spent.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {seconds / args.batches * 1000:6.1f} ms per batch  {statement}")


if __name__ == "__main__":
    main()

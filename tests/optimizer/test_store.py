"""The store on SQLite and PostgreSQL: idempotent ingest, topology versions, rollups, retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from optimizer.store import migrate
from optimizer.store.models import (
    Base,
    Gpu,
    GpuLinkRow,
    ReportReceipt,
    Rollup,
    RollupPending,
    Sample,
    TopologyVersion,
    WorkloadUsage,
)
from optimizer.store.queries import choose_source, get_node, gpu_series, list_nodes
from optimizer.store.reports import TopologyUnknownError, ingest_report, prune
from optimizer.store.rollups import bucket_start, fold
from shared.report import GpuHealth
from tests.optimizer.reports import later, samples_report, topology_report, with_process

T0 = datetime(2026, 11, 29, 12, 0, 3, tzinfo=UTC)


def _fold_all(engine: Engine) -> None:
    with engine.begin() as connection:
        fold(connection, before=None, limit=None)


def _count(session: Session, model: type[Base]) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_migrations_match_the_models(empty_engine: Engine) -> None:
    assert migrate.current_revision(empty_engine) is None
    assert not migrate.is_current(empty_engine)
    migrate.upgrade(empty_engine)
    assert migrate.is_current(empty_engine)
    with empty_engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_topology_report_is_stored(engine: Engine) -> None:
    report = with_process(
        topology_report("gpu-node-1", at=T0), 2, namespace="ml", pod="train-0", memory_used_bytes=7
    )
    with Session(engine) as session, session.begin():
        result = ingest_report(session, report, received_at=T0)
    assert (result.stored, result.topology_changed, result.samples) == (True, True, 8)
    with Session(engine) as session:
        node = get_node(session, "gpu-node-1")
        assert node is not None
        assert [g.index for g in node.gpus] == list(range(8))
        assert node.gpus[0].info["uuid"] == report.gpus[0].uuid
        assert node.last_collected_at == T0
        assert len(node.links) == 28
        assert node.links[0]["nvlink_count"] == 18
        assert node.host is not None
        assert node.host["cpu_sockets"] == 2
        assert _count(session, Sample) == 8
        assert _count(session, TopologyVersion) == 1
        usage = session.scalars(select(WorkloadUsage)).one()
        assert (usage.namespace, usage.pod, usage.gpu_uuid) == (
            "ml",
            "train-0",
            report.gpus[2].uuid,
        )
        assert node.gpus[2].process_count == 1


def test_a_resent_report_is_stored_once(engine: Engine) -> None:
    report = topology_report("gpu-node-1", at=T0)
    for _ in range(3):
        with Session(engine) as session, session.begin():
            result = ingest_report(session, report, received_at=T0)
    assert not result.stored
    _fold_all(engine)
    with Session(engine) as session:
        assert _count(session, Sample) == 8
        assert _count(session, ReportReceipt) == 1
        rollup = session.scalars(select(Rollup).where(Rollup.level == "5m")).first()
        assert rollup is not None
        assert rollup.samples == 1


def test_samples_without_topology_write_nothing(engine: Engine) -> None:
    orphan = samples_report(topology_report("gpu-node-9", at=T0), at=T0, sequence=5)
    with Session(engine) as session, pytest.raises(TopologyUnknownError), session.begin():
        ingest_report(session, orphan, received_at=T0)
    with Session(engine) as session:
        assert _count(session, ReportReceipt) == 0
        assert _count(session, Sample) == 0


def test_samples_for_another_nodes_gpu_are_refused(engine: Engine) -> None:
    one = topology_report("gpu-node-1", at=T0)
    two = topology_report("gpu-node-2", at=T0)
    with Session(engine) as session, session.begin():
        ingest_report(session, one, received_at=T0)
        ingest_report(session, two, received_at=T0)
    forged = samples_report(two, at=later(T0, 10), sequence=2).model_copy(
        update={"node_name": "gpu-node-1"}
    )
    with (
        Session(engine) as session,
        pytest.raises(TopologyUnknownError, match="not in its topology"),
        session.begin(),
    ):
        ingest_report(session, forged, received_at=T0)


def test_topology_is_versioned_only_when_it_changes(engine: Engine) -> None:
    first = topology_report("gpu-node-1", at=T0)
    same = first.model_copy(update={"sequence": 2, "collected_at": later(T0, 10)})
    data = first.model_dump(mode="json")
    data["gpus"][6]["health"] = "lost"
    data.update(sequence=3, collected_at=later(T0, 20).isoformat())
    changed = type(first).model_validate(data)
    results = []
    for report in (first, same, changed):
        with Session(engine) as session, session.begin():
            results.append(ingest_report(session, report, received_at=report.collected_at))
    assert [r.topology_changed for r in results] == [True, False, True]
    with Session(engine) as session:
        assert _count(session, TopologyVersion) == 2
        assert _count(session, GpuLinkRow) == 28
        lost = session.scalars(select(Gpu).where(Gpu.index == 6)).one()
        assert lost.health == GpuHealth.LOST.value
        node = get_node(session, "gpu-node-1")
        assert node is not None
        assert node.last_sequence == 3


def test_rollups_aggregate_within_buckets(engine: Engine) -> None:
    base = topology_report("gpu-node-1", at=T0, utils=[0.2] * 8)
    second = samples_report(
        topology_report("gpu-node-1", at=T0, utils=[0.6] * 8), at=later(T0, 10), sequence=2
    )
    with Session(engine) as session, session.begin():
        ingest_report(session, base, received_at=T0)
        ingest_report(session, second, received_at=later(T0, 10))
    _fold_all(engine)
    with Session(engine) as session:
        five = session.scalars(
            select(Rollup).where(Rollup.gpu_uuid == base.gpus[0].uuid, Rollup.level == "5m")
        ).one()
        assert five.bucket_start == datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
        assert five.samples == 2
        assert five.util_sum == pytest.approx(0.8)
        assert five.util_max == pytest.approx(0.6)
        assert _count(session, Rollup) == 8 * 2


def test_latest_sample_never_goes_back_in_time(engine: Engine) -> None:
    new = topology_report("gpu-node-1", at=later(T0, 60), utils=[0.9] * 8)
    old = samples_report(topology_report("gpu-node-1", at=T0, utils=[0.1] * 8), at=T0, sequence=7)
    with Session(engine) as session, session.begin():
        ingest_report(session, new, received_at=later(T0, 60))
        ingest_report(session, old, received_at=later(T0, 61))  # a buffered, late report
    with Session(engine) as session:
        node = get_node(session, "gpu-node-1")
        assert node is not None
        assert node.gpus[0].util_ratio == pytest.approx(0.9)
        assert node.last_collected_at == later(T0, 60)
        assert _count(session, Sample) == 16


def test_prune_applies_each_retention(engine: Engine) -> None:
    old = topology_report("gpu-node-1", at=T0 - timedelta(days=3))
    recent = samples_report(old, at=T0, sequence=2)
    with Session(engine) as session, session.begin():
        ingest_report(session, old, received_at=old.collected_at)
        ingest_report(session, recent, received_at=T0)
    with Session(engine) as session, session.begin():
        result = prune(
            session,
            now=T0,
            raw_retention=timedelta(days=2),
            rollup_5m_retention=timedelta(days=2),
            rollup_1h_retention=timedelta(days=30),
        )
    assert (result.samples, result.rollups_5m, result.rollups_1h, result.receipts) == (8, 8, 0, 1)
    with Session(engine) as session:
        assert _count(session, Sample) == 8
        # the old report was folded before its 5-minute rollups went; the recent one,
        # whose bucket is still open, waits in pending
        assert _count(session, Rollup) == 8
        assert _count(session, RollupPending) == 1
    _fold_all(engine)
    with Session(engine) as session:
        assert _count(session, Rollup) == 8 * 3


def test_history_downsamples_raw_and_rollups(engine: Engine) -> None:
    first = topology_report("gpu-node-1", at=T0, utils=[0.0] * 8)
    reports = [first] + [
        samples_report(
            topology_report("gpu-node-1", at=T0, utils=[i / 100] * 8),
            at=later(T0, 10 * i),
            sequence=i + 1,
        )
        for i in range(1, 90)
    ]
    with Session(engine) as session, session.begin():
        for report in reports:
            ingest_report(session, report, received_at=report.collected_at)
    uuid = first.gpus[0].uuid
    with Session(engine) as session:
        raw = gpu_series(
            session,
            uuid=uuid,
            start=T0,
            end=later(T0, 900),
            step=timedelta(seconds=60),
            source="raw",
        )
        assert len(raw) == 15
        assert raw[0].samples == 6
        assert raw[0].util_ratio == pytest.approx(sum(range(6)) / 600)
        rolled = gpu_series(
            session,
            uuid=uuid,
            start=bucket_start(T0, timedelta(minutes=5)),
            end=later(T0, 900),
            step=timedelta(minutes=5),
            source="5m",
        )
        assert [p.samples for p in rolled] == [30, 30, 30]
        assert rolled[1].util_max_ratio == pytest.approx(0.59)
        hourly = gpu_series(
            session,
            uuid=uuid,
            start=T0 - timedelta(hours=1),
            end=later(T0, 3600),
            step=timedelta(hours=1),
            source="1h",
        )
        assert sum(p.samples for p in hourly) == 90
        assert len(list_nodes(session)) == 1


@pytest.mark.parametrize(
    ("step_s", "age_days", "expected"),
    [(10, 0, "raw"), (60, 0, "raw"), (300, 0, "5m"), (3600, 0, "1h"), (60, 5, "5m")],
)
def test_source_choice(step_s: float, age_days: float, expected: str) -> None:
    now = T0
    start = now - timedelta(days=age_days, hours=1)
    raw_since = now - timedelta(days=2)
    assert (
        choose_source(step=timedelta(seconds=step_s), start=start, raw_since=raw_since) == expected
    )


def test_a_gpu_belongs_to_one_node_until_its_owner_goes_quiet(engine: Engine) -> None:
    from optimizer.store.models import AuditEntry, Node
    from optimizer.store.reports import GpuOwnedError

    one = topology_report("gpu-node-1", at=T0)
    with Session(engine) as session, session.begin():
        ingest_report(session, one, received_at=T0)
    claim = one.model_copy(update={"node_name": "gpu-node-2", "sequence": 1})
    with (
        Session(engine) as session,
        pytest.raises(GpuOwnedError, match="owned by another node") as owned,
        session.begin(),
    ):
        ingest_report(session, claim, received_at=later(T0, 30), move_after=timedelta(minutes=10))
    assert {owner for _, owner in owned.value.claims} == {"gpu-node-1"}
    assert len(owned.value.claims) == 8
    with Session(engine) as session:
        assert {g.node_name for g in session.scalars(select(Gpu))} == {"gpu-node-1"}
        assert session.get(Node, "gpu-node-2") is None  # nothing of the claim was written
    # gpu-node-1 falls silent for longer than move_after: the GPUs moved to another server
    moved_at = later(T0, 11 * 60)
    with Session(engine) as session, session.begin():
        ingest_report(session, claim, received_at=moved_at, move_after=timedelta(minutes=10))
    with Session(engine) as session:
        assert {g.node_name for g in session.scalars(select(Gpu))} == {"gpu-node-2"}
        moves = session.scalars(select(AuditEntry).where(AuditEntry.verb == "move-gpu")).all()
        old = session.get(Node, "gpu-node-1")
    assert len(moves) == 8
    assert moves[0].reason.startswith("from node gpu-node-1 (silent since")
    assert old is not None
    assert old.topology_fingerprint is None  # its next topology report is stored again


def test_prune_keeps_the_audit_log_and_replaced_topologies_for_their_retention(
    engine: Engine,
) -> None:
    from optimizer.store.models import AuditEntry
    from optimizer.store.queries import record_audit

    first = topology_report("gpu-node-1", at=T0 - timedelta(days=40), utils=[0.0] * 8)
    changed = first.model_copy(update={"driver_version": "999.1", "sequence": 2})
    gpus = [g.model_copy(update={"power_limit_w": 500.0}) for g in first.gpus]
    changed = changed.model_copy(update={"gpus": gpus, "collected_at": T0 - timedelta(days=35)})
    with Session(engine) as session, session.begin():
        ingest_report(session, first, received_at=first.collected_at)
        ingest_report(session, changed, received_at=changed.collected_at)
        for days in (100, 10):
            record_audit(
                session,
                at=T0 - timedelta(days=days),
                actor="a",
                verb="v",
                obj="o",
                reason="r",
                outcome="applied",
            )
    with Session(engine) as session, session.begin():
        result = prune(
            session,
            now=T0,
            raw_retention=timedelta(days=2),
            rollup_5m_retention=timedelta(days=2),
            rollup_1h_retention=timedelta(days=400),
            audit_retention=timedelta(days=90),
            topology_retention=timedelta(days=30),
        )
    assert (result.audit_entries, result.topology_versions) == (1, 1)
    with Session(engine) as session:
        assert _count(session, AuditEntry) == 1
        [kept] = session.scalars(select(TopologyVersion)).all()
        assert kept.fingerprint == changed.topology_fingerprint()  # the current one stays


def test_the_longest_names_the_contract_allows_are_stored_on_every_backend(
    engine: Engine,
) -> None:
    """Contract limits equal the columns (Kubernetes' own limits), so SQLite and PostgreSQL
    accept the same reports."""
    report = with_process(
        topology_report("gpu-node-1", at=T0),
        0,
        namespace="n" * 63,
        pod="p" * 253,
        pod_uid="u" * 64,
        container="c" * 63,
        memory_used_bytes=1,
    )
    with Session(engine) as session, session.begin():
        assert ingest_report(session, report, received_at=T0).stored

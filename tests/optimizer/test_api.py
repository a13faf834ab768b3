"""The HTTP API on SQLite and PostgreSQL: ingest, reads, authentication, bad input, faults."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from optimizer.api.app import create_app
from optimizer.settings import OptimizerSettings
from optimizer.store import migrate
from optimizer.store.engine import make_engine
from optimizer.store.models import AuditEntry, Sample
from optimizer.store.queries import record_audit
from shared.report import NodeReport
from tests.conftest import prometheus_binary
from tests.optimizer.conftest import TOKENS, WallClock, auth, build_app
from tests.optimizer.reports import later, samples_report, topology_report, with_process

AGENT = "gpu-node-1"


def _post(client: TestClient, report: NodeReport | dict[str, Any], *, who: str = AGENT) -> Any:
    body = report.model_dump_json() if isinstance(report, NodeReport) else json.dumps(report)
    return client.post(
        "/v1/reports", content=body, headers={**auth(who), "Content-Type": "application/json"}
    )


def test_agent_report_shows_up_in_nodes(client: TestClient, clock: WallClock) -> None:
    report = topology_report(AGENT, at=clock.now, utils=[0.9] * 4 + [0.0] * 4)
    response = _post(client, report)
    assert response.status_code == 202, response.text
    assert response.json()["topology_changed"] is True
    listing = client.get("/v1/nodes", headers=auth("sre@example.com")).json()["items"]
    assert [n["name"] for n in listing] == [AGENT]
    assert listing[0]["status"] == "ready"
    assert listing[0]["gpu_count"] == 8
    detail = client.get(f"/v1/nodes/{AGENT}", headers=auth("sre@example.com")).json()
    assert len(detail["links"]) == 28
    assert detail["gpus"][0]["util_ratio"] == pytest.approx(0.9)
    assert detail["gpus"][0]["info"]["pci_bus_id"] == report.gpus[0].pci_bus_id
    assert detail["host"]["numa_nodes"][1]["id"] == 1


def test_resend_is_acknowledged_but_stored_once(client: TestClient, clock: WallClock) -> None:
    report = topology_report(AGENT, at=clock.now)
    assert _post(client, report).status_code == 202
    again = _post(client, report)
    assert again.status_code == 200
    assert again.json()["stored"] is False
    engine = client.app.state.stowage.engine  # type: ignore[attr-defined]
    with Session(engine) as session:
        assert len(session.scalars(select(Sample)).all()) == 8


def test_nodes_turn_stale_after_the_ttl(client: TestClient, clock: WallClock) -> None:
    _post(client, topology_report(AGENT, at=clock.now))
    clock.advance(61)
    node = client.get(f"/v1/nodes/{AGENT}", headers=auth("sre@example.com")).json()
    assert node["status"] == "stale"
    assert node["last_seen_age_s"] == pytest.approx(61)
    summary = client.get("/v1/cluster/summary", headers=auth("sre@example.com")).json()
    assert summary["stale_nodes"] == [AGENT]
    assert summary["gpus"]["total"] == 0


def test_cluster_summary_counts_and_fragmentation(client: TestClient, clock: WallClock) -> None:
    busy = topology_report(AGENT, at=clock.now, utils=[0.9, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0])
    for gpu in (0, 1, 2):  # GPU 1 is allocated but idle
        busy = with_process(busy, gpu, namespace="ml", pod="p", memory_used_bytes=1)
    _post(client, busy)
    _post(
        client,
        topology_report("gpu-node-2", at=clock.now, l40s=True),
        who="gpu-node-2",
    )
    summary = client.get("/v1/cluster/summary", headers=auth("sre@example.com")).json()
    assert summary["nodes"] == 2
    assert summary["by_pool"]["train"]["total"] == 8  # gpu-node-1 matches the train pool
    assert summary["by_pool"]["default"]["total"] == 8
    assert summary["gpus"] == {
        "total": 16,
        "allocated": 3,
        "allocated_idle": 1,
        "free": 13,
        "unhealthy": 0,
    }
    assert summary["by_model"]["NVIDIA L40S"]["free"] == 8
    # gpu-node-1 has 5 free GPUs: shapes 8/4/2 use 4 of them, so 1 is fragmented.
    assert summary["fragmented_gpus"] == 1
    assert summary["power_w"] > 0
    odd = client.get("/v1/cluster/summary?shapes=3", headers=auth("sre@example.com")).json()
    assert odd["fragmented_gpus"] == 2 + 2  # 5 -> 3 used; 8 -> 6 used


def test_samples_history_endpoint(client: TestClient, clock: WallClock) -> None:
    first = topology_report(AGENT, at=clock.now)
    _post(client, first)
    for i in range(1, 30):
        _post(client, samples_report(first, at=later(clock.now, 10 * i), sequence=i + 1))
    clock.advance(300)
    uuid = first.gpus[0].uuid
    reader = auth("sre@example.com")
    series = client.get(f"/v1/gpus/{uuid}/samples", params={"step": 60}, headers=reader).json()
    assert series["source"] == "raw"
    assert sum(p["samples"] for p in series["points"]) == 30
    coarse = client.get(f"/v1/gpus/{uuid}/samples", params={"step": 300}, headers=reader).json()
    assert coarse["source"] == "5m"
    assert sum(p["samples"] for p in coarse["points"]) == 30
    assert client.get("/v1/gpus/GPU-nope/samples", headers=reader).status_code == 404
    backwards = {"from": "2026-11-29T13:00:00Z", "to": "2026-11-29T12:00:00Z"}
    assert (
        client.get(f"/v1/gpus/{uuid}/samples", params=backwards, headers=reader).status_code == 400
    )
    too_many = {"from": "2026-01-01T00:00:00Z", "to": "2026-11-29T12:00:00Z", "step": 1}
    assert (
        client.get(f"/v1/gpus/{uuid}/samples", params=too_many, headers=reader).status_code == 400
    )


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer not-a-known-token-at-all"}, 401),
        ({"Authorization": "Basic abc"}, 401),
        (auth("sre@example.com"), 403),
        (auth("gpu-node-2"), 403),  # an agent reporting for another node
    ],
)
def test_refusals_are_audited_without_the_token(
    client: TestClient, clock: WallClock, headers: dict[str, str], status: int
) -> None:
    body = topology_report(AGENT, at=clock.now).model_dump_json()
    response = client.post("/v1/reports", content=body, headers=headers)
    assert response.status_code == status
    engine = client.app.state.stowage.engine  # type: ignore[attr-defined]
    with Session(engine) as session:
        entry = session.scalars(select(AuditEntry)).one()
    assert entry.outcome == f"denied:{status}"
    assert entry.object == "/v1/reports"
    everything = " ".join([entry.actor, entry.verb, entry.object, entry.reason])
    assert not any(token in everything for token in TOKENS)
    assert "not-a-known-token" not in everything


def test_readers_can_read_and_agents_cannot(client: TestClient) -> None:
    assert client.get("/v1/nodes", headers=auth("sre@example.com")).status_code == 200
    assert client.get("/v1/nodes", headers=auth("platform@example.com")).status_code == 200
    assert client.get("/v1/nodes", headers=auth(AGENT)).status_code == 403
    assert client.get("/v1/nodes").status_code == 401


def test_schema_violation_is_422_with_the_field_path(client: TestClient, clock: WallClock) -> None:
    data = topology_report(AGENT, at=clock.now).model_dump(mode="json")
    data["samples"][3]["util_ratio"] = 7
    response = _post(client, data)
    assert response.status_code == 422
    assert {
        "loc": ["samples", "3", "util_ratio"],
        "msg": "Input should be less than or equal to 1",
    } in (response.json()["detail"])


def test_unknown_schema_version_is_400_naming_the_supported(
    client: TestClient, clock: WallClock
) -> None:
    data = topology_report(AGENT, at=clock.now).model_dump(mode="json")
    data["schema_version"] = 9
    response = _post(client, data)
    assert response.status_code == 400
    assert response.json()["detail"]["supported_schema_versions"] == [1]


def test_oversized_body_is_413(client: TestClient) -> None:
    response = client.post(
        "/v1/reports", content=b"{" + b" " * (300 * 1024) + b"}", headers=auth(AGENT)
    )
    assert response.status_code == 413


@pytest.mark.parametrize("path", ["/webhooks/mutate-pods", "/v1/reports", "/v1/nodes"])
def test_every_route_refuses_an_oversized_body_declared_or_streamed(
    client: TestClient, path: str
) -> None:
    """The unauthenticated webhook too: a client cannot make the optimizer buffer more than
    STOWAGE_MAX_BODY_BYTES, whether it declares the length or streams chunks."""
    declared = client.post(path, content=b"{" + b" " * (2 * 2**20) + b"}")
    assert declared.status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b" " * 65_536  # 4 MiB in all, no Content-Length

    if path == "/v1/nodes":
        return  # no POST route: 405 before any body is read
    streamed = client.post(path, content=chunks(), headers=auth(AGENT))
    assert streamed.status_code == 413
    assert "request body over" in streamed.json()["detail"]


def test_samples_for_unknown_topology_is_412(client: TestClient, clock: WallClock) -> None:
    orphan = samples_report(topology_report(AGENT, at=clock.now), at=clock.now, sequence=2)
    assert _post(client, orphan).status_code == 412


def test_database_down_is_503_with_retry_after(
    settings: OptimizerSettings, clock: WallClock
) -> None:
    dead = make_engine("postgresql+psycopg://127.0.0.1:1/test", connect_args={"connect_timeout": 2})
    with TestClient(build_app(settings, dead, clock)) as client:
        response = _post(client, topology_report(AGENT, at=clock.now))
        assert response.status_code == 503
        assert response.headers["Retry-After"] == str(settings.retry_after_s)
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200


def test_readyz_needs_a_migrated_schema(settings: OptimizerSettings, tmp_path: Any) -> None:
    app = create_app(
        settings,
        authenticator=None,
        engine=make_engine(f"sqlite:///{tmp_path / 'empty.db'}"),
        migrate_on_start=False,
        prune_in_background=False,
    )
    with TestClient(app) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert "db upgrade" in response.json()["reason"]


def test_readyz_reports_the_revision(client: TestClient) -> None:
    assert client.get("/readyz").json() == {
        "status": "ready",
        "schema_revision": migrate.head_revision(),
    }


def test_metrics_pass_promtool(client: TestClient, clock: WallClock) -> None:
    _post(client, topology_report(AGENT, at=clock.now))
    client.post("/v1/reports", content=b"{}", headers=auth(AGENT))
    text = client.get("/metrics").text
    assert 'stowage_optimizer_reports_total{outcome="stored"} 1.0' in text
    assert 'stowage_optimizer_reports_total{outcome="invalid"} 1.0' in text
    assert 'stowage_cluster_gpus{model="NVIDIA H100 80GB HBM3",state="free"} 8.0' in text
    assert 'stowage_pool_gpus{pool="train",state="free"} 8.0' in text  # the settings' pool
    assert 'stowage_fragmented_gpus{model="NVIDIA H100 80GB HBM3",pool="train"} 0.0' in text
    promtool = prometheus_binary("promtool")
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_openapi_documents_the_report_body(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/reports"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/NodeReport"
    }
    assert "GpuSample" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_nodes_are_paged(client: TestClient, clock: WallClock) -> None:
    for i in (1, 2):
        _post(client, topology_report(f"gpu-node-{i}", at=clock.now), who=f"gpu-node-{i}")
    reader = auth("sre@example.com")
    first = client.get("/v1/nodes", params={"limit": 1}, headers=reader).json()
    assert [n["name"] for n in first["items"]] == ["gpu-node-1"]
    assert first["continue"] == "gpu-node-1"
    second = client.get(
        "/v1/nodes", params={"limit": 1, "continue": first["continue"]}, headers=reader
    ).json()
    assert [n["name"] for n in second["items"]] == ["gpu-node-2"]
    assert second["items"][0]["gpu_count"] == 8
    assert second["continue"] is None


def test_admins_read_the_audit_log(client: TestClient, clock: WallClock) -> None:
    body = topology_report(AGENT, at=clock.now).model_dump_json()
    client.post("/v1/reports", content=body, headers=auth("gpu-node-2"))  # refused: 403
    assert client.get("/v1/audit", headers=auth("sre@example.com")).status_code == 403
    entries = client.get("/v1/audit", headers=auth("platform@example.com")).json()["items"]
    refusal = next(e for e in entries if e["actor"] == "gpu-node-2")
    assert refusal["outcome"] == "denied:403"
    assert "may not report for node gpu-node-1" in refusal["reason"]
    # the reader's refused attempt to read the audit log is audited too
    assert any(e["actor"] == "sre@example.com" and e["object"] == "/v1/audit" for e in entries)


def test_another_nodes_agent_cannot_take_its_gpus(client: TestClient, clock: WallClock) -> None:
    """node-b's token posting node-b's topology with node-a's GPU UUIDs: 409, audited, and
    node-a keeps its GPUs and its samples keep being accepted."""
    mine = topology_report(AGENT, at=clock())
    assert _post(client, mine).status_code == 202
    claim = mine.model_copy(update={"node_name": "gpu-node-2"})
    refused = _post(client, claim, who="gpu-node-2")
    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert detail["message"].startswith("GPUs owned by another node that still reports")
    assert {o["node"] for o in detail["owned"]} == {AGENT}
    assert len(detail["owned"]) == 8
    node = client.get(f"/v1/nodes/{AGENT}", headers=auth("sre@example.com")).json()
    assert len(node["gpus"]) == 8
    clock.advance(10)
    later_samples = samples_report(mine, at=clock(), sequence=2)
    assert _post(client, later_samples).status_code == 202
    entries = client.get("/v1/audit", headers=auth("platform@example.com")).json()["items"]
    assert any(e["outcome"] == "denied:409" and e["actor"] == "gpu-node-2" for e in entries)


@pytest.mark.parametrize(
    ("offset_s", "status", "fragment"),
    [
        pytest.param(0, 202, None, id="now"),
        pytest.param(240, 202, None, id="within the allowed skew"),
        pytest.param(3600, 422, "ahead of the optimizer's clock", id="an hour ahead"),
        pytest.param(74 * 365 * 86400, 422, "ahead of the optimizer's clock", id="year 2100"),
        pytest.param(-3 * 86400, 422, "older than the raw retention", id="three days old"),
    ],
)
def test_reports_must_be_dated_near_the_optimizers_clock(
    client: TestClient, clock: WallClock, offset_s: float, status: int, fragment: str | None
) -> None:
    """A report from the future would stand as the node's latest forever (and is never
    pruned); one older than the raw retention would be pruned at once."""
    response = _post(client, topology_report(AGENT, at=later(clock(), offset_s)))
    assert response.status_code == status, response.text
    if fragment:
        [problem] = response.json()["detail"]
        assert problem["loc"] == ["collected_at"]
        assert fragment in problem["msg"]


def test_a_flood_of_unauthenticated_requests_writes_one_audit_row_a_minute(
    client: TestClient, clock: WallClock
) -> None:
    engine = client.app.state.stowage.engine  # type: ignore[attr-defined]
    bad = {"Authorization": "Bearer not-a-known-token-000"}
    for _ in range(200):
        assert client.get("/v1/nodes", headers=bad).status_code == 401
    with Session(engine) as session:
        assert len(session.scalars(select(AuditEntry)).all()) == 1
    clock.advance(60)
    assert client.get("/v1/nodes", headers=bad).status_code == 401
    with Session(engine) as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
    assert len(rows) == 2
    assert "(199 more from testclient in its previous minute)" in rows[1].reason
    assert rows[1].actor == "anonymous from testclient"


def test_an_audited_refusal_with_a_long_path_is_kept_on_every_backend(
    client: TestClient,
) -> None:
    path = "/v1/nodes/" + "n" * 700
    assert client.get(path, headers={"Authorization": "Bearer x" * 1}).status_code == 401
    engine = client.app.state.stowage.engine  # type: ignore[attr-defined]
    with Session(engine) as session:
        [entry] = session.scalars(select(AuditEntry)).all()
    assert len(entry.object) == 512
    assert entry.object.endswith("…")


def test_a_frozen_database_gives_503_in_bounded_time_and_nothing_is_lost(
    settings: OptimizerSettings, clock: WallClock, tmp_path: Any
) -> None:
    """Another connection holds SQLite's write lock (the database is frozen for writers):
    the report is answered 503 with Retry-After after STOWAGE_INGEST_ANSWER_S, not when the
    client gives up; once the lock goes, the report is stored, and its resend is stored
    once."""
    import sqlite3
    import time

    from optimizer.store.models import ReportReceipt

    path = tmp_path / "frozen.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    quick = settings.model_copy(update={"ingest_answer_s": 1.0})
    holder = sqlite3.connect(path, isolation_level=None)
    report = topology_report(AGENT, at=clock())
    with TestClient(build_app(quick, engine, clock)) as client:
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        frozen = _post(client, report)
        waited = time.monotonic() - started
        holder.execute("ROLLBACK")
        assert frozen.status_code == 503
        assert frozen.headers["Retry-After"]
        assert "did not answer within 1 s" in frozen.json()["detail"]
        assert waited < 10  # bounded by the setting, far below the writer's 30 s busy wait
        for _ in range(100):  # the writer finishes the batch once the lock is gone
            with Session(engine) as session:
                if session.scalars(select(ReportReceipt)).first() is not None:
                    break
            time.sleep(0.05)
        resend = _post(client, report)
        assert resend.status_code == 200  # already stored: once
    holder.close()
    with Session(engine) as session:
        assert len(session.scalars(select(ReportReceipt)).all()) == 1


def test_queued_bytes_are_bounded(
    settings: OptimizerSettings, clock: WallClock, engine: Any
) -> None:
    import asyncio

    from optimizer.ingest import MEMORY_PER_WIRE_BYTE, IngestOverloadedError, IngestQueue
    from optimizer.store.engine import make_session_factory

    writer = IngestQueue(  # room for the memory of four 1 MiB reports, not five
        sessions=make_session_factory(engine),
        clock=clock,
        max_queue_bytes=4 * MEMORY_PER_WIRE_BYTE * 2**20,
    )  # not started: everything stays queued

    async def scenario() -> list[object]:
        reports = [topology_report(f"gpu-node-{i}", at=clock()) for i in range(4)]
        tasks = [asyncio.ensure_future(writer.submit(r, size_bytes=2**20)) for r in reports]
        await asyncio.sleep(0.01)
        overflow = await asyncio.gather(
            writer.submit(topology_report("gpu-node-9", at=clock()), size_bytes=2**20),
            return_exceptions=True,
        )
        queued = [task for task in tasks if not task.done()]
        for task in tasks:
            task.cancel()
        assert len(queued) == 4  # the four fit
        return overflow

    [refused] = asyncio.run(scenario())
    assert isinstance(refused, IngestOverloadedError)
    assert "bytes" in str(refused)


def test_one_agent_flooding_is_slowed_and_the_others_are_not(
    settings: OptimizerSettings, clock: WallClock, engine: Any
) -> None:
    tight = settings.model_copy(update={"report_rate_per_node": 1.0, "report_burst_per_node": 5})
    with TestClient(build_app(tight, engine, clock)) as client:
        first = topology_report(AGENT, at=clock())
        statuses = [
            _post(client, samples_report(first, at=clock(), sequence=i + 1)).status_code
            if i
            else _post(client, first).status_code
            for i in range(7)
        ]
        assert statuses[:5] == [202] * 5
        assert statuses[5:] == [429, 429]
        limited = _post(client, samples_report(first, at=clock(), sequence=19))
        assert limited.headers["Retry-After"] == "1"
        other = topology_report("gpu-node-2", at=clock())
        assert _post(client, other, who="gpu-node-2").status_code == 202  # not slowed
        clock.advance(1)
        assert _post(client, samples_report(first, at=clock(), sequence=20)).status_code == 202


def test_the_audit_log_is_filtered_and_paged(client: TestClient, engine: Engine) -> None:
    start = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    with Session(engine) as session, session.begin():
        for k in range(7):
            record_audit(
                session,
                at=start + timedelta(minutes=k),
                actor="replica-a" if k % 2 else "replica-b",
                verb="evict-pod" if k < 4 else "label-node",
                obj=f"pod/ml_x/p{k}" if k < 4 else f"node/n{k}",
                reason="test",
                outcome="applied" if k != 3 else "dry-run",
            )
    admin = auth("platform@example.com")

    def page(**params: Any) -> dict[str, Any]:
        answer = client.get("/v1/audit", params=params, headers=admin)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    pods = page(object="pod/ml_x/", limit=3)
    assert [e["object"] for e in pods["items"]] == ["pod/ml_x/p3", "pod/ml_x/p2", "pod/ml_x/p1"]
    rest = page(object="pod/ml_x/", limit=3, before=pods["next"])
    assert [e["object"] for e in rest["items"]] == ["pod/ml_x/p0"]
    assert "next" not in rest
    assert page(object="pod/mlAx/")["items"] == []  # "_" is not a wildcard
    assert [e["object"] for e in page(outcome="dry-run")["items"]] == ["pod/ml_x/p3"]
    nodes = page(verb="label-node", actor="replica-b")["items"]
    assert [e["object"] for e in nodes] == ["node/n6", "node/n4"]
    window = page(since="2026-11-29T12:01:00Z", until="2026-11-29T12:03:00Z", verb="evict-pod")
    assert [e["object"] for e in window["items"]] == ["pod/ml_x/p2", "pod/ml_x/p1"]
    assert client.get("/v1/audit", params={"since": "yesterday"}, headers=admin).status_code == 422

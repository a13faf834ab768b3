"""Reclaiming idle GPUs: only after the grace period, only in opted-in namespaces, never an
opted-out pod, PodDisruptionBudgets respected, dry run audited and harmless; against the
fake API server and the store (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from kubefake import FakeApiServer
from optimizer.controller.audit import StoreAudit
from optimizer.controller.cache import LiveView
from optimizer.controller.idle import IdleReclaimer
from optimizer.controller.kube import KubeApi
from optimizer.store.models import Sample, WorkloadUsage
from optimizer.store.queries import audit_entries
from shared.labels import IDLE_RECLAIM
from tests.optimizer.conftest import WallClock

GRACE = timedelta(hours=1)


def _pod(
    server: FakeApiServer,
    namespace: str,
    name: str,
    *,
    labels: dict[str, str] | None = None,
    **annotations: str,
) -> None:
    server.put(
        "v1/pods",
        {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": f"uid-{name}",
                "labels": labels or {},
                "annotations": annotations,
            },
            "spec": {"nodeName": "gpu-1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running"},
        },
    )


def record_usage(
    engine: Engine, clock: WallClock, namespace: str, pod: str, *, activity: float, hours: float
) -> None:
    """A pod on its own GPU, sampled every 5 minutes for ``hours`` up to now."""
    gpu = f"GPU-{namespace}-{pod}"
    steps = int(hours * 12)
    with Session(engine) as session, session.begin():
        for k in range(steps + 1):
            at = clock.now - timedelta(minutes=5 * (steps - k))
            session.add(
                Sample(
                    gpu_uuid=gpu,
                    node_name="gpu-1",
                    at=at,
                    util_ratio=activity,
                    sm_active_ratio=activity,
                    process_count=1,
                    xid_total=0,
                )
            )
            session.add(
                WorkloadUsage(
                    at=at,
                    node_name="gpu-1",
                    gpu_uuid=gpu,
                    namespace=namespace,
                    pod=pod,
                    pod_uid=f"uid-{pod}",
                    container="c",
                    pid=100,
                    memory_used_bytes=2**30,
                    sm_util_ratio=activity,
                )
            )


def _reclaimer(
    api: KubeApi, engine: Engine, clock: WallClock, *, dry_run: bool = False
) -> IdleReclaimer:
    return IdleReclaimer(
        api,
        engine,
        StoreAudit(engine, clock=clock),
        clock=clock,
        grace=GRACE,
        dry_run=dry_run,
        view=LiveView(api),
    )


def _audited(engine: Engine) -> list[tuple[Any, Any]]:
    with Session(engine) as session:
        return [(e["object"], e["outcome"]) for e in audit_entries(session)]


def test_an_idle_pod_is_evicted_after_the_grace_period_and_nothing_else_is(
    opted_in_cluster: tuple[FakeApiServer, KubeApi], engine: Engine, clock: WallClock
) -> None:
    server, api = opted_in_cluster
    cases = {
        ("serving", "idle"): 0.01,  # evicted
        ("serving", "busy"): 0.6,  # working
        ("research", "idle-elsewhere"): 0.0,  # its namespace did not opt in
        ("serving", "kept"): 0.0,  # opted out below
    }
    for (namespace, name), activity in cases.items():
        extra = {IDLE_RECLAIM: "false"} if name == "kept" else {}
        _pod(server, namespace, name, **extra)
        record_usage(engine, clock, namespace, name, activity=activity, hours=2)
    done = _reclaimer(api, engine, clock).maybe_run()
    assert done == [("serving", "idle", "applied")]
    assert server.get("pods", "serving", "idle") is None
    for namespace, name in cases:
        if name != "idle":
            assert server.get("pods", namespace, name) is not None
    assert _audited(engine) == [("pod/serving/idle", "applied")]
    [event] = [e for e in server.items("events") if e["reason"] == "IdleGpusReclaimed"]
    assert event["type"] == "Warning"
    assert "under 5% activity" in event["message"]
    assert "signal: gpm" in event["message"]


def test_a_gang_is_reclaimed_whole_or_not_at_all(
    opted_in_cluster: tuple[FakeApiServer, KubeApi], engine: Engine, clock: WallClock
) -> None:
    """Two PyTorchJobs of two pods: one pod of ``half`` works (its job is not idle, so no
    pod of it goes); both pods of ``stuck`` are idle (both go)."""
    server, api = opted_in_cluster
    for job, activities in (("half", (0.0, 0.7)), ("stuck", (0.0, 0.01))):
        for rank, activity in enumerate(activities):
            name = f"{job}-worker-{rank}"
            _pod(server, "serving", name, labels={"training.kubeflow.org/job-name": job})
            record_usage(engine, clock, "serving", name, activity=activity, hours=2)
    done = _reclaimer(api, engine, clock).maybe_run()
    assert done == [
        ("serving", "stuck-worker-0", "applied"),
        ("serving", "stuck-worker-1", "applied"),
    ]
    assert server.get("pods", "serving", "half-worker-0") is not None


def test_not_before_the_grace_period(
    opted_in_cluster: tuple[FakeApiServer, KubeApi], engine: Engine, clock: WallClock
) -> None:
    server, api = opted_in_cluster
    _pod(server, "serving", "new")
    record_usage(engine, clock, "serving", "new", activity=0.0, hours=0.5)
    assert _reclaimer(api, engine, clock).maybe_run() == []
    assert server.get("pods", "serving", "new") is not None


def test_dry_run_audits_and_evicts_nothing(
    opted_in_cluster: tuple[FakeApiServer, KubeApi], engine: Engine, clock: WallClock
) -> None:
    server, api = opted_in_cluster
    _pod(server, "serving", "idle")
    record_usage(engine, clock, "serving", "idle", activity=0.0, hours=2)
    assert _reclaimer(api, engine, clock, dry_run=True).maybe_run() == [
        ("serving", "idle", "dry-run")
    ]
    assert server.get("pods", "serving", "idle") is not None
    assert _audited(engine) == [("pod/serving/idle", "dry-run")]


def test_a_disruption_budget_refusal_is_respected_and_retried_a_minute_later(
    opted_in_cluster: tuple[FakeApiServer, KubeApi], engine: Engine, clock: WallClock
) -> None:
    server, api = opted_in_cluster
    _pod(server, "serving", "idle")
    record_usage(engine, clock, "serving", "idle", activity=0.0, hours=2)
    server.refuse_evictions.add(("serving", "idle"))
    reclaimer = _reclaimer(api, engine, clock)
    assert reclaimer.maybe_run() == [("serving", "idle", "refused:429")]
    assert server.get("pods", "serving", "idle") is not None
    server.refuse_evictions.clear()
    clock.advance(30)
    assert reclaimer.maybe_run() == []  # not yet: at most once a minute
    clock.advance(30)
    assert reclaimer.maybe_run() == [("serving", "idle", "applied")]


def test_off_by_default(
    opted_in_cluster: tuple[FakeApiServer, KubeApi], engine: Engine, clock: WallClock
) -> None:
    server, api = opted_in_cluster
    _pod(server, "serving", "idle")
    record_usage(engine, clock, "serving", "idle", activity=0.0, hours=2)
    reclaimer = _reclaimer(api, engine, clock)
    reclaimer.grace = timedelta(0)
    assert reclaimer.maybe_run() == []

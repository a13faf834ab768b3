"""Right-sizing on the cluster: the leader records which workload owns each GPU pod, the API
groups by it, and the recommendation is written on the workload (a Deployment here) as
``stowage.io/rightsizing``, refreshed only on a change, removed when none is left, audited,
dry-run harmless; against the fake API server and the store (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from kubefake import FakeApiServer
from optimizer.controller.audit import StoreAudit
from optimizer.controller.cache import LiveView
from optimizer.controller.kube import KubeApi
from optimizer.controller.rightsizing import INTERVAL, RightSizer
from optimizer.store.models import ContainerUsageRow, WorkloadPod
from optimizer.store.queries import audit_entries
from shared.labels import RIGHTSIZING
from tests.optimizer.conftest import WallClock, auth
from tests.optimizer.test_idle_reclaim import record_usage as usage


def _deployment(
    server: FakeApiServer, namespace: str, name: str, replicas: int, *, exists: bool = True
) -> list[str]:
    """A Deployment (unless not ``exists``) and its ReplicaSet's running pods, each asking
    for one GPU."""
    if exists:
        server.put("apps/v1/deployments", {"metadata": {"name": name, "namespace": namespace}})
    pods = []
    for i in range(replicas):
        pod = f"{name}-5d8c-{i}"
        server.put(
            "v1/pods",
            {
                "metadata": {
                    "name": pod,
                    "namespace": namespace,
                    "labels": {"pod-template-hash": "5d8c"},
                    "ownerReferences": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "ReplicaSet",
                            "name": f"{name}-5d8c",
                            "controller": True,
                            "uid": "rs",
                        }
                    ],
                },
                "spec": {
                    "nodeName": "gpu-1",
                    "containers": [
                        {
                            "name": "c",
                            "resources": {
                                "requests": {"cpu": "4", "memory": "16Gi"},
                                "limits": {"nvidia.com/gpu": "1"},
                            },
                        }
                    ],
                },
                "status": {"phase": "Running"},
            },
        )
        pods.append(pod)
    return pods


def _sizer(api: KubeApi, engine: Engine, clock: WallClock, *, dry_run: bool = False) -> RightSizer:
    return RightSizer(
        api,
        engine,
        StoreAudit(engine, clock=clock),
        clock=clock,
        window=timedelta(hours=24),
        min_window=timedelta(hours=1),
        dry_run=dry_run,
        view=LiveView(api),
    )


def _annotation(server: FakeApiServer, namespace: str, name: str) -> Any:
    deployment = server.get("deployments", namespace, name)
    assert deployment is not None
    value = (deployment["metadata"].get("annotations") or {}).get(RIGHTSIZING)
    return None if value is None else json.loads(value)


def _audited(engine: Engine) -> list[tuple[Any, Any, Any]]:
    with Session(engine) as session:
        return [(e["verb"], e["object"], e["outcome"]) for e in audit_entries(session)]


def test_an_idle_deployment_is_annotated_once_and_cleared_when_it_works(
    opted_in_cluster: tuple[FakeApiServer, KubeApi],
    engine: Engine,
    clock: WallClock,
    client: TestClient,
) -> None:
    server, api = opted_in_cluster
    for pod in _deployment(server, "serving", "web", 2):
        usage(engine, clock, "serving", pod, activity=0.01, hours=2)
    for pod in _deployment(server, "research", "notebook", 1):
        usage(engine, clock, "research", pod, activity=0.0, hours=2)
    sizer = _sizer(api, engine, clock)
    assert sizer.maybe_run() == [("Deployment/serving/web", "applied")]
    [item] = _annotation(server, "serving", "web")
    assert (item["kind"], item["recommended"], item["signal"]) == (
        "idle",
        "release the GPUs",
        "gpm",
    )
    assert "across 2 pods" in item["reason"]
    assert _annotation(server, "research", "notebook") is None  # did not opt in
    with Session(engine) as session:
        owners = {(r.pod, r.owner_kind, r.owner_name) for r in session.scalars(select(WorkloadPod))}
        requests = session.scalars(select(WorkloadPod.requests)).first()
    assert owners == {
        ("web-5d8c-0", "Deployment", "web"),
        ("web-5d8c-1", "Deployment", "web"),
        ("notebook-5d8c-0", "Deployment", "notebook"),
    }
    assert requests == {"c": {"cpu": 4.0, "memory": 16 * 2**30}}
    # the API groups by the recorded workload, in every namespace
    items = client.get("/v1/recommendations", headers=auth("sre@example.com")).json()["items"]
    assert {(r["namespace"], r["workload"], tuple(r["pods"])) for r in items} == {
        ("serving", "Deployment/web", ("web-5d8c-0", "web-5d8c-1")),
        ("research", "Deployment/notebook", ("notebook-5d8c-0",)),
    }
    clock.advance(INTERVAL.total_seconds() - 1)
    assert sizer.maybe_run() == []  # not due
    clock.advance(1)
    assert sizer.maybe_run() == []  # due, unchanged: not rewritten
    # the pods get to work: the recommendation goes, and so does the annotation
    for pod in ("web-5d8c-0", "web-5d8c-1"):
        usage(engine, clock, "serving", pod, activity=0.9, hours=1)
    clock.advance(INTERVAL.total_seconds())
    assert sizer.maybe_run() == [("Deployment/serving/web", "applied")]
    assert _annotation(server, "serving", "web") is None
    assert _audited(engine) == [  # newest first
        ("remove-rightsizing", "deployment/serving/web", "applied"),
        ("annotate-rightsizing", "deployment/serving/web", "applied"),
    ]


def test_a_new_leader_neither_rewrites_nor_forgets(
    opted_in_cluster: tuple[FakeApiServer, KubeApi], engine: Engine, clock: WallClock
) -> None:
    server, api = opted_in_cluster
    [pod] = _deployment(server, "serving", "web", 1)
    usage(engine, clock, "serving", pod, activity=0.0, hours=2)
    assert _sizer(api, engine, clock).maybe_run() == [("Deployment/serving/web", "applied")]
    assert _sizer(api, engine, clock).maybe_run() == []  # another replica's first pass


def test_dry_run_audits_and_patches_nothing_then_a_live_run_applies(
    opted_in_cluster: tuple[FakeApiServer, KubeApi], engine: Engine, clock: WallClock
) -> None:
    server, api = opted_in_cluster
    [pod] = _deployment(server, "serving", "web", 1)
    usage(engine, clock, "serving", pod, activity=0.0, hours=2)
    assert _sizer(api, engine, clock, dry_run=True).maybe_run() == [
        ("Deployment/serving/web", "dry-run")
    ]
    assert _annotation(server, "serving", "web") is None
    assert _sizer(api, engine, clock).maybe_run() == [("Deployment/serving/web", "applied")]
    assert _annotation(server, "serving", "web") is not None


def test_a_workload_gone_meanwhile_is_audited_and_forgotten(
    opted_in_cluster: tuple[FakeApiServer, KubeApi], engine: Engine, clock: WallClock
) -> None:
    server, api = opted_in_cluster
    [pod] = _deployment(server, "serving", "web", 1, exists=False)  # deleted, pods linger
    usage(engine, clock, "serving", pod, activity=0.0, hours=2)
    sizer = _sizer(api, engine, clock)
    assert sizer.maybe_run() == [("Deployment/serving/web", "gone")]
    clock.advance(INTERVAL.total_seconds())
    assert sizer.maybe_run() == [("Deployment/serving/web", "gone")]  # tried again, not stored


def test_cpu_and_memory_requests_are_annotated_per_container(
    opted_in_cluster: tuple[FakeApiServer, KubeApi], engine: Engine, clock: WallClock
) -> None:
    """Busy GPUs, but the container asks for 4 cores and 16 GiB and uses 0.5 and 3 GiB."""
    server, api = opted_in_cluster
    [pod] = _deployment(server, "serving", "web", 1)
    usage(engine, clock, "serving", pod, activity=0.8, hours=2)
    with Session(engine) as session, session.begin():
        for k in range(25):
            session.add(
                ContainerUsageRow(
                    at=clock.now - timedelta(minutes=5 * k),
                    node_name="gpu-1",
                    namespace="serving",
                    pod=pod,
                    container="c",
                    cpu_cores=0.5,
                    memory_bytes=3 * 2**30,
                )
            )
    assert _sizer(api, engine, clock).maybe_run() == [("Deployment/serving/web", "applied")]
    items = {i["kind"]: i for i in _annotation(server, "serving", "web")}
    assert set(items) == {"cpu", "memory"}
    assert (items["cpu"]["container"], items["cpu"]["current"]) == ("c", "4")
    assert items["cpu"]["recommended"] == "580m"  # 0.5 x 1.15, in 10m steps
    assert (items["memory"]["current"], items["memory"]["recommended"]) == ("16Gi", "3533Mi")


def test_broken_pods_are_skipped_and_the_rest_annotated(
    opted_in_cluster: tuple[FakeApiServer, KubeApi], engine: Engine, clock: WallClock
) -> None:
    server, api = opted_in_cluster
    [pod] = _deployment(server, "serving", "web", 1)
    usage(engine, clock, "serving", pod, activity=0.0, hours=2)
    owner = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "r", "uid": "u"}
    broken = [  # an unreadable GPU quantity; an owner kind Stowage does not annotate
        {"name": "bad-request", "labels": {"pod-template-hash": "5d8c"}},
        {"name": "rollout-pod", "ownerReferences": [{**owner, "controller": True}]},
    ]
    for metadata in broken:
        server.put(
            "v1/pods",
            {
                "metadata": {"namespace": "serving", **metadata},
                "spec": {
                    "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "x"}}}]
                },
                "status": {"phase": "Running"},
            },
        )
        usage(engine, clock, "serving", str(metadata["name"]), activity=0.0, hours=2)
    assert _sizer(api, engine, clock).maybe_run() == [("Deployment/serving/web", "applied")]
    [item] = _annotation(server, "serving", "web")
    assert item["kind"] == "idle"

"""Time-decayed fair share through the controller, against the fake API server: a queue that
borrowed the whole cluster lately is served after one that did not, when both ask for it
at once; without the history, the earlier submission wins."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from kubefake import FakeApiServer, serve
from optimizer.controller.admission import WAITING, GangAdmitter
from optimizer.controller.audit import StoreAudit
from optimizer.controller.kube import KubeApi
from shared.labels import NAMESPACE_ENABLED, SCHEDULING_GATE
from tests.optimizer.conftest import WallClock

QUEUES = "stowage.io/v1alpha1/queues"


@pytest.fixture
def cluster() -> Iterator[tuple[FakeApiServer, KubeApi]]:
    """Two 8-GPU nodes; teams a and b each have a queue of 8 GPUs in one cohort."""
    with serve() as (server, client):
        for team in ("a", "b"):
            server.put(
                "v1/namespaces",
                {"metadata": {"name": team, "labels": {NAMESPACE_ENABLED: "true"}}},
            )
        for name in ("n0", "n1"):
            server.put(
                "v1/nodes",
                {
                    "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                    "status": {
                        "allocatable": {"cpu": "96", "memory": "1000Gi", "nvidia.com/gpu": "8"}
                    },
                },
            )
        server.put(QUEUES, _queue("org", "0"))
        for team in ("a", "b"):
            server.put(QUEUES, _queue(f"q{team}", "8", parent="org", namespaces=[team]))
        yield server, KubeApi(client)


def _queue(name: str, gpus: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "stowage.io/v1alpha1",
        "kind": "Queue",
        "metadata": {"name": name, "generation": 1},
        "spec": {"resources": [{"name": "nvidia.com/gpu", "nominalQuota": gpus}], **spec},
    }


def _pod(namespace: str, name: str, *, node: str | None, gang: str, created: str) -> dict[str, Any]:
    resources = {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"nvidia.com/gpu": "8"}}
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "x", "resources": resources}]}
    if node:
        spec["nodeName"] = node
    else:
        spec["schedulingGates"] = [{"name": SCHEDULING_GATE}]
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"{namespace}-{name}",
            "creationTimestamp": created,
            "labels": {"stowage.io/gang": gang, "stowage.io/gang-size": "2"},
        },
        "spec": spec,
        "status": {"phase": "Running" if node else "Pending"},
    }


def _admitter(api: KubeApi, engine: Engine, clock: WallClock, half_life_s: float) -> GangAdmitter:
    return GangAdmitter(
        api,
        engine,
        StoreAudit(engine, clock=clock),
        dry_run=True,  # decide, change nothing: both admitters see the same cluster
        clock=clock,
        fair_share_half_life=timedelta(seconds=half_life_s),
    )


def _phases(outcomes: list[Any]) -> dict[str, str]:
    return {o.namespace: o.phase for o in outcomes if o.gang == "big"}


def test_recent_borrowing_puts_a_queue_behind(
    cluster: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    server, api = cluster
    clock = WallClock()
    remembering = _admitter(api, engine, clock, half_life_s=3600)
    forgetting = _admitter(api, engine, clock, half_life_s=0)
    # team a runs on both nodes (8 GPUs over its quota, borrowed from b) for two hours
    for i, node in enumerate(("n0", "n1")):
        server.put(
            "v1/pods", _pod("a", f"old-{i}", node=node, gang="old", created="2026-11-29T09:00:00Z")
        )
    for _ in range(12):
        remembering.cycle()
        forgetting.cycle()
        clock.advance(600)
    for i in range(2):
        server.objects["v1/pods", "a", f"old-{i}"].delete()
    # now both teams want the whole cluster; a asked first
    for team, created in (("a", "2026-11-29T13:00:00Z"), ("b", "2026-11-29T13:30:00Z")):
        for i in range(2):
            server.put("v1/pods", _pod(team, f"big-{i}", node=None, gang="big", created=created))
    assert _phases(forgetting.cycle()) == {"a": "would-admit", "b": WAITING}
    assert _phases(remembering.cycle()) == {"a": WAITING, "b": "would-admit"}

"""The admission cycle on Kubernetes' terms, one test per way it used to go wrong (issue 11's
"Why"), over HTTP against the fake API server with the real store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from kubefake import FakeApiServer, serve
from optimizer.controller.admission import ADMITTED, WAITING, GangAdmitter
from optimizer.controller.audit import StoreAudit
from optimizer.controller.commit import RUNNING, SUCCEEDED, TIMED_OUT
from optimizer.controller.kube import KubeApi
from optimizer.controller.loop import Controller
from optimizer.controller.pods import is_gated, pinned_node
from optimizer.settings import OptimizerSettings
from optimizer.store.models import GangIntent, GangStatus
from optimizer.store.queries import audit_entries
from shared.labels import SCHEDULING_GATE
from tests.optimizer.conftest import WallClock

NS = "ml"


def _node(name: str, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}},
        "spec": {},
        "status": {"allocatable": {"cpu": "96", "memory": "1000Gi", "nvidia.com/gpu": "8"}},
    }


def _pod(
    name: str,
    *,
    namespace: str = NS,
    gang: str | None = "train",
    size: int = 2,
    gpus: str = "8",
    cpu: str = "8",
    node: str | None = None,
    gated: bool | None = None,
    labels: dict[str, str] | None = None,
    spec: dict[str, Any] | None = None,
    created: str = "2026-11-29T12:00:00Z",
) -> dict[str, Any]:
    resources: dict[str, Any] = {"requests": {"cpu": cpu, "memory": "64Gi"}}
    if gpus != "0":
        resources["limits"] = {"nvidia.com/gpu": gpus}
    body: dict[str, Any] = {
        "containers": [{"name": "main", "image": "trainer", "resources": resources}],
        **(spec or {}),
    }
    meta_labels = dict(labels or {})
    if gang:
        meta_labels.update({"stowage.io/gang": gang, "stowage.io/gang-size": str(size)})
    if gated if gated is not None else (gang is not None and node is None):
        body["schedulingGates"] = [{"name": SCHEDULING_GATE}]
    if node:
        body["nodeName"] = node
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": meta_labels,
            "creationTimestamp": created,
        },
        "spec": body,
        "status": {"phase": "Running" if node else "Pending"},
    }


@pytest.fixture
def server() -> Iterator[tuple[FakeApiServer, KubeApi]]:
    with serve() as (fake, client):
        fake.put(
            "v1/namespaces", {"metadata": {"name": NS, "labels": {"stowage.io/enabled": "true"}}}
        )
        fake.put("v1/namespaces", {"metadata": {"name": "other"}})
        yield fake, KubeApi(client)


def _admitter(api: KubeApi, engine: Engine, clock: WallClock, **kwargs: Any) -> GangAdmitter:
    return GangAdmitter(
        api, engine, StoreAudit(engine, clock=clock), dry_run=False, clock=clock, **kwargs
    )


def _gang_pods(fake: FakeApiServer, gang: str = "train") -> list[dict[str, Any]]:
    return sorted(
        (
            p
            for p in fake.items("pods")
            if (p["metadata"].get("labels") or {}).get("stowage.io/gang") == gang
        ),
        key=lambda p: p["metadata"]["name"],
    )


def _nodes_and_a_gang_of_two(fake: FakeApiServer, *nodes: str) -> None:
    """Free 8-GPU ``nodes`` and the gated gang ``train`` of two 8-GPU pods."""
    for name in nodes:
        fake.put("v1/nodes", _node(name))
    for i in range(2):
        fake.put("v1/pods", _pod(f"train-{i}"))


def _outcome(outcomes: list[Any], gang: str = "train") -> Any:
    [found] = [o for o in outcomes if o.gang == gang]
    return found


def test_a_gang_is_never_pinned_to_a_cordoned_tainted_or_unselected_node(
    server: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    fake, api = server
    cordoned = _node("a1", pool="x")
    cordoned["spec"]["unschedulable"] = True
    tainted = _node("a2", pool="x")
    tainted["spec"]["taints"] = [{"key": "maintenance", "effect": "NoSchedule"}]
    for node in (cordoned, tainted, _node("a3", pool="x"), _node("b1", pool="x"), _node("b2")):
        fake.put("v1/nodes", node)
    for i in range(2):
        fake.put("v1/pods", _pod(f"train-{i}", spec={"nodeSelector": {"pool": "x"}}))
    outcome = _outcome(_admitter(api, engine, WallClock()).cycle())
    assert outcome.phase == ADMITTED
    assert sorted(pinned_node(p) or "" for p in _gang_pods(fake)) == ["a3", "b1"]


def test_a_gang_no_node_admits_waits_with_kube_schedulers_reasons(
    server: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    fake, api = server
    cordoned = _node("a1")
    cordoned["spec"]["unschedulable"] = True
    tainted = _node("a2")
    tainted["spec"]["taints"] = [{"key": "maintenance", "value": "now", "effect": "NoExecute"}]
    for node in (cordoned, tainted, _node("a3"), _node("a4")):
        fake.put("v1/nodes", node)
    for i in range(2):
        fake.put("v1/pods", _pod(f"train-{i}", spec={"nodeSelector": {"pool": "x"}}))
    outcome = _outcome(_admitter(api, engine, WallClock()).cycle())
    assert outcome.phase == WAITING
    assert outcome.message == (
        "0/4 nodes are available: 2 node(s) didn't match Pod's node affinity/selector, "
        "1 node(s) had untolerated taint {maintenance: now}, 1 node(s) were unschedulable."
    )
    assert all(is_gated(p) and pinned_node(p) is None for p in _gang_pods(fake))


def test_the_pin_is_intersected_with_the_pods_own_affinity(
    server: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    fake, api = server
    for name in ("a1", "a2", "a3"):
        fake.put("v1/nodes", _node(name, gen="9" if name != "a1" else "8"))
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["8"]}]}
                ]
            }
        }
    }
    for i in range(2):
        fake.put("v1/pods", _pod(f"train-{i}", spec={"affinity": affinity}))
    _admitter(api, engine, WallClock()).cycle()
    for pod in _gang_pods(fake):
        [term] = pod["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"]
        keys = [e["key"] for e in term["matchExpressions"]]
        assert keys == ["gen", "kubernetes.io/hostname"]  # the pod's own term, narrowed
        assert pinned_node(pod) in ("a2", "a3")


def test_pending_ordinary_pods_and_nominated_pods_keep_their_room(
    server: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    fake, api = server
    for name in ("a1", "a2", "a3", "a4"):
        fake.put("v1/nodes", _node(name))
    for i in range(3):  # older than the gang: kube-scheduler places them first
        fake.put(
            "v1/pods",
            _pod(f"job-{i}", namespace="other", gang=None, created="2026-11-29T11:00:00Z"),
        )
    nominated = _pod("preemptor", namespace="other", gang=None, created="2026-11-29T13:00:00Z")
    nominated["status"]["nominatedNodeName"] = "a4"
    fake.put("v1/pods", nominated)
    for i in range(2):
        fake.put("v1/pods", _pod(f"train-{i}"))
    outcome = _outcome(_admitter(api, engine, WallClock()).cycle())
    assert outcome.phase == WAITING
    assert outcome.message.startswith("needs 2 x 8 GPUs; the cluster has 0 free GPUs")


def test_one_malformed_pod_or_node_never_stops_the_cycle(
    server: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    fake, api = server
    for name in ("a1", "a2"):
        fake.put("v1/nodes", _node(name))
    broken_node = _node("zz")
    broken_node["status"]["allocatable"]["cpu"] = "lots"
    fake.put("v1/nodes", broken_node)
    share = _pod("share", namespace="other", gang=None, gpus="2")
    share["metadata"]["annotations"] = {"stowage.io/gpu-milli": "500"}  # a share of 2 GPUs?
    fake.put("v1/pods", share)
    bad_member = _pod("bad-0", gang="bad")
    bad_member["metadata"]["annotations"] = {"stowage.io/gpu-milli": "300"}
    bad_member["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "4"
    fake.put("v1/pods", bad_member)
    for i in range(2):
        fake.put("v1/pods", _pod(f"train-{i}"))
    admitter = _admitter(api, engine, WallClock())
    outcomes = admitter.cycle()
    assert _outcome(outcomes).phase == ADMITTED
    assert _outcome(outcomes, "bad-0").phase == "invalid"
    plan = admitter.last_plan
    assert plan is not None
    assert {(i.kind, i.name) for i in plan.invalid} == {
        ("Node", "zz"),
        ("Pod", "share"),
        ("Pod", "bad-0"),
    }
    [event] = [e for e in fake.items("events") if e["reason"] == "InvalidGang"]
    assert event["involvedObject"]["name"] == "bad-0"
    assert event["message"] == "stowage.io/gpu-milli needs exactly one nvidia.com/gpu, not 4"


class _LaggingView:
    """A watch cache that has not yet seen a pod's deletion."""

    def __init__(self, api: KubeApi) -> None:
        self._api = api
        self._pods = api.list_pods()

    def nodes(self) -> list[dict[str, Any]]:
        return self._api.list_nodes()

    def pods(self) -> list[dict[str, Any]]:
        return self._pods


def test_a_victim_that_is_gone_before_its_eviction_does_not_abort_the_cycle(
    server: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    fake, api = server
    fake.put("v1/nodes", _node("a1"))
    fake.put("v1/nodes", _node("a2"))
    for i in range(2):
        low = _pod(f"low-{i}", gang="low", node=f"a{i + 1}")
        low["spec"]["priority"] = 1
        fake.put("v1/pods", low)
    for i in range(2):
        high = _pod(f"train-{i}")
        high["spec"]["priority"] = 100
        fake.put("v1/pods", high)
    view = _LaggingView(api)
    fake.objects["v1/pods", NS, "low-0"].delete()  # it finished while we planned
    clock = WallClock()
    outcome = _outcome(_admitter(api, engine, clock, view=view).cycle())
    assert outcome.phase == WAITING
    assert outcome.message.endswith("preempting 1 lower-priority gang(s): ml/low")
    assert fake.get("pods", NS, "low-1") is None  # the rest of the victim gang was evicted
    with Session(engine) as session:
        outcomes = {(e["object"], e["outcome"]) for e in audit_entries(session, limit=50)}
    assert ("pod/ml/low-0", "gone") in outcomes
    assert ("pod/ml/low-1", "applied") in outcomes


def test_an_elastic_gang_never_exceeds_its_maximum_counting_released_members(
    server: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    fake, api = server
    for name in ("a1", "a2", "a3", "a4", "a5"):
        fake.put("v1/nodes", _node(name))
    elastic = {"stowage.io/gang-max": "3"}
    fake.put("v1/pods", _pod("train-0", node="a1", labels=elastic))  # already running
    for i in range(1, 5):
        fake.put("v1/pods", _pod(f"train-{i}", labels=elastic))
    _admitter(api, engine, WallClock()).cycle()
    members = _gang_pods(fake)
    released = [p for p in members if not is_gated(p)]
    assert len(released) == 3  # the running one and two more, not four


def test_a_mixed_gang_reserves_each_members_own_request(
    server: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    fake, api = server
    for name in ("a1", "a2", "a3", "a4"):
        fake.put("v1/nodes", _node(name))
    fake.put("v1/pods", _pod("train-launcher", size=5, gpus="0", cpu="2"))
    for i in range(4):
        fake.put("v1/pods", _pod(f"train-worker-{i}", size=5))
    outcome = _outcome(_admitter(api, engine, WallClock()).cycle())
    assert outcome.phase == ADMITTED  # 4 x 8 GPUs on 4 nodes, the launcher beside a worker
    assert len({pinned_node(p) for p in _gang_pods(fake) if "worker" in p["metadata"]["name"]}) == 4


def test_backoff_survives_a_leader_change(
    server: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    fake, api = server
    fake.put("v1/nodes", _node("a1"))
    for i in range(2):
        fake.put("v1/pods", _pod(f"train-{i}"))
    clock = WallClock()
    _admitter(api, engine, clock).cycle()
    clock.advance(601)
    assert _outcome(_admitter(api, engine, clock).cycle()).phase == TIMED_OUT
    timeouts = len([e for e in fake.items("events") if e["reason"] == "GangTimeout"])
    fake.put("v1/nodes", _node("a2"))  # room now, but the gang is in its backoff
    clock.advance(5)
    new_leader = _admitter(api, engine, clock)
    assert _outcome(new_leader.cycle()).phase == TIMED_OUT
    assert all(is_gated(p) for p in _gang_pods(fake))
    assert len([e for e in fake.items("events") if e["reason"] == "GangTimeout"]) == timeouts
    clock.advance(120)  # past the first backoff (60 s)
    assert _outcome(_admitter(api, engine, clock).cycle()).phase == ADMITTED


def _bind(fake: FakeApiServer, phase: str = "Running") -> None:
    for pod in _gang_pods(fake):
        name = pod["metadata"]["name"]
        fake.objects["v1/pods", NS, name].patch(
            {"spec": {"nodeName": pinned_node(pod)}, "status": {"phase": phase}}
        )


def test_gang_status_follows_the_pods_and_is_collected_after_the_retention(
    server: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    fake, api = server
    _nodes_and_a_gang_of_two(fake, "a1", "a2")
    clock = WallClock()
    admitter = _admitter(api, engine, clock, retention=timedelta(hours=1))
    assert _outcome(admitter.cycle()).phase == ADMITTED
    _bind(fake)
    assert _outcome(admitter.cycle()).phase == RUNNING
    _bind(fake, "Succeeded")
    assert _outcome(admitter.cycle()).phase == SUCCEEDED
    with Session(engine) as session:
        status = session.get(GangStatus, (NS, "train"))
        assert status is not None
        assert status.phase == SUCCEEDED
    for pod in _gang_pods(fake):
        fake.objects["v1/pods", NS, pod["metadata"]["name"]].delete()
    clock.advance(2 * 3600)
    admitter.cycle()
    with Session(engine) as session:
        assert session.get(GangStatus, (NS, "train")) is None
        assert session.scalars(select(GangIntent)).all() == []


def _admit_two_of_three(
    fake: FakeApiServer, api: KubeApi, engine: Engine, clock: WallClock
) -> GangAdmitter:
    """Three free nodes; a gang of two admitted (pinned and released, not yet bound)."""
    _nodes_and_a_gang_of_two(fake, "a1", "a2", "a3")
    admitter = _admitter(api, engine, clock)
    admitter.cycle()
    return admitter


def test_a_pin_kube_scheduler_refuses_rolls_the_gang_back(
    server: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    fake, api = server
    clock = WallClock()
    admitter = _admit_two_of_three(fake, api, engine, clock)
    pinned = sorted(pinned_node(p) or "" for p in _gang_pods(fake))
    assert pinned == ["a1", "a2"]
    fake.objects["v1/nodes", None, "a1"].patch({"spec": {"unschedulable": True}})  # cordoned
    clock.advance(10)
    admitter.cycle()
    assert _gang_pods(fake) == []  # evicted: their job controller recreates them, gated
    with Session(engine) as session:
        entries = audit_entries(session, limit=50)
        status = session.get(GangStatus, (NS, "train"))
    assert [e["verb"] for e in entries].count("roll-back-pod") == 2
    assert status is not None
    assert status.phase == WAITING
    assert "rolled back: train-0 is pinned to a1, which kube-scheduler refuses" in status.message
    rollbacks = admitter.metrics.registry.get_sample_value
    assert rollbacks("stowage_controller_rollbacks_total", {"reason": "node-refused"}) == 1
    for i in range(2):  # the recreated twins
        fake.put("v1/pods", _pod(f"train-new-{i}"))
    clock.advance(10)
    assert _outcome(admitter.cycle()).phase == ADMITTED
    assert sorted(pinned_node(p) or "" for p in _gang_pods(fake)) == ["a2", "a3"]


def test_a_pin_left_unbound_past_the_deadline_rolls_the_gang_back(
    server: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    fake, api = server
    _nodes_and_a_gang_of_two(fake, "a1", "a2")
    clock = WallClock()
    admitter = _admitter(api, engine, clock, bind_deadline=timedelta(minutes=5))
    admitter.cycle()
    clock.advance(60)
    admitter.cycle()
    assert len(_gang_pods(fake)) == 2  # within the deadline: left alone
    clock.advance(300)
    admitter.cycle()
    assert _gang_pods(fake) == []
    rollbacks = admitter.metrics.registry.get_sample_value
    assert rollbacks("stowage_controller_rollbacks_total", {"reason": "bind-deadline"}) == 1


def test_the_production_controller_takes_policy_and_topology_levels_from_settings(
    server: tuple[FakeApiServer, KubeApi], engine: Engine, tmp_path: Path
) -> None:
    fake, api = server
    for name, rack in (("a1", "r1"), ("a2", "r2"), ("a3", "r2")):
        fake.put("v1/nodes", _node(name, **{"example.com/rack": rack}))
    for i in range(2):
        pod = _pod(f"train-{i}")
        pod["metadata"]["labels"]["stowage.io/topology-required"] = "rack"
        fake.put("v1/pods", pod)
    settings = OptimizerSettings(
        database_url=f"sqlite:///{tmp_path / 'unused.db'}",
        auth="none",
        controller="enforce",
        controller_identity="replica-a",
        planner_policy="bestfit",
        topology_levels=["rack=example.com/rack", "hostname=kubernetes.io/hostname"],
    )
    controller = Controller(api, engine, settings, clock=WallClock())
    assert controller.step()
    assert sorted(pinned_node(p) or "" for p in _gang_pods(fake)) == ["a2", "a3"]
    assert controller.metrics.registry.get_sample_value("stowage_controller_leader") == 1


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("rack", "write NAME=NODE-LABEL-KEY"),
        ("rack=not a key", "label key"),
    ],
)
def test_bad_topology_levels_are_refused_at_start(entry: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        OptimizerSettings(auth="none", topology_levels=[entry])


def test_a_failed_scheduling_event_about_a_pinned_pod_rolls_the_gang_back(
    server: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    fake, api = server
    clock = WallClock()
    admitter = _admit_two_of_three(fake, api, engine, clock)
    pod = fake.get("pods", NS, "train-1")
    assert pod is not None
    stamp = (clock() + timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    fake.put(
        "v1/events",
        {
            "metadata": {"name": "train-1.1", "namespace": NS},
            "involvedObject": {
                "kind": "Pod",
                "name": "train-1",
                "namespace": NS,
                "uid": pod["metadata"]["uid"],
            },
            "reason": "FailedScheduling",
            "message": "0/3 nodes are available: 1 Insufficient example.com/fpga.",
            "lastTimestamp": stamp,
            "type": "Warning",
        },
    )
    clock.advance(10)
    admitter.cycle()
    assert _gang_pods(fake) == []
    with Session(engine) as session:
        status = session.get(GangStatus, (NS, "train"))
    assert status is not None
    assert "train-1 was refused by kube-scheduler: 0/3 nodes are available" in status.message


def test_no_new_gang_goes_to_a_node_whose_agent_went_stale(
    server: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    fake, api = server
    _nodes_and_a_gang_of_two(fake, "a1", "a2", "a3")
    admitter = _admitter(api, engine, WallClock(), stale=lambda: {"a1"})
    assert _outcome(admitter.cycle()).phase == ADMITTED
    assert sorted(pinned_node(p) or "" for p in _gang_pods(fake)) == ["a2", "a3"]

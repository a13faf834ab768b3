"""Gang admission through scheduling gates, end to end over HTTP against the fake API server.

The official client talks to :class:`FakeApiServer`; the database is the real store (SQLite
and PostgreSQL). Crashes are the fake refusing every write after the n-th, which stops the
admitter mid-commit exactly where a dying process would; a new admitter (a new leader, no
memory) must then finish the job.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from kubefake import FakeApiServer, serve
from optimizer.controller.admission import (
    ADMITTED,
    WAITING,
    WOULD_ADMIT,
    GangAdmitter,
    Outcome,
)
from optimizer.controller.audit import StoreAudit
from optimizer.controller.kube import KubeApi, RefusedError
from optimizer.controller.pods import is_gated, pinned_node
from optimizer.store.models import GangIntent, GangStatus
from optimizer.store.queries import audit_entries
from shared.labels import SCHEDULING_GATE
from tests.optimizer.conftest import WallClock

RACK = "topology.stowage.io/rack"
NAMESPACE = "ml"


@pytest.fixture
def cluster() -> Iterator[tuple[FakeApiServer, KubeApi]]:
    """Two racks of four 8-GPU nodes; a0 and b0 are fully busy; namespace ml opted in."""
    with serve() as (server, client):
        server.put(
            "v1/namespaces",
            {"metadata": {"name": NAMESPACE, "labels": {"stowage.io/enabled": "true"}}},
        )
        server.put("v1/namespaces", {"metadata": {"name": "other"}})
        for rack in ("a", "b"):
            for i in range(4):
                server.put("v1/nodes", _node(f"{rack}{i}", rack=f"r-{rack}"))
        for busy in ("a0", "b0"):
            server.put("v1/pods", _pod(f"busy-{busy}", namespace="other", node=busy))
        yield server, KubeApi(client)


def _node(name: str, *, rack: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {RACK: rack, "kubernetes.io/hostname": name}},
        "status": {"allocatable": {"cpu": "96", "memory": "1000Gi", "nvidia.com/gpu": "8"}},
    }


def _pod(
    name: str,
    *,
    namespace: str = NAMESPACE,
    node: str | None = None,
    gang: str | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    resources = {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"nvidia.com/gpu": "8"}}
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": "trainer", "resources": resources}]
    }
    if node:
        spec["nodeName"] = node
    meta_labels = dict(labels or {})
    if gang:
        spec["schedulingGates"] = [{"name": SCHEDULING_GATE}]
        meta_labels.update(
            {
                "stowage.io/gang": gang,
                "stowage.io/gang-size": "4",
                "stowage.io/topology-required": "rack",
            }
        )
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": meta_labels},
        "spec": spec,
        "status": {"phase": "Running" if node else "Pending"},
    }


def _admitter(
    api: KubeApi, engine: Engine, clock: WallClock, *, dry_run: bool = False
) -> GangAdmitter:
    return GangAdmitter(api, engine, StoreAudit(engine, clock=clock), dry_run=dry_run, clock=clock)


def _gang(server: FakeApiServer, name: str = "train", members: int = 4) -> None:
    for i in range(members):
        server.put("v1/pods", _pod(f"{name}-{i}", gang=name))


def _free_rack_b_and_submit(server: FakeApiServer) -> None:
    """b0's pod ends, so rack r-b has four free nodes; then the 4-pod gang arrives."""
    server.objects["v1/pods", "other", "busy-b0"].delete()
    _gang(server)


def _members(server: FakeApiServer, gang: str = "train") -> list[dict[str, Any]]:
    return sorted(
        (
            p
            for p in server.items("pods")
            if (p["metadata"].get("labels") or {}).get("stowage.io/gang") == gang
        ),
        key=lambda p: p["metadata"]["name"],
    )


def _events(server: FakeApiServer, reason: str) -> list[dict[str, Any]]:
    return [e for e in server.items("events") if e["reason"] == reason]


def _assert_whole_gang_in_one_rack(server: FakeApiServer, rack: str) -> None:
    members = _members(server)
    nodes = [pinned_node(p) for p in members]
    assert not any(is_gated(p) for p in members)
    assert all(node is not None and node.startswith(rack) for node in nodes)
    assert len(set(nodes)) == len(nodes)  # 8 GPUs each: one pod per node, no double placement


def test_with_room_for_three_nothing_is_released_and_events_say_why(
    cluster: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    server, api = cluster
    _gang(server)
    clock = WallClock()
    outcomes = _admitter(api, engine, clock).cycle()
    assert [(o.gang, o.phase) for o in outcomes] == [("train", WAITING)]
    assert all(is_gated(p) and pinned_node(p) is None for p in _members(server))
    waiting = _events(server, "GangWaiting")
    assert len(waiting) == 4
    assert waiting[0]["message"] == (
        "gang train waits: needs 4 x 8 GPUs in one rack; "
        "the rack with the most room (r-a) has 24 free GPUs"
    )
    _admitter(api, engine, clock).cycle()  # nothing changed: no new events
    assert len(_events(server, "GangWaiting")) == 4


def test_admitted_when_a_rack_has_room_all_pinned_there_and_released_together(
    cluster: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    server, api = cluster
    _gang(server)
    clock = WallClock()
    admitter = _admitter(api, engine, clock)
    admitter.cycle()
    server.objects["v1/pods", "other", "busy-b0"].delete()  # rack r-b frees a node
    clock.advance(30)
    outcomes = admitter.cycle()
    assert [(o.gang, o.phase) for o in outcomes] == [("train", ADMITTED)]
    _assert_whole_gang_in_one_rack(server, "b")
    assert len(_events(server, "GangAdmitted")) == 4
    with Session(engine) as session:
        intents = session.scalars(select(GangIntent)).all()
        status = session.get(GangStatus, (NAMESPACE, "train"))
        entries = audit_entries(session, limit=50)
    assert [i.state for i in intents] == [ADMITTED]
    assert status is not None
    assert status.phase == ADMITTED
    assert "in rack r-b" in status.message
    verbs = [e["verb"] for e in entries]
    assert verbs.count("pin-pod") == 4
    assert verbs.count("release-pod") == 4
    assert {e["plan_id"] for e in entries} == {intents[0].plan_id}
    again = admitter.cycle()  # nothing left to do: no new intent, no new event
    assert [(o.gang, o.phase) for o in again] == [("train", ADMITTED)]
    assert len(_events(server, "GangAdmitted")) == 4
    with Session(engine) as session:
        assert len(session.scalars(select(GangIntent)).all()) == 1


@pytest.mark.parametrize("writes_before_crash", [0, 1, 3, 4, 5, 7])
def test_a_new_leader_completes_an_admission_cut_short(
    cluster: tuple[FakeApiServer, KubeApi], engine: Engine, writes_before_crash: int
) -> None:
    """Writes are 4 pins then 4 releases: crash after the intent (0), mid-pinning (1, 3),
    after pinning (4), mid-release (5, 7)."""
    server, api = cluster
    _free_rack_b_and_submit(server)
    clock = WallClock()
    server.writes_left = writes_before_crash
    with pytest.raises(RefusedError):
        _admitter(api, engine, clock).cycle()
    members = _members(server)
    if any(not is_gated(p) for p in members):  # never a partial release
        assert all(pinned_node(p) is not None for p in members)
    server.writes_left = None
    clock.advance(5)
    _admitter(api, engine, clock).cycle()  # the next leader
    _assert_whole_gang_in_one_rack(server, "b")
    with Session(engine) as session:
        assert [i.state for i in session.scalars(select(GangIntent))] == [ADMITTED]


def test_a_pod_recreated_mid_admission_takes_its_slot(
    cluster: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    server, api = cluster
    _free_rack_b_and_submit(server)
    clock = WallClock()
    server.writes_left = 2  # two pods pinned, then the leader dies
    with pytest.raises(RefusedError):
        _admitter(api, engine, clock).cycle()
    server.writes_left = None
    lost = next(p for p in _members(server) if pinned_node(p) is None)
    server.objects["v1/pods", NAMESPACE, lost["metadata"]["name"]].delete()
    new_leader = _admitter(api, engine, clock)
    new_leader.cycle()  # a slot has no pod: nothing is released
    assert all(is_gated(p) for p in _members(server))
    server.put("v1/pods", _pod("train-new", gang="train"))  # the job controller's twin
    new_leader.cycle()
    _assert_whole_gang_in_one_rack(server, "b")
    assert "train-new" in {p["metadata"]["name"] for p in _members(server)}


def test_dry_run_plans_explains_and_audits_but_changes_no_pod(
    cluster: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    server, api = cluster
    _free_rack_b_and_submit(server)
    clock = WallClock()
    before = [p["metadata"]["resourceVersion"] for p in _members(server)]
    outcomes = _admitter(api, engine, clock, dry_run=True).cycle()
    assert [(o.gang, o.phase) for o in outcomes] == [("train", WOULD_ADMIT)]
    assert [p["metadata"]["resourceVersion"] for p in _members(server)] == before
    with Session(engine) as session:
        assert [e["outcome"] for e in audit_entries(session)] == ["dry-run"]
        assert session.scalars(select(GangIntent)).all() == []


def test_malformed_gangs_and_other_namespaces(
    cluster: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    server, api = cluster
    bad = _pod("bad", gang="g")
    bad["metadata"]["labels"]["stowage.io/gang-size"] = "four"
    server.put("v1/pods", bad)
    outside = _pod("outside", namespace="other", gang="h")
    server.put("v1/pods", outside)
    outcomes = _admitter(api, engine, WallClock()).cycle()
    assert [(o.gang, o.phase) for o in outcomes] == [("bad", "invalid")]
    [event] = _events(server, "InvalidGang")
    assert event["message"] == "stowage.io/gang-size='four' is not a whole number"
    assert event["type"] == "Warning"


def _running_gang_member(
    name: str, node: str, *, priority: int, preemptible: bool = True
) -> dict[str, Any]:
    pod = _pod(name, node=node, labels={"stowage.io/gang": "low", "stowage.io/gang-size": "1"})
    pod["spec"]["priority"] = priority
    if not preemptible:
        pod["metadata"]["labels"]["stowage.io/non-preemptible"] = "true"
    return pod


def _train(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.gang == "train"]


def _high_priority_gang(server: FakeApiServer) -> None:
    for i in range(4):
        pod = _pod(f"train-{i}", gang="train")
        pod["spec"]["priority"] = 1000
        server.put("v1/pods", pod)


def test_a_higher_priority_gang_preempts_a_whole_lower_one_through_evictions(
    cluster: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    server, api = cluster
    server.objects["v1/pods", "other", "busy-b0"].delete()
    server.put("v1/pods", _running_gang_member("low-0", "b1", priority=10))
    _high_priority_gang(server)
    clock = WallClock()
    admitter = _admitter(api, engine, clock)
    server.refuse_evictions.add((NAMESPACE, "low-0"))  # a PodDisruptionBudget says no
    [outcome] = _train(admitter.cycle())
    assert outcome.phase == WAITING
    assert outcome.message.endswith(
        "preempting ml/low was refused by a PodDisruptionBudget; the plan is redone next cycle"
    )
    assert server.get("pods", NAMESPACE, "low-0") is not None  # respected, not forced
    server.refuse_evictions.clear()
    clock.advance(10)
    [outcome] = _train(admitter.cycle())
    assert outcome.message.endswith("preempting 1 lower-priority gang(s): ml/low")
    assert server.get("pods", NAMESPACE, "low-0") is None  # evicted
    preemptions = admitter.metrics.registry.get_sample_value
    assert preemptions("stowage_controller_preemptions_total", {"action": "preempt"}) == 2
    [preempted] = _events(server, "Preempted")
    assert preempted["message"].startswith("preempted by gang ml/train (priority 1000)")
    clock.advance(10)
    [outcome] = _train(admitter.cycle())
    assert outcome.phase == ADMITTED
    _assert_whole_gang_in_one_rack(server, "b")
    with Session(engine) as session:
        outcomes = {(e["verb"], e["outcome"]) for e in audit_entries(session, limit=100)}
    assert ("evict-pod", "refused:429") in outcomes
    assert ("evict-pod", "applied") in outcomes


def test_non_preemptible_and_higher_priority_gangs_are_never_victims(
    cluster: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    server, api = cluster
    server.objects["v1/pods", "other", "busy-b0"].delete()
    server.put("v1/pods", _running_gang_member("low-0", "b1", priority=10, preemptible=False))
    _high_priority_gang(server)
    [outcome] = _train(_admitter(api, engine, WallClock()).cycle())
    assert outcome.phase == WAITING
    assert "preempt" not in outcome.message
    assert server.get("pods", NAMESPACE, "low-0") is not None


def test_a_pod_group_gang_times_out_with_events_and_a_condition(
    cluster: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    server, api = cluster
    server.put(
        "scheduling.x-k8s.io/v1alpha1/podgroups",
        {"metadata": {"name": "pg", "namespace": NAMESPACE}, "spec": {"minMember": 7}},
    )
    for i in range(7):
        pod = _pod(f"pg-{i}", labels={"scheduling.x-k8s.io/pod-group": "pg"})
        pod["spec"]["schedulingGates"] = [{"name": SCHEDULING_GATE}]
        server.put("v1/pods", pod)
    clock = WallClock()
    admitter = _admitter(api, engine, clock)
    [outcome] = admitter.cycle()
    assert outcome.phase == WAITING
    assert outcome.message == "needs 7 x 8 GPUs; the cluster has 48 free GPUs"
    clock.advance(601)  # past the default timeout
    [outcome] = admitter.cycle()
    assert outcome.phase == "timed-out"
    assert len(_events(server, "GangTimeout")) == 8  # each pod and the PodGroup
    group_events = [e for e in server.items("events") if e["involvedObject"]["kind"] == "PodGroup"]
    assert [e["reason"] for e in group_events] == ["GangWaiting", "GangTimeout"]
    group = server.get("podgroups", NAMESPACE, "pg")
    assert group is not None
    [condition] = group["status"]["conditions"]
    assert condition["reason"] == "GangTimeout"
    assert condition["status"] == "False"
    clock.advance(5)  # within the backoff: not replanned, no new events
    admitter.cycle()
    assert len(_events(server, "GangTimeout")) == 8


class _StaleView:
    """A cache that lags the API server (what a watch cache is, for a moment)."""

    def __init__(self, api: KubeApi) -> None:
        self._nodes, self._pods = api.list_nodes(), api.list_pods()

    def nodes(self) -> list[dict[str, Any]]:
        return self._nodes

    def pods(self) -> list[dict[str, Any]]:
        return self._pods


def test_pods_changed_since_they_were_read_are_reread_not_clobbered(
    cluster: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    server, api = cluster
    _free_rack_b_and_submit(server)
    clock = WallClock()
    server.writes_left = 4  # every pod pinned, none released; then the leader dies
    with pytest.raises(RefusedError):
        _admitter(api, engine, clock).cycle()
    server.writes_left = None
    stale = _StaleView(api)  # the next leader's cache, before another controller's write:
    for pod in _members(server):
        gates = [*pod["spec"]["schedulingGates"], {"name": "example.com/quota"}]
        server.objects["v1/pods", NAMESPACE, pod["metadata"]["name"]].patch(
            {"metadata": {"resourceVersion": "999"}, "spec": {"schedulingGates": gates}}
        )
    GangAdmitter(
        api, engine, StoreAudit(engine, clock=clock), dry_run=False, clock=clock, view=stale
    ).cycle()
    _assert_whole_gang_in_one_rack(server, "b")
    # the stale gate list was not written back: their gate stays, only ours is gone
    assert all(
        p["spec"]["schedulingGates"] == [{"name": "example.com/quota"}] for p in _members(server)
    )


def test_the_cycle_is_measured_waiting_gangs_counted_and_admission_waits_observed(
    cluster: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    """A 4 x 8-GPU gang created at noon waits (no rack has four free nodes), past its
    10-minute timeout, then is admitted 15 minutes after it was created: the metrics Grafana
    and the alert rules read say so."""
    server, api = cluster
    clock = WallClock()
    for i in range(4):
        pod = _pod(f"train-{i}", gang="train")
        pod["metadata"]["creationTimestamp"] = clock.now.strftime("%Y-%m-%dT%H:%M:%SZ")
        server.put("v1/pods", pod)
    admitter = _admitter(api, engine, clock)
    admitter.cycle()
    value = admitter.metrics.registry.get_sample_value
    assert value("stowage_controller_pending_gangs", {"queue": "none", "reason": "no-room"}) == 1
    assert value("stowage_controller_pending_gpus", {"queue": "none"}) == 32
    assert value("stowage_controller_admissions_total", {"queue": "none"}) is None
    for step in ("observe", "plan", "commit"):
        assert value("stowage_controller_cycle_duration_seconds_count", {"step": step}) == 1
    assert value("stowage_controller_gangs_past_timeout", {"queue": "none"}) == 0
    assert value("stowage_controller_ungated_gang_pods") == 0
    assert value("stowage_controller_rollbacks_total", {"reason": "bind-deadline"}) == 0
    clock.advance(700)
    admitter.cycle()
    assert value("stowage_controller_gangs_past_timeout", {"queue": "none"}) == 1
    server.objects["v1/pods", "other", "busy-b0"].delete()
    clock.advance(200)
    admitter.cycle()
    assert value("stowage_controller_pending_gangs", {"queue": "none", "reason": "no-room"}) is None
    assert value("stowage_controller_gangs_past_timeout", {"queue": "none"}) is None
    assert value("stowage_controller_admissions_total", {"queue": "none"}) == 1
    assert value("stowage_controller_gang_wait_seconds_count", {"queue": "none"}) == 1
    assert value("stowage_controller_gang_wait_seconds_sum", {"queue": "none"}) == 900
    assert (
        value("stowage_controller_gang_wait_seconds_bucket", {"queue": "none", "le": "300.0"}) == 0
    )
    assert (
        value("stowage_controller_gang_wait_seconds_bucket", {"queue": "none", "le": "900.0"}) == 1
    )


def test_members_that_slipped_past_the_gate_are_reported_and_counted(
    cluster: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    """Two of a gang's four pods were created while the webhook did not answer (no gate)."""
    server, api = cluster
    for i in range(4):
        pod = _pod(f"train-{i}", gang="train")
        if i < 2:
            del pod["spec"]["schedulingGates"]
        server.put("v1/pods", pod)
    admitter = _admitter(api, engine, WallClock())
    admitter.cycle()
    [event, *_] = _events(server, "GangMemberUngated")
    assert event["message"].startswith("2 pod(s) of gang train run without the stowage.io/gang")
    value = admitter.metrics.registry.get_sample_value
    assert value("stowage_controller_ungated_gang_pods") == 2

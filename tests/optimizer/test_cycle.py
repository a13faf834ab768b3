"""The pure cycle: sessions and statements, actions, and the constraints the filters cannot
judge node by node (preferred affinity, anti-affinity among a gang's own members)."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from optimizer.controller.observe import observe
from optimizer.planner.cycle import CycleConfig, new_session, run_cycle
from optimizer.planner.plan import UNSUPPORTED, ClusterSnapshot
from shared.labels import SCHEDULING_GATE


def _node(name: str, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}},
        "status": {"allocatable": {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "8"}},
    }


def _member(name: str, *, size: int, gpus: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ml",
            "uid": name,
            "labels": {"stowage.io/gang": "g", "stowage.io/gang-size": str(size), "app": "g"},
        },
        "spec": {
            "schedulingGates": [{"name": SCHEDULING_GATE}],
            "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
            **spec,
        },
        "status": {"phase": "Pending"},
    }


def _snapshot(nodes: list[Any], pods: list[Any]) -> ClusterSnapshot:
    return observe(nodes=nodes, pods=pods, enabled={"ml"}).snapshot


def _where(snapshot: ClusterSnapshot) -> list[str]:
    [admit] = run_cycle(snapshot, config=CycleConfig(policy="bestfit")).admit
    return sorted(p.node for p in admit.pods)


def test_preferred_node_affinity_is_tried_first_then_dropped() -> None:
    nodes = [_node("a", disk="hdd"), _node("b", disk="ssd"), _node("c", disk="ssd")]
    preferred = {
        "affinity": {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 10,
                        "preference": {
                            "matchExpressions": [
                                {"key": "disk", "operator": "In", "values": ["ssd"]}
                            ]
                        },
                    }
                ]
            }
        }
    }
    two = [_member(f"m{i}", size=2, gpus=8, **preferred) for i in range(2)]
    assert _where(_snapshot(nodes, two)) == ["b", "c"]
    three = [_member(f"m{i}", size=3, gpus=8, **preferred) for i in range(3)]
    assert _where(_snapshot(nodes, three)) == ["a", "b", "c"]  # the preference gives way


def test_members_that_repel_each_other_go_one_per_node() -> None:
    anti = {
        "affinity": {
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "labelSelector": {"matchLabels": {"app": "g"}},
                        "topologyKey": "kubernetes.io/hostname",
                    }
                ]
            }
        }
    }
    nodes = [_node(n) for n in "abc"]
    assert _where(_snapshot(nodes, [_member(f"m{i}", size=3, **anti) for i in range(3)])) == [
        "a",
        "b",
        "c",
    ]
    plan = run_cycle(_snapshot(nodes, [_member(f"m{i}", size=4, **anti) for i in range(4)]))
    assert plan.admit == ()  # four 1-GPU pods fit one node, but not four nodes of three
    without = run_cycle(
        _snapshot(nodes, [_member(f"m{i}", size=4) for i in range(4)]),
        config=CycleConfig(policy="bestfit"),
    )
    assert len({p.node for p in without.admit[0].pods}) == 1  # bestfit packs them otherwise


def test_constraints_the_planner_does_not_model_make_the_gang_wait_saying_so() -> None:
    affinity = {
        "affinity": {
            "podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}
                ]
            }
        }
    }
    [wait] = run_cycle(_snapshot([_node("a")], [_member("m0", size=1, **affinity)])).wait
    assert wait.code == UNSUPPORTED
    assert wait.reason.startswith("the planner does not model required pod affinity yet")


def test_a_plan_never_changes_its_snapshot() -> None:
    snapshot = _snapshot([_node(n) for n in "ab"], [_member(f"m{i}", size=2) for i in range(2)])
    before = snapshot.base.state.gpu_free.copy()
    assert len(run_cycle(snapshot).admit) == 1
    assert np.array_equal(snapshot.base.state.gpu_free, before)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["allocate", "evict"]), st.integers(0, 5), st.integers(1, 8)),
        max_size=20,
    )
)
def test_a_discarded_statement_leaves_the_session_as_it_was(
    steps: list[tuple[str, int, int]],
) -> None:
    nodes = [_node(n) for n in "abcdef"]
    bound = [
        {
            "metadata": {"name": f"run-{n}", "namespace": "other", "uid": f"run-{n}"},
            "spec": {
                "nodeName": n,
                "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "2"}}}],
            },
            "status": {"phase": "Running"},
        }
        for n in "abc"
    ]
    snapshot = _snapshot(nodes, bound)
    session = new_session(snapshot, config=CycleConfig(policy="bestfit"))
    state = session.state
    before = [
        a.copy() for a in (state.cpu_free, state.memory_free, state.gpu_free, state.extra_free)
    ]
    statement = session.statement()
    info = snapshot.bound[0].info
    for kind, row, gpus in steps:
        if kind == "evict":
            statement.evict(row % len(snapshot.bound))
            continue
        free = np.flatnonzero(state.gpu_free[row] == 1000)[:gpus]
        if len(free) == gpus:
            request = info.request.__class__("t", 0, 0, gpus, 1000, extra=info.request.extra)
            statement.allocate(row, tuple(int(g) for g in free), request, info)
    statement.discard()
    after = [state.cpu_free, state.memory_free, state.gpu_free, state.extra_free]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert session.evicted == set()

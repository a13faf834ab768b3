"""Property tests of observe + cycle on random API objects: valid, invalid and half-filled.

Whatever the cluster holds, the cycle never raises, never places a pod where a filter says
no, never over-allocates a node, never admits part of a gang, and explains every object it
leaves out."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from optimizer.controller.observe import observe
from optimizer.planner.cycle import run_cycle
from optimizer.planner.filters import DEFAULT_FILTERS, FILTERS
from shared.labels import SCHEDULING_GATE

LABELS = st.dictionaries(
    st.sampled_from(["pool", "zone", "topology.stowage.io/rack", "gpu"]),
    st.sampled_from(["a", "b", "x"]),
    max_size=3,
)
VALID = {
    "cpu": st.sampled_from(["96", "8", "1", "500m", "0"]),
    "memory": st.sampled_from(["1000Gi", "64Gi", "1Gi", "0"]),
    "nvidia.com/gpu": st.sampled_from(["8", "1", "2", "0"]),
    "pods": st.sampled_from(["110", "1", "0"]),
    "ephemeral-storage": st.sampled_from(["100Gi", "1Gi"]),
}
BROKEN = st.one_of(
    st.sampled_from(["", "lots", "-1", "1e400", "0x10", "1Gi"]),
    st.integers(min_value=-2, max_value=200),
    st.none(),
)


def _amounts(draw: st.DrawFn, names: dict[str, bool]) -> dict[str, Any]:
    """Amounts for ``names`` (name -> required); one object in five has broken ones."""
    broken = draw(st.sampled_from(["ok", "ok", "ok", "ok", "broken"])) == "broken"
    amounts = {}
    for name, required in names.items():
        if required or draw(st.booleans()):
            amounts[name] = draw(st.one_of(VALID[name], BROKEN) if broken else VALID[name])
    return amounts


TAINT = st.fixed_dictionaries(
    {"key": st.sampled_from(["gpu", "maintenance", ""])},
    optional={
        "value": st.sampled_from(["", "yes"]),
        "effect": st.sampled_from(["NoSchedule", "NoExecute", "PreferNoSchedule", "Bogus"]),
    },
)
TOLERATION = st.fixed_dictionaries(
    {},
    optional={
        "key": st.sampled_from(["gpu", "maintenance", ""]),
        "operator": st.sampled_from(["Equal", "Exists", "Weird"]),
        "value": st.sampled_from(["", "yes"]),
        "effect": st.sampled_from(["NoSchedule", "NoExecute", ""]),
    },
)


@st.composite
def nodes(draw: st.DrawFn, index: int) -> Any:
    if draw(st.sampled_from([False] * 15 + [True])):
        return draw(st.sampled_from([None, 7, "node", {}, {"metadata": None}]))
    allocatable = _amounts(
        draw,
        {
            "cpu": True,
            "memory": True,
            "nvidia.com/gpu": True,
            "pods": False,
            "ephemeral-storage": False,
        },
    )
    return {
        "metadata": {"name": f"n{index}", "labels": draw(LABELS)},
        "spec": {
            "unschedulable": draw(st.sampled_from([False, False, False, True])),
            "taints": draw(st.lists(TAINT, max_size=2)),
        },
        "status": {
            "allocatable": allocatable,
            "conditions": [
                {"type": "Ready", "status": draw(st.sampled_from(["True", "True", "False"]))}
            ],
        },
    }


@st.composite
def pods(draw: st.DrawFn, index: int, node_names: list[str]) -> Any:
    if draw(st.sampled_from([False] * 15 + [True])):
        return draw(st.sampled_from([None, 3, [], {"metadata": {}}, {"spec": {}}]))
    labels: dict[str, Any] = {}
    annotations: dict[str, Any] = {}
    if draw(st.booleans()):
        labels["stowage.io/gang"] = draw(st.sampled_from(["g1", "g2", "g3"]))
        labels["stowage.io/gang-size"] = draw(st.sampled_from(["1", "2", "3", "two", "0", "-1"]))
        if draw(st.booleans()):
            labels["stowage.io/gang-max"] = draw(st.sampled_from(["2", "4", "1"]))
        if draw(st.booleans()):
            labels["stowage.io/topology-required"] = draw(st.sampled_from(["rack", "moon"]))
    if draw(st.sampled_from([False, False, False, True])):
        annotations["stowage.io/gpu-milli"] = draw(st.sampled_from(["300", "999", "0", "x"]))
    requests = _amounts(draw, {"cpu": False, "memory": False, "ephemeral-storage": False})
    limits = _amounts(draw, {"nvidia.com/gpu": False})
    spec: dict[str, Any] = {
        "containers": [{"name": "c", "resources": {"requests": requests, "limits": limits}}],
        "priority": draw(st.sampled_from([0, 10, 1000, None])),
    }
    if draw(st.booleans()):
        spec["nodeSelector"] = draw(LABELS)
    if draw(st.booleans()):
        spec["tolerations"] = draw(st.lists(TOLERATION, max_size=2))
    if node_names and draw(st.sampled_from([False, False, False, True])):
        spec["nodeName"] = draw(st.sampled_from(node_names))
    elif draw(st.booleans()):
        spec["schedulingGates"] = [{"name": SCHEDULING_GATE}]
    return {
        "metadata": {
            "name": f"p{index}",
            "namespace": draw(st.sampled_from(["ml", "other"])),
            "uid": f"uid-{index}",
            "labels": labels,
            "annotations": annotations,
            "creationTimestamp": f"2026-11-29T12:00:{index % 60:02d}Z",
        },
        "spec": spec,
        "status": {"phase": draw(st.sampled_from(["Pending", "Running", "Succeeded"]))},
    }


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[Any], list[Any]]:
    node_count = draw(st.integers(0, 8))
    node_list = [draw(nodes(i)) for i in range(node_count)]
    names = [n["metadata"]["name"] for n in node_list if isinstance(n, dict) and n.get("metadata")]
    pod_list = [draw(pods(i, names)) for i in range(draw(st.integers(0, 14)))]
    return node_list, pod_list


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters())
def test_the_cycle_never_raises_and_never_places_where_a_filter_says_no(
    cluster: tuple[list[Any], list[Any]],
) -> None:
    node_list, pod_list = cluster
    observed = observe(nodes=node_list, pods=pod_list, enabled={"ml"})
    snapshot = observed.snapshot
    plan = run_cycle(snapshot)
    event(f"admitted gangs: {min(len(plan.admit), 2)}")
    event(f"reserved pods: {min(len(plan.reserved), 2)}")
    nodes_by_name = {n.name: n for n in snapshot.nodes}
    filters = [FILTERS.get_or_raise(name) for name in DEFAULT_FILTERS]
    state = snapshot.base.state.copy()
    row = {name: i for i, name in enumerate(state.names)}
    for admit in (*plan.admit, *plan.reserved):
        assert len(admit.pods) >= admit.job.size  # never part of a gang
        members = {m.uid: m for m in admit.job.pending}
        for placed in admit.pods:
            info = members[placed.uid]
            node = nodes_by_name[placed.node]
            for plugin in filters:
                if admit.job.managed or plugin.kube:
                    assert plugin(info, node).ok, (plugin.name, info, node)
            state.allocate(row[placed.node], placed.gpus, placed.request)  # raises if over
    assert (state.cpu_free >= 0).all()
    assert (state.memory_free >= 0).all()
    assert (state.extra_free >= 0).all()
    assert (state.gpu_free >= 0).all()
    assert np.array_equal(state.gpu_present, snapshot.base.state.gpu_present)
    left_out = sum(
        1
        for p in pod_list
        if not isinstance(p, dict) or not isinstance(p.get("metadata"), dict) or not p["metadata"]
    )
    assert len([i for i in plan.invalid if i.kind == "Pod"]) >= left_out

"""Each filter plugin as a table of cases, in the style of kube-scheduler's plugin tests:
name, node, pod, wanted status. Pods and nodes are read from API JSON by the controller's own
observe functions, so the tables also pin how Stowage reads the fields kube-scheduler reads."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from optimizer.controller.observe import node_info, pod_info
from optimizer.planner.cluster import ClusterState, NodeSpec
from optimizer.planner.filters import (
    AFFINITY_MISMATCH,
    AGENT_STALE,
    NOT_READY,
    UNSCHEDULABLE_NODE,
    AgentFresh,
    NodeAffinity,
    NodeReady,
    NodeUnschedulable,
    PlacedPod,
    TaintToleration,
    anti_affinity_blocked,
    resource_shortfalls,
    summarise,
)
from optimizer.planner.framework import SUCCESS, Code, Status
from optimizer.planner.objects import NodeInfo, PodInfo


def _node(
    *,
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
    unschedulable: bool = False,
    ready: str | None = None,
    name: str = "n1",
) -> NodeInfo:
    obj: dict[str, Any] = {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"taints": taints or [], "unschedulable": unschedulable},
        "status": {"allocatable": {"cpu": "8", "memory": "32Gi"}},
    }
    if ready is not None:
        obj["status"]["conditions"] = [{"type": "Ready", "status": ready}]
    return node_info(obj, report=None, stale=False)[0]


def _pod(spec: dict[str, Any] | None = None, *, labels: dict[str, str] | None = None) -> PodInfo:
    body = {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}], **(spec or {})}
    return pod_info(
        {"metadata": {"name": "p", "namespace": "ns", "labels": labels or {}}, "spec": body}
    )


def _affinity(*terms: dict[str, Any]) -> dict[str, Any]:
    return {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}
            }
        }
    }


def _expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"matchExpressions": [{"key": key, "operator": operator, "values": list(values)}]}


UNSCHEDULABLE = Status(Code.UNRESOLVABLE, UNSCHEDULABLE_NODE, "NodeUnschedulable")


@pytest.mark.parametrize(
    ("node", "pod", "want"),
    [
        pytest.param(_node(), _pod(), SUCCESS, id="schedulable node"),
        pytest.param(_node(unschedulable=True), _pod(), UNSCHEDULABLE, id="cordoned node"),
        pytest.param(
            _node(unschedulable=True),
            _pod(
                {
                    "tolerations": [
                        {
                            "key": "node.kubernetes.io/unschedulable",
                            "operator": "Exists",
                            "effect": "NoSchedule",
                        }
                    ]
                }
            ),
            SUCCESS,
            id="cordoned node, pod tolerates the unschedulable taint",
        ),
        pytest.param(
            _node(unschedulable=True),
            _pod({"tolerations": [{"operator": "Exists"}]}),
            SUCCESS,
            id="cordoned node, pod tolerates everything",
        ),
    ],
)
def test_node_unschedulable(node: NodeInfo, pod: PodInfo, want: Status) -> None:
    assert NodeUnschedulable()(pod, node) == want


def _untolerated(text: str) -> Status:
    return Status(Code.UNRESOLVABLE, f"node(s) had untolerated taint {text}", "TaintToleration")


GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


@pytest.mark.parametrize(
    ("node", "pod", "want"),
    [
        pytest.param(_node(), _pod(), SUCCESS, id="no taints"),
        pytest.param(
            _node(taints=[GPU_TAINT]),
            _pod(),
            _untolerated("{nvidia.com/gpu: present}"),
            id="NoSchedule taint, no toleration",
        ),
        pytest.param(
            _node(taints=[{"key": "dedicated", "effect": "NoExecute"}]),
            _pod(),
            _untolerated("{dedicated}"),
            id="NoExecute taint, no toleration",
        ),
        pytest.param(
            _node(taints=[{"key": "soft", "effect": "PreferNoSchedule"}]),
            _pod(),
            SUCCESS,
            id="PreferNoSchedule is not a filter",
        ),
        pytest.param(
            _node(taints=[GPU_TAINT]),
            _pod(
                {
                    "tolerations": [
                        {
                            "key": "nvidia.com/gpu",
                            "operator": "Equal",
                            "value": "present",
                            "effect": "NoSchedule",
                        }
                    ]
                }
            ),
            SUCCESS,
            id="Equal with the same value and effect",
        ),
        pytest.param(
            _node(taints=[GPU_TAINT]),
            _pod({"tolerations": [{"key": "nvidia.com/gpu", "value": "present"}]}),
            SUCCESS,
            id="operator defaults to Equal, empty effect matches every effect",
        ),
        pytest.param(
            _node(taints=[GPU_TAINT]),
            _pod(
                {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "absent"}]}
            ),
            _untolerated("{nvidia.com/gpu: present}"),
            id="Equal with another value",
        ),
        pytest.param(
            _node(taints=[GPU_TAINT]),
            _pod(
                {
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}
                    ]
                }
            ),
            _untolerated("{nvidia.com/gpu: present}"),
            id="Exists with another effect",
        ),
        pytest.param(
            _node(taints=[GPU_TAINT]),
            _pod({"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}),
            SUCCESS,
            id="Exists on the key, any value",
        ),
        pytest.param(
            _node(taints=[GPU_TAINT, {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}]),
            _pod({"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}),
            _untolerated("{dedicated: ml}"),
            id="every taint must be tolerated",
        ),
        pytest.param(
            _node(taints=[GPU_TAINT]),
            _pod({"tolerations": [{"operator": "Exists", "effect": "NoSchedule"}]}),
            SUCCESS,
            id="empty key with Exists tolerates every key of that effect",
        ),
    ],
)
def test_taint_toleration(node: NodeInfo, pod: PodInfo, want: Status) -> None:
    assert TaintToleration()(pod, node) == want


@pytest.mark.parametrize(
    ("node", "want"),
    [
        pytest.param(_node(ready="True"), SUCCESS, id="Ready=True"),
        pytest.param(
            _node(ready="False"),
            Status(Code.UNSCHEDULABLE, NOT_READY, "NodeReady"),
            id="Ready=False",
        ),
        pytest.param(
            _node(ready="Unknown"),
            Status(Code.UNSCHEDULABLE, NOT_READY, "NodeReady"),
            id="Ready=Unknown (the node stopped reporting)",
        ),
        pytest.param(_node(), SUCCESS, id="no conditions reported"),
    ],
)
def test_node_ready(node: NodeInfo, want: Status) -> None:
    assert NodeReady()(_pod(), node) == want


MISMATCH = Status(Code.UNRESOLVABLE, AFFINITY_MISMATCH, "NodeAffinity")
GPU_NODE = _node(labels={"gpu": "h100", "gen": "9", "zone": "a"}, name="gpu-1")


@pytest.mark.parametrize(
    ("node", "pod", "want"),
    [
        pytest.param(GPU_NODE, _pod(), SUCCESS, id="no constraint"),
        pytest.param(
            GPU_NODE, _pod({"nodeSelector": {"gpu": "h100"}}), SUCCESS, id="nodeSelector matches"
        ),
        pytest.param(
            GPU_NODE,
            _pod({"nodeSelector": {"gpu": "h100", "zone": "b"}}),
            MISMATCH,
            id="nodeSelector: every label must match",
        ),
        pytest.param(
            GPU_NODE, _pod(_affinity(_expr("gpu", "In", "a100", "h100"))), SUCCESS, id="In"
        ),
        pytest.param(
            GPU_NODE, _pod(_affinity(_expr("gpu", "In", "a100"))), MISMATCH, id="In, other value"
        ),
        pytest.param(GPU_NODE, _pod(_affinity(_expr("gpu", "NotIn", "a100"))), SUCCESS, id="NotIn"),
        pytest.param(
            GPU_NODE,
            _pod(_affinity(_expr("rack", "NotIn", "r1"))),
            SUCCESS,
            id="NotIn matches an absent key",
        ),
        pytest.param(GPU_NODE, _pod(_affinity(_expr("gpu", "Exists"))), SUCCESS, id="Exists"),
        pytest.param(
            GPU_NODE, _pod(_affinity(_expr("rack", "Exists"))), MISMATCH, id="Exists, absent key"
        ),
        pytest.param(
            GPU_NODE,
            _pod(_affinity(_expr("gpu", "DoesNotExist"))),
            MISMATCH,
            id="DoesNotExist, present key",
        ),
        pytest.param(GPU_NODE, _pod(_affinity(_expr("gen", "Gt", "8"))), SUCCESS, id="Gt"),
        pytest.param(
            GPU_NODE, _pod(_affinity(_expr("gen", "Lt", "9"))), MISMATCH, id="Lt is strict"
        ),
        pytest.param(
            GPU_NODE,
            _pod(_affinity(_expr("gpu", "Gt", "1"))),
            MISMATCH,
            id="Gt on a label that is not a number",
        ),
        pytest.param(
            GPU_NODE,
            _pod(_affinity(_expr("zone", "In", "b"), _expr("gpu", "Exists"))),
            SUCCESS,
            id="terms are ORed",
        ),
        pytest.param(
            GPU_NODE,
            _pod(
                _affinity(
                    {
                        "matchExpressions": [
                            {"key": "gpu", "operator": "Exists"},
                            {"key": "zone", "operator": "In", "values": ["b"]},
                        ]
                    }
                )
            ),
            MISMATCH,
            id="expressions in a term are ANDed",
        ),
        pytest.param(GPU_NODE, _pod(_affinity({})), MISMATCH, id="an empty term matches nothing"),
        pytest.param(
            GPU_NODE,
            _pod(
                _affinity(
                    {
                        "matchFields": [
                            {"key": "metadata.name", "operator": "In", "values": ["gpu-1"]}
                        ]
                    }
                )
            ),
            SUCCESS,
            id="matchFields on metadata.name",
        ),
        pytest.param(
            GPU_NODE,
            _pod(
                _affinity(
                    {
                        "matchFields": [
                            {"key": "metadata.name", "operator": "NotIn", "values": ["gpu-1"]}
                        ]
                    }
                )
            ),
            MISMATCH,
            id="matchFields NotIn this node",
        ),
        pytest.param(
            GPU_NODE,
            _pod({"nodeSelector": {"gpu": "a100"}, **_affinity(_expr("gpu", "Exists"))}),
            MISMATCH,
            id="nodeSelector and affinity must both hold",
        ),
    ],
)
def test_node_affinity(node: NodeInfo, pod: PodInfo, want: Status) -> None:
    assert NodeAffinity()(pod, node) == want


def test_agent_fresh() -> None:
    fresh = node_info({"metadata": {"name": "a"}}, report=None, stale=False)[0]
    stale = node_info({"metadata": {"name": "a"}}, report=None, stale=True)[0]
    assert AgentFresh()(_pod(), fresh) == SUCCESS
    assert AgentFresh()(_pod(), stale) == Status(Code.UNSCHEDULABLE, AGENT_STALE, "AgentFresh")
    assert not AgentFresh().kube  # Stowage's rule, not applied to pods kube-scheduler places


def _anti(topology_key: str = "kubernetes.io/hostname", **selector: str) -> dict[str, Any]:
    return {
        "affinity": {
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": selector}, "topologyKey": topology_key}
                ]
            }
        }
    }


NODES = [
    _node(name="a", labels={"kubernetes.io/hostname": "a", "zone": "z1"}),
    _node(name="b", labels={"kubernetes.io/hostname": "b", "zone": "z1"}),
    _node(name="c", labels={"kubernetes.io/hostname": "c", "zone": "z2"}),
]


@pytest.mark.parametrize(
    ("pod", "placed", "want"),
    [
        pytest.param(_pod(_anti(app="db")), [], [False, False, False], id="nothing placed"),
        pytest.param(
            _pod(_anti(app="db")),
            [PlacedPod("ns", {"app": "db"}, 0)],
            [True, False, False],
            id="a matching pod on the node",
        ),
        pytest.param(
            _pod(_anti(app="db")),
            [PlacedPod("other", {"app": "db"}, 0)],
            [False, False, False],
            id="a matching pod in another namespace",
        ),
        pytest.param(
            _pod(_anti("zone", app="db")),
            [PlacedPod("ns", {"app": "db"}, 0)],
            [True, True, False],
            id="a zone topology key blocks the zone",
        ),
        pytest.param(
            _pod(labels={"app": "web"}),
            [
                PlacedPod(
                    "ns",
                    {"app": "db"},
                    2,
                    _pod(_anti(app="web")).anti_affinity,
                )
            ],
            [False, False, True],
            id="the placed pod's own anti-affinity (symmetry)",
        ),
    ],
)
def test_inter_pod_anti_affinity(pod: PodInfo, placed: list[PlacedPod], want: list[bool]) -> None:
    assert anti_affinity_blocked(pod, NODES, placed).tolist() == want


def test_resource_fit_counts_every_resource_and_words_it_as_kube_scheduler() -> None:
    state = ClusterState.from_nodes(
        [
            NodeSpec("a", 4_000, 8_192, 0, "", {"pods": 110, "ephemeral-storage": 10 * 2**30}),
            NodeSpec("b", 64_000, 8_192, 8, "H100", {"pods": 0}),
            NodeSpec("c", 64_000, 8_192, 8, "H100", {"pods": 110, "nvidia.com/mig-1g.10gb": 7}),
        ]
    )
    pod = _pod(
        {
            "containers": [
                {
                    "name": "c",
                    "resources": {
                        "requests": {"cpu": "8", "memory": "1Gi", "ephemeral-storage": "1Gi"},
                        "limits": {"nvidia.com/gpu": "1"},
                    },
                }
            ]
        }
    ).request
    assert dict(pod.extra) == {"ephemeral-storage": 2**30, "pods": 1}
    assert state.feasible(pod).tolist() == [False, False, False]
    reasons = resource_shortfalls(state, pod)
    assert reasons == {
        "Insufficient cpu": 1,
        "Insufficient pods": 1,
        "Insufficient ephemeral-storage": 1,
    }
    assert summarise(3, reasons) == (
        "0/3 nodes are available: 1 Insufficient cpu, 1 Insufficient ephemeral-storage, "
        "1 Insufficient pods."
    )


@pytest.mark.parametrize(
    ("requests", "want_cpu", "want_memory_mib"),
    [
        pytest.param({"cpu": "1500m", "memory": "1Gi"}, 1500, 1024, id="plain"),
        pytest.param({"cpu": "0.0005", "memory": "1"}, 1, 1, id="rounded up, never down"),
    ],
)
def test_requests_are_rounded_up(
    requests: dict[str, str], want_cpu: int, want_memory_mib: int
) -> None:
    pod = _pod({"containers": [{"name": "c", "resources": {"requests": requests}}]}).request
    assert (pod.cpu_milli, pod.memory_mib) == (want_cpu, want_memory_mib)


def test_init_containers_and_overhead_count_as_kube_scheduler_counts_them() -> None:
    pod = _pod(
        {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "1"}}},
                {"name": "b", "resources": {"requests": {"cpu": "1"}}},
            ],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "3"}}}],
            "overhead": {"cpu": "250m"},
        }
    ).request
    assert pod.cpu_milli == 3_250  # max(sum of app containers, largest init) + overhead


def test_a_mask_and_spread_limit_feasibility() -> None:
    state = ClusterState.from_nodes([NodeSpec(n, 8_000, 8_192, 0, "", {"pods": 9}) for n in "abc"])
    state.masks["k"] = np.array([True, False, True])
    pod = _pod().request
    spread = replace(pod, mask_key="k", spread=True)
    assert state.feasible(spread).tolist() == [True, False, True]
    state.allocate(0, (), spread)
    assert state.feasible(spread).tolist() == [False, False, True]
    state.release(0, (), spread)
    assert state.feasible(spread).tolist() == [True, False, True]

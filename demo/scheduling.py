"""The demo's scheduling chapter: one cycle on the simulated fleet, as ``stowage plan`` runs it.

The nodes are Kubernetes Node objects for the demo's machines (GPU counts and health from
their agents' reports: the DGX A100 has lost a GPU by now); one node is cordoned and one
tainted for maintenance. Three gangs and one malformed pod wait behind Stowage's gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from optimizer.cli.plan import plan_dump, render
from optimizer.planner.plan import Plan
from shared.labels import NAMESPACE_ENABLED, SCHEDULING_GATE
from shared.report import NodeReport

NAMESPACE: Final = "ml"
CORDONED: Final = "gpu-l40s-a"
TAINTED: Final = "gpu-v100-a"
HOPPER: Final = ("H100", "H200")


def _node(report: NodeReport) -> dict[str, Any]:
    product = report.gpus[0].product if report.gpus else ""
    spec: dict[str, Any] = {}
    if report.node_name == CORDONED:
        spec["unschedulable"] = True
    if report.node_name == TAINTED:
        spec["taints"] = [{"key": "maintenance", "value": "firmware", "effect": "NoSchedule"}]
    return {
        "kind": "Node",
        "metadata": {
            "name": report.node_name,
            "labels": {
                "kubernetes.io/hostname": report.node_name,
                "nvidia.com/gpu.product": product,
                "pool": "hopper" if any(h in product for h in HOPPER) else "general",
            },
        },
        "spec": spec,
        "status": {
            "allocatable": {
                "cpu": "192",
                "memory": "1500Gi",
                "nvidia.com/gpu": str(len(report.gpus)),
                "pods": "110",
            },
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _pod(
    name: str, *, gang: str, size: int, gpus: int, selector: dict[str, str] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "schedulingGates": [{"name": SCHEDULING_GATE}],
        "containers": [
            {
                "name": "main",
                "resources": {
                    "requests": {"cpu": str(8 * gpus), "memory": f"{64 * gpus}Gi"},
                    "limits": {"nvidia.com/gpu": str(gpus)},
                },
            }
        ],
    }
    if selector:
        spec["nodeSelector"] = selector
    return {
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": f"demo-{name}",
            "labels": {"stowage.io/gang": gang, "stowage.io/gang-size": str(size)},
            "creationTimestamp": "2026-12-01T09:00:00Z",
        },
        "spec": spec,
        "status": {"phase": "Pending"},
    }


def cluster_objects(reports: Sequence[NodeReport]) -> list[dict[str, Any]]:
    """The simulated cluster as ``kubectl get namespaces,nodes,pods -A -o yaml`` lists it."""
    malformed = _pod("notebook", gang="notebook", size=1, gpus=2)
    malformed["metadata"]["annotations"] = {"stowage.io/gpu-milli": "250"}  # a share of 2?
    return [
        {
            "kind": "Namespace",
            "metadata": {"name": NAMESPACE, "labels": {NAMESPACE_ENABLED: "true"}},
        },
        *(_node(r) for r in reports),
        *(
            _pod(f"pretrain-{i}", gang="pretrain", size=2, gpus=8, selector={"pool": "hopper"})
            for i in range(2)
        ),
        _pod("finetune-0", gang="finetune", size=1, gpus=8, selector={"pool": "general"}),
        *(_pod(f"eval-{i}", gang="eval", size=2, gpus=2) for i in range(2)),
        malformed,
    ]


def plan_chapter(reports: Sequence[NodeReport]) -> tuple[Plan, list[str]]:
    """One cycle on the simulated cluster with the agents' reports: the plan and its lines."""
    plan = plan_dump(
        cluster_objects(reports),
        reports={r.node_name: r for r in reports},
        policy="stowage",
    )
    return plan, render(plan)

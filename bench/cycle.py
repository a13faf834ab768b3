"""One scheduling cycle (observe + cycle) with 100 pending gangs on synthetic 1,000- and
10,000-node clusters, against one 8-GPU pod decision on the same cluster (the baseline,
measured in the same run); and one cycle with 1,000 pending jobs in 20 queues on 1,000
nodes (the batch-scheduling target), with every action that evicts.

Run: ``.venv/bin/python -m bench.cycle``. Racks of 20 nodes x 8 GPUs, API objects as the
watch cache holds them; a seeded random third of the nodes run 1-8 GPU pods; a tenth are
tainted for a dedicated team and one in fifty is cordoned. The 100 gangs mix sizes (1-16
pods of 1, 2, 4 or 8 GPUs, some GPU shares), half of them rack-required, a quarter with a
nodeSelector. Every cycle starts from fresh objects, as the controller's does.
"""

from __future__ import annotations

import platform
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np

from optimizer.controller.observe import observe
from optimizer.planner.cycle import CycleConfig, new_session, run_cycle
from optimizer.planner.plan import ClusterSnapshot
from shared.labels import SCHEDULING_GATE

RACK = 20
RACK_LABEL = "topology.stowage.io/rack"


def _node(i: int, rng: np.random.Generator) -> dict[str, Any]:
    name = f"rack{i // RACK:04d}-node{i % RACK:02d}"
    labels = {
        "kubernetes.io/hostname": name,
        RACK_LABEL: f"rack{i // RACK:04d}",
        "pool": "a" if i % 2 else "b",
    }
    spec: dict[str, Any] = {}
    if rng.random() < 0.1:
        spec["taints"] = [{"key": "dedicated", "value": "team-x", "effect": "NoSchedule"}]
    if rng.random() < 0.02:
        spec["unschedulable"] = True
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
        "status": {
            "allocatable": {"cpu": "96", "memory": "768Gi", "nvidia.com/gpu": "8", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _pod(name: str, *, gpus: int, node: str | None = None, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "main",
                "resources": {
                    "requests": {"cpu": str(max(gpus, 1) * 4), "memory": f"{max(gpus, 1) * 16}Gi"},
                    "limits": {"nvidia.com/gpu": str(gpus)},
                },
            }
        ],
        **extra.pop("spec", {}),
    }
    if node:
        spec["nodeName"] = node
    return {
        "metadata": {
            "name": name,
            "namespace": extra.pop("namespace", "ml"),
            "uid": name,
            "labels": extra.pop("labels", {}),
            "annotations": extra.pop("annotations", {}),
            "creationTimestamp": extra.pop("created", "2026-12-01T10:00:00Z"),
        },
        "spec": spec,
        "status": {"phase": "Running" if node else "Pending"},
    }


def cluster(nodes: int, *, gangs: int = 100, seed: int = 7) -> tuple[list[Any], list[Any]]:
    """Node and pod objects of the synthetic cluster."""
    rng = np.random.default_rng(seed)
    node_list = [_node(i, rng) for i in range(nodes)]
    pods = []
    for row in rng.choice(nodes, size=nodes // 3, replace=False):
        name = node_list[int(row)]["metadata"]["name"]
        pods.append(
            _pod(f"busy-{name}", gpus=int(rng.integers(1, 9)), node=name, namespace="other")
        )
    for g in range(gangs):
        size = int(rng.choice([1, 2, 4, 8, 16]))
        gpus = int(rng.choice([1, 2, 4, 8]))
        labels = {"stowage.io/gang": f"g{g:03d}", "stowage.io/gang-size": str(size)}
        if g % 2 == 0:
            labels["stowage.io/topology-required"] = "rack"
        spec: dict[str, Any] = {"schedulingGates": [{"name": SCHEDULING_GATE}]}
        if g % 4 == 1:
            spec["nodeSelector"] = {"pool": "a"}
        annotations = {"stowage.io/gpu-milli": "500"} if g % 10 == 3 else {}
        for m in range(size):
            pods.append(
                _pod(
                    f"g{g:03d}-{m}",
                    gpus=1 if annotations else gpus,
                    labels=labels,
                    annotations=annotations,
                    spec=spec,
                    created=f"2026-12-01T10:{g // 60:02d}:{g % 60:02d}Z",
                )
            )
    return node_list, pods


QUEUES = 20


def queued_cluster(
    nodes: int = 1_000, *, jobs: int = 1_000, queues: int = QUEUES, seed: int = 11
) -> tuple[list[Any], list[Any], list[Any]]:
    """Nodes, pods and Queue objects: ``queues`` queues under one root sharing the cluster's
    GPUs equally as nominal quota; the running half of the GPUs skewed to the first queues
    (so they borrow, and reclaim has work to do); ``jobs`` pending jobs of 1-8 pods of 1-8
    GPUs, with priorities and runtime estimates, spread over the queues."""
    rng = np.random.default_rng(seed)
    node_list = [_node(i, rng) for i in range(nodes)]
    for node in node_list:  # taints and cordons belong to the other benchmark
        node["spec"] = {}
    gpus_total = nodes * 8
    queue_objects: list[Any] = [
        {"apiVersion": "stowage.io/v1alpha1", "kind": "Queue", "metadata": {"name": "org"}}
    ]
    for q in range(queues):
        queue_objects.append(
            {
                "apiVersion": "stowage.io/v1alpha1",
                "kind": "Queue",
                "metadata": {"name": f"q{q:02d}"},
                "spec": {
                    "parent": "org",
                    "weight": 1 + q % 3,
                    "resources": [{"name": "nvidia.com/gpu", "nominalQuota": gpus_total // queues}],
                },
            }
        )
    skew = np.array([2.0 ** -(q / 4) for q in range(queues)])
    skew /= skew.sum()
    pods: list[Any] = []
    for row in range(0, nodes, 2):  # half the nodes run one 8-GPU job each
        name = node_list[row]["metadata"]["name"]
        queue = f"q{int(rng.choice(queues, p=skew)):02d}"
        started = f"2026-12-01T0{int(rng.integers(0, 10))}:{int(rng.integers(10, 60))}:00Z"
        labels = {
            "stowage.io/gang": f"run-{row}",
            "stowage.io/gang-size": "1",
            "stowage.io/queue": queue,
            "stowage.io/runtime-estimate": f"{int(rng.integers(2, 48))}h",
        }
        pod = _pod(f"run-{row}", gpus=8, node=name, labels=labels, created=started)
        pod["status"]["startTime"] = started
        pods.append(pod)
    for j in range(jobs):
        size = int(rng.choice([1, 1, 1, 2, 4, 8]))
        gpus = int(rng.choice([1, 2, 4, 8]))
        labels = {
            "stowage.io/gang": f"job{j:04d}",
            "stowage.io/gang-size": str(size),
            "stowage.io/queue": f"q{int(rng.integers(0, queues)):02d}",
            "stowage.io/runtime-estimate": f"{int(rng.integers(10, 600))}m",
        }
        spec = {
            "schedulingGates": [{"name": SCHEDULING_GATE}],
            "priority": int(rng.choice([0, 0, 0, 10, 100])),
        }
        minute = j % 600
        for m in range(size):
            pods.append(
                _pod(
                    f"job{j:04d}-{m}",
                    gpus=gpus,
                    labels=labels,
                    spec=dict(spec),
                    created=f"2026-12-01T{10 + minute // 60:02d}:{minute % 60:02d}:00Z",
                )
            )
    return node_list, pods, queue_objects


def _time_queued(ordering: str, repeats: int) -> dict[str, float]:
    node_list, pods, queue_objects = queued_cluster()
    now = datetime(2026, 12, 1, 21, 0, tzinfo=UTC)
    config = CycleConfig(ordering=ordering)
    observe_s, cycle_s = [], []
    plan = None
    for _ in range(repeats):
        started = time.perf_counter()
        snapshot = observe(
            nodes=node_list, pods=pods, enabled={"ml"}, queues=queue_objects, now=now
        ).snapshot
        observe_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        plan = run_cycle(snapshot, config=config)
        cycle_s.append(time.perf_counter() - started)
    assert plan is not None
    return {
        "observe": statistics.median(observe_s),
        "cycle": statistics.median(cycle_s),
        "admitted": len(plan.admit),
        "waiting": len(plan.wait),
        "evicted": len(plan.evict),
        "allocate": plan.timings_s.get("allocate", 0.0),
        "reclaim": plan.timings_s.get("reclaim", 0.0),
        "preempt": plan.timings_s.get("preempt", 0.0),
    }


def _snapshot(node_list: list[Any], pods: list[Any]) -> ClusterSnapshot:
    return observe(nodes=node_list, pods=pods, enabled={"ml"}).snapshot


def _time(nodes: int, policy: str, repeats: int) -> dict[str, float]:
    node_list, pods = cluster(nodes)
    observe_s, cycle_s, pod_s = [], [], []
    admitted = 0
    config = CycleConfig(policy=policy)
    for _ in range(repeats):
        started = time.perf_counter()
        snapshot = _snapshot(node_list, pods)
        observe_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        plan = run_cycle(snapshot, config=config)
        cycle_s.append(time.perf_counter() - started)
        admitted = len(plan.admit)
        session = new_session(snapshot, config=config)
        worker = next(p for job in snapshot.jobs for p in job.pending if p.request.num_gpu == 8)
        started = time.perf_counter()
        session.policy(session.state, worker.request, session.ctx)
        pod_s.append(time.perf_counter() - started)
    return {
        "observe": statistics.median(observe_s),
        "cycle": statistics.median(cycle_s),
        "pod": statistics.median(pod_s),
        "admitted": admitted,
    }


def main() -> None:
    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(30)  # warnings and above
    )
    print(f"machine: {platform.machine()}, Python {platform.python_version()}")
    print()
    print(
        "| cluster | policy | observe median ms | cycle median ms | one 8-GPU pod ms "
        "| cycle / pod | gangs admitted of 100 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for nodes, repeats in ((1_000, 5), (10_000, 3)):
        for policy in ("stowage", "fgd"):
            t = _time(nodes, policy, repeats)
            print(
                f"| {nodes:,} nodes | {policy} | {t['observe'] * 1e3:.0f} | {t['cycle'] * 1e3:.0f} "
                f"| {t['pod'] * 1e3:.2f} | {t['cycle'] / t['pod']:.0f}x | {t['admitted']:.0f} |"
            )
    print()
    print(f"1,000 pending jobs in {QUEUES} queues on 1,000 nodes (allocate, reclaim, preempt):")
    print()
    print(
        "| ordering | observe median ms | cycle median ms | allocate ms | reclaim ms "
        "| preempt ms | admitted | waiting | evictions |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for ordering in ("priority", "stowage"):
        t = _time_queued(ordering, 3)
        print(
            f"| {ordering} | {t['observe'] * 1e3:.0f} | {t['cycle'] * 1e3:.0f} "
            f"| {t['allocate'] * 1e3:.0f} | {t['reclaim'] * 1e3:.0f} | {t['preempt'] * 1e3:.0f} "
            f"| {t['admitted']:.0f} | {t['waiting']:.0f} | {t['evicted']:.0f} |"
        )


if __name__ == "__main__":
    main()

"""The FGD paper's "fill" experiment on the Alibaba openb traces.

Inflate the pod list to ``tune`` x cluster GPU capacity with seeded random copies of its pods
(until the next copy would exceed the target), shuffle it (seeded), place pods one at a time
with a policy; a pod that fits nowhere is skipped and counted; pods never leave. At every 1%
of arrived GPU request (0 ... 130% of capacity) record the GPU allocation ratio and the
fragmented GPU share.

Each arrival is a job of one placed by the scheduling cycle's ``allocate`` step
(:func:`~optimizer.planner.actions.place_job`) on one long-lived session, so the benchmark
measures the code the controller runs (filters included: the trace's nodes have no taints or
labels, so they pass every node).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from optimizer.planner.actions import place_job
from optimizer.planner.cluster import ClusterState, NodeSpec, PodRequest
from optimizer.planner.cycle import CycleConfig, new_session
from optimizer.planner.objects import NodeInfo, PodInfo
from optimizer.planner.plan import Admit, ClusterSnapshot, Job
from optimizer.planner.policies import PlanContext
from optimizer.planner.snapshot import Snapshot

PERCENT_POINTS: Final = 131  # 0 ... 130


def load_nodes(path: Path) -> list[NodeSpec]:
    """Nodes from an openb node list (``sn,cpu_milli,memory_mib,gpu,model``)."""
    with path.open() as handle:
        return [
            NodeSpec(
                name=row["sn"],
                cpu_milli=int(row["cpu_milli"]),
                memory_mib=int(row["memory_mib"]),
                gpus=int(row["gpu"]),
                model=row["model"] or "",
            )
            for row in csv.DictReader(handle)
        ]


def load_pods(path: Path) -> list[PodRequest]:
    """Pods from an openb pod list (``name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,…]``;
    the multigpu traces have no ``gpu_spec`` column: any model)."""
    with path.open() as handle:
        return [
            PodRequest(
                name=row["name"],
                cpu_milli=int(row["cpu_milli"]),
                memory_mib=int(row["memory_mib"]),
                num_gpu=int(row["num_gpu"]),
                gpu_milli=int(row["gpu_milli"]) if int(row["num_gpu"]) else 0,
                gpu_models=frozenset(m for m in (row.get("gpu_spec") or "").split("|") if m),
            )
            for row in csv.DictReader(handle)
        ]


def inflate(
    pods: Sequence[PodRequest], *, target_milli: float, rng: np.random.Generator
) -> list[PodRequest]:
    """The pods plus random copies until the next copy would push the GPU request past
    ``target_milli``; then shuffled."""
    result = list(pods)
    total = sum(p.gpu_request_milli for p in pods)
    while True:
        copy = pods[int(rng.integers(len(pods)))]
        if total + copy.gpu_request_milli > target_milli:
            break
        result.append(copy)
        total += copy.gpu_request_milli
    order = rng.permutation(len(result))
    return [result[i] for i in order]


@dataclass(frozen=True)
class FillResult:
    """One fill run (the ``--json`` object)."""

    policy: str
    seed: int
    tune: float
    alloc_pct: list[float]
    frag_pct: list[float]
    failed_pods: int
    pods: int
    elapsed_s: float


def fill(
    nodes: Sequence[NodeSpec],
    pods: Sequence[PodRequest],
    *,
    policy: str,
    tune: float = 1.3,
    seed: int = 42,
) -> FillResult:
    """Run the fill experiment once."""
    started = time.perf_counter()
    empty = ClusterState.from_nodes(nodes)
    snapshot = ClusterSnapshot(
        nodes=tuple(NodeInfo(name) for name in empty.names), base=Snapshot(state=empty)
    )
    rng = np.random.default_rng(seed)
    capacity = empty.total_gpu_milli
    arrivals = inflate(pods, target_milli=tune * capacity, rng=rng)
    ctx = PlanContext.for_workload(pods, rng=np.random.default_rng(seed + 1_000_003))
    session = new_session(snapshot, config=CycleConfig(policy=policy), ctx=ctx)
    state = session.state
    _, node_frag = ctx.fragmentation(state)  # FGD's F, reported for every policy
    alloc: list[float] = []
    frag: list[float] = []
    arrived = 0
    failed = 0
    for number, pod in enumerate(arrivals):
        info = PodInfo("sim", pod.name, str(number), pod)
        job = Job("sim", f"{pod.name}-{number}", size=1, pending=(info,), managed=False)
        if not isinstance(place_job(session, job), Admit):
            failed += 1
        arrived += pod.gpu_request_milli
        while len(alloc) < PERCENT_POINTS and arrived * 100 >= len(alloc) * capacity:
            alloc.append(round(100 * state.allocated_gpu_milli / capacity, 2))
            frag.append(round(100 * float(node_frag.sum()) / capacity, 2))
    while len(alloc) < PERCENT_POINTS:
        alloc.append(alloc[-1] if alloc else 0.0)
        frag.append(frag[-1] if frag else 0.0)
    return FillResult(
        policy=policy,
        seed=seed,
        tune=tune,
        alloc_pct=alloc,
        frag_pct=frag,
        failed_pods=failed,
        pods=len(arrivals),
        elapsed_s=round(time.perf_counter() - started, 3),
    )

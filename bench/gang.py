"""One gang decision (16 pods x 8 GPUs, rack-constrained) on synthetic 1,000- and 10,000-node
clusters, against placing one 8-GPU pod on the same cluster (the baseline in the same run).

Run: ``.venv/bin/python -m bench.gang``. Racks of 20 nodes x 8 GPUs; a seeded random third of
the nodes run 1-8 GPU pods, so few racks can take the gang. Every decision starts from a fresh
``PlanContext``, as each controller cycle does, so no memo or cached F carries over.
"""

from __future__ import annotations

import platform
import statistics
import time

import numpy as np

from optimizer.planner.cluster import FULL, ClusterState, NodeSpec, PodRequest
from optimizer.planner.fragmentation import typical_shapes
from optimizer.planner.gangs import GangRequest, place_gang
from optimizer.planner.policies import PlanContext, policy_or_raise

WORKER = PodRequest("worker", 8_000, 16_384, 8, FULL)
RACK = 20


def _cluster(nodes: int, seed: int) -> tuple[ClusterState, dict[str, list[str]]]:
    specs = [
        NodeSpec(f"rack{i // RACK:04d}-node{i % RACK:02d}", 96_000, 786_432, 8, "H100")
        for i in range(nodes)
    ]
    state = ClusterState.from_nodes(specs)
    rng = np.random.default_rng(seed)
    for row in rng.choice(nodes, size=nodes // 3, replace=False):
        gpus = int(rng.integers(1, 9))
        state.allocate(int(row), tuple(range(gpus)), PodRequest("busy", 1_000, 1_024, gpus, FULL))
    return state, {"rack": [name.split("-")[0] for name in state.names]}


def _time(nodes: int, policy: str, repeats: int) -> tuple[float, float, bool]:
    state, domains = _cluster(nodes, seed=7)
    choose = policy_or_raise(policy)
    gang = GangRequest("train", WORKER, size=16, topology_level="rack")
    gang_times, pod_times = [], []
    admitted = False
    for _ in range(repeats):
        ctx = PlanContext(rng=np.random.default_rng(0), shapes=typical_shapes([WORKER]))
        started = time.perf_counter()
        decision = place_gang(state, gang, policy=choose, ctx=ctx, domains=domains)
        gang_times.append(time.perf_counter() - started)
        admitted = decision.admitted
        ctx = PlanContext(rng=np.random.default_rng(0), shapes=typical_shapes([WORKER]))
        started = time.perf_counter()
        choose(state, WORKER, ctx)
        pod_times.append(time.perf_counter() - started)
    return statistics.median(gang_times), statistics.median(pod_times), admitted


def main() -> None:
    print(f"machine: {platform.machine()}, Python {platform.python_version()}")
    print()
    print(
        "| cluster | policy | gang decision median ms | one 8-GPU pod median ms | ratio "
        "| admitted |"
    )
    print("|---|---|---:|---:|---:|---|")
    for nodes, repeats in ((1_000, 7), (10_000, 3)):
        for policy in ("stowage", "fgd", "bestfit"):
            gang, pod, admitted = _time(nodes, policy, repeats)
            print(
                f"| {nodes:,} nodes / {nodes * 8:,} GPUs | {policy} | {gang * 1e3:.1f} | "
                f"{pod * 1e3:.2f} | {gang / pod:.0f}x | {admitted} |"
            )


if __name__ == "__main__":
    main()

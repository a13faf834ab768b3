"""Where the unallocated GPU capacity is at the end of a fill run (130% arrived).

Run: ``.venv/bin/python -m bench.fill_waste [--trace default] [--seed 42]
[--policies fgd,stowage]``.

For each policy it replays the fill experiment once and splits the GPU capacity left free at
the end into: GPUs on nodes whose free CPU is below the smallest GPU pod's CPU request
(stranded by CPU), whole free GPUs elsewhere, and the free part of partly used GPUs, binned
by size — the remainder next to an 810 milli-GPU share is 190, which no pod but the rare
shares of 190 or less can ever use. It shows how much of the gap to 100% any placement could
still win back.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Final

import numpy as np

from bench.fill import TRACES
from optimizer.planner.cluster import FULL, ClusterState, PodRequest
from optimizer.planner.policies import PlanContext, policy_or_raise
from optimizer.simulate.fill import inflate, load_nodes, load_pods

BINS: Final = ((1, 50), (50, 100), (100, 150), (150, 200), (200, 500), (500, 1000))


def _final_state(nodes: Path, pods: list[PodRequest], policy: str, seed: int) -> ClusterState:
    """The same replay as :func:`optimizer.simulate.fill.fill`, keeping the final state."""
    state = ClusterState.from_nodes(load_nodes(nodes))
    rng = np.random.default_rng(seed)
    arrivals = inflate(pods, target_milli=1.3 * state.total_gpu_milli, rng=rng)
    ctx = PlanContext.for_workload(pods, rng=np.random.default_rng(seed + 1_000_003))
    choose = policy_or_raise(policy)
    for pod in arrivals:
        placement = choose(state, pod, ctx)
        if placement is not None:
            state.allocate(placement.node, placement.gpus, pod)
            ctx.note_placed(state, placement.node)
    return state


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trace", default="default")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--policies", default="fgd,stowage")
    args = parser.parse_args()
    pods = load_pods(TRACES / f"csv/openb_pod_list_{args.trace}.csv")
    min_cpu = min(p.cpu_milli for p in pods if p.num_gpu)
    header = ["policy", "allocated", "free", "CPU-stranded", "whole GPUs"]
    header += [f"partial {low}-{high - 1}" for low, high in BINS]
    print(f"trace {args.trace}, seed {args.seed}, tune 1.3; % of cluster GPU capacity")
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for policy in args.policies.split(","):
        state = _final_state(TRACES / "csv/openb_node_list_gpu_node.csv", pods, policy, args.seed)
        capacity = state.total_gpu_milli
        free = np.where(state.gpu_present, state.gpu_free, 0)
        starved = state.cpu_free < min_cpu
        open_free = free[~starved]
        partial = open_free[(open_free > 0) & (open_free < FULL)]
        binned: Counter[int] = Counter()
        for low, high in BINS:
            binned[low] = int(partial[(partial >= low) & (partial < high)].sum())
        cells = [
            policy,
            100 * state.allocated_gpu_milli / capacity,
            100 * free.sum() / capacity,
            100 * free[starved].sum() / capacity,
            100 * (open_free == FULL).sum() * FULL / capacity,
            *(100 * binned[low] / capacity for low, _ in BINS),
        ]
        print("| " + " | ".join(c if isinstance(c, str) else f"{c:.2f}" for c in cells) + " |")


if __name__ == "__main__":
    main()

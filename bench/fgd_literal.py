"""FGD written out literally, one node and one GPU at a time, against the planner's vectorised
``fgd``: the same decisions, pod by pod, on a cluster where CPU binds.

Run: ``.venv/bin/python -m bench.fgd_literal [--workload gen-cpu250] [--every 10] [--seeds 42-44]``

The literal version follows the FGD paper's simulator as docs/architecture.md describes it:
per typical shape, a node that cannot host it (CPU, GPU count, model) counts all its free
milli-GPU, one that can counts its GPUs individually too small; a CPU-only shape counts all
free milli-GPU; the score is the integer ``int(100 * sigmoid((F_before - F_after) / 1000))``;
a share tries every GPU with room and keeps the first with the highest integer score; the
highest score wins and ties go to the lexicographically smallest node name. Feasibility is
the planner's own filter (``ClusterState.feasible``), so only the scoring is compared.

``--gpu-choice float`` makes the literal version pick a share's GPU as the planner does (the
lowest F after, then the lowest index) instead of the simulator's first-highest integer score.
The run is on every ``--every``-th node of the openb GPU nodes (the fill experiment's arrivals
scale with the capacity), so a pure-Python FGD finishes in seconds.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.workloads import TRACES, pods
from optimizer.planner.cluster import FULL, ClusterState, PodRequest
from optimizer.planner.fragmentation import Shape, accepted_models
from optimizer.planner.policies import POLICIES, Placement, PlanContext, register
from optimizer.simulate.fill import fill, load_nodes


def node_frag(
    cpu: int, gpus: Sequence[int], model: int, shapes: Sequence[Shape], model_ok: np.ndarray
) -> float:
    """F of one node, shape by shape."""
    total = sum(gpus)
    frag = 0.0
    for index, shape in enumerate(shapes):
        if shape.num_gpu == 0 or not model_ok[index][model]:
            frag += shape.weight * total
            continue
        need = shape.gpu_milli if shape.num_gpu == 1 and shape.gpu_milli < FULL else FULL
        hosts = sum(1 for g in gpus if g >= need) >= shape.num_gpu and cpu >= shape.cpu_milli
        frag += shape.weight * (sum(g for g in gpus if g < need) if hosts else total)
    return frag


def _score(before: float, after: float) -> int:
    return int(100.0 / (1.0 + math.exp(-(before - after) / 1000.0)))


@dataclass(frozen=True)
class LiteralFgd:
    """The literal FGD as a planner policy."""

    float_gpu_choice: bool = False

    def __call__(self, state: ClusterState, pod: PodRequest, ctx: PlanContext) -> Placement | None:
        shapes = list(ctx.shapes)
        model_ok = accepted_models(shapes, state.models)
        best: tuple[int, int, int | None] | None = None  # (score, row, gpu)
        # by name, keeping the first of the highest: ties go to the smallest name
        for row in sorted(np.flatnonzero(state.feasible(pod)), key=lambda r: state.names[r]):
            cpu, model = int(state.cpu_free[row]), int(state.model_id[row])
            gpus = [int(g) for g in state.gpu_free[row]]
            before = node_frag(cpu, gpus, model, shapes, model_ok)
            gpu: int | None = None
            if pod.is_share:
                score, kept_after = -1, math.inf
                for slot, left in enumerate(gpus):
                    if left < pod.gpu_milli:
                        continue
                    trial = list(gpus)
                    trial[slot] -= pod.gpu_milli
                    after = node_frag(cpu - pod.cpu_milli, trial, model, shapes, model_ok)
                    better = (
                        after < kept_after
                        if self.float_gpu_choice
                        else _score(before, after) > score
                    )
                    if gpu is None or better:
                        score, kept_after, gpu = _score(before, after), after, slot
            else:
                trial = list(gpus)
                taken = 0
                for slot, left in enumerate(trial):
                    if taken < pod.num_gpu and left == FULL:
                        trial[slot], taken = 0, taken + 1
                after = node_frag(cpu - pod.cpu_milli, trial, model, shapes, model_ok)
                score = _score(before, after)
            if best is None or score > best[0]:
                best = (score, int(row), gpu)
        if best is None:
            return None
        _, chosen, picked = best
        return Placement(
            chosen, (picked,) if picked is not None else ctx.pick_gpus(state, chosen, pod)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="gen-cpu250")
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--seeds", default="42-44")
    parser.add_argument("--gpu-choice", choices=("integer", "float"), default="integer")
    args = parser.parse_args()
    name = f"fgd-literal-{args.gpu_choice}"
    if name not in POLICIES:
        register(name, LiteralFgd(float_gpu_choice=args.gpu_choice == "float"))
    nodes = load_nodes(TRACES / "openb_node_list_gpu_node.csv")[:: args.every]
    workload = pods(args.workload)
    first, _, last = args.seeds.partition("-")
    for seed in range(int(first), int(last or first) + 1):
        ours = fill(nodes, workload, policy="fgd", seed=seed)
        literal = fill(nodes, workload, policy=name, seed=seed)
        print(
            f"{args.workload} seed {seed}, {len(nodes)} nodes: fgd {ours.alloc_pct[-1]:.2f}% "
            f"({ours.elapsed_s:.1f} s), {name} {literal.alloc_pct[-1]:.2f}% "
            f"({literal.elapsed_s:.1f} s); curves equal: {ours.alloc_pct == literal.alloc_pct}"
        )


if __name__ == "__main__":
    main()

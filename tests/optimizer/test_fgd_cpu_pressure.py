"""FGD where CPU binds, on hand-built clusters whose answer is worked out below from the
paper's definition, and the vectorised ``fgd`` against FGD written out one node and one GPU
at a time (bench/fgd_literal.py) on random clusters under CPU pressure.

The workload in the hand-built cases has two typical shapes, half each: one whole GPU with
8 cores (``G``) and a CPU-only pod of 4 cores (``C``). With ``t`` the node's free milli-GPU:
``G`` adds 0 to F while the node has 8 free cores and a free GPU, else ``0.5 t``; ``C`` adds
``0.5 t`` always (it can use none of the GPUs). The score is ``int(100 sigmoid(dF / 1000))``
with ``dF = F_before - F_after``; ties go to the first node.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.fgd_literal import LiteralFgd
from optimizer.planner.cluster import FULL, ClusterState, NodeSpec, PodRequest
from optimizer.planner.fragmentation import Shape
from optimizer.planner.policies import PlanContext, policy_or_raise

WORKLOAD = [
    Shape(cpu_milli=8_000, num_gpu=1, gpu_milli=FULL, gpu_models=frozenset(), weight=0.5),
    Shape(cpu_milli=4_000, num_gpu=0, gpu_milli=0, gpu_models=frozenset(), weight=0.5),
]


def _score(d_frag: float) -> int:
    return int(100 / (1 + math.exp(-d_frag / 1000)))


def _cluster(cpu_free: list[int], gpus_free: list[int]) -> ClusterState:
    """Nodes of 64 cores and 8 GPUs, with ``cpu_free`` cores and ``gpus_free`` whole GPUs."""
    state = ClusterState.from_nodes(
        [NodeSpec(f"n{i}", 64_000, 262_144, 8, "A100") for i in range(len(cpu_free))]
    )
    for node, (cpu, free) in enumerate(zip(cpu_free, gpus_free, strict=True)):
        state.allocate(
            node,
            tuple(range(8 - free)),
            PodRequest("used", 64_000 - cpu, 0, 8 - free, FULL if free < 8 else 0),
        )
    return state


def _pod(cpu: int, gpus: int) -> PodRequest:
    return PodRequest("p", cpu, 1_024, gpus, FULL if gpus else 0)


CASES = [
    # (name, cores free per node, whole GPUs free per node, pod, node chosen, why)
    (
        "cpu-only pod keeps the cores free GPUs need",
        [12_000, 30_000],
        [4, 4],
        _pod(6_000, 0),
        # n0: F 0 + 2000 -> 2000 + 2000 (6 cores left < 8: G no longer fits), dF -2000 -> 11;
        # n1: 24 cores left, G still fits: dF 0 -> 50.
        1,
        (_score(-2_000), _score(0)),
    ),
    (
        "gpu pod does not strand the node's other GPUs",
        [12_000, 40_000],
        [4, 4],
        _pod(8_000, 1),
        # n0: after, 4 cores and 3 GPUs: G cannot fit: F 2000 -> 1500 + 1500, dF -1000 -> 26;
        # n1: after, 32 cores: F 2000 -> 1500, dF +500 -> 62.
        1,
        (_score(-1_000), _score(500)),
    ),
    (
        "nothing strands: the first node",
        [30_000, 40_000],
        [4, 4],
        _pod(8_000, 1),
        # both: F 2000 -> 1500 (G still fits), dF +500 -> 62 on each: the tie goes to n0.
        0,
        (_score(500), _score(500)),
    ),
    (
        "a node whose GPUs are already stranded by CPU is where a CPU-only pod costs nothing",
        [6_000, 30_000],
        [4, 4],
        _pod(4_000, 0),
        # n0: 6 cores < 8: G already cannot fit: F 2000 + 2000 before and after, dF 0 -> 50;
        # n1: 26 cores left, G fits: dF 0 -> 50 too: the tie goes to n0, the stranded one.
        0,
        (_score(0), _score(0)),
    ),
    (
        "a full node takes the CPU-only pod first",
        [10_000, 60_000],
        [0, 8],
        _pod(8_000, 0),
        # n0 has no free GPU: F 0 before and after -> 50; n1: 52 cores left, G fits, dF 0 -> 50:
        # the tie goes to n0, where the cores strand no GPU.
        0,
        (_score(0), _score(0)),
    ),
]


@pytest.mark.parametrize(
    ("cpu_free", "gpus_free", "pod", "chosen", "scores"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_fgd_under_cpu_pressure(
    cpu_free: list[int],
    gpus_free: list[int],
    pod: PodRequest,
    chosen: int,
    scores: tuple[int, int],
) -> None:
    state = _cluster(cpu_free, gpus_free)
    ctx = PlanContext(rng=np.random.default_rng(0), shapes=WORKLOAD)
    placement = policy_or_raise("fgd")(state, pod, ctx)
    assert placement is not None
    assert placement.node == chosen
    # the worked-out scores order the nodes as the placement says
    assert scores[chosen] >= scores[1 - chosen]
    assert scores[0] != scores[1] or chosen == 0


@settings(max_examples=60, deadline=None)
@given(
    nodes=st.lists(
        st.tuples(
            st.integers(0, 64),
            st.lists(st.sampled_from([0, 150, 500, 1000]), min_size=4, max_size=4),
        ),
        min_size=2,
        max_size=6,
    ),
    pod=st.tuples(
        st.sampled_from([0, 2, 4, 8, 16]),
        st.sampled_from([0, 1, 2]),
        st.sampled_from([250, 500, FULL]),
    ),
)
def test_the_vectorised_fgd_decides_as_fgd_written_out(
    nodes: list[tuple[int, list[int]]], pod: tuple[int, int, int]
) -> None:
    """Random CPU-tight nodes and pods: the same node (and a share's GPU) as the literal FGD
    when that one picks a share's GPU the same way (lowest F after, then lowest index)."""
    state = ClusterState.from_nodes(
        [NodeSpec(f"n{i}", 64_000, 262_144, 4, "A100") for i in range(len(nodes))]
    )
    for row, (cores, gpus) in enumerate(nodes):
        state.cpu_free[row] = cores * 1_000
        state.gpu_free[row] = gpus
    cores, count, milli = pod
    request = PodRequest(
        "p", cores * 1_000, 0, count, milli if count == 1 else (FULL if count else 0)
    )
    shapes = [
        Shape(8_000, 1, FULL, frozenset(), 0.3),
        Shape(4_000, 1, 500, frozenset(), 0.3),
        Shape(2_000, 0, 0, frozenset(), 0.2),
        Shape(16_000, 2, FULL, frozenset(), 0.2),
    ]
    vectorised = policy_or_raise("fgd")(
        state, request, PlanContext(np.random.default_rng(0), shapes)
    )
    literal = LiteralFgd(float_gpu_choice=True)(
        state, request, PlanContext(np.random.default_rng(0), shapes)
    )
    assert (vectorised is None) == (literal is None)
    if vectorised is not None and literal is not None:
        assert vectorised.node == literal.node
        assert vectorised.gpus == literal.gpus or not request.is_share

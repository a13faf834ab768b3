"""Single-pod placement policies and the fill simulator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from optimizer.cli.user import app
from optimizer.planner.cluster import FULL, ClusterState, NodeSpec, PodRequest
from optimizer.planner.fragmentation import (
    FragmentationModel,
    Shape,
    typical_shapes,
    unique_rows,
)
from optimizer.planner.policies import POLICIES, PlanContext, policy_or_raise
from optimizer.planner.saturation import SaturationModel
from optimizer.simulate.fill import PERCENT_POINTS, fill, inflate, load_nodes, load_pods
from tests.conftest import shared_data_path

NODES = [
    NodeSpec("n0", 32_000, 65_536, 2, "T4"),
    NodeSpec("n1", 96_000, 262_144, 8, "G2"),
    NodeSpec("n2", 16_000, 65_536, 2, "P100"),
    NodeSpec("n3", 64_000, 131_072, 4, "V100"),
]


def _pod(
    cpu: int = 4_000, gpus: int = 1, milli: int = 500, models: frozenset[str] = frozenset()
) -> PodRequest:
    return PodRequest("p", cpu, 1_024, gpus, milli if gpus else 0, models)


pod_strategy = st.builds(
    _pod,
    cpu=st.sampled_from([0, 2_000, 8_000, 24_000]),
    gpus=st.sampled_from([0, 1, 1, 1, 2, 4, 8]),
    milli=st.sampled_from([100, 250, 500, 1000]),
    models=st.sampled_from([frozenset(), frozenset({"G2"}), frozenset({"T4", "V100"})]),
).map(
    lambda p: (
        p
        if p.num_gpu <= 1
        else PodRequest(p.name, p.cpu_milli, p.memory_mib, p.num_gpu, FULL, p.gpu_models)
    )
)


@settings(max_examples=40, deadline=None)
@given(
    pods=st.lists(pod_strategy, min_size=1, max_size=60), policy=st.sampled_from(sorted(POLICIES))
)
def test_no_policy_ever_over_allocates(pods: list[PodRequest], policy: str) -> None:
    state = ClusterState.from_nodes(NODES)
    ctx = PlanContext(rng=np.random.default_rng(1), shapes=typical_shapes(pods))
    choose = policy_or_raise(policy)
    for pod in pods:
        feasible = state.feasible(pod)
        placement = choose(state, pod, ctx)
        if placement is None:
            assert not feasible.any()
            continue
        assert feasible[placement.node]
        assert len(placement.gpus) == pod.num_gpu
        if pod.num_gpu > 1:
            assert all(state.gpu_free[placement.node, g] == FULL for g in placement.gpus)
        state.allocate(placement.node, placement.gpus, pod)
        ctx.note_placed(state, placement.node)
        if pod.gpu_models and pod.num_gpu:
            assert state.models[state.model_id[placement.node]] in pod.gpu_models
    assert (state.gpu_free >= 0).all()
    assert (state.gpu_free <= FULL).all()
    assert (state.gpu_free[~state.gpu_present] == 0).all()
    assert (state.cpu_free >= 0).all()
    assert (state.memory_free >= 0).all()


def test_fragmentation_by_hand() -> None:
    shapes = [
        Shape(cpu_milli=1_000, num_gpu=1, gpu_milli=500, gpu_models=frozenset(), weight=0.5),
        Shape(cpu_milli=1_000, num_gpu=2, gpu_milli=FULL, gpu_models=frozenset(), weight=0.3),
        Shape(cpu_milli=1_000, num_gpu=0, gpu_milli=0, gpu_models=frozenset(), weight=0.2),
    ]
    model = FragmentationModel(shapes, ["T4"])
    gpu_free = np.array([[1000, 300], [1000, 1000], [200, 0]])
    frag = model.frag(np.array([8_000, 8_000, 500]), gpu_free, np.array([0, 0, 0]))
    # node 0: share fits (1000); the 300 is too small -> 0.5*300; 2 whole GPUs impossible ->
    # 0.3*1300; CPU-only -> 0.2*1300.
    assert frag[0] == pytest.approx(0.5 * 300 + 0.3 * 1300 + 0.2 * 1300)
    assert frag[1] == pytest.approx(0.2 * 2000)  # everything fits
    assert frag[2] == pytest.approx(200)  # too little CPU for any shape: all free GPU counts


def test_rollout_shapes_keep_every_multi_gpu_shape() -> None:
    pods = [_pod(4_000, 1, 500)] * 30 + [_pod(8_000, 1, FULL)] * 10 + [_pod(64_000, 8, FULL)]
    assert [s.num_gpu for s in typical_shapes(pods)] == [1, 1]  # 40 of 41 cover 95%
    kept = typical_shapes(pods, every_multi_gpu=True)
    assert [(s.num_gpu, s.weight) for s in kept] == [(1, 30 / 41), (1, 10 / 41), (8, 1 / 41)]


def test_saturation_by_hand() -> None:
    """With one shape every rollout is the same: pods fit until CPU or GPUs run out."""
    share = [Shape(3_000, 1, 810, frozenset(), 1.0)]
    whole = [Shape(11_000, 1, FULL, frozenset(), 1.0)]
    cpu = np.array([12_000, 3_000, 64_000])
    gpu = np.array([[1000, 1000, 1000], [1000, 1000, 1000], [100, 0, 0]])
    model = np.zeros(3, dtype=np.int64)
    assert SaturationModel(share, ["T4"]).waste(cpu, gpu, model).tolist() == [570, 2190, 100]
    assert SaturationModel(whole, ["T4"]).waste(cpu, gpu, model).tolist() == [2000, 3000, 100]
    # a model the shape does not accept: nothing ever fits
    picky = [Shape(3_000, 1, 810, frozenset({"A100"}), 1.0)]
    assert SaturationModel(picky, ["T4"]).waste(cpu, gpu, model).tolist() == [3000, 3000, 100]


def test_saturation_rolls_multi_gpu_pods_first() -> None:
    """An empty node is valued as if the 4-GPU pod that fits it comes before the shares
    that would strand 190 of every GPU; without room for it, the shares fill the node."""
    shapes = [Shape(1_000, 4, FULL, frozenset(), 0.5), Shape(1_000, 1, 810, frozenset(), 0.5)]
    saturation = SaturationModel(shapes, ["T4"])
    cpu = np.array([64_000, 64_000])
    gpu = np.array([[1000] * 4, [1000, 1000, 1000, 0]])
    assert saturation.waste(cpu, gpu, np.zeros(2, dtype=np.int64)).tolist() == [0, 570]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 3_000, 12_000]),
            st.lists(st.sampled_from([0, 190, 470, 1000]), min_size=4, max_size=4),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_saturation_is_per_state(rows: list[tuple[int, list[int]]]) -> None:
    """An estimate depends on the state alone: not on the batch, its order, the GPU order,
    the memo, or which model instance (same seed) computes it."""
    shapes = typical_shapes([_pod(3_000, 1, 470), _pod(11_000, 1, FULL), _pod(8_000, 0)] * 3)
    cpu = np.array([c for c, _ in rows])
    gpu = np.array([g for _, g in rows])
    model = np.zeros(len(rows), dtype=np.int64)
    batch = SaturationModel(shapes, ["T4"]).waste(cpu, gpu, model)
    fresh = SaturationModel(shapes, ["T4"])
    one_by_one = [
        fresh.waste(cpu[i : i + 1], gpu[i : i + 1, ::-1], model[:1])[0] for i in range(len(rows))
    ]
    assert batch.tolist() == one_by_one
    assert fresh.waste(cpu, gpu, model).tolist() == batch.tolist()
    assert ((batch >= 0) & (batch <= gpu.sum(axis=1))).all()


def test_stowage_keeps_cpu_for_the_gpus() -> None:
    """A CPU-only pod goes where its cores do not strand GPUs; FGD cannot tell the nodes
    apart (one GPU pod still fits on both) and takes the first."""
    state = ClusterState.from_nodes(
        [NodeSpec("a", 44_000, 65_536, 4, "T4"), NodeSpec("b", 100_000, 65_536, 4, "T4")]
    )
    workload = [_pod(cpu=11_000, gpus=1, milli=FULL)] * 9 + [_pod(cpu=10_000, gpus=0)]
    chosen = {
        name: policy_or_raise(name)(
            state,
            _pod(cpu=10_000, gpus=0),
            PlanContext(rng=np.random.default_rng(0), shapes=typical_shapes(workload)),
        )
        for name in ("fgd", "stowage")
    }
    assert {name: p.node if p else None for name, p in chosen.items()} == {
        "fgd": 0,
        "stowage": 1,
    }


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=3, max_size=3), min_size=1, max_size=40))
def test_unique_rows_agrees_with_numpy(rows: list[list[int]]) -> None:
    keys = np.array(rows, dtype=np.int64)
    unique, inverse = unique_rows(keys)
    expected, expected_inverse = np.unique(keys, axis=0, return_inverse=True)
    assert np.array_equal(unique, expected)
    assert np.array_equal(inverse, expected_inverse.reshape(-1))
    assert np.array_equal(unique[inverse], keys)


def test_typical_shapes_cover_95_percent() -> None:
    pods = [_pod(milli=500)] * 90 + [_pod(milli=250)] * 6 + [_pod(milli=100)] * 4
    shapes = typical_shapes(pods)
    assert [s.gpu_milli for s in shapes] == [500, 250]
    assert sum(s.weight for s in shapes) == pytest.approx(1.0)


def test_fgd_keeps_whole_gpus_whole() -> None:
    """A small share goes where a GPU is already broken, not onto a whole one."""
    state = ClusterState.from_nodes(NODES)
    state.allocate(3, (0,), _pod(milli=500))  # V100 node: GPU 0 half used
    pods = [_pod(milli=500)] * 5 + [_pod(gpus=1, milli=FULL)] * 5
    ctx = PlanContext(rng=np.random.default_rng(0), shapes=typical_shapes(pods))
    placement = policy_or_raise("fgd")(state, _pod(milli=500), ctx)
    assert placement is not None
    assert (placement.node, placement.gpus) == (3, (0,))


def test_unknown_policy_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: bestfit"):
        policy_or_raise("magic")


def test_inflation_reaches_the_target_and_is_seeded() -> None:
    pods = [_pod(milli=500), _pod(gpus=0), _pod(gpus=2, milli=FULL)]
    first = inflate(pods, target_milli=20_000, rng=np.random.default_rng(5))
    again = inflate(pods, target_milli=20_000, rng=np.random.default_rng(5))
    assert [p.gpu_request_milli for p in first] == [p.gpu_request_milli for p in again]
    total = sum(p.gpu_request_milli for p in first)
    assert 20_000 - 2_000 < total <= 20_000


def _trace() -> tuple[Path, Path]:
    folder = shared_data_path("traces", "alibaba-gpu-2023", "csv")
    return folder / "openb_node_list_gpu_node.csv", folder / "openb_pod_list_default.csv"


def test_fill_on_the_default_trace_is_deterministic_and_monotone() -> None:
    nodes_csv, pods_csv = _trace()
    nodes, pods = load_nodes(nodes_csv), load_pods(pods_csv)
    assert (len(nodes), sum(n.gpus for n in nodes), len(pods)) == (1213, 6212, 8152)
    run = fill(nodes, pods, policy="bestfit", seed=42)
    assert run == fill(nodes, pods, policy="bestfit", seed=42).__class__(
        **{**run.__dict__, "elapsed_s": run.elapsed_s}
    )
    again = fill(nodes, pods, policy="bestfit", seed=42)
    assert (again.alloc_pct, again.failed_pods) == (run.alloc_pct, run.failed_pods)
    assert len(run.alloc_pct) == len(run.frag_pct) == PERCENT_POINTS
    assert all(b >= a for a, b in zip(run.alloc_pct, run.alloc_pct[1:], strict=False))
    assert run.alloc_pct[50] == pytest.approx(50, abs=0.5)  # nothing fails at half load
    assert run.failed_pods > 0  # 130% cannot all fit


def test_simulate_fill_cli_json_lines() -> None:
    nodes_csv, pods_csv = _trace()
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "fill",
            "--nodes",
            str(nodes_csv),
            "--pods",
            str(pods_csv),
            "--policy",
            "random",
            "--seeds",
            "42-43",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["seed"] for line in lines] == [42, 43]
    for line in lines:
        assert {
            "policy",
            "seed",
            "tune",
            "alloc_pct",
            "frag_pct",
            "failed_pods",
            "elapsed_s",
        } <= line.keys()
        assert len(line["alloc_pct"]) == len(line["frag_pct"]) == 131


def test_pod_lists_without_a_gpu_spec_column(tmp_path: Path) -> None:
    path = tmp_path / "pods.csv"
    path.write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np1,4000,1024,2,1000\np2,2000,512,0,0\n"
    )
    pods = load_pods(path)
    assert [(p.num_gpu, p.gpu_milli, p.gpu_models) for p in pods] == [
        (2, 1000, frozenset()),
        (0, 0, frozenset()),
    ]


def test_gpu_spec_lists_models(tmp_path: Path) -> None:
    path = tmp_path / "pods.csv"
    path.write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\np1,4000,1024,1,500,V100M16|V100M32\n"
    )
    assert load_pods(path)[0].gpu_models == frozenset({"V100M16", "V100M32"})


def test_a_stateful_plugin_keeps_its_state_in_the_context_and_gpus_come_from_the_picker() -> None:
    """A new score plugin needs no field on PlanContext (ctx.memo), and the GPU picker is an
    extension point of its own."""
    from optimizer.planner.policies import Placement, PlanContext

    calls: list[int] = []

    def round_robin(state: ClusterState, pod: PodRequest, ctx: PlanContext) -> Placement | None:
        turn = ctx.memo("round-robin", lambda: [0])  # per-run state, built once
        candidates = np.flatnonzero(state.feasible(pod))
        if len(candidates) == 0:
            return None
        node = int(candidates[turn[0] % len(candidates)])
        turn[0] += 1
        calls.append(node)
        return Placement(node, ctx.pick_gpus(state, node, pod))

    def highest(state: ClusterState, node: int, pod: PodRequest) -> tuple[int, ...]:
        free = np.flatnonzero(state.gpu_free[node] == 1000)
        return tuple(int(g) for g in free[-pod.num_gpu :])

    state = ClusterState.from_nodes([NodeSpec(n, 64_000, 65_536, 8, "H100") for n in "abc"])
    ctx = PlanContext(rng=np.random.default_rng(0), pick_gpus=highest)
    restricted = ctx.restricted(np.arange(3), rng=np.random.default_rng(1))
    pod = PodRequest("p", 1_000, 1_024, 2, 1000)
    first = round_robin(state, pod, ctx)
    second = round_robin(state, pod, restricted)  # shares the memo with its parent
    assert first == Placement(0, (6, 7))
    assert second == Placement(1, (6, 7))
    assert calls == [0, 1]

"""Gangs: all or nothing, inside one topology domain when required, explained when waiting."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optimizer.planner.cluster import FULL, ClusterState, NodeSpec, PodRequest
from optimizer.planner.fragmentation import typical_shapes
from optimizer.planner.gangs import CLUSTER_TOO_SMALL, NO_DOMAIN_FITS, GangRequest, place_gang
from optimizer.planner.policies import PlanContext, policy_or_raise

EIGHT_GPUS = PodRequest("worker", 8_000, 16_384, 8, FULL)


def _cluster(racks: int, nodes_per_rack: int) -> tuple[ClusterState, dict[str, list[str]]]:
    nodes = [
        NodeSpec(f"r{r}-n{n}", 96_000, 786_432, 8, "H100")
        for r in range(racks)
        for n in range(nodes_per_rack)
    ]
    state = ClusterState.from_nodes(nodes)
    return state, {"rack": [name.split("-")[0] for name in state.names]}


def _ctx(state: ClusterState, pods: list[PodRequest]) -> PlanContext:
    return PlanContext(rng=np.random.default_rng(0), shapes=typical_shapes(pods))


def _occupy(state: ClusterState, node: str, gpus: int) -> None:
    """Run a ``gpus``-GPU pod on ``node``'s lowest free GPUs."""
    row = state.names.index(node)
    free = tuple(int(g) for g in np.flatnonzero(state.gpu_free[row] == FULL)[:gpus])
    state.allocate(row, free, PodRequest("x", 0, 0, gpus, FULL))


def test_a_rack_constrained_gang_goes_to_the_rack_that_fits() -> None:
    state, domains = _cluster(racks=3, nodes_per_rack=4)
    for node in ("r0-n0", "r0-n1", "r2-n3"):
        _occupy(state, node, 4)  # racks 0 and 2 lack four whole nodes
    gang = GangRequest("train", EIGHT_GPUS, size=4, topology_level="rack")
    decision = place_gang(
        state, gang, policy=policy_or_raise("fgd"), ctx=_ctx(state, [EIGHT_GPUS]), domains=domains
    )
    assert decision.admitted
    assert decision.domain == "r1"
    assert sorted(state.names[p.node] for p in decision.placements) == [
        "r1-n0",
        "r1-n1",
        "r1-n2",
        "r1-n3",
    ]
    assert all(len(p.gpus) == 8 for p in decision.placements)


def test_with_room_for_three_nothing_is_placed_and_the_reason_says_why() -> None:
    state, domains = _cluster(racks=2, nodes_per_rack=4)
    for node in ("r0-n0", "r1-n0"):
        _occupy(state, node, 4)
    gang = GangRequest("train", EIGHT_GPUS, size=4, topology_level="rack")
    decision = place_gang(
        state,
        gang,
        policy=policy_or_raise("bestfit"),
        ctx=_ctx(state, [EIGHT_GPUS]),
        domains=domains,
    )
    assert not decision.admitted
    assert decision.placements == ()
    assert decision.code == NO_DOMAIN_FITS
    assert decision.reason == (
        "needs 4 x 8 GPUs in one rack; the rack with the most room (r0) has 28 free GPUs"
    )


def test_a_preferred_constraint_falls_back_to_the_cluster() -> None:
    state, domains = _cluster(racks=2, nodes_per_rack=2)
    _occupy(state, "r0-n0", 8)
    _occupy(state, "r1-n0", 8)
    gang = GangRequest("train", EIGHT_GPUS, size=2, topology_level="rack", required=False)
    decision = place_gang(
        state,
        gang,
        policy=policy_or_raise("bestfit"),
        ctx=_ctx(state, [EIGHT_GPUS]),
        domains=domains,
    )
    assert decision.admitted
    assert decision.domain is None
    assert sorted(state.names[p.node] for p in decision.placements) == ["r0-n1", "r1-n1"]


def test_too_big_for_the_cluster() -> None:
    state, domains = _cluster(racks=1, nodes_per_rack=2)
    gang = GangRequest("huge", EIGHT_GPUS, size=3)
    decision = place_gang(
        state, gang, policy=policy_or_raise("fgd"), ctx=_ctx(state, [EIGHT_GPUS]), domains=domains
    )
    assert decision.code == CLUSTER_TOO_SMALL
    assert "the cluster has 16 free GPUs" in (decision.reason or "")


def test_an_elastic_gang_takes_what_fits_above_its_minimum() -> None:
    state, domains = _cluster(racks=2, nodes_per_rack=4)
    _occupy(state, "r0-n0", 8)  # rack r0 has 3 free nodes, r1 has 4
    gang = GangRequest("elastic", EIGHT_GPUS, size=2, topology_level="rack", max_size=6)
    decision = place_gang(
        state,
        gang,
        policy=policy_or_raise("stowage"),
        ctx=_ctx(state, [EIGHT_GPUS]),
        domains=domains,
    )
    assert decision.domain == "r1"  # the rack that takes the most members
    assert len(decision.placements) == 4
    with pytest.raises(ValueError, match="below size"):
        GangRequest("bad", EIGHT_GPUS, size=4, max_size=3)


@settings(max_examples=40, deadline=None)
@given(
    busy=st.lists(st.tuples(st.integers(0, 11), st.integers(1, 8)), max_size=12),
    size=st.integers(1, 6),
    gpus=st.sampled_from([1, 2, 4, 8]),
    required=st.booleans(),
    extra=st.sampled_from([0, 0, 3]),
    policy=st.sampled_from(["stowage", "fgd", "bestfit", "gpu-packing", "kube-default"]),
)
def test_never_partial_never_outside_the_required_domain_never_over_allocated(
    busy: list[tuple[int, int]], size: int, gpus: int, required: bool, extra: int, policy: str
) -> None:
    state, domains = _cluster(racks=3, nodes_per_rack=4)
    for row, count in busy:
        free = int((state.gpu_free[row] == FULL).sum())
        if free:
            _occupy(state, state.names[row], min(count, free))
    before = state.gpu_free.copy()
    pod = PodRequest("w", 4_000, 8_192, gpus, FULL)
    gang = GangRequest(
        "g",
        pod,
        size=size,
        topology_level="rack",
        required=required,
        max_size=size + extra if extra else None,
    )
    decision = place_gang(
        state, gang, policy=policy_or_raise(policy), ctx=_ctx(state, [pod]), domains=domains
    )
    assert (state.gpu_free == before).all()  # pure: the state is untouched
    again = place_gang(
        state, gang, policy=policy_or_raise(policy), ctx=_ctx(state, [pod]), domains=domains
    )
    assert again == decision  # deterministic
    if not decision.admitted:
        assert decision.placements == ()
        assert decision.reason
        return
    assert size <= len(decision.placements) <= (gang.max_size or size)
    if required:
        racks = {domains["rack"][p.node] for p in decision.placements}
        assert racks == {decision.domain}
    for placement in decision.placements:
        state.allocate(placement.node, placement.gpus, pod)  # raises if over-allocated
    assert (state.gpu_free >= 0).all()


def test_only_the_tightest_domains_that_take_the_gang_are_tried_in_full() -> None:
    """Twelve racks: r0 has room for exactly the gang, r1-r11 have room to spare. Only the
    tightest MAX_DOMAIN_TRIALS that take it are filled, and r0, the tightest, wins even for
    a policy whose own measure would not prefer it (bestfit has no workload measure: the
    fewest free GPUs after the fill decides among the trials)."""
    from optimizer.planner.gangs import MAX_DOMAIN_TRIALS

    state, domains = _cluster(racks=12, nodes_per_rack=4)
    for node in ("r0-n0", "r0-n1"):
        _occupy(state, node, 8)
    gang = GangRequest("train", EIGHT_GPUS, size=2, topology_level="rack")
    tried: list[str] = []
    bestfit = policy_or_raise("bestfit")

    def spy(state_: ClusterState, pod: PodRequest, ctx: PlanContext) -> object:
        tried.append(state_.names[0].split("-")[0])
        return bestfit(state_, pod, ctx)

    decision = place_gang(
        state, gang, policy=spy, ctx=PlanContext(rng=np.random.default_rng(0)), domains=domains
    )  # type: ignore[arg-type]
    assert decision.domain == "r0"
    assert len(set(tried)) == MAX_DOMAIN_TRIALS
    assert set(tried) == {"r0", "r1", "r10", "r11", "r2", "r3", "r4", "r5"}  # ties by name

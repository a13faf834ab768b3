"""The planner's snapshot from node facts and agent reports: topology, lost GPUs, domains."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.planner.cluster import FULL, PodRequest
from optimizer.planner.fragmentation import typical_shapes
from optimizer.planner.gangs import GangRequest, place_gang
from optimizer.planner.policies import PlanContext, policy_or_raise
from optimizer.planner.snapshot import NodeFacts, RunningPod, build_snapshot
from shared.labels import HOSTNAME_LABEL
from shared.report import GpuHealth
from shared.samples import DGX1_V100, L40S_PCIE, NodeShape, build_report

TWO_GPUS = PodRequest("pair", 4_000, 8_192, 2, FULL)


def _facts(
    name: str,
    shape: NodeShape = DGX1_V100,
    labels: dict[str, str] | None = None,
    lost: frozenset[int] = frozenset(),
    health: GpuHealth = GpuHealth.LOST,
) -> NodeFacts:
    report = build_report(shape, node_name=name)
    gpus = [g.model_copy(update={"health": health}) if g.index in lost else g for g in report.gpus]
    report = report.model_copy(update={"gpus": gpus})
    return NodeFacts(
        name=name,
        labels={HOSTNAME_LABEL: name, **(labels or {})},
        cpu_milli=96_000,
        memory_mib=512 * 1024,
        report=report,
    )


def _ctx() -> PlanContext:
    return PlanContext(rng=np.random.default_rng(0), shapes=typical_shapes([TWO_GPUS]))


def _choose(nodes: list[NodeFacts], pod: PodRequest, policy: str = "stowage") -> tuple[int, ...]:
    placement = policy_or_raise(policy)(build_snapshot(nodes).state, pod, _ctx())
    assert placement is not None
    return placement.gpus


@pytest.mark.parametrize("policy", ["stowage", "fgd", "bestfit"])
def test_a_two_gpu_pod_gets_a_double_nvlink_pair_on_one_socket(policy: str) -> None:
    # DGX-1 hybrid cube mesh: GPU 0 has two NVLinks to 3 (same socket) and to 4 (other).
    assert _choose([_facts("dgx-0")], TWO_GPUS, policy) == (0, 3)


@pytest.mark.parametrize("health", [GpuHealth.LOST, GpuHealth.DEGRADED])
def test_lost_and_degraded_gpus_are_not_offered(health: GpuHealth) -> None:
    snapshot = build_snapshot([_facts("dgx-0", lost=frozenset({3}), health=health)])
    assert snapshot.state.total_gpu_milli == 7 * FULL
    chosen = _choose([_facts("dgx-0", lost=frozenset({3}), health=health)], TWO_GPUS)
    assert 3 not in chosen
    assert chosen == (1, 2)  # two NVLinks, one PCIe switch tree, one NUMA node


def test_without_nvlink_a_pair_shares_a_pcie_switch() -> None:
    snapshot_nodes = [_facts("l40s-0", shape=L40S_PCIE)]
    state = build_snapshot(
        snapshot_nodes, [RunningPod("l40s-0", PodRequest("x", 0, 0, 1, FULL), (1,))]
    ).state
    placement = policy_or_raise("stowage")(state, TWO_GPUS, _ctx())
    assert placement is not None
    assert placement.gpus == (2, 3)  # 0's switch partner (1) is taken


def test_running_pods_take_their_resources() -> None:
    one = PodRequest("one", 10_000, 1_024, 1, FULL)
    share = PodRequest("share", 1_000, 1_024, 1, 300)
    state = build_snapshot(
        [_facts("dgx-0")], [RunningPod("dgx-0", one, (5,)), RunningPod("dgx-0", share, (6,))]
    ).state
    assert state.cpu_free[0] == 85_000
    assert state.gpu_free[0, 5] == 0
    assert state.gpu_free[0, 6] == 700
    with pytest.raises(ValueError, match="over-allocated"):  # inconsistent facts
        build_snapshot([_facts("dgx-0")], [RunningPod("dgx-0", one, (5,))] * 2)


def test_domains_come_from_labels_and_unlabelled_nodes_are_in_none() -> None:
    nodes = [
        _facts("a-0", labels={"topology.stowage.io/rack": "r1"}),
        _facts("a-1", labels={"topology.stowage.io/rack": "r1"}),
        _facts("b-0"),  # no rack label
    ]
    snapshot = build_snapshot(nodes)
    assert snapshot.domains["rack"] == ["r1", "r1", ""]
    assert snapshot.domains["hostname"] == ["a-0", "a-1", "b-0"]
    eight = PodRequest("w", 8_000, 8_192, 8, FULL)
    ctx = _ctx()
    stowage = policy_or_raise("stowage")
    fits = place_gang(
        snapshot.state,
        GangRequest("g", eight, size=2, topology_level="rack"),
        policy=stowage,
        ctx=ctx,
        domains=snapshot.domains,
    )
    assert fits.domain == "r1"
    assert sorted(p.node for p in fits.placements) == [0, 1]
    too_big = place_gang(
        snapshot.state,
        GangRequest("g", eight, size=3, topology_level="rack"),
        policy=stowage,
        ctx=ctx,
        domains=snapshot.domains,
    )
    assert not too_big.admitted  # b-0 has room but is in no rack
    with pytest.raises(ValueError, match="unknown topology level"):
        place_gang(
            snapshot.state,
            GangRequest("g", eight, size=1, topology_level="row"),
            policy=stowage,
            ctx=ctx,
            domains=snapshot.domains,
        )

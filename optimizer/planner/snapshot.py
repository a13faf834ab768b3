"""A cluster snapshot for the planner, from Kubernetes node facts and agent reports.

The planner never reads Kubernetes or the database: the controller (or a test, or the
simulator) gathers what it knows into :class:`NodeFacts` and :class:`RunningPod` and calls
:func:`build_snapshot`. The snapshot holds the :class:`ClusterState` arrays, each node's GPU
topology (NVLink/PCIe/NUMA, for choosing GPUs inside a node) and the topology domains of every
configured level, outermost first (zone > block > rack > host, plus multi-node NVLink cliques),
taken from node labels as Kueue's Topology Aware Scheduling and Volcano's HyperNodes do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from optimizer.planner.cluster import ClusterState, NodeSpec, NodeTopology, PodRequest
from optimizer.planner.gangs import NO_DOMAIN
from optimizer.planner.policies import tightest_gpu
from shared.labels import HOSTNAME_LABEL, NODE_GPU_CLIQUE
from shared.report import GpuHealth, NodeReport
from shared.topology import LinkMatrix


@dataclass(frozen=True)
class TopologyLevel:
    """A named level of the cluster's topology and the node label that names its domains."""

    name: str
    label: str


#: Outermost first. ``nvlink-clique`` is the multi-node NVLink domain (GB200 NVL72 class) the
#: agent reports and the node labeller publishes.
DEFAULT_LEVELS: Final = (
    TopologyLevel("zone", "topology.kubernetes.io/zone"),
    TopologyLevel("block", "topology.stowage.io/block"),
    TopologyLevel("rack", "topology.stowage.io/rack"),
    TopologyLevel("nvlink-clique", NODE_GPU_CLIQUE),
    TopologyLevel("hostname", HOSTNAME_LABEL),
)


@dataclass(frozen=True)
class NodeFacts:
    """What the controller knows about one node."""

    name: str
    labels: Mapping[str, str]
    cpu_milli: int  # allocatable
    memory_mib: int  # allocatable
    report: NodeReport | None = None  # the agent's latest topology report
    gpu_model: str | None = None  # when there is no report (e.g. from a GFD label)
    gpu_count: int = 0  # likewise
    #: Every other allocatable resource (``pods``, ``ephemeral-storage`` bytes, MIG slices).
    extra: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RunningPod:
    """A pod already bound (or committed) to a node, with the GPUs it holds; no GPUs named
    means "whichever the planner would give it" (the device plugin does not say)."""

    node: str
    pod: PodRequest
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """The planner's immutable input: state, topology domains per level."""

    state: ClusterState
    domains: Mapping[str, Sequence[str]] = field(default_factory=dict)
    levels: tuple[TopologyLevel, ...] = DEFAULT_LEVELS
    #: Running pods that did not fit their node (lenient builds only): "pod on node: why".
    unaccounted: tuple[str, ...] = ()
    #: For each running pod given, in order: (row, GPUs it holds), or None when it is not
    #: counted (unknown node, or unaccounted).
    held: tuple[tuple[int, tuple[int, ...]] | None, ...] = ()

    def level_names(self) -> list[str]:
        return [level.name for level in self.levels]


def build_snapshot(
    nodes: Sequence[NodeFacts],
    running: Sequence[RunningPod] = (),
    *,
    levels: Sequence[TopologyLevel] = DEFAULT_LEVELS,
    lenient: bool = False,
) -> Snapshot:
    """The snapshot of ``nodes`` with ``running`` pods' resources taken.

    A GPU the agent reports ``lost`` or ``degraded`` (a critical XID, uncorrectable ECC, a
    pending row remap) is not offered to new pods. A running pod that holds more than its
    node has left means the facts are inconsistent: ValueError, or with ``lenient`` (facts
    read from a live cluster, where a node may have shrunk under its pods) the pod is listed
    in :attr:`Snapshot.unaccounted`. Running pods on unknown nodes are ignored.
    """
    specs = []
    topology: dict[str, NodeTopology] = {}
    lost: dict[str, list[int]] = {}
    for node in nodes:
        report = node.report
        if report is not None and report.gpus:
            gpus = sorted(report.gpus, key=lambda g: g.index)
            model = gpus[0].product
            count = max(g.index for g in gpus) + 1
            topology[node.name] = NodeTopology(
                links=LinkMatrix.from_links(report.links),
                numa_of={g.index: g.numa_node for g in gpus},
            )
            lost[node.name] = [g.index for g in gpus if g.health is not GpuHealth.OK]
        else:
            model, count = node.gpu_model or "", node.gpu_count
        specs.append(
            NodeSpec(node.name, node.cpu_milli, node.memory_mib, count, model, dict(node.extra))
        )
    state = ClusterState.from_nodes(specs, topology=topology)
    for name, indices in lost.items():
        row = state.names.index(name)
        for gpu in indices:
            state.gpu_present[row, gpu] = False
            state.gpu_free[row, gpu] = 0
    row_of = {name: row for row, name in enumerate(state.names)}
    unaccounted = []
    placed: list[tuple[int, tuple[int, ...]] | None] = []
    for pod in running:
        at = row_of.get(pod.node)
        placed.append(None)
        if at is None:
            continue
        try:
            if not state.feasible(pod.pod)[at] and not pod.gpus:
                raise ValueError(f"node {pod.node} is over-allocated")
            held = pod.gpus or tightest_gpu(state, at, pod.pod)
            state.allocate(at, held, pod.pod)
            placed[-1] = (at, tuple(held))
        except ValueError as error:
            if not lenient:
                raise
            unaccounted.append(f"{pod.pod.name} on {pod.node}: {error}")
    by_name = {node.name: node for node in nodes}
    domains = {
        level.name: [by_name[name].labels.get(level.label, NO_DOMAIN) for name in state.names]
        for level in levels
    }
    return Snapshot(
        state=state,
        domains=domains,
        levels=tuple(levels),
        unaccounted=tuple(unaccounted),
        held=tuple(placed),
    )

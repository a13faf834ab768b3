"""Filter plugins: may this pod go to this node? kube-scheduler's rules, never weaker.

Static filters judge a :class:`~.objects.PodInfo` against a :class:`~.objects.NodeInfo`
(cordon, taints, readiness, node affinity, Stowage's agent freshness); the cycle turns their
verdicts into one node mask per kind of pod. Resource fit and pod anti-affinity depend on
what is placed, so the session applies them (:func:`resource_shortfalls`,
:func:`anti_affinity_blocked`). Reasons use kube-scheduler's own wording, so an operator
reads the same sentence in ``kubectl describe pod`` and in Stowage's events.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np

from optimizer.planner.cluster import FULL, BoolArray, ClusterState, IntArray, PodRequest
from optimizer.planner.framework import SUCCESS, Code, Registry, Status
from optimizer.planner.objects import (
    NO_EXECUTE,
    NO_SCHEDULE,
    AntiAffinityTerm,
    NodeInfo,
    PodInfo,
    Taint,
)

UNSCHEDULABLE_NODE: Final = "node(s) were unschedulable"
NOT_READY: Final = "node(s) were not ready"
AFFINITY_MISMATCH: Final = "node(s) didn't match Pod's node affinity/selector"
UNTOLERATED: Final = "node(s) had untolerated taint {taint}"
AGENT_STALE: Final = "node(s) had a stale Stowage agent"
ANTI_AFFINITY: Final = "node(s) didn't match pod anti-affinity rules"
INSUFFICIENT: Final = "Insufficient {resource}"


class Filter(Protocol):
    """A static filter plugin."""

    @property
    def name(self) -> str: ...

    @property
    def kube(self) -> bool:
        """True for Kubernetes' own rules (applied to every pod); False for Stowage's
        (applied only to the pods Stowage places)."""
        ...

    def __call__(self, pod: PodInfo, node: NodeInfo) -> Status: ...


FILTERS: Final[Registry[Filter]] = Registry("filter")


@dataclass(frozen=True)
class NodeUnschedulable:
    """A cordoned node takes no pod, unless it tolerates ``node.kubernetes.io/unschedulable``."""

    name: str = "NodeUnschedulable"
    kube: bool = True

    def __call__(self, pod: PodInfo, node: NodeInfo) -> Status:
        if not node.unschedulable:
            return SUCCESS
        cordon = Taint("node.kubernetes.io/unschedulable", effect=NO_SCHEDULE)
        if any(t.tolerates(cordon) for t in pod.tolerations):
            return SUCCESS
        return Status(Code.UNRESOLVABLE, UNSCHEDULABLE_NODE, self.name)


@dataclass(frozen=True)
class TaintToleration:
    """Every NoSchedule and NoExecute taint must be tolerated (PreferNoSchedule is a hint)."""

    name: str = "TaintToleration"
    kube: bool = True

    def __call__(self, pod: PodInfo, node: NodeInfo) -> Status:
        for taint in node.taints:
            if taint.effect not in (NO_SCHEDULE, NO_EXECUTE):
                continue
            if not any(t.tolerates(taint) for t in pod.tolerations):
                return Status(Code.UNRESOLVABLE, UNTOLERATED.format(taint=taint), self.name)
        return SUCCESS


@dataclass(frozen=True)
class NodeReady:
    """A node whose Ready condition is False or Unknown takes no new pod."""

    name: str = "NodeReady"
    kube: bool = True

    def __call__(self, pod: PodInfo, node: NodeInfo) -> Status:
        return SUCCESS if node.ready else Status(Code.UNSCHEDULABLE, NOT_READY, self.name)


@dataclass(frozen=True)
class NodeAffinity:
    """``nodeSelector`` (every label equal) and required node affinity (any term matches)."""

    name: str = "NodeAffinity"
    kube: bool = True

    def __call__(self, pod: PodInfo, node: NodeInfo) -> Status:
        labels = node.labels
        if any(labels.get(k) != v for k, v in pod.node_selector.items()):
            return Status(Code.UNRESOLVABLE, AFFINITY_MISMATCH, self.name)
        if pod.required_terms and not any(t.matches(labels, node.name) for t in pod.required_terms):
            return Status(Code.UNRESOLVABLE, AFFINITY_MISMATCH, self.name)
        return SUCCESS


@dataclass(frozen=True)
class AgentFresh:
    """Stowage places nothing on a node whose agent stopped reporting: its GPUs' health and
    topology are unknown. Nodes that never ran an agent are judged by Kubernetes alone."""

    name: str = "AgentFresh"
    kube: bool = False

    def __call__(self, pod: PodInfo, node: NodeInfo) -> Status:
        if node.agent_stale:
            return Status(Code.UNSCHEDULABLE, AGENT_STALE, self.name)
        return SUCCESS


for _filter in (NodeUnschedulable(), NodeReady(), TaintToleration(), NodeAffinity(), AgentFresh()):
    FILTERS.register(_filter.name, _filter)

#: The filters a cycle runs when its configuration names none.
DEFAULT_FILTERS: Final = tuple(FILTERS.names())


def static_mask(
    pod: PodInfo,
    nodes: Sequence[NodeInfo],
    filters: Iterable[Filter],
    *,
    managed: bool = True,
) -> tuple[BoolArray, Counter[str]]:
    """The nodes every filter lets ``pod`` use, and for the others each first reason's count
    (``managed=False``: Kubernetes' own filters only, for pods kube-scheduler places)."""
    chosen = [f for f in filters if managed or f.kube]
    mask = np.ones(len(nodes), dtype=np.bool_)
    reasons: Counter[str] = Counter()
    for row, node in enumerate(nodes):
        for plugin in chosen:
            status = plugin(pod, node)
            if not status.ok:
                mask[row] = False
                reasons[status.reason] += 1
                break
    return mask, reasons


def preferred_weight(pod: PodInfo, nodes: Sequence[NodeInfo]) -> IntArray:
    """Each node's summed weight of the pod's preferred node-affinity terms it matches."""
    weights = np.zeros(len(nodes), dtype=np.int64)
    for weight, term in pod.preferred_terms:
        for row, node in enumerate(nodes):
            if term.matches(node.labels, node.name):
                weights[row] += weight
    return weights


@dataclass(frozen=True)
class PlacedPod:
    """A pod holding a node, as anti-affinity sees it."""

    namespace: str
    labels: Mapping[str, str]
    node: int
    anti_affinity: tuple[AntiAffinityTerm, ...] = ()


def anti_affinity_blocked(
    pod: PodInfo, nodes: Sequence[NodeInfo], placed: Iterable[PlacedPod]
) -> BoolArray:
    """Nodes ``pod`` may not use because of required pod anti-affinity, both ways: its own
    terms against pods already there, and those pods' terms against it (kube-scheduler's
    InterPodAffinity). A node without a term's topology label is not blocked by it."""
    blocked = np.zeros(len(nodes), dtype=np.bool_)
    taken: set[tuple[str, str]] = set()  # (topology key, value)
    for other in placed:
        labels = nodes[other.node].labels
        for term in pod.anti_affinity:
            if term.selects(other.namespace, other.labels) and term.topology_key in labels:
                taken.add((term.topology_key, labels[term.topology_key]))
        for their in other.anti_affinity:
            if their.selects(pod.namespace, pod.labels) and their.topology_key in labels:
                taken.add((their.topology_key, labels[their.topology_key]))
    if not taken:
        return blocked
    for row, node in enumerate(nodes):
        blocked[row] = any(node.labels.get(k) == v for k, v in taken)
    return blocked


def resource_shortfalls(state: ClusterState, pod: PodRequest) -> Counter[str]:
    """For the nodes that lack room for ``pod``, which resource each lacks first
    (``Insufficient cpu``, ``Insufficient nvidia.com/gpu``, …), counted."""
    reasons: Counter[str] = Counter()
    checks: list[tuple[str, BoolArray]] = [
        ("cpu", state.cpu_free >= pod.cpu_milli),
        ("memory", state.memory_free >= pod.memory_mib),
    ]
    columns = {name: i for i, name in enumerate(state.extra_names)}
    for name, amount in pod.extra:
        have = (
            state.extra_free[:, columns[name]]
            if name in columns
            else np.zeros(len(state.names), np.int64)
        )
        checks.append((name, have >= amount))
    if pod.num_gpu:
        if pod.is_share:
            gpu_ok = (state.gpu_free >= pod.gpu_milli).any(axis=1)
        else:
            gpu_ok = (state.gpu_free == FULL).sum(axis=1) >= pod.num_gpu
        checks.append(("nvidia.com/gpu", gpu_ok & state.model_mask(pod)))
    short = np.zeros(len(state.names), dtype=np.bool_)
    for name, ok in checks:
        first = ~ok & ~short
        if first.any():
            reasons[INSUFFICIENT.format(resource=name)] += int(first.sum())
        short |= ~ok
    return reasons


def summarise(total: int, reasons: Mapping[str, int]) -> str:
    """kube-scheduler's sentence: ``0/8 nodes are available: 2 Insufficient cpu, 6 node(s)
    were unschedulable.`` (reasons sorted by text, as kube-scheduler sorts them)."""
    if total == 0:
        return "0/0 nodes are available: the cluster has no node Stowage can read."
    parts = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
    available = total - sum(reasons.values())
    return f"{max(available, 0)}/{total} nodes are available: {parts}."

"""Kubernetes objects in the planner's terms: what kube-scheduler looks at, nothing more.

The controller's observe step (and ``stowage plan``) reads API JSON into these; the filters
(:mod:`.filters`) judge them exactly as kube-scheduler's plugins do. Pure data, frozen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from optimizer.planner.cluster import PodRequest

NO_SCHEDULE: Final = "NoSchedule"
NO_EXECUTE: Final = "NoExecute"
PREFER_NO_SCHEDULE: Final = "PreferNoSchedule"
HOSTNAME: Final = "kubernetes.io/hostname"


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = NO_SCHEDULE

    def __str__(self) -> str:
        return f"{{{self.key}: {self.value}}}" if self.value else f"{{{self.key}}}"


@dataclass(frozen=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"  # Equal | Exists
    value: str = ""
    effect: str = ""  # "" tolerates every effect

    def tolerates(self, taint: Taint) -> bool:
        """``v1.Toleration.ToleratesTaint``: an empty key with Exists matches every taint."""
        if self.effect and self.effect != taint.effect:
            return False
        if self.key and self.key != taint.key:
            return False
        if self.operator == "Exists":
            return True
        return self.operator in ("Equal", "") and self.value == taint.value


@dataclass(frozen=True)
class Requirement:
    """One ``matchExpressions`` (or ``matchFields``) entry."""

    key: str
    operator: str  # In | NotIn | Exists | DoesNotExist | Gt | Lt
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """k8s.io/apimachinery's label selector semantics (NotIn and DoesNotExist match an
        absent key; Gt and Lt need both sides to be integers)."""
        present = self.key in labels
        value = labels.get(self.key, "")
        if self.operator == "In":
            return present and value in self.values
        if self.operator == "NotIn":
            return not present or value not in self.values
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        if self.operator in ("Gt", "Lt") and present and len(self.values) == 1:
            try:
                have, bound = int(value), int(self.values[0])
            except ValueError:
                return False
            return have > bound if self.operator == "Gt" else have < bound
        return False


@dataclass(frozen=True)
class NodeSelectorTerm:
    """Expressions and fields, ANDed; a term with neither matches no node."""

    expressions: tuple[Requirement, ...] = ()
    fields: tuple[Requirement, ...] = ()  # only metadata.name exists

    def matches(self, labels: Mapping[str, str], node_name: str) -> bool:
        if not self.expressions and not self.fields:
            return False
        return all(r.matches(labels) for r in self.expressions) and all(
            r.matches({r.key: node_name} if r.key == "metadata.name" else {}) for r in self.fields
        )


@dataclass(frozen=True)
class LabelSelector:
    """``matchLabels`` plus ``matchExpressions``; the empty selector matches everything."""

    labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.labels) and all(
            r.matches(labels) for r in self.expressions
        )


@dataclass(frozen=True)
class AntiAffinityTerm:
    """A required pod anti-affinity term: no pod matching ``selector`` in ``namespaces``
    (None: every namespace) may share a ``topology_key`` domain with this pod."""

    selector: LabelSelector
    topology_key: str = HOSTNAME
    namespaces: frozenset[str] | None = None

    def selects(self, namespace: str, labels: Mapping[str, str]) -> bool:
        in_scope = self.namespaces is None or namespace in self.namespaces
        return in_scope and self.selector.matches(labels)


@dataclass(frozen=True)
class NodeInfo:
    """A node as the filters see it."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    unschedulable: bool = False
    taints: tuple[Taint, ...] = ()
    ready: bool = True
    #: The node's Stowage agent reported once but not recently.
    agent_stale: bool = False


@dataclass(frozen=True)
class PodInfo:
    """A pod's scheduling facts: its request and every constraint kube-scheduler checks."""

    namespace: str
    name: str
    uid: str
    request: PodRequest
    labels: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    #: Required node affinity: ORed terms; empty: none.
    required_terms: tuple[NodeSelectorTerm, ...] = ()
    #: Preferred node affinity: (weight, term).
    preferred_terms: tuple[tuple[int, NodeSelectorTerm], ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    anti_affinity: tuple[AntiAffinityTerm, ...] = ()
    #: Constraints the planner cannot judge yet (required pod affinity, hard topology
    #: spread); a managed pod that has any waits rather than risk a refused pin.
    unsupported: tuple[str, ...] = ()
    priority: int = 0
    preemptible: bool = True
    created: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def constraint_signature(self) -> tuple[object, ...]:
        """Equal for pods every static filter judges alike."""
        return (
            tuple(sorted(self.node_selector.items())),
            self.required_terms,
            self.tolerations,
        )

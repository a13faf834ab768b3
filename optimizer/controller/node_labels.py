"""Node labels from agent reports, under ``stowage.io/`` only.

:func:`desired_labels` turns a node's latest topology report into the labels Kueue's Topology
Aware Scheduling, KAI and Volcano's label-based HyperNode discovery can select on (see
docs/operations.md); :func:`label_changes` diffs them against the node's current labels,
touching only keys Stowage owns, and validates every key and value with the same rules the
API server applies, so an invalid label is never sent. :class:`NodeLabeller` applies the
changes: one merge patch per node that changed, guarded by the node's resourceVersion, each
audited, none sent in dry-run mode.

Labels outlive an agent outage, so Kueue flavors and affinities built on them keep their
nodes: a node whose agent went quiet keeps the labels of its last report, and once it has
been quiet for longer than a grace its ``stowage.io/gpu.health`` says ``unknown``. Only a
node that never reported (or whose record is gone) carries none. Where GPU Feature
Discovery already labels the node (``nvidia.com/gpu.product``, ``.count``, ``.memory``),
Stowage does not write its own copy of that label unless told to duplicate them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog

from optimizer.controller.audit import Audit
from optimizer.controller.cache import ClusterView, LiveView
from optimizer.controller.kube import ConflictError, KubeApi
from shared.labels import (
    NODE_GPU_CLIQUE,
    NODE_GPU_COUNT,
    NODE_GPU_HEALTH,
    NODE_GPU_MEMORY_MIB,
    NODE_GPU_PRODUCT,
    NODE_NUMA_COUNT,
    NODE_NVLINK_ISLAND_SIZE,
    NODE_POOL,
    LabelError,
    is_owned_key,
    to_label_value,
    validate_label_or_raise,
)
from shared.report import GpuHealth, NodeReport
from shared.topology import nvlink_islands
from shared.units import MIB

log = structlog.get_logger(__name__)

#: The audit verb of a label patch.
VERB: Final = "label-node"


#: Stowage labels GPU Feature Discovery also writes, and GFD's key for each.
GFD_EQUIVALENTS: Final = {
    NODE_GPU_PRODUCT: "nvidia.com/gpu.product",
    NODE_GPU_COUNT: "nvidia.com/gpu.count",
    NODE_GPU_MEMORY_MIB: "nvidia.com/gpu.memory",
}
#: ``stowage.io/gpu.health`` of a node whose agent has been quiet past the grace.
UNKNOWN: Final = "unknown"


def desired_labels(
    report: NodeReport | None,
    *,
    pool: str | None = None,
    lapsed: bool = False,
    present: Mapping[str, str] | None = None,
    defer_to_gfd: bool = False,
) -> dict[str, str]:
    """The Stowage labels a node should carry: from its latest report (none without one);
    ``lapsed``: its agent has been quiet past the grace (health ``unknown``);
    ``defer_to_gfd``: leave out the labels GFD already put on the node (``present``)."""
    labels = _from_report(report, pool=pool)
    if lapsed and NODE_GPU_HEALTH in labels:
        labels[NODE_GPU_HEALTH] = UNKNOWN
    if defer_to_gfd:
        for ours, theirs in GFD_EQUIVALENTS.items():
            if theirs in (present or {}):
                labels.pop(ours, None)
    return labels


def _from_report(report: NodeReport | None, *, pool: str | None) -> dict[str, str]:
    if report is None:
        return {}
    labels: dict[str, str] = {}
    if pool:
        labels[NODE_POOL] = pool
    if report.host is not None and report.host.numa_nodes:
        labels[NODE_NUMA_COUNT] = str(len(report.host.numa_nodes))
    gpus = report.gpus
    if not gpus:
        return labels
    products = Counter(g.product for g in gpus)
    labels[NODE_GPU_PRODUCT] = to_label_value(products.most_common(1)[0][0])
    labels[NODE_GPU_COUNT] = str(len(gpus))
    labels[NODE_GPU_MEMORY_MIB] = str(min(g.memory_bytes for g in gpus) // MIB)
    islands = nvlink_islands((g.index for g in gpus), report.links)
    labels[NODE_NVLINK_ISLAND_SIZE] = str(max((len(i) for i in islands), default=1))
    cliques = Counter(g.clique for g in gpus if g.clique is not None)
    if cliques:
        labels[NODE_GPU_CLIQUE] = to_label_value(cliques.most_common(1)[0][0])
    labels[NODE_GPU_HEALTH] = max((g.health for g in gpus), key=_SEVERITY.index).value
    return labels


#: Health from best to worst: a node is labelled with its worst GPU's.
_SEVERITY: Final = (GpuHealth.OK, GpuHealth.DEGRADED, GpuHealth.LOST)


@dataclass(frozen=True)
class LabelChange:
    """What one node's labels need: values to set, keys to remove (None)."""

    node: str
    changes: Mapping[str, str | None]
    rejected: tuple[str, ...] = ()  # "key=value: why" for labels that may not be sent


def label_changes(node: str, current: Mapping[str, str], desired: Mapping[str, str]) -> LabelChange:
    """The owned labels to set or remove so that ``current`` ends up with ``desired``.

    Keys outside ``stowage.io/`` are never in the result, whatever ``desired`` holds; a key or
    value that breaks the Kubernetes label rules is left out and named in ``rejected``.
    """
    changes: dict[str, str | None] = {}
    rejected: list[str] = []
    for key, value in desired.items():
        if not is_owned_key(key):
            rejected.append(f"{key}={value}: not under stowage.io/")
            continue
        try:
            validate_label_or_raise(key, value)
        except LabelError as error:
            rejected.append(f"{key}={value}: {error}")
            continue
        if current.get(key) != value:
            changes[key] = value
    for key in current:
        if is_owned_key(key) and key not in desired:
            changes[key] = None
    return LabelChange(node=node, changes=changes, rejected=tuple(rejected))


class NodeLabeller:
    """Keeps every node's Stowage labels in line with its agent's latest report.

    Args:
        api: the Kubernetes adapter.
        audit: where every patch (or, in dry-run, every patch it would send) is recorded.
        pool_of: node name -> pool name (or None), from the settings.
        dry_run: plan and audit, never patch.
        view: where nodes are read (default: listed from the API on every pass).
        defer_to_gfd: leave GPU Feature Discovery's labels to it (see the module).
    """

    def __init__(
        self,
        api: KubeApi,
        audit: Audit,
        *,
        pool_of: Callable[[str], str | None] = lambda _: None,
        dry_run: bool = True,
        view: ClusterView | None = None,
        defer_to_gfd: bool = False,
    ) -> None:
        self._api = api
        self._view = view or LiveView(api)
        self._audit = audit
        self._pool_of = pool_of
        self._dry_run = dry_run
        self._defer_to_gfd = defer_to_gfd

    def sync(
        self, reports: Mapping[str, NodeReport], *, lapsed: frozenset[str] = frozenset()
    ) -> list[LabelChange]:
        """One pass over the cluster's nodes. ``reports``: every node's latest report, quiet
        agents' included; ``lapsed``: nodes whose agent has been quiet past the grace.

        Returns the changes it made (or, in dry-run, would make). A node that changed under
        it (409) is skipped and retried on the next pass.
        """
        done = []
        for node in self._view.nodes():
            meta: dict[str, Any] = node["metadata"]
            name = meta["name"]
            current = meta.get("labels") or {}
            desired = desired_labels(
                reports.get(name),
                pool=self._pool_of(name),
                lapsed=name in lapsed,
                present=current,
                defer_to_gfd=self._defer_to_gfd,
            )
            change = label_changes(name, current, desired)
            for problem in change.rejected:
                log.error("node label not sent", node=name, problem=problem)
            if not change.changes:
                continue
            reason = _describe(
                change,
                why="agent report is missing"
                if name not in reports
                else "agent quiet past the grace"
                if name in lapsed
                else "agent report changed",
            )
            if self._dry_run:
                self._audit(verb=VERB, obj=f"node/{name}", reason=reason, outcome="dry-run")
                done.append(change)
                continue
            try:
                self._api.patch_node_labels(
                    name, change.changes, resource_version=meta["resourceVersion"]
                )
            except ConflictError:
                log.info("node changed while labelling; retrying next pass", node=name)
                continue
            self._audit(verb=VERB, obj=f"node/{name}", reason=reason, outcome="applied")
            done.append(change)
        return done


def _describe(change: LabelChange, *, why: str) -> str:
    parts = [
        f"{key}={value}" if value is not None else f"-{key}"
        for key, value in sorted(change.changes.items())
    ]
    return f"{why}: {', '.join(parts)}"

"""A cycle's working copy of the cluster, and statements: tentative changes, then commit or
discard (Volcano's ``Session`` and ``Statement``).

The :class:`Session` copies the snapshot's arrays once; actions change the copy only through
a :class:`Statement`, which applies each allocation or eviction at once (so the next trial
sees it) and remembers how to undo it. ``discard`` undoes everything in reverse order;
``commit`` keeps it. The snapshot itself is never changed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from optimizer.planner.cluster import BoolArray, ClusterState, PodRequest
from optimizer.planner.filters import (
    ANTI_AFFINITY,
    Filter,
    PlacedPod,
    anti_affinity_blocked,
    preferred_weight,
    static_mask,
)
from optimizer.planner.objects import HOSTNAME, PodInfo
from optimizer.planner.ordering import ORDERINGS, Ordering, SortKey
from optimizer.planner.plan import Admit, ClusterSnapshot, Job, Wait
from optimizer.planner.policies import PlanContext, Policy
from optimizer.planner.queues import QuotaBook, demand


@dataclass(frozen=True)
class _Op:
    row: int
    gpus: tuple[int, ...]
    pod: PodRequest
    allocated: bool  # False: an eviction (released)


class Statement:
    """Tentative allocations and evictions on a session's state."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._ops: list[_Op] = []
        self.evicted: list[int] = []  # indices into snapshot.bound
        self.placed: list[PlacedPod] = []

    def allocate(self, row: int, gpus: Sequence[int], pod: PodRequest, info: PodInfo) -> None:
        """Take ``pod``'s resources on ``row`` (raises ValueError when they are not there)."""
        state = self._session.state
        state.allocate(row, gpus, pod)
        self._session.ctx.note_placed(state, row)
        self._ops.append(_Op(row, tuple(gpus), pod, allocated=True))
        self.placed.append(PlacedPod(info.namespace, info.labels, row, info.anti_affinity))

    def evict(self, index: int) -> None:
        """Give back what bound pod ``index`` of the snapshot holds."""
        held = self._session.snapshot.base.held[index]
        if held is None or index in self._session.evicted or index in self.evicted:
            return
        row, gpus = held
        pod = self._session.snapshot.bound[index].info.request
        self._session.state.release(row, gpus, pod)
        self._session.ctx.note_placed(self._session.state, row)
        self._ops.append(_Op(row, gpus, pod, allocated=False))
        self.evicted.append(index)

    def free(self, row: int, gpus: Sequence[int], pod: PodRequest) -> None:
        """Give back what an allocation of this cycle took (a trial of a future state)."""
        self._session.state.release(row, gpus, pod)
        self._session.ctx.note_placed(self._session.state, row)
        self._ops.append(_Op(row, tuple(gpus), pod, allocated=False))

    def discard(self) -> None:
        """Undo every change, newest first."""
        state = self._session.state
        for op in reversed(self._ops):
            if op.allocated:
                state.release(op.row, op.gpus, op.pod)
            else:
                state.allocate(op.row, op.gpus, op.pod)
            self._session.ctx.note_placed(state, op.row)
        self._ops.clear()
        self.evicted.clear()
        self.placed.clear()

    def commit(self) -> None:
        """Keep every change: the session's later trials see them."""
        self._session.placed.extend(self.placed)
        if any(p.anti_affinity for p in self.placed):
            self._session.anti_affinity_placed = True
        self._session.evicted.update(self.evicted)
        self._ops.clear()
        self.evicted.clear()
        self.placed.clear()


@dataclass
class Masks:
    """The member requests of one job with their masks installed, and the filters' reasons
    for the nodes left out (kube-scheduler's ``0/N nodes are available`` counts)."""

    requests: list[PodRequest]
    reasons: Counter[str]
    keys: list[str]
    usable: int  # nodes some member may use


def bound_usage(snapshot: ClusterSnapshot) -> QuotaBook:
    """The quota every bound pod with a queue uses (with the snapshot's usage history)."""
    book = QuotaBook(snapshot.queues, history=snapshot.usage_history)
    if snapshot.queues:
        by_queue: dict[str, list[PodRequest]] = {}
        for bound in snapshot.bound:
            if bound.queue is not None and bound.queue in snapshot.queues.specs:
                by_queue.setdefault(bound.queue, []).append(bound.info.request)
        for queue, requests in by_queue.items():
            book.add(queue, demand(requests))
    return book


class Session:
    """One cycle's state: a copy of the arrays, the workload context, what is placed.

    Args:
        snapshot: the cycle's input (never changed).
        policy: the score plugin that picks a node for each pod.
        ctx: the workload context the policy scores with.
        filters: the static filter plugins, in order.
    """

    def __init__(
        self,
        snapshot: ClusterSnapshot,
        *,
        policy: Policy,
        ctx: PlanContext,
        filters: Sequence[Filter],
        ordering: Ordering | None = None,
        strict: bool = False,
    ) -> None:
        self.snapshot = snapshot
        #: The default ordering (a queue may name its own).
        self.ordering = ordering if ordering is not None else ORDERINGS.get_or_raise("priority")
        #: Whether a queue stops at its first job that does not fit (backfill then decides
        #: what may go around it); otherwise later jobs are tried (best effort).
        self.strict = strict
        #: Quota usage: every bound pod with a queue, then what this cycle admits.
        self.book = bound_usage(snapshot)
        #: Running gangs by key (preemption's and backfill's facts about them).
        self.running = {job.key: job for job in snapshot.running}
        #: Each gang's bound pods that hold capacity (indices into ``snapshot.bound``).
        self.gang_rows: dict[tuple[str, str], list[int]] = {}
        for i, (bound, held) in enumerate(zip(snapshot.bound, snapshot.base.held, strict=False)):
            if bound.gang is not None and held is not None:
                self.gang_rows.setdefault(bound.gang, []).append(i)
        #: What the actions admitted so far, in order.
        self.admitted: list[Admit] = []
        #: Queues a strict allocate stopped at: queue -> (its head, the jobs behind it with
        #: their order keys, in order).
        self.blocked: dict[str | None, tuple[Job, list[tuple[SortKey, Job]]]] = {}
        self.state: ClusterState = snapshot.base.state.copy()
        self.policy = policy
        self.ctx = ctx
        self.filters = tuple(filters)
        self.evicted: set[int] = set()
        self.placed: list[PlacedPod] = []
        #: Node name -> row of the arrays.
        self.row_of = {name: row for row, name in enumerate(self.state.names)}
        row_of = self.row_of
        for bound, held in zip(snapshot.bound, snapshot.base.held, strict=False):
            if held is not None:
                info = bound.info
                self.placed.append(
                    PlacedPod(info.namespace, info.labels, row_of[bound.node], info.anti_affinity)
                )
        #: Whether any placed pod has anti-affinity terms (else only a job's own count).
        self.anti_affinity_placed = any(p.anti_affinity for p in self.placed)
        #: Jobs the actions so far left unplaced, by key, with why (in the cycle's order).
        self.unplaced: dict[tuple[str, str], Wait] = {}
        self._static: dict[tuple[object, ...], tuple[BoolArray, Counter[str]]] = (
            snapshot.filter_cache if snapshot.filter_cache is not None else {}
        )
        self._serial = 0

    def statement(self) -> Statement:
        return Statement(self)

    def queue_of(self, job: Job) -> str | None:
        """The queue whose quota ``job`` uses (None: none; the queues may not have it)."""
        return self.snapshot.queues.resolve(job.queue, job.namespace)

    def ordering_of(self, queue: str | None) -> Ordering:
        spec = self.snapshot.queues.specs.get(queue) if queue is not None else None
        if spec is not None and spec.ordering is not None:
            return ORDERINGS.get_or_raise(spec.ordering)
        return self.ordering

    def order_key(self, job: Job, queue: str | None) -> SortKey:
        """``job``'s place in its queue (smallest first)."""
        return self.ordering_of(queue).key(job, job.gpus, self.snapshot.now_s)

    def install_masks(self, job: Job, members: Sequence[PodInfo], *, preferred: bool) -> Masks:
        """Give each member's request a mask of the nodes the filters allow it now (static
        filters, then anti-affinity against what is placed); with ``preferred``, only the
        nodes of its highest preferred node-affinity weight among those. Call
        :meth:`remove_masks` when the job is decided."""
        nodes = self.snapshot.nodes
        reasons: Counter[str] = Counter()
        requests: list[PodRequest] = []
        keys: list[str] = []
        usable = np.zeros(len(nodes), dtype=np.bool_)
        by_signature: dict[tuple[object, ...], tuple[str, bool]] = {}
        for info in members:
            signature = (
                info.constraint_signature(),
                info.anti_affinity,
                tuple(sorted(info.labels.items())),
            )
            if signature not in by_signature:
                mask, why = self._static_mask(info, managed=job.managed)
                first = not by_signature
                if info.anti_affinity or self.anti_affinity_placed:
                    blocked = anti_affinity_blocked(info, nodes, self.placed) & mask
                    if blocked.any():
                        why = why + Counter({ANTI_AFFINITY: int(blocked.sum())})
                    mask = mask & ~blocked
                if preferred and info.preferred_terms and mask.any():
                    weights = preferred_weight(info, nodes)
                    mask = mask & (weights == weights[mask].max())
                if first:
                    reasons = why
                spread = any(
                    t.topology_key == HOSTNAME and t.selects(info.namespace, info.labels)
                    for t in info.anti_affinity
                )
                key = ""
                if spread or not mask.all():
                    self._serial += 1
                    key = f"m{self._serial}"
                    self.state.masks[key] = mask
                    keys.append(key)
                usable |= mask
                by_signature[signature] = (key, spread)
            key, spread = by_signature[signature]
            requests.append(replace(info.request, mask_key=key, spread=spread))
        return Masks(requests, reasons, keys, int(usable.sum()))

    def remove_masks(self, masks: Masks) -> None:
        for key in masks.keys:
            self.state.masks.pop(key, None)
            self.state.spread_count.pop(key, None)

    def _static_mask(self, info: PodInfo, *, managed: bool) -> tuple[BoolArray, Counter[str]]:
        signature = (info.constraint_signature(), managed)
        if signature not in self._static:
            self._static[signature] = static_mask(
                info, self.snapshot.nodes, self.filters, managed=managed
            )
        mask, reasons = self._static[signature]
        return mask.copy(), Counter(reasons)

"""Queues: quota accounting with borrowing and lending, and dominant-resource fair share.

A :class:`QueueSpec` is the planner's view of a ``Queue`` object (``stowage.io/v1alpha1``):
a weight, a nominal quota per resource (optionally per GPU model), how much beyond its
nominal quota the queue may borrow and how much of its own it lends, and a parent, so that
queues form trees. Siblings share their unused quota as a Kueue cohort does: a queue may
use its nominal quota at any time, and borrow what others in its tree leave unused and may
lend. Resources are counted in the planner's units (milli-GPU, milli-CPU, MiB).

:class:`QuotaBook` keeps one cycle's usage (bound pods plus what the cycle admits) and
answers two questions: does a job's demand fit its queue's quota now (:meth:`QuotaBook.check`,
with the reason when not), and which queue is served next (:meth:`QuotaBook.share`: the
weighted dominant share of what a queue borrows, plus its decayed past usage where the
builder supplies it, as Kueue's fair sharing and KAI's time-based fair share do).

Pure: no I/O; the controller and the simulators build the specs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from optimizer.planner.cluster import PodRequest

GPU: Final = "nvidia.com/gpu"
CPU: Final = "cpu"
MEMORY: Final = "memory"

#: (resource name, GPU model or "" for any model).
ResourceKey = tuple[str, str]


def key_label(key: ResourceKey) -> str:
    """``nvidia.com/gpu`` or ``nvidia.com/gpu (H100)``, for reasons."""
    return f"{key[0]} ({key[1]})" if key[1] else key[0]


def amount_label(key: ResourceKey, amount: float) -> str:
    """An amount in the unit people use: GPUs, CPUs, GiB."""
    if key[0] == GPU:
        return f"{amount / 1000:g} GPUs"
    if key[0] == CPU:
        return f"{amount / 1000:g} CPUs"
    return f"{amount / 1024:g} GiB"


@dataclass(frozen=True)
class Quota:
    """One resource of a queue. ``borrowing_limit`` None: may borrow without limit;
    ``lending_limit`` None: lends all of its unused nominal quota."""

    nominal: int
    borrowing_limit: int | None = None
    lending_limit: int | None = None

    def __post_init__(self) -> None:
        if self.nominal < 0:
            raise ValueError(f"nominal quota {self.nominal} is negative")
        if self.borrowing_limit is not None and self.borrowing_limit < 0:
            raise ValueError(f"borrowing limit {self.borrowing_limit} is negative")
        if self.lending_limit is not None and not 0 <= self.lending_limit <= self.nominal:
            raise ValueError(
                f"lending limit {self.lending_limit} is outside 0..nominal ({self.nominal})"
            )


@dataclass(frozen=True)
class QueueSpec:
    """A queue: ``parent`` names another queue (None: a root)."""

    name: str
    parent: str | None = None
    weight: float = 1.0
    quotas: Mapping[ResourceKey, Quota] = field(default_factory=dict)
    #: Namespaces whose jobs go to this queue when they name none.
    namespaces: frozenset[str] = frozenset()
    #: How jobs are ordered inside the queue (a name in optimizer.planner.ordering; None:
    #: the cycle's default).
    ordering: str | None = None
    #: A job of this queue runs at least this long before preemption may take it.
    min_runtime_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.weight > 0 or not math.isfinite(self.weight):
            raise ValueError(f"queue {self.name}: weight must be a positive number")


class QueueError(ValueError):
    """The queues do not form a valid set (a cycle, a missing parent, a duplicate)."""


def demand(requests: Iterable[PodRequest]) -> dict[ResourceKey, int]:
    """What pods ask for, by resource (any model: the model is known once placed)."""
    total = {(GPU, ""): 0, (CPU, ""): 0, (MEMORY, ""): 0}
    for pod in requests:
        total[(GPU, "")] += pod.gpu_request_milli
        total[(CPU, "")] += pod.cpu_milli
        total[(MEMORY, "")] += pod.memory_mib
    return total


def placed_demand(placed: Iterable[tuple[PodRequest, str]]) -> dict[ResourceKey, int]:
    """What pods placed on GPUs of the given models take, by resource and per model."""
    pairs = list(placed)
    total = demand(pod for pod, _ in pairs)
    for pod, model in pairs:
        if pod.num_gpu:
            key = (GPU, model)
            total[key] = total.get(key, 0) + pod.gpu_request_milli
    return total


class QueueSet:
    """Queues by name, as a forest; the namespace default of each namespace.

    Raises:
        QueueError: a parent that is not a queue, a cycle, or a namespace claimed twice.
    """

    def __init__(self, specs: Sequence[QueueSpec]) -> None:
        self.specs: dict[str, QueueSpec] = {}
        for spec in specs:
            if spec.name in self.specs:
                raise QueueError(f"queue {spec.name} is defined twice")
            self.specs[spec.name] = spec
        self.children: dict[str, list[str]] = {name: [] for name in self.specs}
        for spec in self.specs.values():
            if spec.parent is not None:
                if spec.parent not in self.specs:
                    raise QueueError(f"queue {spec.name}: parent {spec.parent} is not a queue")
                self.children[spec.parent].append(spec.name)
        self.path: dict[str, tuple[str, ...]] = {}
        for name in self.specs:
            chain = [name]
            while (parent := self.specs[chain[-1]].parent) is not None:
                if parent in chain:
                    raise QueueError(f"queue {name}: its parents form a cycle")
                chain.append(parent)
            self.path[name] = tuple(chain)
        self.by_namespace: dict[str, str] = {}
        for spec in self.specs.values():
            for namespace in spec.namespaces:
                other = self.by_namespace.setdefault(namespace, spec.name)
                if other != spec.name:
                    raise QueueError(
                        f"namespace {namespace} is served by both {other} and {spec.name}"
                    )
        #: Resources some queue names, by tree root: the others are not limited there.
        self.limited: dict[str, set[ResourceKey]] = {}
        for name, spec in self.specs.items():
            self.limited.setdefault(self.path[name][-1], set()).update(spec.quotas)
        self.nominal: dict[str, dict[ResourceKey, int]] = {
            name: self._subtree_nominal(name) for name in self.specs
        }

    def __bool__(self) -> bool:
        return bool(self.specs)

    def resolve(self, named: str | None, namespace: str) -> str | None:
        """The queue a job is in: the one it names, else its namespace's default; None
        when there are no queues at all (a queue name is then only a label)."""
        if not self.specs:
            return None
        return named if named is not None else self.by_namespace.get(namespace)

    def subtree(self, name: str) -> list[str]:
        out, todo = [], [name]
        while todo:
            current = todo.pop()
            out.append(current)
            todo.extend(self.children[current])
        return out

    def _subtree_nominal(self, name: str) -> dict[ResourceKey, int]:
        total: dict[ResourceKey, int] = {}
        for member in self.subtree(name):
            for key, quota in self.specs[member].quotas.items():
                total[key] = total.get(key, 0) + quota.nominal
        return total


@dataclass
class QuotaBook:
    """One cycle's quota usage per queue (each queue's own jobs; subtrees are summed).

    ``history`` is each queue's decayed past borrowing per resource (:class:`UsageHistory`
    keeps it across cycles), for time-based fair share; empty: shares use current borrowing
    only.
    """

    queues: QueueSet
    usage: dict[str, dict[ResourceKey, int]] = field(default_factory=dict)
    history: Mapping[str, Mapping[ResourceKey, float]] = field(default_factory=dict)
    #: Per queue, how often its subtree's usage changed: equal versions, equal answers.
    version: dict[str, int] = field(default_factory=dict)

    def add(self, queue: str, amounts: Mapping[ResourceKey, int], *, sign: int = 1) -> None:
        """Count (or, with ``sign=-1``, stop counting) ``amounts`` against ``queue``."""
        own = self.usage.setdefault(queue, {})
        for key, amount in amounts.items():
            own[key] = own.get(key, 0) + sign * amount
        for name in self.queues.path.get(queue, (queue,)):
            self.version[name] = self.version.get(name, 0) + 1

    def used(self, name: str, key: ResourceKey) -> int:
        """Usage of ``key`` by ``name``'s whole subtree."""
        return sum(self.usage.get(m, {}).get(key, 0) for m in self.queues.subtree(name))

    def _held_back(self, name: str, key: ResourceKey) -> int:
        """Unused quota of ``name``'s subtree that it does not lend outside it."""
        quota = self.queues.specs[name].quotas.get(key)
        own = 0
        if quota is not None and quota.lending_limit is not None:
            kept = self.queues.nominal[name].get(key, 0) - quota.lending_limit
            own = max(0, kept - self.used(name, key))
        inner = sum(self._held_back(child, key) for child in self.queues.children[name])
        return max(own, inner)

    def check(self, queue: str, amounts: Mapping[ResourceKey, int]) -> str | None:
        """None when ``amounts`` more fit ``queue``'s quota now; otherwise why not."""
        path = self.queues.path[queue]
        limited = self.queues.limited[path[-1]]
        for key, amount in amounts.items():
            if amount <= 0 or key not in limited:
                continue
            for level, name in enumerate(path):
                nominal = self.queues.nominal[name].get(key, 0)
                quota = self.queues.specs[name].quotas.get(key)
                root = level == len(path) - 1
                limit: float = math.inf  # borrows from its tree without limit
                if root:
                    limit = nominal  # nothing to borrow from outside a tree
                elif quota is not None and quota.borrowing_limit is not None:
                    limit = nominal + quota.borrowing_limit
                held = 0
                if level > 0:
                    held = sum(
                        self._held_back(child, key)
                        for child in self.queues.children[name]
                        if child != path[level - 1]
                    )
                used = self.used(name, key)
                if used + amount + held > limit:
                    return self._refusal(queue, name, key, amount, used, held, limit, root)
        return None

    def _refusal(
        self,
        queue: str,
        at: str,
        key: ResourceKey,
        amount: int,
        used: int,
        held: int,
        limit: float,
        root: bool,
    ) -> str:
        what = f"needs {amount_label(key, amount)} of {key_label(key)}"
        if at == queue and not root:
            return (
                f"queue {queue} {what}; it uses {amount_label(key, used)} of a nominal "
                f"quota of {amount_label(key, self.queues.nominal[at].get(key, 0))} and may "
                f"borrow {amount_label(key, limit - self.queues.nominal[at].get(key, 0))}"
            )
        free = max(0.0, limit - used - held)
        kept = f" ({amount_label(key, held)} of it kept by queues that do not lend)" if held else ""
        scope = "its queue tree" if root else f"parent queue {at}"
        return f"queue {queue} {what}; {scope} has {amount_label(key, free)} of quota left{kept}"

    def borrowed(self, name: str, key: ResourceKey) -> int:
        """How much of ``key`` ``name``'s subtree uses beyond its nominal quota."""
        return max(0, self.used(name, key) - self.queues.nominal[name].get(key, 0))

    def share(self, name: str, adding: Mapping[ResourceKey, int] | None = None) -> float:
        """The weighted dominant share of what ``name`` borrows (and, with history, has
        used), once ``adding`` more is admitted: fair sharing serves the queue whose share
        after admission is lowest first (Kueue's ``LessThanOrEqualToFinalShare``)."""
        spec = self.queues.specs[name]
        root = self.queues.path[name][-1]
        best = 0.0
        for key in self.queues.limited[root]:
            total = self.queues.nominal[root].get(key, 0)
            if total <= 0:
                continue
            used = self.used(name, key) + (adding or {}).get(key, 0)
            borrowed = max(0, used - self.queues.nominal[name].get(key, 0))
            taken = borrowed + self.history.get(name, {}).get(key, 0.0)
            best = max(best, taken / total)
        return best / spec.weight


@dataclass
class UsageHistory:
    """Each queue's borrowing (use beyond its nominal quota), averaged over time with an
    exponential decay of half-life ``half_life_s``: a queue that borrowed much in the last
    hours counts as borrowing now too, so fair share serves the others first (KAI's
    time-based fair share; Kueue's ``usageHalfLifeTime``). Kept by the caller across
    cycles, on the caller's clock; a queue no longer defined is forgotten."""

    half_life_s: float
    values: dict[str, dict[ResourceKey, float]] = field(default_factory=dict)
    at_s: float | None = None

    def update(self, book: QuotaBook, now_s: float) -> Mapping[str, Mapping[ResourceKey, float]]:
        """Fold ``book``'s borrowing at ``now_s`` in; returns the history to plan with."""
        if not self.half_life_s > 0:
            return {}
        elapsed = 0.0 if self.at_s is None else max(now_s - self.at_s, 0.0)
        keep = 0.5 ** (elapsed / self.half_life_s)
        queues = book.queues
        out: dict[str, dict[ResourceKey, float]] = {}
        for name in queues.specs:
            root = queues.path[name][-1]
            before = self.values.get(name, {})
            now = {key: float(book.borrowed(name, key)) for key in queues.limited.get(root, ())}
            merged = {
                key: before.get(key, 0.0) * keep + now.get(key, 0.0) * (1 - keep)
                for key in set(before) | set(now)
            }
            out[name] = {key: v for key, v in merged.items() if v > 1e-9}
        self.values, self.at_s = out, now_s
        return out

"""``Queue`` objects (``stowage.io/v1alpha1``) read into the planner's queues; pure.

A queue that cannot be read (a bad quantity, a lending limit above its nominal quota, a
parent that is not a queue, a cycle, a namespace another queue already serves) is left out
with the field's path in the reason, and so are the queues below it; every other queue is
used. The CRD's schema and CEL rules refuse most of these at admission already; this is
the controller's own guard, since a CRD can be edited or installed without them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from kubernetes.utils import parse_quantity

from optimizer.planner.ordering import ORDERINGS
from optimizer.planner.plan import ClusterSnapshot, Invalid, Plan
from optimizer.planner.queues import (
    CPU,
    GPU,
    MEMORY,
    QueueSet,
    QueueSpec,
    Quota,
    QuotaBook,
    demand,
    placed_demand,
)

KIND: Final = "Queue"
#: Resource name -> planner units per unit of the quantity.
_SCALE: Final = {GPU: Decimal(1000), CPU: Decimal(1000), MEMORY: Decimal(1) / Decimal(2**20)}


class QueueSpecError(ValueError):
    """A field of a Queue that cannot be read; the message starts with its path."""


@dataclass(frozen=True)
class ReadQueues:
    queues: QueueSet
    invalid: tuple[Invalid, ...] = ()
    #: Queue name -> its object's metadata.generation (status reports which it saw).
    generations: Mapping[str, int] = field(default_factory=dict)


def _amount(resource: str, value: Any, path: str) -> int:
    try:
        quantity = parse_quantity(value)
        amount = int(quantity * _SCALE[resource])
    except (ValueError, TypeError, ArithmeticError):
        raise QueueSpecError(f"{path}: {value!r} is not a quantity") from None
    if quantity < 0:
        raise QueueSpecError(f"{path}: {value!r} is negative")
    return amount


def _number(spec: Mapping[str, Any], field: str, default: float) -> float:
    value = spec.get(field, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise QueueSpecError(f"spec.{field}: {value!r} is not a number") from None
    if not 0 <= number < float("inf"):
        raise QueueSpecError(f"spec.{field}: {value!r} must be a finite number, not negative")
    return number


def _generation(obj: Mapping[str, Any]) -> int:
    """metadata.generation (the API server sets it); 0 when absent or unreadable."""
    try:
        return int((obj.get("metadata") or {}).get("generation") or 0)
    except (TypeError, ValueError, AttributeError, OverflowError):
        return 0


def queue_spec(obj: Mapping[str, Any]) -> QueueSpec:
    """One Queue object; raises QueueSpecError naming the field."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
        raise QueueSpecError("metadata.name: missing")
    spec = obj.get("spec") or {}
    if not isinstance(spec, Mapping):
        raise QueueSpecError("spec: not an object")
    quotas: dict[tuple[str, str], Quota] = {}
    resources = spec.get("resources") or []
    if not isinstance(resources, list):
        raise QueueSpecError("spec.resources: not a list")
    for i, item in enumerate(resources):
        path = f"spec.resources[{i}]"
        if not isinstance(item, Mapping):
            raise QueueSpecError(f"{path}: not an object")
        name = item.get("name")
        if not isinstance(name, str) or name not in _SCALE:
            raise QueueSpecError(f"{path}.name: {name!r} is not one of {', '.join(_SCALE)}")
        model = str(item.get("model") or "")
        if model and name != GPU:
            raise QueueSpecError(f"{path}.model: only {GPU} has models")
        key = (str(name), model)
        if key in quotas:
            raise QueueSpecError(f"{path}: {name} {model or '(any model)'} is listed twice")
        nominal = _amount(name, item.get("nominalQuota", 0), f"{path}.nominalQuota")
        limits = {}
        for limit in ("borrowingLimit", "lendingLimit"):
            value = item.get(limit)
            limits[limit] = None if value is None else _amount(name, value, f"{path}.{limit}")
        try:
            quotas[key] = Quota(nominal, limits["borrowingLimit"], limits["lendingLimit"])
        except ValueError as error:
            raise QueueSpecError(f"{path}: {error}") from None
    namespaces = spec.get("namespaces") or []
    if not isinstance(namespaces, list) or not all(isinstance(n, str) for n in namespaces):
        raise QueueSpecError("spec.namespaces: not a list of names")
    ordering = spec.get("ordering")
    if ordering is not None and (not isinstance(ordering, str) or ordering not in ORDERINGS):
        known = ", ".join(ORDERINGS.names())
        raise QueueSpecError(f"spec.ordering: {ordering!r} is not one of {known}")
    parent = spec.get("parent")
    if parent is not None and not isinstance(parent, str):
        raise QueueSpecError("spec.parent: not a queue name")
    weight = _number(spec, "weight", 1.0)
    if weight == 0:
        raise QueueSpecError("spec.weight: must be above 0")
    return QueueSpec(
        meta["name"],
        parent=parent,
        weight=weight,
        quotas=quotas,
        namespaces=frozenset(namespaces),
        ordering=ordering,
        min_runtime_s=_number(spec, "preemptMinRuntimeSeconds", 0.0),
    )


def read_queues(objects: Iterable[Any]) -> ReadQueues:
    """Every readable Queue; the others, and the queues below them, as Invalid."""
    specs: dict[str, QueueSpec] = {}
    invalid: list[Invalid] = []
    generations: dict[str, int] = {}
    for obj in objects:
        meta = obj.get("metadata") if isinstance(obj, Mapping) else None
        name = str(meta.get("name") or "<unnamed>") if isinstance(meta, Mapping) else "<unnamed>"
        try:
            if not isinstance(obj, Mapping):
                raise QueueSpecError(f"not a Queue object: {type(obj).__name__}")
            spec = queue_spec(obj)
        except QueueSpecError as error:
            invalid.append(Invalid(KIND, "", name, str(error)))
            continue
        if spec.name in specs:  # a dump can hold one twice; the API server cannot
            invalid.append(Invalid(KIND, "", name, "metadata.name: a second Queue of this name"))
            continue
        specs[spec.name] = spec
        generations[spec.name] = _generation(obj)
    # parents that are missing or form a cycle leave their whole subtree out
    bad: dict[str, str] = {}
    for name in sorted(specs):
        chain = [name]
        while True:
            parent = specs[chain[-1]].parent
            if parent is None:
                break
            if parent not in specs or parent in bad:
                bad[name] = f"spec.parent: {parent} is not a usable queue"
                break
            if parent in chain:
                bad[name] = "spec.parent: the parents form a cycle"
                break
            chain.append(parent)
    served: dict[str, str] = {}
    for name in sorted(specs):
        if name in bad:
            continue
        for namespace in sorted(specs[name].namespaces):
            if namespace in served:
                bad[name] = f"spec.namespaces: {namespace} is already served by {served[namespace]}"
                break
        else:
            for namespace in specs[name].namespaces:
                served[namespace] = name
    changed = True
    while changed:  # children of a queue left out are left out too
        changed = False
        for name, spec in specs.items():
            if name not in bad and spec.parent in bad:
                bad[name] = f"spec.parent: {spec.parent} is left out"
                changed = True
    for name, why in sorted(bad.items()):
        invalid.append(Invalid(KIND, "", name, why))
    kept = [s for n, s in sorted(specs.items()) if n not in bad]
    return ReadQueues(
        QueueSet(kept), tuple(invalid), {n: g for n, g in generations.items() if n not in bad}
    )


def queue_status(
    snapshot: ClusterSnapshot, plan: Plan, generations: Mapping[str, int]
) -> dict[str, dict[str, Any]]:
    """Each queue's status after a cycle: what its jobs hold (bound pods plus this cycle's
    admissions), what it borrows, how many jobs wait and how many are admitted."""
    queues = snapshot.queues
    book = QuotaBook(queues)
    admitted: dict[str, set[tuple[str, str]]] = {name: set() for name in queues.specs}
    for bound in snapshot.bound:
        if bound.queue in queues.specs and not bound.terminating:
            book.add(bound.queue, demand([bound.info.request]))
            admitted[bound.queue].add(bound.gang or (bound.info.namespace, bound.info.name))
    models = snapshot.base.state.models
    model_of = {
        name: models[snapshot.base.state.model_id[row]]
        for row, name in enumerate(snapshot.base.state.names)
    }
    for admit in plan.admit:
        queue = queues.resolve(admit.job.queue, admit.job.namespace)
        if queue in queues.specs:
            book.add(queue, placed_demand((p.request, model_of[p.node]) for p in admit.pods))
            admitted[queue].add(admit.job.key)
    pending: dict[str, int] = dict.fromkeys(queues.specs, 0)
    for wait in plan.wait:
        queue = queues.resolve(wait.job.queue, wait.job.namespace)
        if queue in pending:
            pending[queue] += 1
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(queues.specs):
        keys = sorted({k for m in queues.subtree(name) for k in book.usage.get(m, {})})
        usage = [
            {
                "name": key[0],
                "model": key[1],
                "amount": _quantity(key, book.used(name, key)),
                "borrowed": _quantity(key, book.borrowed(name, key)),
            }
            for key in keys
            if book.used(name, key) or key in queues.specs[name].quotas
        ]
        out[name] = {
            "observedGeneration": generations.get(name, 0),
            "gpus": _quantity((GPU, ""), book.used(name, (GPU, ""))),
            "borrowedGPUs": _quantity((GPU, ""), book.borrowed(name, (GPU, ""))),
            "pendingJobs": pending[name],
            "admittedJobs": len(admitted[name]),
            "usage": usage,
        }
    return out


def _quantity(key: tuple[str, str], amount: int) -> str:
    """An amount in the planner's units as a Kubernetes quantity (GPUs, CPUs, Mi)."""
    if key[0] == MEMORY:
        return f"{amount}Mi"
    whole, milli = divmod(amount, 1000)
    return str(whole) if milli == 0 else f"{amount}m"

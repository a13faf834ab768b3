"""Reading pods and nodes (API JSON) into the planner's terms; pure, no API calls.

Gangs are declared on pods, by label or annotation (labels win):

======================================  ==================================================
``stowage.io/gang``                     the gang's name (pods of a namespace with the same
                                        name form one gang)
``stowage.io/gang-size``                min members: nothing is released before this many
``stowage.io/gang-max``                 optional max members (an elastic gang)
``stowage.io/queue``                    the queue the gang waits in (a ``Queue`` object;
                                        Kueue's ``kueue.x-k8s.io/queue-name`` also works;
                                        else the queue serving the namespace)
``stowage.io/topology-required``        a topology level all members must share (``rack``)
``stowage.io/topology-preferred``       a level to try first, falling back to anywhere
``stowage.io/gang-timeout``             seconds to wait before a ``GangTimeout`` event
``stowage.io/runtime-estimate``         how long it runs (``3600``, ``90m``, ``2h``): backfill
                                        reserves room by running jobs' expected ends
``stowage.io/last-checkpoint``          when the job last saved its state (RFC 3339, any
                                        member): preemption loses only the work since
``scheduling.x-k8s.io/pod-group``       compatibility: the gang is the PodGroup, its
                                        ``spec.minMember`` the size
``scheduling.k8s.io/group-name``        compatibility: a Volcano PodGroup, its
                                        ``spec.minMember`` the size, ``spec.queue`` the queue
``kueue.x-k8s.io/pod-group-name``       compatibility: Kueue's plain-pod group, its size
                                        the ``kueue.x-k8s.io/pod-group-total-count``
                                        annotation
PyTorchJob, MPIJob, JobSet,             the framework's own labels: the owner object is the
LeaderWorkerSet pods                    gang (:mod:`optimizer.controller.frameworks`), and
                                        its labels and annotations apply to its pods
======================================  ==================================================

A GPU share is ``nvidia.com/gpu: 1`` plus the annotation ``stowage.io/gpu-milli`` (1-999).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from kubernetes.utils import parse_quantity

from optimizer.controller.errors import MissingObjectError, SpecError
from optimizer.controller.frameworks import MAX_GANG_SIZE, declared_name, owned_gang
from optimizer.planner.cluster import FULL, PodRequest
from shared.labels import (
    GANG,
    GANG_MAX,
    GANG_SIZE,
    GANG_TIMEOUT,
    LAST_CHECKPOINT,
    NON_PREEMPTIBLE,
    POD_GROUP_LABEL,
    QUEUE,
    RUNTIME_ESTIMATE,
    SCHEDULING_GATE,
    TOPOLOGY_PREFERRED,
    TOPOLOGY_REQUIRED,
)

GPU_RESOURCE: Final = "nvidia.com/gpu"
#: Kueue's label naming the LocalQueue of a workload; Stowage reads it as the queue's name.
KUEUE_QUEUE_NAME: Final = "kueue.x-k8s.io/queue-name"
#: Kueue's plain-pod groups: the group's name (label) and how many pods it has (annotation).
KUEUE_POD_GROUP: Final = "kueue.x-k8s.io/pod-group-name"
KUEUE_POD_GROUP_COUNT: Final = "kueue.x-k8s.io/pod-group-total-count"
#: Volcano's annotation naming a pod's PodGroup (scheduling.volcano.sh/v1beta1).
VOLCANO_GROUP: Final = "scheduling.k8s.io/group-name"
GPU_MILLI: Final = "stowage.io/gpu-milli"
#: How long a gang waits before its first GangTimeout event, when it does not say.
DEFAULT_TIMEOUT_S: Final = 600
_OWNERS: Final[Mapping[tuple[str, str, str], Mapping[str, Any]]] = {}


@dataclass(frozen=True)
class GangSpec:
    """A gang as its pods declare it."""

    namespace: str
    name: str
    size: int
    max_size: int | None = None
    queue: str | None = None
    topology_level: str | None = None
    required: bool = True
    timeout_s: int = DEFAULT_TIMEOUT_S

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


def _declared(
    pod: Mapping[str, Any], key: str, defaults: Sequence[Mapping[str, Any]] = ()
) -> str | None:
    """The pod's label ``key``, else its annotation, else the first of ``defaults`` (an
    owner's labels and annotations) that has it."""
    meta = pod.get("metadata", {})
    for source in (meta.get("labels") or {}, meta.get("annotations") or {}, *defaults):
        if key in source:
            return str(source[key])
    return None


def is_gang_member(pod: Mapping[str, Any]) -> bool:
    """Whether the pod declares a gang (or a PodGroup, a Kueue pod group, or belongs to a
    job framework's owner)."""
    return declared_gang(pod) is not None


def declared_gang(pod: Mapping[str, Any]) -> str | None:
    """The gang (or PodGroup, Kueue pod group, framework owner) name the pod declares,
    unvalidated."""
    return (
        _declared(pod, GANG)
        or _declared(pod, POD_GROUP_LABEL)
        or _declared(pod, KUEUE_POD_GROUP)
        or _declared(pod, VOLCANO_GROUP)
        or declared_name(pod)
    )


def declared_queue(
    pod: Mapping[str, Any], defaults: Sequence[Mapping[str, Any]] = ()
) -> str | None:
    """The queue the pod names: ``stowage.io/queue``, else Kueue's ``queue-name`` label
    (the pod's own first, then ``defaults``: its owner's labels and annotations)."""
    return (
        _declared(pod, QUEUE)
        or _declared(pod, KUEUE_QUEUE_NAME)
        or _declared({}, QUEUE, defaults)
        or _declared({}, KUEUE_QUEUE_NAME, defaults)
    )


_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def runtime_estimate(pod: Mapping[str, Any]) -> float | None:
    """``stowage.io/runtime-estimate`` in seconds (``3600``, ``90m``, ``2h``, ``1d``)."""
    text = _declared(pod, RUNTIME_ESTIMATE)
    if text is None:
        return None
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise SpecError(
            f"{RUNTIME_ESTIMATE}={text!r} is not a duration like 3600, 90m or 2h"
        ) from None
    if not 0 < value <= 366 * 86400:
        raise SpecError(f"{RUNTIME_ESTIMATE}={text!r} is outside 1s..366d")
    return value


def last_checkpoint(pod: Mapping[str, Any]) -> float | None:
    """``stowage.io/last-checkpoint`` (RFC 3339) as epoch seconds; None when absent."""
    text = _declared(pod, LAST_CHECKPOINT)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SpecError(
            f"{LAST_CHECKPOINT}={text!r} is not a time like 2026-12-01T10:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise SpecError(f"{LAST_CHECKPOINT}={text!r} has no time zone (end it with Z)")
    return moment.timestamp()


def is_gated(pod: Mapping[str, Any]) -> bool:
    """Whether Stowage's scheduling gate still holds the pod."""
    gates = pod.get("spec", {}).get("schedulingGates") or []
    return any(g.get("name") == SCHEDULING_GATE for g in gates)


def is_preemptible(pod: Mapping[str, Any]) -> bool:
    """False for pods marked ``stowage.io/non-preemptible=true``."""
    return (_declared(pod, NON_PREEMPTIBLE) or "").lower() != "true"


def _int(
    pod: Mapping[str, Any],
    key: str,
    *,
    low: int,
    high: int,
    defaults: Sequence[Mapping[str, Any]] = (),
) -> int | None:
    text = _declared(pod, key, defaults)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise SpecError(f"{key}={text!r} is not a whole number") from None
    if not low <= value <= high:
        raise SpecError(f"{key}={value} is outside {low}..{high}")
    return value


def gang_spec(
    pod: Mapping[str, Any],
    *,
    pod_groups: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
    levels: Sequence[str] = (),
    volcano_groups: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
    owners: Mapping[tuple[str, str, str], Mapping[str, Any]] | None = None,
) -> GangSpec:
    """The gang ``pod`` belongs to; raises :class:`SpecError` saying what is wrong
    (:class:`MissingObjectError` when the PodGroup or framework owner it names is not in
    ``pod_groups``, ``volcano_groups`` or ``owners``: kind, namespace, name -> object)."""
    meta = pod.get("metadata", {})
    namespace = meta.get("namespace") or "default"
    name = _declared(pod, GANG)
    size = _int(pod, GANG_SIZE, low=1, high=MAX_GANG_SIZE)
    group = _declared(pod, POD_GROUP_LABEL)
    if name is None and group is not None:
        found = (pod_groups or {}).get((namespace, group))
        if found is None:
            raise MissingObjectError(f"PodGroup {group!r} does not exist in namespace {namespace}")
        name = group
        size = size or int(found.get("spec", {}).get("minMember") or 1)
    kueue_group = _declared(pod, KUEUE_POD_GROUP)
    if name is None and kueue_group is not None:
        name = kueue_group
        size = size or _int(pod, KUEUE_POD_GROUP_COUNT, low=1, high=MAX_GANG_SIZE)
        if size is None:
            raise SpecError(f"{KUEUE_POD_GROUP}={name} needs {KUEUE_POD_GROUP_COUNT}")
    volcano = _declared(pod, VOLCANO_GROUP)
    queue = declared_queue(pod)
    if name is None and volcano is not None:
        found = (volcano_groups or {}).get((namespace, volcano))
        if found is None:
            raise MissingObjectError(
                f"Volcano PodGroup {volcano!r} does not exist in namespace {namespace}"
            )
        name = volcano
        spec = found.get("spec") or {}
        size = size or int(spec.get("minMember") or 1)
        queue = queue or (str(spec["queue"]) if spec.get("queue") else None)
    owner_max: int | None = None
    defaults: Sequence[Mapping[str, Any]] = ()
    if name is None:
        owned = owned_gang(pod, owners or _OWNERS)
        if owned is not None:
            name, defaults, owner_max = owned.name, owned.metadata, owned.max_size
            size = size or owned.size
            queue = queue or declared_queue(pod, defaults) or owned.queue
    if name is None:
        raise SpecError(f"the pod declares no {GANG}")
    if size is None:
        raise SpecError(f"{GANG}={name} needs {GANG_SIZE} (the number of members)")
    max_size = _int(pod, GANG_MAX, low=1, high=MAX_GANG_SIZE, defaults=defaults) or owner_max
    if max_size is not None and max_size < size:
        raise SpecError(f"{GANG_MAX}={max_size} is below {GANG_SIZE}={size}")
    required = _declared(pod, TOPOLOGY_REQUIRED, defaults)
    preferred = _declared(pod, TOPOLOGY_PREFERRED, defaults)
    if required and preferred:
        raise SpecError(f"set {TOPOLOGY_REQUIRED} or {TOPOLOGY_PREFERRED}, not both")
    level = required or preferred
    if level and levels and level not in levels:
        raise SpecError(f"unknown topology level {level!r}; known: {', '.join(levels)}")
    timeout = _int(pod, GANG_TIMEOUT, low=1, high=7 * 24 * 3600, defaults=defaults)
    return GangSpec(
        namespace=namespace,
        name=name,
        size=size,
        max_size=max_size,
        queue=queue,
        topology_level=level or None,
        required=bool(required),
        timeout_s=timeout or DEFAULT_TIMEOUT_S,
    )


#: Resources with their own columns in the planner; everything else is an ``extra``.
_OWN_COLUMNS: Final = frozenset({"cpu", "memory", GPU_RESOURCE})
#: The kubelet's default ``--max-pods``, for a node object that does not say (test fixtures).
DEFAULT_MAX_PODS: Final = 110
#: Largest amount of any resource, in the planner's units (int64 with room to add).
MAX_AMOUNT: Final = 2**62
#: GPUs one node may offer (the contract's bound on GPUs in a report).
MAX_NODE_GPUS: Final = 256


def _amounts(resources: Mapping[str, Any] | None) -> dict[str, Decimal]:
    return {str(k): parse_quantity(v) for k, v in (resources or {}).items()}


def _container_requests(container: Mapping[str, Any]) -> dict[str, Decimal]:
    """A container's requests; a resource with only a limit requests its limit (the API
    server defaults requests from limits)."""
    resources = container.get("resources") or {}
    requests = _amounts(resources.get("requests"))
    for name, limit in _amounts(resources.get("limits")).items():
        requests.setdefault(name, limit)
    return requests


def _effective_requests(spec: Mapping[str, Any]) -> dict[str, Decimal]:
    """kube-scheduler's pod request: the sum over containers, at least the largest init
    container, plus the pod's overhead."""
    total: dict[str, Decimal] = {}
    for container in spec.get("containers") or []:
        for name, amount in _container_requests(container).items():
            total[name] = total.get(name, Decimal(0)) + amount
    for container in spec.get("initContainers") or []:
        for name, amount in _container_requests(container).items():
            total[name] = max(total.get(name, Decimal(0)), amount)
    for name, amount in _amounts(spec.get("overhead")).items():
        total[name] = total.get(name, Decimal(0)) + amount
    return total


def _ceil(value: Decimal) -> int:
    return int(value.to_integral_value(rounding="ROUND_CEILING"))


def _bounded(name: str, value: int, *, high: int = MAX_AMOUNT) -> int:
    if not 0 <= value <= high:
        raise SpecError(f"{name}: {value} is outside 0..{high}")
    return value


def pod_request(pod: Mapping[str, Any]) -> PodRequest:
    """What the pod holds on a node: CPU (milli), memory (MiB), GPUs, and every other
    resource as an ``extra`` (``pods``: 1 for every pod). Rounded up, so the planner never
    thinks a node roomier than kube-scheduler does."""
    spec = pod.get("spec") or {}
    try:
        need = _effective_requests(spec)
        cpu = _bounded("cpu", _ceil(need.get("cpu", Decimal(0)) * 1000))
        memory = _bounded("memory", _ceil(need.get("memory", Decimal(0)) / (1024 * 1024)))
        gpus = _bounded(GPU_RESOURCE, _ceil(need.get(GPU_RESOURCE, Decimal(0))), high=MAX_NODE_GPUS)
        extra = tuple(
            sorted(
                (name, _bounded(name, _ceil(amount)))
                for name, amount in need.items()
                if name not in _OWN_COLUMNS and amount != 0
            )
        )
    except (ValueError, ArithmeticError, TypeError, AttributeError) as error:
        raise SpecError(f"unreadable resource request: {error}") from None
    milli = FULL
    share = _declared(pod, GPU_MILLI)
    if share is not None:
        if gpus != 1:
            raise SpecError(f"{GPU_MILLI} needs exactly one {GPU_RESOURCE}, not {gpus}")
        milli = _int(pod, GPU_MILLI, low=1, high=FULL) or FULL
    return PodRequest(
        name=(pod.get("metadata") or {}).get("name", ""),
        cpu_milli=cpu,
        memory_mib=memory,
        num_gpu=gpus,
        gpu_milli=milli if gpus else 0,
        extra=(("pods", 1), *extra),
    )


def node_allocatable(node: Mapping[str, Any]) -> tuple[int, int, int, dict[str, int]]:
    """(milli-CPU, MiB, GPUs, every other resource) the node offers to pods, rounded down;
    :class:`SpecError` for a negative or absurd amount."""
    allocatable = _amounts((node.get("status") or {}).get("allocatable"))
    cpu = _bounded("cpu", int(allocatable.get("cpu", Decimal(0)) * 1000))
    memory = _bounded("memory", int(allocatable.get("memory", Decimal(0)) / (1024 * 1024)))
    gpus = _bounded(
        GPU_RESOURCE, int(allocatable.get(GPU_RESOURCE, Decimal(0))), high=MAX_NODE_GPUS
    )
    extra = {
        name: _bounded(name, int(v)) for name, v in allocatable.items() if name not in _OWN_COLUMNS
    }
    extra.setdefault("pods", DEFAULT_MAX_PODS)
    return cpu, memory, gpus, extra


def pinned_node(pod: Mapping[str, Any]) -> str | None:
    """The node a required hostname affinity pins the pod to (what Stowage writes)."""
    affinity = pod.get("spec", {}).get("affinity") or {}
    required = (affinity.get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in required.get("nodeSelectorTerms") or []:
        for expression in term.get("matchExpressions") or []:
            if (
                expression.get("key") == "kubernetes.io/hostname"
                and expression.get("operator") == "In"
                and len(expression.get("values") or []) == 1
            ):
                return str(expression["values"][0])
    return None


def pin_patch(pod: Mapping[str, Any], node: str) -> list[dict[str, Any]]:
    """A JSON patch that adds a required ``kubernetes.io/hostname In [node]`` to every node
    selector term (Kubernetes lets a gated pod's affinity be narrowed, never widened),
    guarded by the pod's resourceVersion."""
    expression = {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
    affinity = dict(pod.get("spec", {}).get("affinity") or {})
    node_affinity = dict(affinity.get("nodeAffinity") or {})
    required = dict(node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = [dict(t) for t in required.get("nodeSelectorTerms") or []] or [{}]
    for term in terms:
        term["matchExpressions"] = [*(term.get("matchExpressions") or []), expression]
    required["nodeSelectorTerms"] = terms
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = required
    affinity["nodeAffinity"] = node_affinity
    return [
        _guard(pod),
        {"op": "add", "path": "/spec/affinity", "value": affinity},
    ]


def ungate_patch(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A JSON patch that removes Stowage's scheduling gate (and no other), guarded."""
    gates = [
        g
        for g in pod.get("spec", {}).get("schedulingGates") or []
        if g.get("name") != SCHEDULING_GATE
    ]
    return [_guard(pod), {"op": "replace", "path": "/spec/schedulingGates", "value": gates}]


def _guard(pod: Mapping[str, Any]) -> dict[str, Any]:
    version = pod["metadata"]["resourceVersion"]
    return {"op": "test", "path": "/metadata/resourceVersion", "value": version}

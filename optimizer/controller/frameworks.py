"""Gangs of the job frameworks people already submit, recognised without Stowage labels.

A pod created by one of these controllers carries the controller's own labels; the gang
is the owner object (or one group of it) and its size is read from the owner's spec, so a
user submits the manifest unchanged once the namespace has ``stowage.io/enabled=true``:

=================  ===========================================  ==============================
framework          pods labelled                                one gang, of size
=================  ===========================================  ==============================
PyTorchJob         ``training.kubeflow.org/job-name`` (operator  the job: the sum of its replica
(kubeflow.org/v1)  ``pytorchjob-controller``)                   specs' replicas, or
                                                                ``runPolicy.schedulingPolicy.
                                                                minAvailable``; an
                                                                ``elasticPolicy`` makes it
                                                                elastic (``minReplicas``
                                                                workers at least)
MPIJob             ``training.kubeflow.org/job-name`` (operator  the job: launcher + workers, or
(kubeflow.org/     ``mpi-operator`` or ``mpijob-controller``)   ``minAvailable``
v2beta1)
JobSet             ``jobset.sigs.k8s.io/jobset-name``           the JobSet: replicas x pods per
(jobset.x-k8s.io/                                               Job, summed over replicated
v1alpha2)                                                       jobs; one gang per replicated
                                                                job with the annotation
                                                                ``stowage.io/gang-scope:
                                                                replicated-job`` or a
                                                                ``startupPolicyOrder: InOrder``
                                                                (whose later jobs are created
                                                                only after earlier ones run)
LeaderWorkerSet    ``leaderworkerset.sigs.k8s.io/name`` and     one group (leader + workers):
(leaderworkerset.  ``.../group-index``                          ``leaderWorkerTemplate.size``;
x-k8s.io/v1)                                                    with ``startupPolicy:
                                                                LeaderReady`` the leader first,
                                                                then its workers
=================  ===========================================  ==============================

The owner's labels and annotations also apply to its pods where the pods do not say
(``stowage.io/queue``, Kueue's ``kueue.x-k8s.io/queue-name``, topology, timeout), because
Kueue users label the job, not its pod template. Pure: the owners are listed by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from optimizer.controller.errors import MissingObjectError, SpecError
from shared.labels import GANG_SCOPE

MAX_GANG_SIZE: Final = 10_000

KUBEFLOW_JOB_NAME: Final = "training.kubeflow.org/job-name"
KUBEFLOW_OPERATOR: Final = "training.kubeflow.org/operator-name"
JOBSET_NAME: Final = "jobset.sigs.k8s.io/jobset-name"
JOBSET_REPLICATED_JOB: Final = "jobset.sigs.k8s.io/replicatedjob-name"
LWS_NAME: Final = "leaderworkerset.sigs.k8s.io/name"
LWS_GROUP: Final = "leaderworkerset.sigs.k8s.io/group-index"
LWS_WORKER: Final = "leaderworkerset.sigs.k8s.io/worker-index"
#: The group size the LeaderWorkerSet controller writes on each of its pods.
LWS_SIZE: Final = "leaderworkerset.sigs.k8s.io/size"
#: ``stowage.io/gang-scope`` on a JobSet: ``jobset`` (default) or ``replicated-job``.
SCOPE_JOBSET: Final = "jobset"
SCOPE_REPLICATED_JOB: Final = "replicated-job"


@dataclass(frozen=True)
class Framework:
    """A job controller's owner resource: what to list, and how its pods are labelled."""

    kind: str
    group: str
    version: str
    plural: str


PYTORCH_JOB: Final = Framework("PyTorchJob", "kubeflow.org", "v1", "pytorchjobs")
MPI_JOB: Final = Framework("MPIJob", "kubeflow.org", "v2beta1", "mpijobs")
JOB_SET: Final = Framework("JobSet", "jobset.x-k8s.io", "v1alpha2", "jobsets")
LEADER_WORKER_SET: Final = Framework(
    "LeaderWorkerSet", "leaderworkerset.x-k8s.io", "v1", "leaderworkersets"
)
FRAMEWORKS: Final = (PYTORCH_JOB, MPI_JOB, JOB_SET, LEADER_WORKER_SET)
_BY_KIND: Final = {f.kind: f for f in FRAMEWORKS}
_KUBEFLOW_OPERATORS: Final = {
    "pytorchjob-controller": PYTORCH_JOB,
    "mpi-operator": MPI_JOB,
    "mpijob-controller": MPI_JOB,
}


@dataclass(frozen=True)
class OwnedGang:
    """The gang a framework pod belongs to, as its owner defines it."""

    framework: Framework
    owner: str
    name: str
    size: int
    max_size: int | None = None
    #: A queue the owner's spec names (Kubeflow's ``runPolicy.schedulingPolicy.queue``).
    queue: str | None = None
    #: The owner's labels, then its annotations: defaults for what the pod does not say.
    metadata: tuple[Mapping[str, Any], ...] = field(default=(), compare=False)


def _labels(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return (pod.get("metadata") or {}).get("labels") or {}


def owner_of(pod: Mapping[str, Any]) -> tuple[Framework, str] | None:
    """The framework and owner name the pod's labels name (None: not a framework pod)."""
    labels = _labels(pod)
    if KUBEFLOW_JOB_NAME in labels:
        framework = _KUBEFLOW_OPERATORS.get(str(labels.get(KUBEFLOW_OPERATOR)))
        if framework is None:
            references = (pod.get("metadata") or {}).get("ownerReferences") or []
            kinds = {str(r.get("kind")) for r in references if isinstance(r, Mapping)}
            framework = next((f for f in (PYTORCH_JOB, MPI_JOB) if f.kind in kinds), None)
        return None if framework is None else (framework, str(labels[KUBEFLOW_JOB_NAME]))
    if JOBSET_NAME in labels:
        return JOB_SET, str(labels[JOBSET_NAME])
    if LWS_NAME in labels:
        return LEADER_WORKER_SET, str(labels[LWS_NAME])
    return None


def declared_name(pod: Mapping[str, Any]) -> str | None:
    """The gang name the pod's framework labels imply, before its owner is read."""
    found = owner_of(pod)
    if found is None:
        return None
    framework, owner = found
    if framework is LEADER_WORKER_SET:
        return f"{owner}-{_labels(pod).get(LWS_GROUP, '')}"
    return owner


def frameworks_of(pods: Iterable[Any]) -> set[Framework]:
    """The frameworks whose owners a cycle must list (only those some pod names)."""
    found: set[Framework] = set()
    for pod in pods:
        try:
            owner = owner_of(pod)
        except (AttributeError, TypeError):
            continue
        if owner is not None:
            found.add(owner[0])
    return found


def index_owners(objects: Iterable[Any]) -> dict[tuple[str, str, str], Mapping[str, Any]]:
    """Owner objects by (kind, namespace, name); anything unreadable is left out (a pod
    that names it then says its owner is missing)."""
    out: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    for obj in objects:
        if not isinstance(obj, Mapping) or not isinstance(obj.get("metadata"), Mapping):
            continue
        kind, meta = obj.get("kind"), obj["metadata"]
        if kind in _BY_KIND and meta.get("name"):
            out[(str(kind), str(meta.get("namespace") or "default"), str(meta["name"]))] = obj
    return out


def _count(value: Any, path: str, *, default: int, low: int = 0) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{path}: {value!r} is not a whole number")
    if not low <= value <= MAX_GANG_SIZE:
        raise SpecError(f"{path}: {value} is outside {low}..{MAX_GANG_SIZE}")
    return value


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{path} is not an object")
    return value


def owned_gang(
    pod: Mapping[str, Any], owners: Mapping[tuple[str, str, str], Mapping[str, Any]]
) -> OwnedGang | None:
    """The gang of a framework pod, sized by its owner; None for any other pod.

    Raises:
        MissingObjectError: the owner is not (yet) listed.
        SpecError: the owner's spec cannot be read (the message names the field).
    """
    found = owner_of(pod)
    if found is None:
        return None
    framework, name = found
    namespace = str((pod.get("metadata") or {}).get("namespace") or "default")
    owner = owners.get((framework.kind, namespace, name))
    if (
        owner is None
        and framework is LEADER_WORKER_SET
        and LWS_SIZE in ((pod.get("metadata") or {}).get("annotations") or {})
    ):
        owner = {"metadata": {"name": name}, "spec": {}}  # sized by its pods' annotation
    if owner is None:
        raise MissingObjectError(
            f"{framework.kind} {name!r} does not exist in namespace {namespace}"
        )
    where = f"{framework.kind} {namespace}/{name}"
    try:
        meta = _mapping(owner.get("metadata"), "metadata")
        spec = _mapping(owner.get("spec"), "spec")
        gang = _READERS[framework.kind](pod, name, spec, meta)
    except SpecError as error:
        raise SpecError(f"{where}: {error}") from None
    except (AttributeError, TypeError, ValueError) as error:
        raise SpecError(f"{where}: unreadable spec: {error}") from None
    metadata = (
        _mapping(meta.get("labels"), "metadata.labels"),
        _mapping(meta.get("annotations"), "metadata.annotations"),
    )
    return OwnedGang(framework, name, gang.name, gang.size, gang.max_size, gang.queue, metadata)


@dataclass(frozen=True)
class _Gang:
    name: str
    size: int
    max_size: int | None = None
    queue: str | None = None


#: Reads an owner's spec into the pod's gang: (pod, owner name, spec, metadata).
_Reader = Callable[[Mapping[str, Any], str, Mapping[str, Any], Mapping[str, Any]], "_Gang"]


def _kubeflow(replicas_field: str, *, elastic: bool) -> _Reader:
    """The reader for a Kubeflow job kind whose replica specs are in ``replicas_field``."""

    def read(
        pod: Mapping[str, Any], name: str, spec: Mapping[str, Any], meta: Mapping[str, Any]
    ) -> _Gang:
        replicas = _mapping(spec.get(replicas_field), f"spec.{replicas_field}")
        counts = {
            str(role): _count(
                _mapping(r, f"spec.{replicas_field}.{role}").get("replicas"),
                f"spec.{replicas_field}.{role}.replicas",
                default=1,
            )
            for role, r in replicas.items()
        }
        total = sum(counts.values())
        if total == 0:
            raise SpecError(f"spec.{replicas_field} has no replicas")
        policy = _mapping(
            _mapping(spec.get("runPolicy"), "spec.runPolicy").get("schedulingPolicy"),
            "spec.runPolicy.schedulingPolicy",
        )
        size = total
        policy_path = "spec.runPolicy.schedulingPolicy.minAvailable"
        elastic_policy = _mapping(spec.get("elasticPolicy"), "spec.elasticPolicy")
        if policy.get("minAvailable") is not None:
            size = _count(policy["minAvailable"], policy_path, default=total, low=1)
        elif elastic and elastic_policy.get("minReplicas") is not None:
            workers = _count(
                elastic_policy["minReplicas"], "spec.elasticPolicy.minReplicas", default=0, low=1
            )
            size = min(total - counts.get("Worker", 0) + workers, total)
        queue = policy.get("queue")
        return _Gang(
            name,
            size,
            max_size=total if total > size else None,
            queue=str(queue) if queue else None,
        )

    return read


def _job_pods(job: Mapping[str, Any], path: str) -> int:
    """Pods one batch/v1 Job runs at once: its parallelism, at most its completions."""
    template = _mapping(_mapping(job.get("template"), f"{path}.template").get("spec"), path)
    parallelism = _count(
        template.get("parallelism"), f"{path}.template.spec.parallelism", default=1
    )
    completions = template.get("completions")
    if completions is not None:
        parallelism = min(
            parallelism, _count(completions, f"{path}.template.spec.completions", default=1)
        )
    return parallelism


def _jobset(
    pod: Mapping[str, Any], name: str, spec: Mapping[str, Any], meta: Mapping[str, Any]
) -> _Gang:
    jobs = spec.get("replicatedJobs")
    if not isinstance(jobs, list) or not jobs:
        raise SpecError("spec.replicatedJobs is not a non-empty list")
    pods: dict[str, int] = {}
    for i, job in enumerate(jobs):
        path = f"spec.replicatedJobs[{i}]"
        job = _mapping(job, path)
        replicas = _count(job.get("replicas"), f"{path}.replicas", default=1)
        pods[str(job.get("name"))] = replicas * _job_pods(job, path)
    scope = str(_mapping(meta.get("annotations"), "metadata.annotations").get(GANG_SCOPE) or "")
    order = _mapping(spec.get("startupPolicy"), "spec.startupPolicy").get("startupPolicyOrder")
    if scope not in ("", SCOPE_JOBSET, SCOPE_REPLICATED_JOB):
        raise SpecError(f"{GANG_SCOPE}={scope!r}: use {SCOPE_JOBSET} or {SCOPE_REPLICATED_JOB}")
    if scope == SCOPE_REPLICATED_JOB or (not scope and order == "InOrder"):
        job_name = str(_labels(pod).get(JOBSET_REPLICATED_JOB))
        if job_name not in pods:
            raise SpecError(f"the pod's replicated job {job_name!r} is not in spec.replicatedJobs")
        return _Gang(f"{name}-{job_name}", max(pods[job_name], 1))
    return _Gang(name, max(sum(pods.values()), 1))


def _leader_worker_set(
    pod: Mapping[str, Any], name: str, spec: Mapping[str, Any], meta: Mapping[str, Any]
) -> _Gang:
    labels = _labels(pod)
    group = labels.get(LWS_GROUP)
    if group is None:
        raise SpecError(f"the pod has no {LWS_GROUP} label")
    template = _mapping(spec.get("leaderWorkerTemplate"), "spec.leaderWorkerTemplate")
    if "size" in template:
        size = _count(template["size"], "spec.leaderWorkerTemplate.size", default=1, low=1)
    else:
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        try:
            size = _count(int(str(annotations.get(LWS_SIZE, "1"))), LWS_SIZE, default=1, low=1)
        except ValueError:
            raise SpecError(f"{LWS_SIZE}={annotations.get(LWS_SIZE)!r} is not a number") from None
    group_name = f"{name}-{group}"
    if spec.get("startupPolicy") == "LeaderReady" and size > 1:
        # workers are created only once the leader runs: admit the leader alone, then them
        if str(labels.get(LWS_WORKER, "0")) == "0":
            return _Gang(f"{group_name}-leader", 1)
        return _Gang(f"{group_name}-workers", size - 1)
    return _Gang(group_name, size)


_READERS: Final[dict[str, _Reader]] = {
    PYTORCH_JOB.kind: _kubeflow("pytorchReplicaSpecs", elastic=True),
    MPI_JOB.kind: _kubeflow("mpiReplicaSpecs", elastic=False),
    JOB_SET.kind: _jobset,
    LEADER_WORKER_SET.kind: _leader_worker_set,
}

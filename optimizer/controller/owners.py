"""The workload a pod belongs to: what right-sizing judges as one and annotates.

A pod is right-sized with its siblings under the top controller a user manages:

=====================================  =================================================
the pod has                            its workload
=====================================  =================================================
``training.kubeflow.org/job-name``     the PyTorchJob (or MPIJob, by the operator label)
``jobset.sigs.k8s.io/jobset-name``     the JobSet (not its child Jobs)
``leaderworkerset.sigs.k8s.io/name``   the LeaderWorkerSet
a controller ReplicaSet with the       the Deployment: the ReplicaSet's name less
``pod-template-hash`` label            ``-<pod-template-hash>`` (how the Deployment
                                       controller names it)
another controller ownerReference      that owner (Job, StatefulSet, ReplicaSet, ...)
no controller                          the pod itself
=====================================  =================================================

Pure: the pod's labels and ownerReferences in, a :class:`Workload` out; nothing is listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from optimizer.controller.frameworks import (
    JOB_SET,
    JOBSET_NAME,
    KUBEFLOW_JOB_NAME,
    KUBEFLOW_OPERATOR,
    LEADER_WORKER_SET,
    LWS_NAME,
    MPI_JOB,
    PYTORCH_JOB,
    Framework,
)
from optimizer.forecast.rightsizing import Workload

POD_TEMPLATE_HASH: Final = "pod-template-hash"


@dataclass(frozen=True)
class Resource:
    """Where a workload kind lives in the API: group, version, plural."""

    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


def _of(framework: Framework) -> Resource:
    return Resource(framework.group, framework.version, framework.plural)


#: The workload kinds whose objects Stowage annotates with its recommendations.
ANNOTATED: Final[Mapping[str, Resource]] = {
    "Pod": Resource("", "v1", "pods"),
    "Deployment": Resource("apps", "v1", "deployments"),
    "StatefulSet": Resource("apps", "v1", "statefulsets"),
    "ReplicaSet": Resource("apps", "v1", "replicasets"),
    "Job": Resource("batch", "v1", "jobs"),
    PYTORCH_JOB.kind: _of(PYTORCH_JOB),
    MPI_JOB.kind: _of(MPI_JOB),
    JOB_SET.kind: _of(JOB_SET),
    LEADER_WORKER_SET.kind: _of(LEADER_WORKER_SET),
}


def _framework(kind: str, name: str) -> Workload:
    return Workload(kind, name, ANNOTATED[kind].api_version)


def workload_of(pod: Mapping[str, Any]) -> Workload:
    """The workload ``pod`` belongs to (see the module's table)."""
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    name = str(metadata.get("name") or "")
    if isinstance(labels, Mapping):
        if labels.get(KUBEFLOW_JOB_NAME):
            operator = str(labels.get(KUBEFLOW_OPERATOR) or "")
            kind = MPI_JOB.kind if "mpi" in operator else PYTORCH_JOB.kind
            return _framework(kind, str(labels[KUBEFLOW_JOB_NAME]))
        if labels.get(JOBSET_NAME):
            return _framework(JOB_SET.kind, str(labels[JOBSET_NAME]))
        if labels.get(LWS_NAME):
            return _framework(LEADER_WORKER_SET.kind, str(labels[LWS_NAME]))
    refs = metadata.get("ownerReferences") or []
    controller = next(
        (r for r in refs if isinstance(r, Mapping) and r.get("controller") and r.get("name")),
        None,
    )
    if controller is None:
        return Workload("Pod", name, "v1")
    kind, owner = str(controller.get("kind") or ""), str(controller["name"])
    api_version = str(controller.get("apiVersion") or "")
    template_hash = labels.get(POD_TEMPLATE_HASH) if isinstance(labels, Mapping) else None
    if kind == "ReplicaSet" and template_hash and owner.endswith(f"-{template_hash}"):
        return Workload("Deployment", owner[: -len(template_hash) - 1], "apps/v1")
    return Workload(kind, owner, api_version)

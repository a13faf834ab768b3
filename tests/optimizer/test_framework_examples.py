"""Every worked example of docs/frameworks.md, end to end: the pods the framework's own
controller would create from the manifest go through Stowage's webhook into the fake API
server, and one controller cycle releases each gang whole, in the queue the doc says."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml
from sqlalchemy import Engine

from kubefake import FakeApiServer
from optimizer.api.webhook import AdmissionRequest, AdmissionReview, mutate_pods
from optimizer.controller.admission import ADMITTED
from optimizer.controller.frameworks import FRAMEWORKS
from optimizer.controller.kube import KubeApi
from optimizer.controller.pods import is_gated, pinned_node
from tests.optimizer.conftest import WallClock
from tests.optimizer.test_admission import _admitter, cluster  # noqa: F401 (the fixture)
from tests.optimizer.test_admission import _pod as busy_pod

DOC = Path(__file__).parents[2] / "docs" / "frameworks.md"
_EXAMPLE = re.compile(r"<!-- example: ([\w-]+) -->\n```yaml\n(.*?)```", re.DOTALL)

#: example -> {gang: (pods released together, queue)}: the sentence under each manifest.
EXPECTED: dict[str, dict[str, tuple[int, str | None]]] = {
    "pytorchjob": {"mnist": (4, "research")},
    "pytorchjob-elastic": {"elastic": (4, None)},
    "mpijob": {"pi": (3, None)},
    "jobset": {"pretrain": (4, None)},
    "jobset-per-replicated-job": {"serve-router": (1, None), "serve-shards": (3, None)},
    "leaderworkerset": {"llm-0": (2, None), "llm-1": (2, None)},
    "volcano": {"vjob": (2, "research")},
    "kueue-pod-group": {"kg": (2, "research")},
    "coscheduling": {"cg": (3, None)},
}


def _examples() -> dict[str, list[dict[str, Any]]]:
    return {
        name: [d for d in yaml.safe_load_all(body) if d]
        for name, body in _EXAMPLE.findall(DOC.read_text())
    }


def test_every_example_in_the_doc_is_tested() -> None:
    assert sorted(_examples()) == sorted(EXPECTED)


# -- what each framework's controller creates from its manifest ---------------------------


def _owner_ref(obj: dict[str, Any], kind: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": obj.get("apiVersion", "batch/v1"),
        "kind": kind or obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": f"uid-{obj['metadata']['name']}",
        "controller": True,
    }


def _pod(
    name: str,
    namespace: str,
    spec: dict[str, Any],
    *,
    labels: dict[str, str],
    owner: dict[str, Any],
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations or {},
            "ownerReferences": [owner],
        },
        "spec": dict(spec),
        "status": {"phase": "Pending"},
    }


def _kubeflow_pods(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The training operator (PyTorchJob) and mpi-operator (MPIJob): one pod per replica,
    ``<job>-<role>-<index>``; mpi-operator runs its launcher as a batch Job."""
    meta, spec = job["metadata"], job["spec"]
    mpi = job["kind"] == "MPIJob"
    replicas = spec["mpiReplicaSpecs" if mpi else "pytorchReplicaSpecs"]
    operator = "mpi-operator" if mpi else "pytorchjob-controller"
    pods = []
    for role, replica in replicas.items():
        for i in range(replica.get("replicas", 1)):
            labels = {
                "training.kubeflow.org/job-name": meta["name"],
                "training.kubeflow.org/operator-name": operator,
                "training.kubeflow.org/replica-type": role.lower(),
                "training.kubeflow.org/replica-index": str(i),
                "training.kubeflow.org/job-role": role.lower(),
            }
            owner = _owner_ref(job)
            name = f"{meta['name']}-{role.lower()}-{i}"
            if mpi and role == "Launcher":
                launcher = {"metadata": {"name": f"{meta['name']}-launcher"}, "kind": "Job"}
                owner, name = _owner_ref(launcher), f"{meta['name']}-launcher-x7k2p"
            spec = replica["template"]["spec"]
            pods.append(_pod(name, meta["namespace"], spec, labels=labels, owner=owner))
    return pods


def _jobset_pods(jobset: dict[str, Any]) -> list[dict[str, Any]]:
    """The JobSet controller makes Job ``<jobset>-<replicated job>-<index>``; the Job
    controller makes its pods."""
    meta = jobset["metadata"]
    pods = []
    for rj in jobset["spec"]["replicatedJobs"]:
        job_spec = rj["template"]["spec"]
        count = min(job_spec.get("parallelism", 1), job_spec.get("completions") or 10**6)
        for j in range(rj.get("replicas", 1)):
            job = {"metadata": {"name": f"{meta['name']}-{rj['name']}-{j}"}, "kind": "Job"}
            for k in range(count):
                labels = {
                    "jobset.sigs.k8s.io/jobset-name": meta["name"],
                    "jobset.sigs.k8s.io/replicatedjob-name": rj["name"],
                    "jobset.sigs.k8s.io/job-index": str(j),
                    "jobset.sigs.k8s.io/restart-attempt": "0",
                    "batch.kubernetes.io/job-name": job["metadata"]["name"],
                    "batch.kubernetes.io/job-completion-index": str(k),
                }
                name = f"{job['metadata']['name']}-{k}-q9z4d"
                spec = job_spec["template"]["spec"]
                pods.append(
                    _pod(name, meta["namespace"], spec, labels=labels, owner=_owner_ref(job))
                )
    return pods


def _lws_pods(lws: dict[str, Any]) -> list[dict[str, Any]]:
    """The leader StatefulSet makes ``<lws>-<group>``; each leader's worker StatefulSet
    makes ``<lws>-<group>-<worker>``; every pod carries the group size annotation."""
    meta, template = lws["metadata"], lws["spec"]["leaderWorkerTemplate"]
    size = template.get("size", 1)
    pods = []
    for group in range(lws["spec"].get("replicas", 1)):
        for worker in range(size):
            labels = {
                "leaderworkerset.sigs.k8s.io/name": meta["name"],
                "leaderworkerset.sigs.k8s.io/group-index": str(group),
                "leaderworkerset.sigs.k8s.io/worker-index": str(worker),
            }
            spec = (template.get("leaderTemplate") if worker == 0 else None) or template[
                "workerTemplate"
            ]
            name = f"{meta['name']}-{group}" + (f"-{worker}" if worker else "")
            owner_name = f"{meta['name']}-{group}" if worker else meta["name"]
            owner = {"metadata": {"name": owner_name}, "kind": "StatefulSet"}
            pods.append(
                _pod(
                    name,
                    meta["namespace"],
                    spec["spec"],
                    labels=labels,
                    owner=_owner_ref(owner),
                    annotations={"leaderworkerset.sigs.k8s.io/size": str(size)},
                )
            )
    return pods


_CONTROLLERS = {
    "PyTorchJob": _kubeflow_pods,
    "MPIJob": _kubeflow_pods,
    "JobSet": _jobset_pods,
    "LeaderWorkerSet": _lws_pods,
}
_RESOURCES = {f.kind: f"{f.group}/{f.version}/{f.plural}" for f in FRAMEWORKS} | {
    "Queue": "stowage.io/v1alpha1/queues",
}


def _admit_through_webhook(pod: dict[str, Any]) -> dict[str, Any]:
    review = AdmissionReview(request=AdmissionRequest(uid="r", object=pod, operation="CREATE"))
    response = mutate_pods(review)["response"]
    assert response["allowed"]
    assert "warnings" not in response, response["warnings"]
    patch = json.loads(base64.b64decode(response["patch"])) if "patch" in response else []
    gated: dict[str, Any] = jsonpatch.apply_patch(pod, patch)
    return gated


def _quantities_as_strings(obj: Any) -> Any:
    """The API server returns every resource quantity as a string (``8`` -> ``"8"``)."""
    if isinstance(obj, dict):
        return {
            k: (
                {r: str(q) for r, q in v.items()}
                if k in ("limits", "requests") and isinstance(v, dict)
                else _quantities_as_strings(v)
            )
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [_quantities_as_strings(v) for v in obj]
    return obj


def _submit(server: FakeApiServer, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = []
    for obj in map(_quantities_as_strings, objects):
        kind = obj["kind"]
        if kind == "Pod":
            pods.append(obj)
        elif kind == "PodGroup":
            server.put(f"{obj['apiVersion']}/podgroups", obj)
        else:
            server.put(_RESOURCES[kind], obj)
            pods.extend(_CONTROLLERS.get(kind, lambda _: [])(obj))
    gated = [_admit_through_webhook(p) for p in pods]
    assert all(is_gated(p) for p in gated)  # the webhook gated every pod of the gang
    for pod in gated:
        server.put("v1/pods", pod)
    return gated


@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_a_framework_manifest_submitted_unchanged_is_admitted_whole(
    example: str,
    cluster: tuple[FakeApiServer, KubeApi],  # noqa: F811
    engine: Engine,
) -> None:
    server, api = cluster
    _submit(server, _examples()[example])
    admitter = _admitter(api, engine, WallClock())
    outcomes = {o.gang: o for o in admitter.cycle()}
    plan = admitter.last_plan
    assert plan is not None
    assert not [i for i in plan.invalid if i.kind == "Pod"]
    for gang, (count, queue) in EXPECTED[example].items():
        outcome = outcomes[gang]
        assert outcome.phase == ADMITTED, outcome.message
        assert len(outcome.placement) == count
        for pod_name, node in outcome.placement.items():
            pod = server.get("pods", "ml", pod_name)
            assert pod is not None
            assert not is_gated(pod)
            assert pinned_node(pod) == node
        [admit] = [a for a in plan.admit if a.job.name == gang]
        assert admit.job.queue == queue
        if queue is not None:
            status = server.get("queues", None, queue)
            assert status is not None
            assert status["status"]["admittedJobs"] == len(EXPECTED[example])
    assert set(outcomes) == set(EXPECTED[example])


def test_an_elastic_pytorchjob_starts_with_its_minimum_when_only_that_fits(
    cluster: tuple[FakeApiServer, KubeApi],  # noqa: F811
    engine: Engine,
) -> None:
    server, api = cluster
    for node in ("a1", "a2", "a3", "b1"):  # 2 free nodes left: b2, b3
        server.put("v1/pods", busy_pod(f"busy-{node}", namespace="other", node=node))
    _submit(server, _examples()["pytorchjob-elastic"])
    outcomes = {o.gang: o for o in _admitter(api, engine, WallClock()).cycle()}
    assert outcomes["elastic"].phase == ADMITTED
    assert sorted(outcomes["elastic"].placement.values()) == ["b2", "b3"]


def test_a_pod_whose_job_is_not_there_yet_waits_and_others_go_on(
    cluster: tuple[FakeApiServer, KubeApi],  # noqa: F811
    engine: Engine,
) -> None:
    server, api = cluster
    [job] = map(_quantities_as_strings, _examples()["mpijob"])
    for pod in _kubeflow_pods(job):  # the MPIJob object itself is not (yet) listed
        server.put("v1/pods", _admit_through_webhook(pod))
    _submit(server, _examples()["coscheduling"])
    admitter = _admitter(api, engine, WallClock())
    outcomes = {o.gang: o for o in admitter.cycle()}
    assert outcomes["cg"].phase == ADMITTED
    plan = admitter.last_plan
    assert plan is not None
    reasons = {i.name: i.reason for i in plan.invalid}
    assert reasons["pi-worker-0"] == "MPIJob 'pi' does not exist in namespace ml"
    assert all(is_gated(p) for p in server.items("pods") if p["metadata"]["name"].startswith("pi"))

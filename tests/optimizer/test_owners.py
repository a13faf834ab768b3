"""The workload a pod belongs to, as right-sizing groups and annotates it: a table in the
style of kube-scheduler's plugin tests, one row per way a controller marks its pods."""

from __future__ import annotations

from typing import Any

import pytest

from optimizer.controller.owners import workload_of
from optimizer.controller.rightsizing import container_requests
from optimizer.forecast.rightsizing import Workload


def _pod(
    name: str = "p",
    *,
    labels: dict[str, str] | None = None,
    owners: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}, "ownerReferences": owners or []}}


def _ref(kind: str, name: str, api: str = "apps/v1", *, controller: bool = True) -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind, "name": name, "controller": controller}


@pytest.mark.parametrize(
    ("pod", "want"),
    [
        pytest.param(_pod("solo"), Workload("Pod", "solo"), id="bare-pod"),
        pytest.param(
            _pod(
                "web-7d9f-abc",
                labels={"pod-template-hash": "7d9f"},
                owners=[_ref("ReplicaSet", "web-7d9f")],
            ),
            Workload("Deployment", "web", "apps/v1"),
            id="deployment-through-its-replicaset",
        ),
        pytest.param(
            _pod("rs-x", owners=[_ref("ReplicaSet", "rs")]),
            Workload("ReplicaSet", "rs", "apps/v1"),
            id="bare-replicaset",
        ),
        pytest.param(
            _pod("train-abc", owners=[_ref("Job", "train", "batch/v1")]),
            Workload("Job", "train", "batch/v1"),
            id="job",
        ),
        pytest.param(
            _pod("db-0", owners=[_ref("StatefulSet", "db")]),
            Workload("StatefulSet", "db", "apps/v1"),
            id="statefulset",
        ),
        pytest.param(
            _pod("x", owners=[_ref("Job", "not-mine", "batch/v1", controller=False)]),
            Workload("Pod", "x"),
            id="an-owner-that-is-not-the-controller",
        ),
        pytest.param(
            _pod(
                "bert-worker-0",
                labels={
                    "training.kubeflow.org/job-name": "bert",
                    "training.kubeflow.org/operator-name": "pytorchjob-controller",
                },
                owners=[_ref("PyTorchJob", "bert", "kubeflow.org/v1")],
            ),
            Workload("PyTorchJob", "bert", "kubeflow.org/v1"),
            id="pytorchjob",
        ),
        pytest.param(
            _pod(
                "pi-launcher",
                labels={
                    "training.kubeflow.org/job-name": "pi",
                    "training.kubeflow.org/operator-name": "mpi-operator",
                },
            ),
            Workload("MPIJob", "pi", "kubeflow.org/v2beta1"),
            id="mpijob",
        ),
        pytest.param(
            _pod(
                "big-workers-0-0",
                labels={"jobset.sigs.k8s.io/jobset-name": "big"},
                owners=[_ref("Job", "big-workers-0", "batch/v1")],
            ),
            Workload("JobSet", "big", "jobset.x-k8s.io/v1alpha2"),
            id="jobset-not-its-child-job",
        ),
        pytest.param(
            _pod("vllm-0-1", labels={"leaderworkerset.sigs.k8s.io/name": "vllm"}),
            Workload("LeaderWorkerSet", "vllm", "leaderworkerset.x-k8s.io/v1"),
            id="leaderworkerset",
        ),
    ],
)
def test_workload_of(pod: dict[str, Any], want: Workload) -> None:
    assert workload_of(pod) == want


def test_container_requests_read_requests_then_limits_and_skip_the_unreadable() -> None:
    pod = {
        "spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "2Gi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "2", "memory": "oops"}}},
                {"name": "c"},
                {"resources": {"requests": {"cpu": "1"}}},  # no name: not a container
            ]
        }
    }
    assert container_requests(pod) == {
        "a": {"cpu": 0.5, "memory": 2 * 2**30},
        "b": {"cpu": 2.0},
        "c": {},
    }


@pytest.mark.parametrize(
    "pod",
    [
        pytest.param({"spec": {"containers": [{"name": "c", "resources": "lots"}]}}, id="text"),
        pytest.param(
            {"spec": {"containers": [{"name": "c", "resources": {"requests": ["1"]}}]}},
            id="a-list-of-requests",
        ),
        pytest.param({"spec": {"containers": "nope"}}, id="containers-not-a-list"),
        pytest.param({"spec": None}, id="no-spec"),
    ],
)
def test_unreadable_requests_are_left_out_not_raised(pod: dict[str, Any]) -> None:
    assert all(amounts == {} for amounts in container_requests(pod).values())


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param({"name": "p", "ownerReferences": "x", "labels": ["l"]}, id="wrong-types"),
        pytest.param({"name": "p", "ownerReferences": [{"controller": True}]}, id="no-owner-name"),
        pytest.param(None, id="no-metadata"),
    ],
)
def test_a_broken_pod_is_its_own_workload(metadata: Any) -> None:
    assert workload_of({"metadata": metadata}).kind == "Pod"

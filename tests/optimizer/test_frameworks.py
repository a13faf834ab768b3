"""Job frameworks' gangs: which owner a pod's labels name and how big its gang is, as a
table in the style of kube-scheduler's plugin tests (pods and owners as the API returns
them)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optimizer.controller.errors import MissingObjectError, SpecError
from optimizer.controller.frameworks import (
    JOB_SET,
    LEADER_WORKER_SET,
    MPI_JOB,
    PYTORCH_JOB,
    frameworks_of,
    index_owners,
    owned_gang,
)
from optimizer.controller.pods import GangSpec, gang_spec, is_gang_member

NS = "ml"


def _pod(labels: dict[str, str], annotations: dict[str, str] | None = None, **meta: Any) -> Any:
    return {
        "metadata": {
            "name": "p",
            "namespace": NS,
            "labels": labels,
            "annotations": annotations or {},
            **meta,
        },
        "spec": {"containers": [{"name": "c"}]},
    }


def _owner(kind: str, name: str, spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": NS, **meta}, "spec": spec}


def _pytorch(**spec: Any) -> dict[str, Any]:
    replicas = {"Master": {"replicas": 1}, "Worker": {"replicas": 3}}
    return _owner("PyTorchJob", "mnist", {"pytorchReplicaSpecs": replicas, **spec})


def _jobset(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    jobs = [
        {"name": "driver", "replicas": 1, "template": {"spec": {"parallelism": 1}}},
        {"name": "workers", "replicas": 2, "template": {"spec": {"parallelism": 4}}},
    ]
    return _owner(
        "JobSet",
        "js",
        {"replicatedJobs": jobs, **spec},
        annotations=annotations or {},
    )


KUBEFLOW = {
    "training.kubeflow.org/job-name": "mnist",
    "training.kubeflow.org/operator-name": "pytorchjob-controller",
}
MPI = {
    "training.kubeflow.org/job-name": "pi",
    "training.kubeflow.org/operator-name": "mpi-operator",
}
JOBSET_WORKER = {
    "jobset.sigs.k8s.io/jobset-name": "js",
    "jobset.sigs.k8s.io/replicatedjob-name": "workers",
}
LWS_LEADER = {
    "leaderworkerset.sigs.k8s.io/name": "llm",
    "leaderworkerset.sigs.k8s.io/group-index": "1",
    "leaderworkerset.sigs.k8s.io/worker-index": "0",
}
LWS_WORKER = {**LWS_LEADER, "leaderworkerset.sigs.k8s.io/worker-index": "2"}
LWS = _owner("LeaderWorkerSet", "llm", {"replicas": 2, "leaderWorkerTemplate": {"size": 4}})

# (id, pod, owners, gang name, size, max size, queue)
CASES: list[tuple[str, Any, list[Any], str, int, int | None, str | None]] = [
    ("pytorchjob: every replica", _pod(KUBEFLOW), [_pytorch()], "mnist", 4, None, None),
    (
        "pytorchjob: minAvailable, elastic up to all replicas",
        _pod(KUBEFLOW),
        [_pytorch(runPolicy={"schedulingPolicy": {"minAvailable": 2, "queue": "research"}})],
        "mnist",
        2,
        4,
        "research",
    ),
    (
        "pytorchjob: elasticPolicy minReplicas workers plus the master",
        _pod(KUBEFLOW),
        [_pytorch(elasticPolicy={"minReplicas": 1, "maxReplicas": 3})],
        "mnist",
        2,
        4,
        None,
    ),
    (
        "pytorchjob: no operator label, named by its owner reference",
        _pod(
            {"training.kubeflow.org/job-name": "mnist"},
            ownerReferences=[{"kind": "PyTorchJob", "name": "mnist"}],
        ),
        [_pytorch()],
        "mnist",
        4,
        None,
        None,
    ),
    (
        "pytorchjob: the owner's Kueue label is the queue",
        _pod(KUBEFLOW),
        [
            {
                **_pytorch(),
                "metadata": {
                    "name": "mnist",
                    "namespace": NS,
                    "labels": {"kueue.x-k8s.io/queue-name": "team"},
                },
            }
        ],
        "mnist",
        4,
        None,
        "team",
    ),
    (
        "pytorchjob: the pod's own queue beats its owner's",
        _pod({**KUBEFLOW, "stowage.io/queue": "mine"}),
        [_pytorch(runPolicy={"schedulingPolicy": {"queue": "research"}})],
        "mnist",
        4,
        None,
        "mine",
    ),
    (
        "mpijob: launcher and workers",
        _pod(MPI),
        [
            _owner(
                "MPIJob",
                "pi",
                {"mpiReplicaSpecs": {"Launcher": {"replicas": 1}, "Worker": {"replicas": 2}}},
            )
        ],
        "pi",
        3,
        None,
        None,
    ),
    ("jobset: one gang of every pod", _pod(JOBSET_WORKER), [_jobset()], "js", 9, None, None),
    (
        "jobset: one gang per replicated job when asked",
        _pod(JOBSET_WORKER),
        [_jobset({"stowage.io/gang-scope": "replicated-job"})],
        "js-workers",
        8,
        None,
        None,
    ),
    (
        "jobset: InOrder startup creates jobs one after another, so one gang per job",
        _pod(JOBSET_WORKER),
        [_jobset(startupPolicy={"startupPolicyOrder": "InOrder"})],
        "js-workers",
        8,
        None,
        None,
    ),
    (
        "jobset: completions below parallelism bound the pods",
        _pod(JOBSET_WORKER),
        [
            _owner(
                "JobSet",
                "js",
                {
                    "replicatedJobs": [
                        {
                            "name": "workers",
                            "replicas": 2,
                            "template": {"spec": {"parallelism": 4, "completions": 3}},
                        }
                    ]
                },
            )
        ],
        "js",
        6,
        None,
        None,
    ),
    ("leaderworkerset: one group", _pod(LWS_LEADER), [LWS], "llm-1", 4, None, None),
    (
        "leaderworkerset: sized by the pods' annotation when the object is not listed",
        _pod(LWS_WORKER, {"leaderworkerset.sigs.k8s.io/size": "3"}),
        [],
        "llm-1",
        3,
        None,
        None,
    ),
    (
        "leaderworkerset: LeaderReady admits the leader alone",
        _pod(LWS_LEADER),
        [{**LWS, "spec": {**LWS["spec"], "startupPolicy": "LeaderReady"}}],
        "llm-1-leader",
        1,
        None,
        None,
    ),
    (
        "leaderworkerset: then its workers together",
        _pod(LWS_WORKER),
        [{**LWS, "spec": {**LWS["spec"], "startupPolicy": "LeaderReady"}}],
        "llm-1-workers",
        3,
        None,
        None,
    ),
]


@pytest.mark.parametrize(
    ("pod", "owners", "name", "size", "max_size", "queue"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_a_framework_pods_gang_is_sized_by_its_owner(
    pod: Any,
    owners: list[Any],
    name: str,
    size: int,
    max_size: int | None,
    queue: str | None,
) -> None:
    assert is_gang_member(pod)
    spec = gang_spec(pod, owners=index_owners(owners))
    assert spec == GangSpec(NS, name, size, max_size=max_size, queue=queue, required=False)


# (id, pod, owners, the error's words)
REFUSED: list[tuple[str, Any, list[Any], str]] = [
    ("owner not listed", _pod(KUBEFLOW), [], "PyTorchJob 'mnist' does not exist in namespace ml"),
    (
        "owner in another namespace",
        _pod(KUBEFLOW),
        [{**_pytorch(), "metadata": {"name": "mnist", "namespace": "other"}}],
        "does not exist in namespace ml",
    ),
    (
        "replicas not a number",
        _pod(KUBEFLOW),
        [_owner("PyTorchJob", "mnist", {"pytorchReplicaSpecs": {"Worker": {"replicas": "2"}}})],
        "PyTorchJob ml/mnist: spec.pytorchReplicaSpecs.Worker.replicas: '2' is not a whole number",
    ),
    (
        "no replicas at all",
        _pod(KUBEFLOW),
        [_owner("PyTorchJob", "mnist", {"pytorchReplicaSpecs": {"Worker": {"replicas": 0}}})],
        "spec.pytorchReplicaSpecs has no replicas",
    ),
    (
        "minAvailable zero",
        _pod(KUBEFLOW),
        [_pytorch(runPolicy={"schedulingPolicy": {"minAvailable": 0}})],
        "spec.runPolicy.schedulingPolicy.minAvailable: 0 is outside 1..10000",
    ),
    (
        "replicated jobs not a list",
        _pod(JOBSET_WORKER),
        [_owner("JobSet", "js", {"replicatedJobs": {"workers": 1}})],
        "JobSet ml/js: spec.replicatedJobs is not a non-empty list",
    ),
    (
        "unknown gang scope",
        _pod(JOBSET_WORKER),
        [_jobset({"stowage.io/gang-scope": "pod"})],
        "stowage.io/gang-scope='pod'",
    ),
    (
        "the pod's replicated job is not in the JobSet",
        _pod({**JOBSET_WORKER, "jobset.sigs.k8s.io/replicatedjob-name": "ghost"}),
        [_jobset({"stowage.io/gang-scope": "replicated-job"})],
        "replicated job 'ghost' is not in spec.replicatedJobs",
    ),
    (
        "leaderworkerset pod without a group",
        _pod({"leaderworkerset.sigs.k8s.io/name": "llm"}),
        [LWS],
        "no leaderworkerset.sigs.k8s.io/group-index label",
    ),
    (
        "leaderworkerset spec not an object",
        _pod(LWS_LEADER),
        [_owner("LeaderWorkerSet", "llm", {"leaderWorkerTemplate": [4]})],
        "spec.leaderWorkerTemplate is not an object",
    ),
]


@pytest.mark.parametrize(
    ("pod", "owners", "words"), [case[1:] for case in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_an_unreadable_owner_is_refused_with_the_field(
    pod: Any, owners: list[Any], words: str
) -> None:
    with pytest.raises(SpecError, match=None) as caught:
        gang_spec(pod, owners=index_owners(owners))
    assert words in str(caught.value)


def test_a_missing_owner_is_a_missing_object_the_webhook_does_not_warn_about() -> None:
    with pytest.raises(MissingObjectError):
        owned_gang(_pod(KUBEFLOW), {})


def test_only_the_frameworks_some_pod_names_are_listed() -> None:
    pods = [_pod(KUBEFLOW), _pod(LWS_LEADER), _pod({"app": "web"}), "not a pod", {"metadata": 1}]
    assert frameworks_of(pods) == {PYTORCH_JOB, LEADER_WORKER_SET}
    assert frameworks_of([_pod(MPI), _pod(JOBSET_WORKER)]) == {MPI_JOB, JOB_SET}


def test_a_tfjob_is_not_taken_for_a_pytorchjob() -> None:
    tf = {"training.kubeflow.org/job-name": "t", "training.kubeflow.org/operator-name": "tfjob"}
    assert not is_gang_member(_pod(tf))


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 20_000) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    spec=st.dictionaries(
        st.sampled_from(
            ["pytorchReplicaSpecs", "runPolicy", "elasticPolicy", "replicatedJobs", "startupPolicy"]
        ),
        _json,
    ),
    kind=st.sampled_from(["PyTorchJob", "JobSet", "LeaderWorkerSet", "MPIJob"]),
)
def test_any_broken_owner_is_a_spec_error_never_a_crash(spec: dict[str, Any], kind: str) -> None:
    labels = {
        "PyTorchJob": KUBEFLOW,
        "MPIJob": MPI,
        "JobSet": JOBSET_WORKER,
        "LeaderWorkerSet": LWS_LEADER,
    }[kind]
    name = {"PyTorchJob": "mnist", "MPIJob": "pi", "JobSet": "js", "LeaderWorkerSet": "llm"}[kind]
    try:
        found = gang_spec(_pod(labels), owners=index_owners([_owner(kind, name, spec)]))
    except SpecError:
        return
    assert 1 <= found.size <= 10_000
    assert found.max_size is None or found.max_size >= found.size

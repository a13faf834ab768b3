"""Queue objects through the controller, over HTTP against the fake API server: quota holds
a gang back with the reason, status is written, a broken Queue is left out alone."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from kubefake import FakeApiServer
from optimizer.controller.admission import ADMITTED, WAITING
from optimizer.controller.kube import KubeApi
from optimizer.controller.queues import read_queues
from shared.labels import SCHEDULING_GATE
from tests.optimizer.conftest import WallClock
from tests.optimizer.test_admission import (  # noqa: F401 (the fixture)
    _admitter,
    _free_rack_b_and_submit,
    _pod,
    _train,
    cluster,
)

QUEUES = "stowage.io/v1alpha1/queues"


def _queue(name: str, gpus: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "stowage.io/v1alpha1",
        "kind": "Queue",
        "metadata": {"name": name, "generation": 1},
        "spec": {"resources": [{"name": "nvidia.com/gpu", "nominalQuota": gpus}], **spec},
    }


def test_quota_holds_a_gang_back_until_it_is_raised(
    cluster: tuple[FakeApiServer, KubeApi],  # noqa: F811
    engine: Engine,
) -> None:
    server, api = cluster
    server.put(QUEUES, _queue("team", "16", namespaces=["ml"]))
    server.put(QUEUES, _queue("broken", "lots", namespaces=["elsewhere"]))
    _free_rack_b_and_submit(server)  # a 4 x 8-GPU gang in ml
    admitter = _admitter(api, engine, WallClock())
    [outcome] = _train(admitter.cycle())
    assert outcome.phase == WAITING
    assert "queue team needs 32 GPUs of nvidia.com/gpu" in outcome.message
    plan = admitter.last_plan
    assert plan is not None
    [broken] = [i for i in plan.invalid if i.kind == "Queue"]
    assert broken.name == "broken"
    assert "spec.resources[0].nominalQuota: 'lots' is not a quantity" in broken.reason
    status = server.get("queues", None, "team")["status"]
    assert (status["gpus"], status["pendingJobs"], status["admittedJobs"]) == ("0", 1, 0)
    assert status["observedGeneration"] == 1

    server.put(QUEUES, {**_queue("team", "32", namespaces=["ml"]), "status": status})
    [outcome] = _train(admitter.cycle())
    assert outcome.phase == ADMITTED
    status = server.get("queues", None, "team")["status"]
    assert (status["gpus"], status["pendingJobs"], status["admittedJobs"]) == ("32", 0, 1)
    assert status["borrowedGPUs"] == "0"


def test_a_dry_run_writes_no_queue_status(
    cluster: tuple[FakeApiServer, KubeApi],  # noqa: F811
    engine: Engine,
) -> None:
    server, api = cluster
    server.put(QUEUES, _queue("team", "32", namespaces=["ml"]))
    _free_rack_b_and_submit(server)
    _admitter(api, engine, WallClock(), dry_run=True).cycle()
    assert "status" not in server.get("queues", None, "team")


def test_a_kueue_pod_group_is_a_gang_in_the_queue_its_pods_name(
    cluster: tuple[FakeApiServer, KubeApi],  # noqa: F811
    engine: Engine,
) -> None:
    server, api = cluster
    server.put(QUEUES, _queue("team", "16"))
    labels = {
        "kueue.x-k8s.io/pod-group-name": "kg",
        "kueue.x-k8s.io/queue-name": "team",
    }
    for i in range(3):  # 3 x 8 GPUs: more than the queue's 16
        pod = _pod(f"kg-{i}", labels=labels)
        pod["metadata"]["annotations"] = {"kueue.x-k8s.io/pod-group-total-count": "3"}
        pod["spec"]["schedulingGates"] = [{"name": SCHEDULING_GATE}]
        server.put("v1/pods", pod)
    missing = _pod("lone-0", labels={"kueue.x-k8s.io/pod-group-name": "lone"})
    missing["spec"]["schedulingGates"] = [{"name": SCHEDULING_GATE}]
    server.put("v1/pods", missing)
    admitter = _admitter(api, engine, WallClock())
    outcomes = {o.gang: o for o in admitter.cycle()}
    assert outcomes["kg"].phase == WAITING
    assert "queue team needs 24 GPUs" in outcomes["kg"].message
    plan = admitter.last_plan
    assert plan is not None
    [lone] = [i for i in plan.invalid if i.name == "lone-0"]
    assert "kueue.x-k8s.io/pod-group-total-count" in lone.reason
    server.put(QUEUES, _queue("team", "24"))
    outcomes = {o.gang: o for o in admitter.cycle()}
    assert outcomes["kg"].phase == ADMITTED


def test_a_volcano_pod_group_is_a_gang_of_its_min_member_in_its_queue(
    cluster: tuple[FakeApiServer, KubeApi],  # noqa: F811
    engine: Engine,
) -> None:
    server, api = cluster
    server.put(QUEUES, _queue("team", "8"))
    server.put(
        "scheduling.volcano.sh/v1beta1/podgroups",
        {
            "apiVersion": "scheduling.volcano.sh/v1beta1",
            "kind": "PodGroup",
            "metadata": {"name": "vg", "namespace": "ml"},
            "spec": {"minMember": 2, "queue": "team"},
        },
    )
    for i in range(2):
        pod = _pod(f"vg-{i}")
        pod["metadata"]["annotations"] = {"scheduling.k8s.io/group-name": "vg"}
        pod["spec"]["schedulingGates"] = [{"name": SCHEDULING_GATE}]
        server.put("v1/pods", pod)
    orphan = _pod("orphan-0")
    orphan["metadata"]["annotations"] = {"scheduling.k8s.io/group-name": "nope"}
    orphan["spec"]["schedulingGates"] = [{"name": SCHEDULING_GATE}]
    server.put("v1/pods", orphan)
    admitter = _admitter(api, engine, WallClock())
    outcomes = {o.gang: o for o in admitter.cycle()}
    assert outcomes["vg"].phase == WAITING  # 2 x 8 GPUs in a queue of 8
    assert "queue team needs 16 GPUs" in outcomes["vg"].message
    plan = admitter.last_plan
    assert plan is not None
    [orphaned] = [i for i in plan.invalid if i.name == "orphan-0"]
    assert "Volcano PodGroup 'nope' does not exist" in orphaned.reason
    server.put(QUEUES, _queue("team", "16"))
    assert {o.gang: o for o in admitter.cycle()}["vg"].phase == ADMITTED


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "parent": st.sampled_from(["a", "b", "c"]) | _json,
        "weight": st.sampled_from([1, 2.5, 0, -1, "x"]) | _json,
        "namespaces": st.lists(st.sampled_from(["ml", "cv"]), max_size=2) | _json,
        "ordering": st.sampled_from(["fifo", "nope"]) | _json,
        "preemptMinRuntimeSeconds": st.sampled_from([0, 60, -5, "soon"]) | _json,
        "resources": st.lists(
            st.fixed_dictionaries(
                {
                    "name": st.sampled_from(["nvidia.com/gpu", "cpu", "memory", "disk"]) | _json,
                    "nominalQuota": st.sampled_from([8, "16", "1Ti", "-1", "lots", "Inf"]) | _json,
                },
                optional={"lendingLimit": st.sampled_from([0, 4, 99]) | _json},
            ),
            max_size=3,
        )
        | _json,
    },
)
_queue_objects = st.lists(
    st.builds(
        lambda name, spec, generation: {
            "metadata": {"name": name, "generation": generation},
            "spec": spec,
        },
        st.sampled_from(["a", "b", "c", "d"]),
        _fields | _json,
        st.integers(0, 3) | _json,
    )
    | _json,
    max_size=6,
).map(lambda objects: list({_name(o): o for o in reversed(objects)}.values())[::-1])


def _name(obj: Any) -> object:
    """A Queue's name (the API server keeps names unique), else the object's identity."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    return meta.get("name") if isinstance(meta, dict) else id(obj)


@settings(max_examples=300, deadline=None)
@given(_queue_objects)
def test_broken_queues_are_explained_and_the_rest_are_kept(objects: list[Any]) -> None:
    read = read_queues(objects)
    invalid = {i.name for i in read.invalid}
    assert all(i.kind == "Queue" and i.reason for i in read.invalid)
    for name, spec in read.queues.specs.items():
        assert name not in invalid
        assert spec.parent is None or spec.parent in read.queues.specs
    named = {
        o["metadata"]["name"]
        for o in objects
        if isinstance(o, dict) and isinstance(o.get("metadata"), dict)
    }
    assert named <= set(read.queues.specs) | invalid  # every named Queue is kept or explained


def test_a_second_queue_of_one_name_in_a_dump_is_explained_and_the_first_kept() -> None:
    read = read_queues([_queue("a", "8"), _queue("a", "16")])
    assert read.queues.specs["a"].quotas[("nvidia.com/gpu", "")].nominal == 8_000
    [twin] = read.invalid
    assert twin.reason == "metadata.name: a second Queue of this name"

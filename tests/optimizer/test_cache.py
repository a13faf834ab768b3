"""The watch cache: list, then watch; what the controller plans on when serving."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client as k8s
from sqlalchemy import Engine

from kubefake import FakeApiServer, serve
from optimizer.controller.admission import ADMITTED, GangAdmitter
from optimizer.controller.audit import StoreAudit
from optimizer.controller.cache import ClusterCache, Informer
from optimizer.controller.kube import KubeApi
from tests.optimizer.conftest import WallClock
from tests.optimizer.test_admission import NAMESPACE, _node, _pod


@pytest.fixture
def cluster() -> Iterator[tuple[FakeApiServer, KubeApi, k8s.CoreV1Api]]:
    with serve() as (server, client):
        yield server, KubeApi(client), k8s.CoreV1Api(client)


def _until(condition: Callable[[], bool], seconds: float = 10) -> bool:
    """Wait for the watch threads to catch up (a synchronisation, not a timing check)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_an_informer_lists_then_applies_watch_events(
    cluster: tuple[FakeApiServer, KubeApi, k8s.CoreV1Api],
) -> None:
    _, api, core = cluster
    core.create_node({"metadata": {"name": "a"}})
    informer = Informer("nodes", api.list_nodes_versioned, api.watch_nodes)
    informer.relist()
    assert [n["metadata"]["name"] for n in informer.items()] == ["a"]
    core.create_node({"metadata": {"name": "b", "labels": {"x": "1"}}})
    core.patch_node(
        "a", {"metadata": {"labels": {"y": "2"}}}, _content_type="application/merge-patch+json"
    )
    core.delete_node("b")
    informer.watch_once(timeout_seconds=1)
    [node] = informer.items()
    assert node["metadata"]["labels"] == {"y": "2"}


def test_the_controller_plans_on_the_watched_cache(
    cluster: tuple[FakeApiServer, KubeApi, k8s.CoreV1Api], engine: Engine
) -> None:
    server, api, core = cluster
    server.put(
        "v1/namespaces", {"metadata": {"name": NAMESPACE, "labels": {"stowage.io/enabled": "true"}}}
    )
    for i in range(4):
        server.put("v1/nodes", _node(f"b{i}", rack="r-b"))
    stop = threading.Event()
    cache = ClusterCache(api, timeout_seconds=1)
    cache.start(stop)
    try:
        assert cache.wait_synced(timeout=10)
        for i in range(4):
            body = _pod(f"train-{i}", gang="train")
            core.create_namespaced_pod(NAMESPACE, body)
        assert _until(lambda: len(cache.pods()) == 4)
        clock = WallClock()
        admitter = GangAdmitter(
            api, engine, StoreAudit(engine, clock=clock), dry_run=False, clock=clock, view=cache
        )
        [outcome] = admitter.cycle()
        assert outcome.phase == ADMITTED
        assert sorted(outcome.placement.values()) == ["b0", "b1", "b2", "b3"]
    finally:
        stop.set()


def test_an_object_without_a_name_is_left_out_and_the_rest_is_cached() -> None:
    from optimizer.controller.cache import Informer

    good = {"metadata": {"name": "n1", "resourceVersion": "5"}}
    events = [("ADDED", {"metadata": {}}), ("ADDED", {"metadata": {"name": "n2"}}), ("ADDED", 7)]
    informer = Informer(
        "nodes",
        lambda: ([good, {"spec": {}}, "junk"], "5"),  # type: ignore[list-item]
        lambda **_: iter(events),
    )
    informer.relist()
    assert [i["metadata"]["name"] for i in informer.items()] == ["n1"]
    assert informer.watch_once() == 3
    assert sorted(i["metadata"]["name"] for i in informer.items()) == ["n1", "n2"]


def test_kubernetes_errors_are_typed_and_keep_the_servers_message(
    cluster: tuple[FakeApiServer, KubeApi, k8s.CoreV1Api],
) -> None:
    from optimizer.controller.kube import ConflictError, InvalidError, KubeError, NotFoundError

    server, api, _ = cluster
    server.put("v1/nodes", {"metadata": {"name": "n1"}})
    node = server.get("nodes", None, "n1")
    assert node is not None
    with pytest.raises(ConflictError) as stale:
        api.patch_node_labels("n1", {"stowage.io/pool": "a"}, resource_version="999999")
    assert stale.value.message.startswith("Operation cannot be fulfilled")
    with pytest.raises(InvalidError) as invalid:
        api.patch_node_labels(
            "n1",
            {"stowage.io/pool": "not a valid value!"},
            resource_version=node["metadata"]["resourceVersion"],
        )
    assert isinstance(invalid.value, KubeError)
    assert invalid.value.status == 422
    assert "not a valid value!" in invalid.value.message
    with pytest.raises(NotFoundError):
        api.evict_pod("default", "nobody")

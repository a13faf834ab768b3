"""The fake API server behaves like a real one where the controller depends on it."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s
from kubernetes import watch

from kubefake import serve

MERGE = "application/merge-patch+json"


def test_resource_versions_selectors_conflicts_and_validation() -> None:
    with serve() as (_, api):
        core = k8s.CoreV1Api(api)
        first = core.create_node({"metadata": {"name": "a", "labels": {"rack": "r1"}}})
        core.create_node({"metadata": {"name": "b", "labels": {"rack": "r2"}}})
        assert [n.metadata.name for n in core.list_node(label_selector="rack=r2").items] == ["b"]
        assert [n.metadata.name for n in core.list_node(label_selector="rack in (r1)").items] == [
            "a"
        ]
        assert [
            n.metadata.name for n in core.list_node(field_selector="metadata.name=a").items
        ] == ["a"]
        stale = first.metadata.resource_version
        core.patch_node("a", {"metadata": {"labels": {"x": "1"}}}, _content_type=MERGE)
        body = {"metadata": {"resourceVersion": stale, "labels": {"y": "1"}}}
        with pytest.raises(k8s.ApiException) as conflict:
            core.patch_node("a", body, _content_type=MERGE)
        assert conflict.value.status == 409
        with pytest.raises(k8s.ApiException) as invalid:
            core.patch_node("a", {"metadata": {"labels": {"x": "a b"}}}, _content_type=MERGE)
        assert invalid.value.status == 422
        with pytest.raises(k8s.ApiException) as exists:
            core.create_node({"metadata": {"name": "a"}})
        assert exists.value.status == 409


def test_put_with_a_stale_version_conflicts() -> None:
    with serve() as (_, api):
        leases = k8s.CoordinationV1Api(api)
        lease = leases.create_namespaced_lease("ns", {"metadata": {"name": "l"}, "spec": {}})
        lease.spec.holder_identity = "a"
        leases.replace_namespaced_lease("l", "ns", lease)
        with pytest.raises(k8s.ApiException) as conflict:
            leases.replace_namespaced_lease("l", "ns", lease)
        assert conflict.value.status == 409


def test_evictions_can_be_refused_and_watches_end_on_time() -> None:
    with serve() as (server, api):
        core = k8s.CoreV1Api(api)
        pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
        core.create_namespaced_pod("ns", pod)
        eviction = {"metadata": {"name": "p", "namespace": "ns"}}
        server.refuse_evictions.add(("ns", "p"))
        with pytest.raises(k8s.ApiException) as refused:
            core.create_namespaced_pod_eviction("p", "ns", eviction)
        assert refused.value.status == 429
        assert server.get("pods", "ns", "p") is not None
        server.refuse_evictions.clear()
        core.create_namespaced_pod_eviction("p", "ns", eviction)
        assert server.get("pods", "ns", "p") is None
        core.create_node({"metadata": {"name": "n"}})
        events = list(watch.Watch().stream(core.list_node, timeout_seconds=1))
        assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "n")]

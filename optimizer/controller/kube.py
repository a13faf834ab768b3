"""The controller's only door to Kubernetes: a thin adapter over the official client.

Every method declares the RBAC permission it uses (:func:`needs`), so :data:`PERMISSIONS`
is the complete list of what the code may ask the API server for; a test checks that the
Helm chart grants each of them and nothing is used that is not granted. Objects cross this
boundary as plain dicts in the API's own JSON shape (``metadata.resourceVersion``), so the
code behind it never sees client model classes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, ParamSpec, TypeVar

import kubernetes
from kubernetes.client import ApiException

P = ParamSpec("P")
R = TypeVar("R")

MERGE_PATCH: Final = "application/merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"


@dataclass(frozen=True, order=True)
class Permission:
    """One RBAC rule entry: API group ("" for core), resource (with subresource), verb."""

    group: str
    resource: str
    verb: str


PERMISSIONS: Final[set[Permission]] = set()


def needs(group: str, resource: str, *verbs: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Record that the decorated call uses ``verbs`` on ``group``/``resource``."""

    def register(function: Callable[P, R]) -> Callable[P, R]:
        PERMISSIONS.update(Permission(group, resource, verb) for verb in verbs)
        return function

    return register


class ConflictError(Exception):
    """The object changed since it was read (409), or already exists on create."""


class NotFoundError(Exception):
    """The object does not exist (404)."""


class RefusedError(Exception):
    """The API server said no for a reason the caller must respect (e.g. 429 from a
    PodDisruptionBudget on eviction); ``status`` and ``reason`` say which."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


def _translate(error: ApiException) -> Exception:
    if error.status == 409:
        return ConflictError(error.reason or "conflict")
    if error.status == 404:
        return NotFoundError(error.reason or "not found")
    return RefusedError(int(error.status or 0), error.reason or str(error))


def _body(obj: Mapping[str, Any]) -> Any:
    """A request body in API JSON form; the client serialises dicts as they are (its type
    hints name its model classes, which this module does not use)."""
    return dict(obj)


class KubeApi:
    """Typed calls the controller makes, each one RBAC-declared.

    Args:
        client: an official-client ``ApiClient`` (in-cluster or kubeconfig configuration).
    """

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self._client = client
        self._core = kubernetes.client.CoreV1Api(client)
        self._coordination = kubernetes.client.CoordinationV1Api(client)

    def _plain(self, obj: Any) -> dict[str, Any]:
        return dict(self._client.sanitize_for_serialization(obj))

    # -- nodes ---------------------------------------------------------------------------

    @needs("", "nodes", "list")
    def list_nodes(self, *, label_selector: str | None = None) -> list[dict[str, Any]]:
        """Every node (matching the selector)."""
        listing = self._core.list_node(label_selector=label_selector)
        return [self._plain(node) for node in listing.items]

    @needs("", "nodes", "watch")
    def watch_nodes(self, *, timeout_seconds: int) -> Iterator[tuple[str, dict[str, Any]]]:
        """Node events (type, object) until the server ends the watch."""
        stream = kubernetes.watch.Watch().stream(
            self._core.list_node, timeout_seconds=timeout_seconds
        )
        for event in stream:
            yield event["type"], self._plain(event["object"])

    @needs("", "nodes", "patch")
    def patch_node_labels(
        self, name: str, changes: Mapping[str, str | None], *, resource_version: str
    ) -> dict[str, Any]:
        """Set (or, for None, remove) the given labels and no others; 409 (:class:`ConflictError`)
        if the node changed since ``resource_version``."""
        body = {"metadata": {"resourceVersion": resource_version, "labels": dict(changes)}}
        try:
            node = self._core.patch_node(name, body, _content_type=MERGE_PATCH)
        except ApiException as error:
            raise _translate(error) from error
        return self._plain(node)

    # -- leases --------------------------------------------------------------------------

    @needs("coordination.k8s.io", "leases", "get")
    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The lease, or None when it does not exist."""
        try:
            return self._plain(self._coordination.read_namespaced_lease(name, namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise _translate(error) from error

    @needs("coordination.k8s.io", "leases", "create")
    def create_lease(self, namespace: str, lease: Mapping[str, Any]) -> dict[str, Any]:
        """Create the lease; :class:`ConflictError` when another replica created it first."""
        try:
            created = self._coordination.create_namespaced_lease(namespace, _body(lease))
        except ApiException as error:
            raise _translate(error) from error
        return self._plain(created)

    @needs("coordination.k8s.io", "leases", "update")
    def replace_lease(self, namespace: str, lease: Mapping[str, Any]) -> dict[str, Any]:
        """Replace the lease; :class:`ConflictError` if it changed since it was read."""
        name = lease["metadata"]["name"]
        try:
            replaced = self._coordination.replace_namespaced_lease(name, namespace, _body(lease))
        except ApiException as error:
            raise _translate(error) from error
        return self._plain(replaced)

    # -- events --------------------------------------------------------------------------

    @needs("", "events", "create")
    def create_event(
        self,
        *,
        involved: Mapping[str, Any],
        reason: str,
        message: str,
        kind: str = "Normal",
        at: datetime,
        component: str = "stowage",
    ) -> None:
        """Record a core/v1 Event about ``involved`` (an object in API JSON form)."""
        meta = involved["metadata"]
        namespace = meta.get("namespace") or "default"
        stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", "v1"),
                "kind": involved.get("kind", ""),
                "name": meta["name"],
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": component},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self._core.create_namespaced_event(namespace, _body(body))
        except ApiException as error:
            raise _translate(error) from error

"""The controller's only door to Kubernetes: a thin adapter over the official client.

Every method declares the RBAC permission it uses (:func:`optimizer.rbac.needs`), so the
Helm chart's grants can be checked against the code (see :mod:`optimizer.rbac`). Objects cross this
boundary as plain dicts in the API's own JSON shape (``metadata.resourceVersion``), so the
code behind it never sees client model classes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, Final

import kubernetes
from kubernetes.client import ApiException

from optimizer.controller.frameworks import Framework
from optimizer.rbac import needs

MERGE_PATCH: Final = "application/merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"
POD_GROUP_GROUP: Final = "scheduling.x-k8s.io"
POD_GROUP_VERSION: Final = "v1alpha1"
#: Stowage's own Queue (helm/stowage/crds/queues.stowage.io.yaml).
QUEUE_GROUP: Final = "stowage.io"
QUEUE_VERSION: Final = "v1alpha1"
QUEUE_PLURAL: Final = "queues"


class KubeError(Exception):
    """The API server refused a call. ``status`` is the HTTP code, ``reason`` the Status
    reason (``Conflict``, ``NotFound``, …) and ``message`` the server's own words, kept so
    logs and audit entries say what the server said."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFoundError(KubeError):
    """404: the object does not exist (deleting or evicting it is then a normal outcome)."""

    def __init__(self, message: str = "not found") -> None:
        super().__init__(404, "NotFound", message)


class ConflictError(KubeError):
    """409: the object changed since it was read, or already exists on create."""

    def __init__(self, message: str = "conflict") -> None:
        super().__init__(409, "Conflict", message)


class GoneError(KubeError):
    """410: a watch's resourceVersion is too old: list again."""

    def __init__(self, message: str = "resource version too old") -> None:
        super().__init__(410, "Gone", message)


class RefusedError(KubeError):
    """Any other refusal (5xx included); ``status`` says which."""


class TooManyRequestsError(RefusedError):
    """429: e.g. a PodDisruptionBudget refusing an eviction; respect it, never force."""


class InvalidError(RefusedError):
    """422: the server's validation refused the object (the message names the field)."""


class ForbiddenError(RefusedError):
    """403: RBAC does not allow the call (the chart's grants and the code disagree)."""


def _server_message(error: ApiException) -> str:
    try:
        body = json.loads(error.body or "{}")
    except (TypeError, ValueError):
        return str(error.body or "")
    return str(body.get("message") or "") if isinstance(body, dict) else ""


def _translate(error: ApiException) -> KubeError:
    """The typed error for an ``ApiException``, with the server's Status message."""
    status = int(error.status or 0)
    message = _server_message(error) or str(error.reason or "")
    if status == 404:
        return NotFoundError(message)
    if status == 409:
        return ConflictError(message)
    if status == 410:
        return GoneError(message)
    kinds: dict[int, type[RefusedError]] = {
        429: TooManyRequestsError,
        422: InvalidError,
        403: ForbiddenError,
    }
    return kinds.get(status, RefusedError)(status, str(error.reason or ""), message)


def _body(obj: Mapping[str, Any]) -> Any:
    """A request body in API JSON form; the client serialises dicts as they are (its type
    hints name its model classes, which this module does not use)."""
    return dict(obj)


def _body_list(patch: list[dict[str, Any]]) -> Any:
    return list(patch)


class KubeApi:
    """Typed calls the controller makes, each one RBAC-declared.

    Args:
        client: an official-client ``ApiClient`` (in-cluster or kubeconfig configuration).
    """

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self._client = client
        self._core = kubernetes.client.CoreV1Api(client)
        self._coordination = kubernetes.client.CoordinationV1Api(client)
        self._custom = kubernetes.client.CustomObjectsApi(client)

    def _plain(self, obj: Any) -> dict[str, Any]:
        return dict(self._client.sanitize_for_serialization(obj))

    # -- nodes ---------------------------------------------------------------------------

    def list_nodes(self) -> list[dict[str, Any]]:
        """Every node."""
        return self.list_nodes_versioned()[0]

    @needs("", "nodes", "list")
    def list_nodes_versioned(self) -> tuple[list[dict[str, Any]], str]:
        """Every node and the list's resourceVersion (to watch from)."""
        listing = self._plain(self._core.list_node())
        return listing.get("items") or [], listing["metadata"].get("resourceVersion") or ""

    @needs("", "nodes", "watch")
    def watch_nodes(
        self, *, resource_version: str | None, timeout_seconds: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Node events (type, object) after ``resource_version`` until the server ends the
        watch; :class:`GoneError` when that version is too old (relist)."""
        return self._watch(self._core.list_node, resource_version, timeout_seconds)

    @needs("", "pods", "list")
    def list_pods_versioned(self) -> tuple[list[dict[str, Any]], str]:
        """Every pod of the cluster and the list's resourceVersion."""
        listing = self._plain(self._core.list_pod_for_all_namespaces())
        return listing.get("items") or [], listing["metadata"].get("resourceVersion") or ""

    @needs("", "pods", "watch")
    def watch_pods(
        self, *, resource_version: str | None, timeout_seconds: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Pod events of every namespace (as :meth:`watch_nodes`)."""
        return self._watch(
            self._core.list_pod_for_all_namespaces, resource_version, timeout_seconds
        )

    def _watch(
        self, list_fn: Any, resource_version: str | None, timeout_seconds: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        options: dict[str, Any] = {"timeout_seconds": timeout_seconds}
        if resource_version:
            options["resource_version"] = resource_version
        try:
            for event in kubernetes.watch.Watch().stream(list_fn, **options):
                if event["type"] == "ERROR":
                    raw = event.get("raw_object") or {}
                    if raw.get("code") == 410:
                        raise GoneError(raw.get("message") or "resource version too old")
                    code = int(raw.get("code") or 500)
                    raise RefusedError(code, str(raw.get("reason") or ""), raw.get("message") or "")
                yield event["type"], self._plain(event["object"])
        except ApiException as error:
            raise _translate(error) from error

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

    # -- namespaces, pods, pod groups -----------------------------------------------------

    @needs("", "namespaces", "list")
    def opted_in_namespaces(self, label_selector: str) -> set[str]:
        """Names of the namespaces matching ``label_selector`` (the opt-in label)."""
        listing = self._core.list_namespace(label_selector=label_selector)
        return {str(self._plain(ns)["metadata"]["name"]) for ns in listing.items}

    def list_pods(self) -> list[dict[str, Any]]:
        """Every pod of the cluster (their requests use node capacity wherever they run)."""
        return self.list_pods_versioned()[0]

    @needs("", "pods", "get")
    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The pod, or None when it does not exist."""
        try:
            return self._plain(self._core.read_namespaced_pod(name, namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise _translate(error) from error

    @needs("", "pods", "patch")
    def patch_pod(self, namespace: str, name: str, patch: list[dict[str, Any]]) -> dict[str, Any]:
        """Apply a JSON patch (its ``test`` of resourceVersion makes a stale one a
        :class:`ConflictError`)."""
        try:
            pod = self._core.patch_namespaced_pod(
                name, namespace, _body_list(patch), _content_type=JSON_PATCH
            )
        except ApiException as error:
            raise _translate(error) from error
        return self._plain(pod)

    @needs("", "pods/eviction", "create")
    def evict_pod(self, namespace: str, name: str) -> None:
        """Evict through the Eviction API; a PodDisruptionBudget's 429 arrives as
        :class:`TooManyRequestsError` and must be respected, not retried by force; a pod
        already gone is :class:`NotFoundError`."""
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
        }
        try:
            self._core.create_namespaced_pod_eviction(name, namespace, _body(body))
        except ApiException as error:
            raise _translate(error) from error

    def evict_pod_outcome(self, namespace: str, name: str) -> str:
        """:meth:`evict_pod`, its expected refusals as the audit outcome: ``applied``,
        ``gone`` (the pod finished meanwhile) or ``refused:429`` (a PodDisruptionBudget said
        no: respected, retried by the caller later); other errors propagate."""
        try:
            self.evict_pod(namespace, name)
        except NotFoundError:
            return "gone"
        except TooManyRequestsError:
            return "refused:429"
        return "applied"

    @needs("", "pods", "patch")
    @needs("apps", "deployments", "patch")
    @needs("apps", "statefulsets", "patch")
    @needs("apps", "replicasets", "patch")
    @needs("batch", "jobs", "patch")
    @needs("kubeflow.org", "pytorchjobs", "patch")
    @needs("kubeflow.org", "mpijobs", "patch")
    @needs("jobset.x-k8s.io", "jobsets", "patch")
    @needs("leaderworkerset.x-k8s.io", "leaderworkersets", "patch")
    def annotate(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str,
        name: str,
        annotations: Mapping[str, str | None],
    ) -> None:
        """Set (None: remove) these annotations of a namespaced object and no others (a
        merge patch); :class:`NotFoundError` when it is gone."""
        body = _body({"metadata": {"annotations": dict(annotations)}})
        try:
            if group == "":
                self._core.patch_namespaced_pod(name, namespace, body, _content_type=MERGE_PATCH)
            else:
                self._custom.patch_namespaced_custom_object(
                    group, version, namespace, plural, name, body, _content_type=MERGE_PATCH
                )
        except ApiException as error:
            raise _translate(error) from error

    def _list_custom(self, group: str, version: str, plural: str) -> list[dict[str, Any]]:
        """Every object of a custom resource (none when its CRD is not installed)."""
        try:
            listing = self._custom.list_cluster_custom_object(group, version, plural)
        except ApiException as error:
            if error.status == 404:
                return []
            raise _translate(error) from error
        return list(dict(listing).get("items", []))  # type: ignore[call-overload]

    @needs("scheduling.x-k8s.io", "podgroups", "list")
    def list_pod_groups(self) -> list[dict[str, Any]]:
        """scheduler-plugins PodGroups of every namespace (none if the CRD is absent)."""
        return self._list_custom(POD_GROUP_GROUP, POD_GROUP_VERSION, "podgroups")

    @needs("scheduling.x-k8s.io", "podgroups/status", "patch")
    def patch_pod_group_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge ``status`` into the PodGroup's status subresource."""
        try:
            self._custom.patch_namespaced_custom_object_status(
                POD_GROUP_GROUP,
                POD_GROUP_VERSION,
                namespace,
                "podgroups",
                name,
                _body({"status": dict(status)}),
                _content_type=MERGE_PATCH,
            )
        except ApiException as error:
            raise _translate(error) from error

    @needs("scheduling.volcano.sh", "podgroups", "list")
    def list_volcano_pod_groups(self) -> list[dict[str, Any]]:
        """Volcano PodGroups of every namespace (none if Volcano is not installed)."""
        return self._list_custom("scheduling.volcano.sh", "v1beta1", "podgroups")

    @needs("kubeflow.org", "pytorchjobs", "list")
    @needs("kubeflow.org", "mpijobs", "list")
    @needs("jobset.x-k8s.io", "jobsets", "list")
    @needs("leaderworkerset.x-k8s.io", "leaderworkersets", "list")
    def list_job_owners(self, frameworks: Iterable[Framework]) -> list[dict[str, Any]]:
        """Every object of these job frameworks (PyTorchJobs, JobSets, ...; none of one whose
        CRD is not installed), each with its ``kind``."""
        found: list[dict[str, Any]] = []
        for framework in sorted(frameworks, key=lambda f: f.kind):
            for obj in self._list_custom(framework.group, framework.version, framework.plural):
                found.append({**obj, "kind": framework.kind})
        return found

    @needs("stowage.io", "queues", "list")
    def list_queues(self) -> list[dict[str, Any]]:
        """Stowage ``Queue`` objects (none if the CRD is not installed)."""
        return self._list_custom(QUEUE_GROUP, QUEUE_VERSION, QUEUE_PLURAL)

    @needs("stowage.io", "queues/status", "patch")
    def patch_queue_status(self, name: str, status: Mapping[str, Any]) -> None:
        """Merge ``status`` into the Queue's status subresource."""
        try:
            self._custom.patch_cluster_custom_object_status(
                QUEUE_GROUP,
                QUEUE_VERSION,
                QUEUE_PLURAL,
                name,
                _body({"status": dict(status)}),
                _content_type=MERGE_PATCH,
            )
        except ApiException as error:
            raise _translate(error) from error

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

    @needs("", "events", "list")
    def failed_scheduling_events(self) -> list[dict[str, Any]]:
        """kube-scheduler's ``FailedScheduling`` events of every namespace: its word that a
        pod did not fit where it may go."""
        try:
            listing = self._core.list_event_for_all_namespaces(
                field_selector="reason=FailedScheduling"
            )
        except ApiException as error:
            raise _translate(error) from error
        return list(self._plain(listing).get("items") or [])

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

"""An HTTP-level fake Kubernetes API server for the controller's adapters.

kmock's ``KubernetesEmulator`` stores objects and serves list/watch/get/delete over real HTTP;
:class:`FakeApiServer` adds what a real API server does and the controller relies on:

* ``resourceVersion`` on every object (one counter, like etcd's revision), and 409 Conflict
  on a PUT or PATCH that names a stale one;
* PUT (replace), PATCH by content type (JSON patch, merge patch, strategic merge treated as a
  merge patch: the controller sends no list directives), 201 on create;
* label and field selectors on list and watch, and watch ``timeoutSeconds``;
* the ``pods/eviction`` subresource, with scripted 429s (a PodDisruptionBudget saying no);
* 422 for an invalid label key or value, judged by the validator production code uses.

Run it with :func:`serve`, which starts it on a free port in a background thread, so the
unmodified, synchronous official client talks to it like to any API server.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import re
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kubernetes
from kmock import KubernetesEmulator, Server
from kmock._internal import enums, rendering

from shared.labels import label_key_errors, label_value_errors

#: What the fake serves (kmock answers discovery and 404s for anything else).
RESOURCES = (
    "v1/namespaces",
    "v1/nodes",
    "v1/pods",
    "v1/events",
    "apps/v1/deployments",
    "apps/v1/statefulsets",
    "apps/v1/replicasets",
    "batch/v1/jobs",
    "coordination.k8s.io/v1/leases",
    "scheduling.x-k8s.io/v1alpha1/podgroups",
    "stowage.io/v1alpha1/queues",
    "scheduling.volcano.sh/v1beta1/podgroups",
    "kubeflow.org/v1/pytorchjobs",
    "kubeflow.org/v2beta1/mpijobs",
    "jobset.x-k8s.io/v1alpha2/jobsets",
    "leaderworkerset.x-k8s.io/v1/leaderworkersets",
)


def _status(code: int, reason: str, message: str) -> aiohttp.web.Response:
    return aiohttp.web.json_response(
        {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "code": code,
            "reason": reason,
            "message": message,
        },
        status=code,
    )


class _RefusedError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.response = _status(code, reason, message)


@attrs.define(kw_only=True)
class FakeApiServer(KubernetesEmulator):
    """kmock's emulator plus the API-server behaviour listed in the module docstring."""

    #: (namespace, pod) pairs whose eviction a PodDisruptionBudget refuses with 429.
    refuse_evictions: set[tuple[str, str]] = attrs.field(factory=set)
    #: After this many more successful writes (PATCH/PUT), every write fails with 503: the
    #: caller stops mid-way, as if it had crashed. None: no failure.
    writes_left: int | None = None
    _revisions: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for resource in RESOURCES:
            self.resources[resource] = {}

    # -- helpers used by tests -----------------------------------------------------------

    def get(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:  # type: ignore[override]
        """The stored object, or None (for assertions; bypasses HTTP)."""
        for (resource, ns, obj_name), obj in self.objects.items():
            if resource.plural == plural and ns == namespace and obj_name == name:
                return None if obj.deleted else copy.deepcopy(obj.raw)
        return None

    def put(self, resource: str, obj: dict[str, Any]) -> None:
        """Store ``obj`` as if created through the API (test setup; bypasses HTTP)."""
        body = copy.deepcopy(obj)
        meta = body.setdefault("metadata", {})
        meta["resourceVersion"] = str(next(self._revisions))
        meta.setdefault("uid", str(uuid.uuid4()))
        self.objects[resource, meta.get("namespace"), meta["name"]] = body

    def items(self, plural: str) -> list[dict[str, Any]]:
        """Every live object of a resource."""
        return [
            copy.deepcopy(obj.raw)
            for (resource, _, _), obj in self.objects.items()
            if resource.plural == plural and not obj.deleted
        ]

    # -- request handling ----------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock reads "/api/v1/namespaces" as a namespace prefix with no namespace; serve the
        # Namespace resource (list and get; the controller only reads it) here instead.
        match = re.fullmatch(r"/api/v1/namespaces(?:/([^/]+))?", raw_request.path)
        if match is None or raw_request.method != "GET":
            return await super().__call__(raw_request)
        namespaces = self.items("namespaces")
        if match.group(1) is not None:
            found = [n for n in namespaces if n["metadata"]["name"] == match.group(1)]
            if not found:
                return _status(404, "NotFound", f"namespace {match.group(1)!r} not found")
            return aiohttp.web.json_response(found[0])
        matches = _selector(dict(raw_request.query))
        return aiohttp.web.json_response(
            {
                "apiVersion": "v1",
                "kind": "NamespaceList",
                "metadata": {"resourceVersion": str(next(self._revisions))},
                "items": [n for n in namespaces if matches(n)],
            }
        )

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.resource is None:
            return await super()._handle(request)
        try:
            if request.subresource == "eviction" and request.method == enums.method.POST:
                return await self._evict(request)
            if request.method == enums.method.PUT and request.name:
                return await self._write(request, replace=True)
            if request.action == enums.action.CREATE:
                return await self._create(request)
            if request.action == enums.action.UPDATE:
                return await self._write(request, replace=False)
        except _RefusedError as refused:
            return refused.response
        return await super()._handle(request)

    def _find(self, request: rendering.Request, name: str | None = None) -> Any:
        key = (request.resource, request.namespace, name or request.name)
        if key not in self.objects or self.objects[key].deleted:
            raise _RefusedError(
                404, "NotFound", f"{request.resource.plural} {name or request.name!r} not found"
            )  # type: ignore[union-attr]
        return self.objects[key]

    async def _create(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        body = copy.deepcopy(request.data or {})
        meta = body.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if request.namespace:
            meta["namespace"] = request.namespace
        _validate_labels(body)
        key = (request.resource, meta.get("namespace"), meta["name"])
        async with self._lock:
            if key in self.objects and not self.objects[key].deleted:
                raise _RefusedError(409, "AlreadyExists", f"{meta['name']!r} already exists")
            meta["resourceVersion"] = str(next(self._revisions))
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            self.objects[key] = body
            await self._buses[request.resource].put({"type": "ADDED", "object": body})  # type: ignore[index]
        return aiohttp.web.json_response(body, status=201)

    async def _write(
        self, request: rendering.Request, *, replace: bool
    ) -> aiohttp.web.StreamResponse:
        if self.writes_left is not None:
            if self.writes_left <= 0:
                raise _RefusedError(503, "ServiceUnavailable", "injected failure")
            self.writes_left -= 1
        content_type = request.headers.get("Content-Type", "application/json").split(";")[0]
        async with self._lock:
            stored = self._find(request)
            current = copy.deepcopy(stored.raw)
            data = request.data
            wanted_rv = None
            if replace or isinstance(data, dict):
                wanted_rv = (data or {}).get("metadata", {}).get("resourceVersion")
            if replace:
                updated = copy.deepcopy(data)
            elif content_type == "application/json-patch+json":
                try:
                    updated = jsonpatch.apply_patch(current, data)
                except jsonpatch.JsonPatchTestFailed as failed:
                    raise _RefusedError(
                        409, "Conflict", f"the object has been modified: {failed}"
                    ) from None
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as bad:
                    raise _RefusedError(422, "Invalid", str(bad)) from None
            elif content_type in (
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ):
                updated = _merge_patch(current, data or {})
            else:
                raise _RefusedError(
                    415, "UnsupportedMediaType", f"unsupported patch type {content_type}"
                )
            if wanted_rv is not None and wanted_rv != current["metadata"]["resourceVersion"]:
                raise _RefusedError(
                    409,
                    "Conflict",
                    "Operation cannot be fulfilled: the object has been modified; please apply "
                    "your changes to the latest version and try again",
                )
            _validate_labels(updated)
            updated.setdefault("metadata", {})
            for immutable in ("name", "namespace", "uid", "creationTimestamp"):
                if immutable in current["metadata"]:
                    updated["metadata"][immutable] = current["metadata"][immutable]
            updated["metadata"]["resourceVersion"] = str(next(self._revisions))
            stored.create(updated)
            await self._buses[request.resource].put({"type": "MODIFIED", "object": updated})  # type: ignore[index]
        return aiohttp.web.json_response(updated, status=200)

    async def _evict(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        async with self._lock:
            stored = self._find(request)
            if (request.namespace, request.name) in self.refuse_evictions:
                raise _RefusedError(
                    429,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                )
            raw = copy.deepcopy(stored.raw)
            stored.delete()
            await self._buses[request.resource].put({"type": "DELETED", "object": raw})  # type: ignore[index]
        return aiohttp.web.json_response(
            {"apiVersion": "v1", "kind": "Status", "status": "Success", "code": 201}, status=201
        )

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        listing = await super()._serve_list(request)
        assert isinstance(listing, dict)
        matches = _selector(request.params)
        return {
            "apiVersion": "v1",
            "kind": "List",
            "metadata": {"resourceVersion": str(next(self._revisions))},
            "items": [item for item in listing["items"] if matches(item)],
        }

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        matches = _selector(request.params)
        timeout = float(request.params.get("timeoutSeconds", "0") or 0)
        stream = super()._serve_watch(request)
        deadline = asyncio.get_running_loop().time() + timeout if timeout else None
        while True:
            remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
            if remaining is not None and remaining <= 0:
                return
            try:
                event = await asyncio.wait_for(anext(stream), remaining)
            except (TimeoutError, StopAsyncIteration):
                return
            if not isinstance(event, dict) or matches(event.get("object", {})):
                yield event


# -- selectors and patches ---------------------------------------------------------------


def _selector(params: Mapping[str, str]) -> Any:
    labels = _parse_selector(params.get("labelSelector", ""))
    fields = _parse_selector(params.get("fieldSelector", ""))

    def matches(obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        own = meta.get("labels") or {}
        if not all(test(own.get(key)) for key, test in labels):
            return False
        return all(test(_field(obj, key)) for key, test in fields)

    return matches


def _parse_selector(text: str) -> list[tuple[str, Any]]:
    """``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``, ``k notin (a,b)``."""
    tests: list[tuple[str, Any]] = []
    for term in _split_terms(text):
        term = term.strip()
        if not term:
            continue
        if " notin " in term or " in " in term:
            negate = " notin " in term
            key, _, values = term.partition(" notin " if negate else " in ")
            allowed = {v.strip() for v in values.strip().strip("()").split(",")}
            tests.append((key.strip(), lambda v, a=allowed, n=negate: (v in a) != n))
        elif "!=" in term:
            key, _, value = term.partition("!=")
            unwanted = value.strip()
            tests.append((key.strip(), lambda v, u=unwanted: v != u))
        elif "=" in term:
            key, _, value = term.replace("==", "=").partition("=")
            wanted = value.strip()
            tests.append((key.strip(), lambda v, w=wanted: v == w))
        elif term.startswith("!"):
            tests.append((term[1:].strip(), lambda v: v is None))
        else:
            tests.append((term, lambda v: v is not None))
    return tests


def _split_terms(text: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    return [*terms, current]


def _field(obj: dict[str, Any], path: str) -> Any:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None and path.startswith("spec.") else value


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _validate_labels(obj: dict[str, Any]) -> None:
    problems = []
    for key, value in (obj.get("metadata", {}).get("labels") or {}).items():
        problems += [f"metadata.labels: Invalid value: {key!r}: {p}" for p in label_key_errors(key)]
        problems += [
            f"metadata.labels: Invalid value: {value!r}: {p}"
            for p in label_value_errors(str(value))
        ]
    if problems:
        raise _RefusedError(422, "Invalid", "; ".join(problems))


# -- running it ------------------------------------------------------------------------


@contextmanager
def serve(
    fake: FakeApiServer | None = None,
) -> Iterator[tuple[FakeApiServer, kubernetes.client.ApiClient]]:
    """Run ``fake`` (a new one by default) on a free port in a background thread; yield it
    and an official-client ``ApiClient`` pointed at it."""
    fake = fake or FakeApiServer()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        state["stop"] = stop
        async with fake, Server(fake) as server:
            state["url"] = f"http://{server.host}:{server.port}"
            ready.set()
            await stop.wait()

    def run() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as error:  # surfaced to the test below
            state["error"] = error
            ready.set()

    thread = threading.Thread(target=run, name="fake-api-server", daemon=True)
    thread.start()
    ready.wait(10)
    if "error" in state:
        raise RuntimeError("the fake API server did not start") from state["error"]
    configuration = kubernetes.client.Configuration(host=state["url"])
    client = kubernetes.client.ApiClient(configuration)
    try:
        yield fake, client
    finally:
        client.close()
        loop.call_soon_threadsafe(state["stop"].set)
        thread.join(10)
        loop.close()


__all__ = ["FakeApiServer", "serve"]

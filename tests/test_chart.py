"""The Helm chart: rendered and linted by the real Helm engine, manifests validated against
the Kubernetes schemas, and its RBAC matched against what the code uses."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from optimizer.rbac import PERMISSIONS, Permission

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "stowage"
KUBERNETES_VERSION = "1.30.0"
#: The modules that talk to the API server; importing them registers their permissions.
ADAPTERS = ("optimizer.controller.kube", "optimizer.auth")


def _manifests(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    rendered = helm.Chart.load(CHART).render(
        values, name="stowage", namespace="gpu-system", is_install=True
    )
    return [
        doc
        for text in rendered.values()
        for doc in yaml.safe_load_all(text)
        if doc  # a disabled template renders to nothing
    ]


def test_lint_has_no_errors_or_warnings() -> None:
    report = helm.lint(CHART, strict=True, kube_version=f"v{KUBERNETES_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("webhook", [True, False])
def test_every_manifest_is_valid_kubernetes(webhook: bool) -> None:
    manifests = _manifests({"webhook": {"enabled": webhook}})
    kinds = {m["kind"] for m in manifests}
    assert ("MutatingWebhookConfiguration" in kinds) == webhook
    for manifest in manifests:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def _granted() -> set[Permission]:
    granted = set()
    for manifest in _manifests():
        if manifest["kind"] not in ("ClusterRole", "Role"):
            continue
        for rule in manifest["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted.update(Permission(group, resource, v) for v in rule["verbs"])
    return granted


def test_the_chart_grants_exactly_what_the_code_uses() -> None:
    for module in ADAPTERS:
        importlib.import_module(module)
    granted = _granted()
    assert sorted(PERMISSIONS - granted) == [], "the code uses verbs the chart does not grant"
    assert sorted(granted - PERMISSIONS) == [], "the chart grants verbs no code uses"


def test_only_the_declared_adapters_build_api_clients() -> None:
    """Every API call goes through a module whose calls declare their permissions."""
    adapters = {ROOT / (module.replace(".", "/") + ".py") for module in ADAPTERS}
    builds_client = re.compile(r"\b(?:client\.)?[A-Z]\w*V\d\w*Api\(|CustomObjectsApi\(")
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("optimizer", "agent", "shared")
        for path in (ROOT / package).rglob("*.py")
        if path not in adapters and builds_client.search(path.read_text())
    ]
    assert offenders == []


CRDS = CHART / "crds"


def _crd(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((CRDS / name).read_text()))


def _as_json_schema(schema: Any) -> Any:
    """The CRD's OpenAPI v3 schema as JSON Schema: boolean exclusiveMinimum becomes the
    draft-7 form, int-or-string fields accept both (the ``x-kubernetes-*`` keys are
    ignored by jsonschema; CEL rules are the API server's to run)."""
    if isinstance(schema, list):
        return [_as_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _as_json_schema(v) for k, v in schema.items()}
    if out.pop("exclusiveMinimum", None) is True:
        out["exclusiveMinimum"] = out.pop("minimum")
    if out.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    return out


def test_the_queue_crd_is_valid_and_its_columns_show_what_the_controller_writes() -> None:
    from optimizer.controller.queues import queue_status
    from optimizer.planner.cluster import ClusterState
    from optimizer.planner.plan import ClusterSnapshot, Plan
    from optimizer.planner.queues import QueueSet, QueueSpec
    from optimizer.planner.snapshot import Snapshot

    crd = _crd("queues.stowage.io.yaml")
    kubernetes_validate.validate(crd, KUBERNETES_VERSION, strict=True)
    [version] = crd["spec"]["versions"]
    snapshot = ClusterSnapshot(
        nodes=(),
        base=Snapshot(state=ClusterState.from_nodes([])),
        queues=QueueSet([QueueSpec("q")]),
    )
    written = queue_status(snapshot, Plan("c", 0), {"q": 1})["q"]
    status_schema = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert set(written) <= set(status_schema)
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"]
        if path.startswith(".status."):
            assert path.removeprefix(".status.") in written, path


QUEUE_CASES = [
    ({"resources": [{"name": "nvidia.com/gpu", "nominalQuota": 16}]}, None),
    (
        {
            "parent": "org",
            "weight": 2,
            "namespaces": ["ml"],
            "ordering": "stowage",
            "resources": [
                {"name": "nvidia.com/gpu", "model": "H100", "nominalQuota": "8", "lendingLimit": 4},
                {"name": "memory", "nominalQuota": "1Ti", "borrowingLimit": "512Gi"},
            ],
        },
        None,
    ),
    ({"weight": 0, "resources": []}, "weight"),
    ({"resources": [{"name": "nvidia.com/gpus", "nominalQuota": 1}]}, "name"),
    ({"resources": [{"name": "cpu", "nominalQuota": "lots"}]}, "nominalQuota"),
    ({"ordering": "random", "resources": []}, "ordering"),
]


@pytest.mark.parametrize(("spec", "refused"), QUEUE_CASES)
def test_the_crd_schema_and_the_controller_agree_on_queues(
    spec: dict[str, Any], refused: str | None
) -> None:
    import jsonschema

    from optimizer.controller.queues import QueueSpecError, queue_spec

    [version] = _crd("queues.stowage.io.yaml")["spec"]["versions"]
    schema = _as_json_schema(version["schema"]["openAPIV3Schema"])
    obj = {"apiVersion": "stowage.io/v1alpha1", "kind": "Queue", "metadata": {"name": "q"}}
    obj["spec"] = spec
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(obj))
    if refused is None:
        assert errors == []
        queue_spec(obj)
    else:
        assert errors, "the CRD schema accepts it"
        assert any(refused in ".".join(map(str, e.absolute_path)) for e in errors)
        with pytest.raises(QueueSpecError, match=refused):
            queue_spec(obj)

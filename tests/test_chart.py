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

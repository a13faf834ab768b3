"""The Helm chart: rendered and linted by the real Helm engine for every combination of
values that matters, manifests validated against the two newest Kubernetes minors' schemas,
its RBAC matched against what the code uses, the agent placed (by the planner's own
kube-scheduler filters) only on GPU nodes, every name a manifest refers to rendered, and
the settings it passes known to the code."""

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
#: The two newest Kubernetes minors kubernetes-validate knows (1.37 and 1.36 today).
VERSIONS = sorted(
    set(kubernetes_validate.utils.all_versions()),
    key=lambda v: tuple(map(int, v.split("."))),
)[-2:]
KUBERNETES_VERSION = VERSIONS[-1]
POSTGRES_URL = "postgresql+psycopg://stowage:secret@db.example:5432/stowage"
#: Values that change what the chart renders, by name.
CASES: dict[str, dict[str, Any]] = {
    "default": {},
    "postgresql": {"database": {"type": "postgresql", "postgresql": {"url": POSTGRES_URL}}},
    "postgresql-existing-secret": {
        "database": {"type": "postgresql", "postgresql": {"existingSecret": "my-db"}}
    },
    "cert-manager": {"tls": {"certManager": True}},
    "cert-manager-cluster-issuer": {
        "tls": {"certManager": True, "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}
    },
    "monitoring": {
        "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}
    },
    "dry-run": {"optimizer": {"controller": "dry-run"}},
    "minimal": {
        "agent": {"enabled": False},
        "webhook": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "podDisruptionBudget": {"enabled": False},
    },
    "customised": {
        "fullnameOverride": "gpu-sched",
        "image": {"agentDigest": "sha256:" + "a" * 64, "pullSecrets": [{"name": "regcred"}]},
        "agent": {
            "runtimeClassName": "nvidia",
            "extraEnv": [{"name": "X", "value": "1"}],
            "dcgmExporterUrl": "http://$(HOST_IP):9400/metrics",
        },
        "optimizer": {"tokensSecret": "people", "settings": {"planner_policy": "fgd"}},
    },
}
#: The modules that talk to the API server; importing them registers their permissions.
ADAPTERS = ("optimizer.controller.kube", "optimizer.auth")


def _render(values: dict[str, Any] | None = None) -> dict[str, str]:
    return helm.Chart.load(CHART).render(
        values, name="stowage", namespace="gpu-system", is_install=True
    )


def _manifests(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [
        doc
        for name, text in _render(values).items()
        if not name.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc  # a disabled template renders to nothing
    ]


def _one(manifests: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    [found] = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"].endswith(suffix)]
    return found


@pytest.mark.parametrize("case", CASES)
def test_lint_has_no_errors_or_warnings(case: str) -> None:
    report = helm.lint(CHART, CASES[case], strict=True, kube_version=f"v{KUBERNETES_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


#: Custom resources of operators the chart integrates with (not in Kubernetes' schemas).
FOREIGN = {"cert-manager.io/v1", "monitoring.coreos.com/v1"}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", CASES)
def test_every_manifest_is_valid_kubernetes(case: str, version: str) -> None:
    manifests = _manifests(CASES[case])
    for manifest in manifests:
        if manifest["apiVersion"] not in FOREIGN:
            kubernetes_validate.validate(manifest, version, strict=True)
    kinds = {m["kind"] for m in manifests}
    assert ("MutatingWebhookConfiguration" in kinds) == (case not in ("dry-run", "minimal"))
    assert ("DaemonSet" in kinds) == (case != "minimal")


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


# -- the agent lands only on GPU nodes --------------------------------------------------


def _node(name: str, labels: dict[str, str], taints: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}},
        "spec": {"taints": taints},
        "status": {
            "allocatable": {"cpu": "64", "memory": "512Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


@pytest.mark.parametrize(
    ("node", "lands"),
    [
        pytest.param(_node("gfd", {"nvidia.com/gpu.present": "true"}, []), True, id="gfd-label"),
        pytest.param(
            _node("nfd", {"feature.node.kubernetes.io/pci-10de.present": "true"}, [GPU_TAINT]),
            True,
            id="nfd-label-and-the-gpu-taint",
        ),
        pytest.param(_node("cpu", {}, []), False, id="cpu-node"),
        pytest.param(
            _node("gone", {"nvidia.com/gpu.present": "false"}, []), False, id="gfd-says-no-gpu"
        ),
        pytest.param(
            _node(
                "reserved",
                {"nvidia.com/gpu.present": "true"},
                [{"key": "dedicated", "value": "infer", "effect": "NoSchedule"}],
            ),
            False,
            id="another-taint",
        ),
    ],
)
def test_the_agent_lands_only_on_gpu_nodes(node: dict[str, Any], lands: bool) -> None:
    """Judged by the planner's NodeAffinity and TaintToleration filters, which are
    kube-scheduler's (tests/optimizer/test_filters.py)."""
    from optimizer.controller.observe import node_info, pod_info
    from optimizer.planner.filters import NodeAffinity, TaintToleration

    daemonset = _one(_manifests(), "DaemonSet", "-agent")
    template = daemonset["spec"]["template"]
    pod = {
        "metadata": {**template["metadata"], "name": "agent", "namespace": "gpu-system"},
        "spec": template["spec"],
    }
    info, _ = node_info(node, report=None, stale=False)
    statuses = [f(pod_info(pod), info) for f in (NodeAffinity(), TaintToleration())]
    assert all(s.ok for s in statuses) == lands


# -- what the manifests refer to exists ---------------------------------------------------


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("case", CASES)
def test_every_name_a_manifest_refers_to_is_rendered(case: str) -> None:
    manifests = _manifests(CASES[case])
    names = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    services = [m for m in manifests if m["kind"] == "Service"]
    workloads = [m for m in manifests if m["kind"] in ("Deployment", "DaemonSet", "Job")]
    # secrets: rendered, issued by a rendered Certificate, or the user's own (named in values)
    issued = {m["spec"]["secretName"] for m in manifests if m["kind"] == "Certificate"}
    given = {"my-db", "people"}
    for webhook in (m for m in manifests if m["kind"] == "MutatingWebhookConfiguration"):
        for hook in webhook["webhooks"]:
            assert ("Service", hook["clientConfig"]["service"]["name"]) in names
    for monitor in (m for m in manifests if m["kind"] == "ServiceMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"]
        [service] = [s for s in services if _selects(wanted, s["metadata"]["labels"])]
        ports = {p["name"] for p in service["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
        for endpoint in monitor["spec"]["endpoints"]:
            if "tlsConfig" in endpoint:
                secret = endpoint["tlsConfig"]["ca"]["secret"]["name"]
                assert ("Secret", secret) in names or secret in issued
    for service in services:  # every Service has pods behind it
        assert any(
            _selects(service["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
            for w in workloads
        ), service["metadata"]["name"]
    for workload in workloads:
        spec = workload["spec"]["template"]["spec"]
        if "serviceAccountName" in spec:
            assert ("ServiceAccount", spec["serviceAccountName"]) in names
        secrets = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        secrets |= {
            e["valueFrom"]["secretKeyRef"]["name"]
            for c in spec["containers"]
            for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        for secret in secrets:
            assert ("Secret", secret) in names or secret in issued | given, secret
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for v in spec.get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        assert all(("PersistentVolumeClaim", c) in names for c in claims)


# -- what the chart tells the code ---------------------------------------------------------


def _env(workload: dict[str, Any]) -> dict[str, Any]:
    [container] = workload["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("case", ["default", "postgresql", "customised"])
def test_every_setting_the_chart_passes_is_one_the_code_reads(case: str) -> None:
    from agent.settings import AgentSettings
    from optimizer.settings import OptimizerSettings

    manifests = _manifests(CASES[case])
    known = {
        "optimizer": {f"STOWAGE_{name.upper()}" for name in OptimizerSettings.model_fields},
        "agent": {f"STOWAGE_AGENT_{name.upper()}" for name in AgentSettings.model_fields}
        | {"NODE_NAME", "HOST_IP", "X"},
    }
    for component, workload in (
        ("optimizer", _one(manifests, "Deployment", "-optimizer")),
        ("agent", _one(manifests, "DaemonSet", "-agent")),
    ):
        assert set(_env(workload)) <= known[component], component
    job = [m for m in manifests if m["kind"] == "Job"]
    for migration in job:
        assert (
            _env(migration)["STOWAGE_DATABASE_URL"]
            == _env(_one(manifests, "Deployment", "-optimizer"))["STOWAGE_DATABASE_URL"]
        )
        assert migration["spec"]["template"]["spec"]["containers"][0]["args"] == ["db", "upgrade"]


def test_the_optimizer_accepts_the_agents_identity() -> None:
    manifests = _manifests()
    optimizer = _env(_one(manifests, "Deployment", "-optimizer"))
    agent = _one(manifests, "DaemonSet", "-agent")
    spec = agent["spec"]["template"]["spec"]
    account = _one(manifests, "ServiceAccount", "-agent")
    assert optimizer["STOWAGE_AUTH"] == "tokenreview"
    assert optimizer["STOWAGE_AGENT_USERNAME"] == (
        f"system:serviceaccount:gpu-system:{account['metadata']['name']}"
    )
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    [projected] = [v["projected"] for v in spec["volumes"] if "projected" in v]
    [source] = projected["sources"]
    assert source["serviceAccountToken"]["audience"] == optimizer["STOWAGE_TOKENREVIEW_AUDIENCE"]
    assert (
        _env(agent)["STOWAGE_AGENT_OPTIMIZER_URL"]
        == "https://stowage-optimizer.gpu-system.svc:8443"
    )


def test_the_agent_reads_a_dcgm_exporter_on_its_node_only_when_asked() -> None:
    assert "STOWAGE_AGENT_DCGM_EXPORTER_URL" not in _env(_one(_manifests(), "DaemonSet"))
    env = _env(_one(_manifests(CASES["customised"]), "DaemonSet"))
    assert env["HOST_IP"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    # Kubernetes expands $(HOST_IP) because HOST_IP is defined before it
    names = list(env)
    assert names.index("HOST_IP") < names.index("STOWAGE_AGENT_DCGM_EXPORTER_URL")
    assert env["STOWAGE_AGENT_DCGM_EXPORTER_URL"] == "http://$(HOST_IP):9400/metrics"


def test_sqlite_runs_one_replica_and_postgresql_two_behind_a_budget() -> None:
    sqlite = _manifests({"optimizer": {"replicas": 3}})
    assert _one(sqlite, "Deployment")["spec"]["replicas"] == 1
    assert _one(sqlite, "Deployment")["spec"]["strategy"]["type"] == "Recreate"
    assert not [m for m in sqlite if m["kind"] == "PodDisruptionBudget"]
    postgres = _manifests(CASES["postgresql"])
    assert _one(postgres, "Deployment")["spec"]["replicas"] == 2
    assert _one(postgres, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    hooks = {
        m["kind"]: m["metadata"]["annotations"]["helm.sh/hook-weight"]
        for m in postgres
        if "helm.sh/hook" in (m["metadata"].get("annotations") or {})
    }
    assert int(hooks["Secret"]) < int(hooks["Job"])  # the URL exists before the migration


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"optimizer": {"controller": "maybe"}}, "/optimizer/controller"),
        ({"agent": {"nodeSelectorTerms": []}}, "/agent/nodeSelectorTerms"),
        ({"database": {"type": "mysql"}}, "/database/type"),
        ({"image": {"agentDigest": "latest"}}, "/image/agentDigest"),
        ({"optimizer": {"settings": {"Planner-Policy": "x"}}}, "Planner-Policy"),
        ({"agnet": {}}, "agnet"),
        ({"agent": {"dcgmExporterUrl": "localhost:9400"}}, "/agent/dcgmExporterUrl"),
    ],
)
def test_the_values_schema_refuses_mistakes_by_path(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm.HelmError, match=complaint):
        _render(values)


def test_postgresql_without_a_url_says_so() -> None:
    with pytest.raises(helm.HelmError, match=r"needs database\.postgresql\.url"):
        _render({"database": {"type": "postgresql"}})


def test_the_generated_certificate_serves_the_service_and_the_webhook_trusts_it(
    tmp_path: Path,
) -> None:
    import base64
    import subprocess

    manifests = _manifests()
    secret = _one(manifests, "Secret", "-optimizer-tls")["data"]
    webhook = _one(manifests, "MutatingWebhookConfiguration")
    assert webhook["webhooks"][0]["clientConfig"]["caBundle"] == secret["ca.crt"]
    for key in ("ca.crt", "tls.crt"):
        (tmp_path / key).write_bytes(base64.b64decode(secret[key]))
    host = "stowage-optimizer.gpu-system.svc"
    command = ["openssl", "verify", "-CAfile", tmp_path / "ca.crt", "-verify_hostname", host]
    checked = subprocess.run(
        [*command, tmp_path / "tls.crt"],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr
    # with cert-manager, its injector fills the caBundle from the Certificate
    managed = _manifests(CASES["cert-manager"])
    hook = _one(managed, "MutatingWebhookConfiguration")
    assert hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        "gpu-system/stowage-optimizer"
    )
    assert "caBundle" not in hook["webhooks"][0]["clientConfig"]
    assert host in _one(managed, "Certificate", "-optimizer")["spec"]["dnsNames"]


def test_every_container_is_locked_down() -> None:
    for case in ("default", "postgresql"):
        for workload in _manifests(CASES[case]):
            if workload["kind"] not in ("Deployment", "DaemonSet", "Job"):
                continue
            for container in workload["spec"]["template"]["spec"]["containers"]:
                context = container["securityContext"]
                assert context["allowPrivilegeEscalation"] is False
                assert context["readOnlyRootFilesystem"] is True
                assert context["capabilities"]["drop"] == ["ALL"]
                assert "add" not in context["capabilities"]
                assert context.get("privileged", False) is False
                if workload["kind"] != "DaemonSet":  # the agent is root: see agent.yaml
                    assert context["runAsNonRoot"] is True

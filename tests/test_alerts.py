"""The alert rules (helm/stowage/files/alerts.yaml): valid for Prometheus, each one's firing
and silence unit-tested with ``promtool test rules``, every metric they use one that
Stowage exports, and the chart's PrometheusRule carrying the same groups; the dcgm-exporter
recording rules (files/dcgm-compat.yaml) unit-tested the same way."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import prometheus_binary

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "helm" / "stowage" / "files" / "alerts.yaml"
TESTS = ROOT / "tests" / "alerts" / "stowage_alerts_test.yaml"
DCGM = ROOT / "helm" / "stowage" / "files" / "dcgm-compat.yaml"
DCGM_TESTS = ROOT / "tests" / "alerts" / "dcgm_compat_test.yaml"


def _run(*args: str | Path, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        [prometheus_binary("promtool"), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_promtool_accepts_the_rules() -> None:
    assert "SUCCESS: 9 rules found" in _run("check", "rules", RULES)


def test_each_alert_fires_when_it_should_and_only_then() -> None:
    tested = {
        case["alertname"]
        for group in yaml.safe_load(TESTS.read_text())["tests"]
        for case in group["alert_rule_test"]
    }
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert tested == alerts  # every alert has a unit test
    assert "SUCCESS" in _run("test", "rules", TESTS.name, cwd=TESTS.parent)


def test_the_rules_use_only_metrics_stowage_exports() -> None:
    """Every stowage_ series an alert reads is declared by the agent's exporter or the
    optimizer (counters as <name>_total)."""
    declared: set[str] = set()
    for package in ("agent", "optimizer"):
        for path in (ROOT / package).rglob("*.py"):
            for name in re.findall(r'"(stowage_[a-z0-9_]+)"', path.read_text()):
                declared |= {name, f"{name}_total"}
    used = {
        name
        for path in (RULES, DCGM)
        for g in yaml.safe_load(path.read_text())["groups"]
        for r in g["rules"]
        for name in re.findall(r"\bstowage_[a-z0-9_]+", r["expr"])
    }
    assert used
    assert used <= declared, sorted(used - declared)


@pytest.mark.parametrize("dcgm", [False, True])
def test_the_charts_prometheus_rule_carries_the_same_groups(dcgm: bool) -> None:
    import helm_python as helm

    rendered = helm.Chart.load(ROOT / "helm" / "stowage").render(
        {"metrics": {"prometheusRule": {"enabled": True, "dcgmCompat": dcgm}}},
        name="stowage",
        namespace="gpu",
    )
    [rule] = [
        doc
        for name, text in rendered.items()
        if name.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc and doc["kind"] == "PrometheusRule"
    ]
    groups = yaml.safe_load(RULES.read_text())["groups"]
    if dcgm:
        groups += yaml.safe_load(DCGM.read_text())["groups"]
    assert rule["spec"] == {"groups": groups}


def test_the_dcgm_recording_rules_give_dcgm_names_units_and_labels() -> None:
    assert "SUCCESS: 16 rules found" in _run("check", "rules", DCGM)
    assert "SUCCESS" in _run("test", "rules", DCGM_TESTS.name, cwd=DCGM_TESTS.parent)

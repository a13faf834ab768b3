"""``stowage plan`` on a kubectl dump: cordoned, tainted and selector-constrained nodes, a
malformed pod, a preemption; text and --json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from optimizer.cli.user import app
from shared.labels import SCHEDULING_GATE
from shared.samples import DGX_H100, build_report

runner = CliRunner()


def _node(name: str, *, pool: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "pool": pool}},
        "spec": spec,
        "status": {
            "allocatable": {"cpu": "96", "memory": "1000Gi", "nvidia.com/gpu": "8", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _pod(
    name: str,
    *,
    gang: str,
    size: int,
    pool: str,
    node: str | None = None,
    priority: int = 0,
    gpus: str = "8",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeSelector": {"pool": pool},
        "priority": priority,
        "containers": [
            {
                "name": "main",
                "resources": {"requests": {"cpu": "8"}, "limits": {"nvidia.com/gpu": gpus}},
            }
        ],
    }
    if node:
        spec["nodeName"] = node
    else:
        spec["schedulingGates"] = [{"name": SCHEDULING_GATE}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "ml",
            "uid": f"uid-{name}",
            "labels": {"stowage.io/gang": gang, "stowage.io/gang-size": str(size)},
            "creationTimestamp": "2026-12-01T10:00:00Z",
        },
        "spec": spec,
        "status": {"phase": "Running" if node else "Pending"},
    }


def _dump(tmp_path: Path) -> Path:
    malformed = _pod("broken-0", gang="broken", size=1, pool="x")
    malformed["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "many"
    items = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "ml", "labels": {"stowage.io/enabled": "true"}},
        },
        _node("x-cordoned", pool="x", unschedulable=True),
        _node("x-tainted", pool="x", taints=[{"key": "maintenance", "effect": "NoSchedule"}]),
        _node("x1", pool="x"),
        _node("x2", pool="x"),
        _node("y1", pool="y"),
        _pod("train-0", gang="train", size=2, pool="x"),
        _pod("train-1", gang="train", size=2, pool="x"),
        _pod("big-0", gang="big", size=3, pool="x"),
        _pod("big-1", gang="big", size=3, pool="x"),
        _pod("big-2", gang="big", size=3, pool="x"),
        _pod("low-0", gang="low", size=1, pool="y", node="y1", priority=1),
        _pod("urgent-0", gang="urgent", size=1, pool="y", priority=100),
        malformed,
    ]
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    return path


def test_plan_json_explains_every_decision(tmp_path: Path) -> None:
    result = runner.invoke(app, ["plan", "--snapshot", str(_dump(tmp_path)), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["admit"] == [
        {
            "namespace": "ml",
            "gang": "train",
            "pods": [
                {"name": "train-0", "node": "x1", "gpus": [0, 1, 2, 3, 4, 5, 6, 7]},
                {"name": "train-1", "node": "x2", "gpus": [0, 1, 2, 3, 4, 5, 6, 7]},
            ],
        }
    ]
    waits = {w["gang"]: w["reason"] for w in plan["wait"]}
    assert waits["big"] == (  # planned before train (same priority and age; by name)
        "needs 3 x 8 GPUs; the 2 nodes it may use have 16 free GPUs; 2/5 nodes are "
        "available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had "
        "untolerated taint {maintenance}, 1 node(s) were unschedulable."
    )
    assert waits["urgent"].endswith("preempting 1 lower-priority gang(s): ml/low")
    assert plan["evict"] == [
        {
            "namespace": "ml",
            "pod": "low-0",
            "reason": "preempted by gang ml/urgent (priority 100), which needs 1 pods and "
            "cannot fit otherwise",
            "for_gang": "ml/urgent",
        }
    ]
    [invalid] = plan["invalid"]
    assert invalid["kind"] == "Pod"
    assert invalid["name"] == "broken-0"
    assert invalid["reason"].startswith("unreadable resource request")
    assert len(plan["cycle_id"]) == 12


def test_plan_reads_stdin_and_prints_lines(tmp_path: Path) -> None:
    text = _dump(tmp_path).read_text()
    result = runner.invoke(app, ["plan", "--snapshot", "-"], input=text)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].endswith("1 admitted, 2 waiting, 1 to evict, 1 invalid")
    assert "ADMIT   ml/train" in lines
    assert "          train-0 -> x1 GPUs 0-7" in lines


def test_plan_uses_agent_reports_for_gpu_health(tmp_path: Path) -> None:
    dump = _dump(tmp_path)
    reports = tmp_path / "reports"
    reports.mkdir()
    for node in ("x1", "x2"):
        report = build_report(DGX_H100, node_name=node)
        data = json.loads(report.model_dump_json())
        if node == "x1":
            data["gpus"][0]["health"] = "lost"
        (reports / f"{node}.json").write_text(json.dumps(data))
    (reports / "junk.json").write_text("{")
    result = runner.invoke(
        app, ["plan", "--snapshot", str(dump), "--reports", str(reports), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert "junk.json: skipped" in result.stderr
    plan = json.loads(result.stdout)
    assert plan["admit"] == []  # x1 lost a GPU: only x2 has 8 left
    assert {w["gang"] for w in plan["wait"]} >= {"train", "big"}


def test_plan_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("items: [\n")
    result = runner.invoke(app, ["plan", "--snapshot", str(bad)])
    assert result.exit_code == 2
    assert result.stderr.startswith("stowage plan: not YAML or JSON at line")
    assert len(result.stderr.strip().splitlines()) == 1
    missing = runner.invoke(app, ["plan", "--snapshot", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2
    unknown = runner.invoke(app, ["plan", "--snapshot", str(_dump(tmp_path)), "--policy", "zz"])
    assert unknown.exit_code == 2
    assert unknown.stderr.strip() == (
        "stowage plan: unknown policy 'zz'; known: bestfit, dotprod, fgd, gpu-clustering, "
        "gpu-packing, kube-default, random, stowage"
    )


def _timed(
    pod: dict[str, Any], *, created: str, estimate: str, started: str = ""
) -> dict[str, Any]:
    pod["metadata"]["creationTimestamp"] = created
    pod["metadata"]["labels"]["stowage.io/runtime-estimate"] = estimate
    if started:
        pod["status"] = {"phase": "Running", "startTime": started}
    return pod


def test_plan_shows_a_backfill_decision_and_a_queue_quota_with_reasons(tmp_path: Path) -> None:
    objects: list[Any] = [
        {"kind": "Namespace", "metadata": {"name": "ml", "labels": {"stowage.io/enabled": "true"}}},
        _node("n1", pool="gpu"),
        {
            "apiVersion": "stowage.io/v1alpha1",
            "kind": "Queue",
            "metadata": {"name": "team"},
            "spec": {
                "namespaces": ["ml"],
                "ordering": "fifo",
                "resources": [{"name": "nvidia.com/gpu", "nominalQuota": 10}],
            },
        },
        # 6 of the 8 GPUs run for another 30 minutes (1 h expected, started 30 min ago)
        _timed(
            _pod("holder-0", gang="holder", size=1, pool="gpu", node="n1", gpus="6"),
            created="2026-12-01T09:00:00Z",
            estimate="1h",
            started="2026-12-01T09:30:00Z",
        ),
        # the head needs all 8: it gets a reservation at 10:30
        _timed(
            _pod("big-0", gang="big", size=1, pool="gpu"),
            created="2026-12-01T09:40:00Z",
            estimate="2h",
        ),
        # 10 minutes on the 2 free GPUs ends before the reservation: backfilled
        _timed(
            _pod("quick-0", gang="quick", size=1, pool="gpu", gpus="2"),
            created="2026-12-01T09:50:00Z",
            estimate="10m",
        ),
        # 4 more GPUs would take the queue past its quota of 10 (6 + 4)
        _timed(
            _pod("wide-0", gang="wide", size=1, pool="gpu", gpus="4"),
            created="2026-12-01T09:55:00Z",
            estimate="10m",
        ),
    ]
    dump = tmp_path / "dump.yaml"
    dump.write_text(yaml.safe_dump_all(objects))
    result = runner.invoke(
        app,
        [
            "plan",
            "--snapshot",
            str(dump),
            "--policy",
            "bestfit",
            "--actions",
            "allocate,backfill,preempt",
            "--now",
            "2026-12-01T10:00:00Z",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "ADMIT   ml/quick (backfilled; reservations kept: ml/big)" in lines
    [big] = [line for line in lines if line.startswith("WAIT    ml/big:")]
    assert "reserved to start in 30 min (predicted)" in big
    [wide] = [line for line in lines if line.startswith("WAIT    ml/wide:")]
    assert "queue team needs 4 GPUs of nvidia.com/gpu" in wide


def test_a_malformed_runtime_estimate_makes_only_that_pod_invalid() -> None:
    from optimizer.cli.plan import plan_dump

    bad = _pod("bad-0", gang="bad", size=1, pool="gpu")
    bad["metadata"]["labels"]["stowage.io/runtime-estimate"] = "soon"
    good = _pod("good-0", gang="good", size=1, pool="gpu")
    objects = [_node("n1", pool="gpu"), bad, good]
    plan = plan_dump(objects, policy="bestfit", enable=["ml"])
    assert [a.job.name for a in plan.admit] == ["good"]
    [invalid] = plan.invalid
    assert invalid.name == "bad-0"
    assert "stowage.io/runtime-estimate='soon' is not a duration" in invalid.reason


def _queued(pod: dict[str, Any], queue: str, **timing: str) -> dict[str, Any]:
    pod = _timed(pod, **timing)
    pod["metadata"]["labels"]["stowage.io/queue"] = queue
    return pod


def test_plan_shows_a_queue_reclaiming_its_quota_with_the_reason(tmp_path: Path) -> None:
    def queue(name: str, gpus: int | None = None) -> dict[str, Any]:
        spec: dict[str, Any] = {}
        if gpus is not None:
            spec = {
                "parent": "lab",
                "resources": [{"name": "nvidia.com/gpu", "nominalQuota": gpus}],
            }
        return {
            "apiVersion": "stowage.io/v1alpha1",
            "kind": "Queue",
            "metadata": {"name": name},
            "spec": spec,
        }

    objects: list[Any] = [
        {"kind": "Namespace", "metadata": {"name": "ml", "labels": {"stowage.io/enabled": "true"}}},
        _node("n1", pool="gpu"),
        _node("n2", pool="gpu"),
        queue("lab"),
        queue("research", 8),
        queue("vision", 8),
        # vision runs 16 GPUs: 8 of them research's, lent while research had nothing to run
        _queued(
            _pod("vision-old-0", gang="vision-old", size=1, pool="gpu", node="n1", priority=50),
            "vision",
            created="2026-12-01T08:00:00Z",
            estimate="10h",
            started="2026-12-01T08:00:00Z",
        ),
        _queued(
            _pod("vision-new-0", gang="vision-new", size=1, pool="gpu", node="n2", priority=50),
            "vision",
            created="2026-12-01T09:30:00Z",
            estimate="10h",
            started="2026-12-01T09:30:00Z",
        ),
        # research now needs its 8 back (at a lower priority than both borrowers)
        _queued(
            _pod("mine-0", gang="mine", size=1, pool="gpu", priority=1),
            "research",
            created="2026-12-01T09:55:00Z",
            estimate="1h",
        ),
    ]
    dump = tmp_path / "dump.yaml"
    dump.write_text(yaml.safe_dump_all(objects))
    result = runner.invoke(
        app,
        ["plan", "--snapshot", str(dump), "--policy", "bestfit", "--now", "2026-12-01T10:00:00Z"],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # the borrower that loses least: 30 minutes of work, not 2 hours
    assert (
        "EVICT   ml/vision-new-0 for ml/mine: reclaimed by queue research for gang ml/mine: "
        "queue(s) vision borrowed beyond their nominal quota"
    ) in lines
    [mine] = [line for line in lines if line.startswith("WAIT    ml/mine:")]
    assert "queue research needs 8 GPUs of nvidia.com/gpu; its queue tree has 0 GPUs" in mine
    assert mine.endswith("reclaiming queue research's quota from vision: ml/vision-new")

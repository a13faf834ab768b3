"""The demo's findings come from real agents and a real optimizer, not from constants."""

from __future__ import annotations

import math

from demo.story import SIMULATED_CLUSTER, agent_report, run_demo, summarize
from shared.report import GpuHealth


def test_demo_tells_the_whole_story() -> None:
    result = run_demo()
    assert [n.node_name for n in result.nodes] == [name for name, _ in SIMULATED_CLUSTER]
    assert result.reports_acknowledged == 2 * len(SIMULATED_CLUSTER)
    assert result.forged_status == 403
    assert result.api_nodes == len(SIMULATED_CLUSTER)
    by_name = {n.node_name: n for n in result.nodes}
    h100 = by_name["gpu-h100-a"]
    assert h100.pods == ("ml/llama-pretrain-0", "research/eval-sweep-7")
    assert h100.free_gpus == (5, 6, 7)  # 0-3 train, 4 evaluates
    assert h100.best_pair_nvlinks == 18
    assert by_name["gpu-a100-a"].unhealthy == {6: GpuHealth.LOST}
    assert (6,) in by_name["gpu-a100-a"].islands
    assert by_name["gpu-l40s-a"].islands == tuple((i,) for i in range(8))
    cluster = result.cluster
    assert cluster["gpus"]["total"] == 44
    assert cluster["gpus"]["unhealthy"] == 1
    # serving/embedder-3 holds H100 GPU 5, llm/llama-70b-sft-0 H200 GPUs 4-7, all idle
    assert cluster["gpus"]["allocated_idle"] == 5
    free = sum(len(n.free_gpus) for n in result.nodes)
    assert cluster["gpus"]["free"] == free
    assert [str(p) for p in result.rejected.problems] == [
        "links.0.gpu_b: GPU index 99 is not in gpus"
    ]
    # the forecasting chapter: one forecast per GPU model and the cluster, served by the API
    models = {summary.product for summary in result.nodes}
    assert sorted(result.forecasts_trained) == sorted(
        ["gpu_demand:cluster@3600", *(f"gpu_demand:model/{m}@3600" for m in models)]
    )
    points = result.forecast["points"]
    assert len(points) == 24
    assert all(p["p10"] <= p["p50"] <= p["p90"] for p in points)
    what = result.what_if
    assert what["nodes_after"] == what["nodes_before"] + 2
    assert what["before"]["jobs"] == what["after"]["jobs"] > 0
    assert what["after"]["avg_wait_s"] <= what["before"]["avg_wait_s"]
    plan = {item["model"]: item for item in result.capacity_plan["items"]}
    assert set(plan) == models
    for item in plan.values():
        assert item["additional_gpus"] == max(
            0, math.ceil(item["needed_gpus"] - item["capacity_gpus"] - 1e-6)
        )


def test_free_gpus_follow_time_and_health() -> None:
    early = summarize(agent_report("n1", "dgx-a100", at_s=1.0), wire_bytes=1)
    late = summarize(agent_report("n1", "dgx-a100", at_s=200.0), wire_bytes=1)
    assert early.unhealthy == {}
    assert late.unhealthy == {6: GpuHealth.LOST}
    assert 6 in early.free_gpus
    assert 6 not in late.free_gpus


def test_the_demo_command_prints_a_summary() -> None:
    from typer.testing import CliRunner

    from demo.cli import app

    result = CliRunner().invoke(app, [])
    assert result.exit_code == 0, result.output
    for text in ("gpu-h100-a", "gpu-v100-a", "links.0.gpu_b: GPU index 99", "demo finished"):
        assert text in result.stdout


def test_the_scheduling_chapter_is_planned_from_the_agents_reports() -> None:
    from demo.scheduling import plan_chapter
    from demo.story import agent_report

    reports = [agent_report(node, profile) for node, profile in SIMULATED_CLUSTER]
    plan, lines = plan_chapter(reports)
    admitted = {a.job.name: sorted(p.node for p in a.pods) for a in plan.admit}
    assert admitted["pretrain"] == ["gpu-h100-a", "gpu-h200-a"]  # the Hopper pool
    [wait] = plan.wait
    assert wait.job.name == "finetune"
    # the DGX A100 offers 7 GPUs (one lost), the GB200 tray has 4: neither holds 8
    assert "2 Insufficient nvidia.com/gpu" in wait.reason
    assert "1 node(s) were unschedulable" in wait.reason
    assert [(i.kind, i.name) for i in plan.invalid] == [("Pod", "notebook")]
    assert lines[0].endswith("2 admitted, 1 waiting, 0 to evict, 1 invalid")

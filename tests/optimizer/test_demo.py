"""The demo's findings are derived from the reports, not printed from constants."""

from __future__ import annotations

from optimizer.demo import SIMULATED_CLUSTER, run_demo, summarize
from shared.samples import DGX_H100, build_report


def test_demo_covers_the_whole_simulated_cluster() -> None:
    result = run_demo()
    assert [n.node_name for n in result.nodes] == [name for name, _, _ in SIMULATED_CLUSTER]
    by_name = {n.node_name: n for n in result.nodes}
    # gpu-h100-a runs work on GPUs 0-3: the best idle quad is the other socket's.
    assert by_name["gpu-h100-a"].best_idle_quad == (4, 5, 6, 7)
    assert by_name["gpu-h100-a"].best_quad_nvlinks == 6 * 18
    assert by_name["gpu-h100-b"].best_idle_quad is None
    assert by_name["gpu-v100-a"].best_idle_quad == (0, 1, 2, 3)
    assert by_name["gpu-l40s-a"].islands == tuple((i,) for i in range(8))
    assert [str(p) for p in result.rejected.problems] == [
        "links.0.gpu_b: GPU index 99 is not in gpus"
    ]


def test_summary_follows_utilisation() -> None:
    busy = (0.9, 0.9, 0.0, 0.0, 0.0, 0.0, 0.9, 0.9)
    report = build_report(DGX_H100, node_name="n1", util_ratios=busy)
    summary = summarize(report, wire_bytes=1)
    assert summary.idle_gpus == (2, 3, 4, 5)
    assert summary.best_idle_quad == (2, 3, 4, 5)
    assert abs(summary.mean_util_ratio - 0.45) < 1e-9

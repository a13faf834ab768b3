"""The replay simulator: job completion times worked out by hand on a one-node cluster,
the Philly sizing rule, the CLI, and a slice of the real Philly trace where ../shared is."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from optimizer.cli.user import app
from optimizer.simulate.replay import (
    POLICIES,
    Replay,
    TraceError,
    TraceJob,
    jain,
    load_cluster,
    load_jobs,
    pod_sizes,
    size_for_load,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "traces"
PHILLY_JOBS = SHARED / "pollux-osdi21" / "traces" / "philly.csv"
PHILLY_VCS = SHARED / "philly" / "philly_vc.csv"

CLUSTER = """\
pools: {a: 1}
queues:
  - {name: a, gpus: 8}
"""
# one 8-GPU node; a long job waits behind a medium one, a short one arrives last
JOBS = """\
timestamp,duration,num_gpus,gpu_time,cluster
2017-10-01 00:00:00,100,8,800,a
2017-10-01 00:00:10,1000,8,8000,a
2017-10-01 00:00:20,10,8,80,a
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    (tmp_path / "jobs.csv").write_text(JOBS)
    return tmp_path / "jobs.csv", tmp_path / "cluster.yaml"


@pytest.mark.parametrize(
    ("policy", "jcts", "preemptions"),
    [
        # j0 0-100, j1 100-1100, j2 1100-1110
        ("fifo", [100, 1090, 1090], 0),
        # j0 0-100, then the shorter j2 100-110, then j1 110-1110
        ("sjf-oracle", [100, 1100, 90], 0),
        # j2 (10 s) preempts j0 (80 s left) at 20: j2 20-30, j0 30-110, j1 110-1110
        ("srtf-oracle", [110, 1100, 10], 1),
    ],
)
def test_completion_times_by_hand(
    files: tuple[Path, Path], policy: str, jcts: list[float], preemptions: int
) -> None:
    jobs, cluster = files
    result = Replay(load_jobs(jobs), load_cluster(cluster), POLICIES[policy]).run()
    assert result.jobs == 3
    assert result.avg_jct_s == pytest.approx(sum(jcts) / 3)
    assert result.max_wait_s == pytest.approx(
        max(j - d for j, d in zip(jcts, [100, 1000, 10], strict=True))
    )
    assert result.preemptions == preemptions
    assert result.makespan_s == pytest.approx(1110)
    assert result.utilisation == pytest.approx(1110 / 1110)  # never idle


def test_every_policy_finishes_every_job_and_repeats_itself(files: tuple[Path, Path]) -> None:
    jobs, cluster = files
    for name, policy in POLICIES.items():
        first = Replay(load_jobs(jobs), load_cluster(cluster), policy, seed=3).run()
        again = Replay(load_jobs(jobs), load_cluster(cluster), policy, seed=3).run()
        assert first.jobs == 3, name
        assert {k: v for k, v in first.as_json().items() if k != "elapsed_s"} == {
            k: v for k, v in again.as_json().items() if k != "elapsed_s"
        }


def test_pod_sizes_and_sizing_for_load() -> None:
    assert pod_sizes(3) == [3]
    assert pod_sizes(12) == [6, 6]
    assert pod_sizes(32) == [8, 8, 8, 8]
    assert pod_sizes(20) == [8, 8, 4]
    day = 86_400.0
    jobs = [
        TraceJob(0, 0.0, day * 8, 8, "a"),  # 64 GPU-days over a 2-day window
        TraceJob(1, 2 * day, 0.0, 24, "a"),  # no work, but the largest job needs 3 nodes
        TraceJob(2, day, 10.0, 1, "b"),
    ]
    sizes = size_for_load(jobs, ["a", "b", "c"], 0.5)
    assert sizes == {"a": math.ceil(64 * day / (2 * day * 8 * 0.5)), "b": 1, "c": 1}


def test_jain_index() -> None:
    assert jain([2.0, 2.0, 2.0]) == pytest.approx(1.0)
    assert jain([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)


def test_bad_input_is_one_line_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "jobs.csv"
    bad.write_text("timestamp,duration,num_gpus,cluster\nyesterday,1,1,a\n")
    with pytest.raises(TraceError, match=r"jobs.csv:2: 'yesterday' is not a date"):
        load_jobs(bad)
    bad.write_text("when,duration\n")
    with pytest.raises(TraceError, match="not a job table I know"):
        load_jobs(bad)
    result = CliRunner().invoke(
        app, ["simulate", "replay", "--jobs", str(bad), "--cluster", str(bad)]
    )
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert "stowage simulate replay:" in result.output


def test_cli_json(files: tuple[Path, Path]) -> None:
    jobs, cluster = files
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "replay",
            "--jobs",
            str(jobs),
            "--cluster",
            str(cluster),
            "--policy",
            "fifo",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["policy"] == "fifo"
    assert data["jobs"] == 3
    assert data["avg_jct_s"] == pytest.approx(760)
    assert list(data) == [
        *("policy", "seed", "jobs", "avg_jct_s", "median_jct_s", "p95_jct_s", "p99_jct_s"),
        *("avg_wait_s", "p99_wait_s", "max_wait_s", "utilisation", "makespan_s"),
        *("preemptions", "fairness", "elapsed_s"),
    ]


@pytest.mark.skipif(not PHILLY_JOBS.exists(), reason="needs ../shared/traces (Philly jobs)")
def test_philly_two_days_through_the_cli() -> None:
    results = {}
    for policy in ("fifo", "sjf-oracle", "srtf-oracle", "stowage"):
        out = CliRunner().invoke(
            app,
            [
                "simulate",
                "replay",
                "--jobs",
                str(PHILLY_JOBS),
                "--vcs",
                str(PHILLY_VCS),
                "--load",
                "0.8",
                "--from",
                "2017-10-01",
                "--to",
                "2017-10-03",
                "--policy",
                policy,
                "--json",
            ],
        )
        assert out.exit_code == 0, out.output
        results[policy] = json.loads(out.output)
    assert len({r["jobs"] for r in results.values()}) == 1
    assert results["fifo"]["jobs"] > 1_000
    # the bounds order as they must; stowage is measured in docs/benchmarks.md, not here
    assert results["sjf-oracle"]["avg_jct_s"] < results["fifo"]["avg_jct_s"]
    assert results["srtf-oracle"]["avg_jct_s"] < results["fifo"]["avg_jct_s"]
    assert results["srtf-oracle"]["preemptions"] > 0 == results["sjf-oracle"]["preemptions"]


TIRESIAS_JOBS = """\
job_id,num_gpu,submit_time,iterations,model_name,duration,interval
0,4,0,100,vgg19,100,10
1,2,10,100,vgg11,50,10
2,2,20,100,vgg16,30,10
"""
TIRESIAS_SPEC = (
    "num_switch,num_node_p_switch,num_gpu_p_node,num_cpu_p_node,mem_p_node\n1,1,4,40,256\n"
)
TIRESIAS = SHARED / "tiresias-nsdi19"


@pytest.mark.parametrize(
    ("policy", "jcts"),
    [
        # j0 holds all 4 GPUs 0-100; then j1 and j2 side by side: 100-150 and 100-130
        ("fifo", [100, 140, 110]),
        # srtf: j1 (50 s) and j2 (30 s) are shorter than j0's 90 s left at 10: j0 is
        # preempted at 10 for j1, j2 joins at 20 (2 + 2 GPUs); j2 ends at 50, j1 at 60,
        # then j0 runs its remaining 90 s: 60-150
        ("srtf-oracle", [150, 50, 30]),
    ],
)
def test_a_tiresias_trace_on_a_tiresias_cluster_spec_by_hand(
    tmp_path: Path, policy: str, jcts: list[float]
) -> None:
    (tmp_path / "jobs.csv").write_text(TIRESIAS_JOBS)
    (tmp_path / "n1g4.csv").write_text(TIRESIAS_SPEC)
    trace = load_jobs(tmp_path / "jobs.csv")
    assert [(j.submit_s, j.duration_s, j.gpus, j.queue) for j in trace] == [
        (0, 100, 4, "default"),
        (10, 50, 2, "default"),
        (20, 30, 2, "default"),
    ]
    cluster = load_cluster(tmp_path / "n1g4.csv")
    assert (dict(cluster.pools), cluster.gpus_per_node) == ({"default": 1}, 4)
    result = Replay(trace, cluster, POLICIES[policy]).run()
    assert result.avg_jct_s == pytest.approx(sum(jcts) / 3)


def test_an_unknown_job_table_or_cluster_spec_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "jobs.csv").write_text("when,how_long\n1,2\n")
    with pytest.raises(TraceError, match="not a job table I know"):
        load_jobs(tmp_path / "jobs.csv")
    (tmp_path / "spec.csv").write_text("num_switch,num_gpu_p_node\n1,4\n")
    with pytest.raises(TraceError, match="needs one row of num_switch, num_node_p_switch"):
        load_cluster(tmp_path / "spec.csv")


@pytest.mark.skipif(not TIRESIAS.exists(), reason="needs ../shared/traces (Tiresias)")
def test_the_tiresias_60_job_trace_on_one_4_gpu_node() -> None:
    trace = load_jobs(TIRESIAS / "60_job.csv")
    assert len(trace) == 60
    cluster = load_cluster(TIRESIAS / "n1g4.csv")
    results = {
        p: Replay(trace, cluster, POLICIES[p]).run() for p in ("fifo", "sjf-oracle", "srtf-oracle")
    }
    assert {r.skipped.get("larger than its virtual cluster") for r in results.values()} == {
        sum(1 for j in trace if j.gpus > 4)
    }
    # the oracles are bounds: shortest remaining first beats shortest first beats FIFO
    jct = {p: r.avg_jct_s for p, r in results.items()}
    assert jct["srtf-oracle"] < jct["sjf-oracle"] < jct["fifo"]

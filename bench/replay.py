"""Every replay policy on the Philly trace, against the Helios study's simulator.

Run: ``.venv/bin/python -m bench.replay [--workers 2] [--policies a,b] [--write]``.

Jobs submitted 2017-10-01 to 2017-11-30 (``../shared/traces/pollux-osdi21/traces/philly.csv``),
one queue and pool of 8-GPU nodes per virtual cluster of ``../shared/traces/philly/philly_vc.csv``,
at ``--load 0.8`` (each virtual cluster sized to that offered load) and at the table's own
sizes (light load). Each cell is what ``stowage simulate replay … --json`` prints; the
reference figures are those the issue gives for HeliosArtifact on the same input at load
0.8. ``--write`` replaces the replay section of docs/benchmarks.md and draws
docs/replay-philly.png.
"""

from __future__ import annotations

import argparse
import platform
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Final

from bench.docs import replace_section
from optimizer.simulate.replay import (
    POLICIES,
    Replay,
    load_jobs,
    load_vcs,
    size_for_load,
    vc_cluster,
)

SHARED: Final = Path(__file__).resolve().parents[2] / "shared/traces"
JOBS: Final = SHARED / "pollux-osdi21/traces/philly.csv"
VCS: Final = SHARED / "philly/philly_vc.csv"
DOCS: Final = Path(__file__).resolve().parents[1] / "docs"
WINDOW: Final = ("2017-10-01", "2017-12-01")
LOADS: Final = (0.8, None)  # None: the table's own sizes
#: HeliosArtifact (consolidate placer) on this input at load 0.8: (avg JCT, avg wait).
HELIOS: Final = {
    "srtf-oracle": (25_859, 14_373),
    "sjf-oracle": (33_808, 22_327),
    "qssf-noisy": (49_777, 38_297),
    "fifo": (213_342, 201_862),
}
BEGIN: Final = "<!-- replay-benchmark:begin -->"
END: Final = "<!-- replay-benchmark:end -->"


def _run(task: tuple[str, float | None]) -> dict[str, Any]:
    policy, load = task
    jobs = load_jobs(JOBS, since=WINDOW[0], until=WINDOW[1])
    sizes = load_vcs(VCS)
    if load is not None:
        sizes = size_for_load([j for j in jobs if j.queue in sizes], sizes, load)
    result = Replay(jobs, vc_cluster(sizes), POLICIES[policy]).run()
    return {**result.as_json(), "load": load, "nodes": result.nodes, "cycles": result.cycles}


def _row(r: dict[str, Any]) -> str:
    return (
        f"| {r['policy']} | {r['avg_jct_s']:,.0f} | {r['median_jct_s']:,.0f} | "
        f"{r['p99_jct_s']:,.0f} | {r['avg_wait_s']:,.0f} | {r['p99_wait_s']:,.0f} | "
        f"{r['max_wait_s']:,.0f} | {r['utilisation']:.3f} | {r['preemptions']:,} | "
        f"{r['fairness']:.3f} | {r['elapsed_s']:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    names = args.policies.split(",")
    unknown = set(names) - set(POLICIES)
    if unknown:
        parser.error(f"unknown policies {sorted(unknown)}; known: {', '.join(POLICIES)}")
    # the slowest first, so two workers finish together
    slow = ("stowage", "tiresias-las", "srtf-oracle")
    tasks = sorted(
        ((p, load) for load in LOADS for p in names),
        key=lambda t: (t[1] is None, t[0] not in slow),
    )
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(_run, tasks))
    results.sort(key=lambda r: list(POLICIES).index(r["policy"]))
    header = [
        "| policy | avg JCT s | median JCT s | p99 JCT s | avg wait s | p99 wait s | "
        "max wait s | utilisation | preemptions | fairness | run s |",
        "|---|" + "---:|" * 10,
    ]
    lines = [
        f"Command: `.venv/bin/python -m bench.replay --workers {args.workers} --write`. "
        f"Machine: {platform.machine()}, Python {platform.python_version()}; one process per "
        "run. Jobs submitted 2017-10-01 to 2017-11-30; `run s` is the replay's own time.",
        "",
    ]
    for load in LOADS:
        rows = [r for r in results if r["load"] == load]
        title = f"load {load}" if load is not None else "the table's own sizes (light load)"
        lines += [
            f"**{title}**: {rows[0]['jobs']:,} jobs on {rows[0]['nodes']} nodes.",
            "",
            *header,
            *(_row(r) for r in rows),
            "",
        ]
    at_load = {r["policy"]: r for r in results if r["load"] == 0.8}
    lines += [
        "Against HeliosArtifact on the same input at load 0.8 (avg JCT, avg wait; ours / theirs):",
        "",
        "| policy | avg JCT ours | Helios | ratio | avg wait ours | Helios | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for policy, (jct, wait) in HELIOS.items():
        if policy in at_load:
            ours = at_load[policy]
            lines.append(
                f"| {policy} | {ours['avg_jct_s']:,.0f} | {jct:,} | "
                f"{ours['avg_jct_s'] / jct:.2f} | {ours['avg_wait_s']:,.0f} | {wait:,} | "
                f"{ours['avg_wait_s'] / wait:.2f} |"
            )
    report = "\n".join(lines)
    print(report)
    if args.write:
        _write_docs(report)
        _plot(at_load)


def _write_docs(report: str) -> None:
    replace_section(
        BEGIN,
        END,
        f"{report}\n\n![Philly replay at load 0.8](replay-philly.png)",
        heading="Batch scheduling: the Philly trace replayed through the cycle",
    )


def _plot(at_load: dict[str, dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(at_load)
    figure, (jct, wait) = plt.subplots(1, 2, figsize=(11, 4))
    jct.bar(names, [at_load[n]["avg_jct_s"] / 3600 for n in names])
    jct.set(ylabel="average JCT (hours)", title="Philly, load 0.8: average JCT", yscale="log")
    wait.bar(names, [at_load[n]["p99_wait_s"] / 3600 for n in names])
    wait.set(ylabel="p99 wait (hours)", title="p99 queueing delay", yscale="log")
    for axis in (jct, wait):
        axis.tick_params(axis="x", rotation=30)
    figure.tight_layout()
    figure.savefig(DOCS / "replay-philly.png", dpi=110)


if __name__ == "__main__":
    main()

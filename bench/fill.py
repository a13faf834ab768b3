"""Every policy on every openb trace with published results, against the FGD paper's figures.

Run: ``.venv/bin/python -m bench.fill [--seeds 42-51] [--workers 2] [--policies a,b] [--write]``.

For each trace in ``../shared/traces/alibaba-gpu-2023/csv`` that has reference results and
each policy, the fill experiment runs over the seeds (tune 1.3); the table gives the mean GPU
allocation ratio at 130% arrived next to the published mean of the same seeds
(``fgd-expected-results/analysis_allo_discrete.csv``, column ``130``), and the mean seconds
per run. ``--write`` replaces the fill section of docs/benchmarks.md and draws
docs/fill-default.png (allocation and fragmentation curves on the default trace).

The generated workloads of bench/workloads.py (``default`` with more CPU-only or more
multi-GPU pods) get extra rows for ``fgd`` and ``stowage``, clearly apart: they have no
published figures. Every run's result is kept in bench/results/fill-runs.jsonl (the curves
only for the default trace), and the table is computed from that file: ``--policies``
re-runs only the named policies (after a change to one of them) and takes the others' runs
from the file.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Final, NamedTuple

from bench import workloads
from bench.docs import replace_section
from optimizer.simulate.fill import FillResult, fill, load_nodes

TRACES: Final = Path(__file__).resolve().parents[2] / "shared/traces/alibaba-gpu-2023"
DOCS: Final = Path(__file__).resolve().parents[1] / "docs"
RUNS: Final = Path(__file__).resolve().parent / "results/fill-runs.jsonl"
#: The trace whose curves are kept and plotted.
PLOTTED: Final = "default"
#: Our policy names and the reference simulator's.
REFERENCE_NAMES: Final = {
    "random": "01-Random",
    "dotprod": "02-DotProd",
    "gpu-clustering": "03-GpuClustering",
    "gpu-packing": "04-GpuPacking",
    "bestfit": "05-BestFit",
    "fgd": "06-FGD",
}
POLICIES: Final = (*REFERENCE_NAMES, "kube-default", "stowage")
#: The policies run on the generated workloads (bench/workloads.py), which have no
#: published figures: ours against our FGD.
GENERATED_POLICIES: Final = ("fgd", "stowage")
BEGIN: Final = "<!-- fill-benchmark:begin -->"
END: Final = "<!-- fill-benchmark:end -->"


def references() -> dict[tuple[str, str], list[list[float]]]:
    """(trace, reference policy) -> per-seed allocation curves (0..130)."""
    table: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
    path = TRACES / "fgd-expected-results/analysis_allo_discrete.csv"
    with path.open() as handle:
        for row in csv.DictReader(handle):
            trace = row["workload"].removeprefix("openb_pod_list_")
            table[(trace, row["sc_policy"])].append([float(row[str(k)]) for k in range(131)])
    return table


class Run(NamedTuple):
    """One fill run as kept in :data:`RUNS`."""

    trace: str
    policy: str
    seed: int
    alloc_130: float
    elapsed_s: float
    alloc_pct: list[float] | None = None  # the curves, for the plotted trace only
    frag_pct: list[float] | None = None


def _run(job: tuple[str, str, int]) -> Run:
    trace, policy, seed = job
    nodes = load_nodes(TRACES / "csv/openb_node_list_gpu_node.csv")
    result: FillResult = fill(nodes, workloads.pods(trace), policy=policy, tune=1.3, seed=seed)
    curves = trace == PLOTTED
    return Run(
        trace,
        policy,
        seed,
        result.alloc_pct[130],
        result.elapsed_s,
        result.alloc_pct if curves else None,
        result.frag_pct if curves else None,
    )


def _load_runs() -> dict[tuple[str, str, int], Run]:
    if not RUNS.exists():
        return {}
    with RUNS.open() as handle:
        runs = (Run(**json.loads(line)) for line in handle if line.strip())
        return {(r.trace, r.policy, r.seed): r for r in runs}


def _save_runs(runs: dict[tuple[str, str, int], Run]) -> None:
    RUNS.parent.mkdir(exist_ok=True)
    lines = (json.dumps(runs[key]._asdict()) for key in sorted(runs))
    RUNS.write_text("\n".join(lines) + "\n")


def _seeds(text: str) -> list[int]:
    low, _, high = text.partition("-")
    return list(range(int(low), int(high or low) + 1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="42-51")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument(
        "--traces",
        choices=("all", "published", "generated"),
        default="all",
        help="which traces to run: those with published figures, the generated ones, or both",
    )
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    rerun = args.policies.split(",")
    unknown = set(rerun) - set(POLICIES)
    if unknown:
        parser.error(f"unknown policies {sorted(unknown)}; known: {', '.join(POLICIES)}")
    refs = references()
    traces = sorted({t for t, _ in refs})
    seeds = _seeds(args.seeds)
    runs = _load_runs()
    # every (trace, policy, seed) the tables show: published traces x all policies, and the
    # generated ones x the policies compared there
    on_published = [(t, p, s) for t in traces for p in POLICIES for s in seeds]
    on_generated = [(t, p, s) for t in workloads.NAMES for p in GENERATED_POLICIES for s in seeds]
    selected = {
        "all": on_published + on_generated,
        "published": on_published,
        "generated": on_generated,
    }
    jobs = [key for key in selected[args.traces] if key[1] in rerun]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for run in pool.map(_run, jobs):
            runs[(run.trace, run.policy, run.seed)] = run
    missing = [key for key in on_published + on_generated if key not in runs]
    if missing:
        raise SystemExit(f"no run on record for {missing[:3]}...; re-run those policies")
    if args.write:
        _save_runs(runs)
    results: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for trace, policy, seed in on_published:
        results[(trace, policy)].append(runs[(trace, policy, seed)])
    provenance = (
        ""
        if set(rerun) == set(POLICIES) and args.traces == "all"
        else f" (last with `--policies {args.policies} --traces {args.traces}`: the other runs"
        " are those on record in bench/results/fill-runs.jsonl)"
    )
    lines = [
        f"Command: `.venv/bin/python -m bench.fill --seeds {args.seeds} --workers "
        f"{args.workers} --write`{provenance}. Machine: {platform.machine()}, Python "
        f"{platform.python_version()}. Cells: our mean allocation at 130% arrived (published "
        f"mean, difference); seeds {args.seeds}.",
        "",
        "| trace | " + " | ".join(POLICIES) + " | stowage - published fgd |",
        "|---|" + "---:|" * (len(POLICIES) + 1),
    ]
    for trace in traces:
        cells = []
        for policy in POLICIES:
            ours = statistics.mean(r.alloc_130 for r in results[(trace, policy)])
            ref_name = REFERENCE_NAMES.get(policy)
            published = refs.get((trace, ref_name or ""), [])
            if published:
                theirs = statistics.mean(curve[130] for curve in published)
                cells.append(f"{ours:.2f} ({theirs:.2f}, {ours - theirs:+.2f})")
            else:
                cells.append(f"{ours:.2f}")
        stowage = statistics.mean(r.alloc_130 for r in results[(trace, "stowage")])
        fgd = statistics.mean(c[130] for c in refs[(trace, REFERENCE_NAMES["fgd"])])
        cells.append(f"{stowage - fgd:+.2f}")
        lines.append(f"| {trace} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Generated workloads (`bench/workloads.py`, generator seed "
        f"{workloads.SEED}; no published figures): `default` with more CPU-only pods "
        "(`gen-cpu200`, `gen-cpu250`: their CPU request 2x and 2.5x `cpu100`'s) or more "
        "multi-GPU pods (`gen-multigpu40`, `gen-multigpu50`: 40% and 50% of the GPU request); "
        f"mean allocation at 130% arrived, seeds {args.seeds}.",
        "",
        "| generated trace | fgd | stowage | stowage - fgd |",
        "|---|---:|---:|---:|",
    ]
    for trace in workloads.NAMES:
        means = {
            p: statistics.mean(runs[(trace, p, s)].alloc_130 for s in seeds)
            for p in GENERATED_POLICIES
        }
        lines.append(
            f"| {trace} | {means['fgd']:.2f} | {means['stowage']:.2f} "
            f"| {means['stowage'] - means['fgd']:+.2f} |"
        )
    lines.append("")
    lines.append(
        "Mean seconds per run: "
        + ", ".join(
            f"{p} {statistics.mean(r.elapsed_s for t in traces for r in results[(t, p)]):.1f}"
            for p in POLICIES
        )
        + "."
    )
    report = "\n".join(lines)
    print(report)
    if args.write:
        _write_docs(report)
        _plot(results, refs)


def _write_docs(report: str) -> None:
    replace_section(
        BEGIN,
        END,
        f"{report}\n\n![fill on the default trace](fill-default.png)",
        heading="Planner: the FGD fill experiment on the Alibaba openb traces",
    )


def _plot(
    results: dict[tuple[str, str], list[Run]],
    refs: dict[tuple[str, str], list[list[float]]],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (alloc, frag) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = list(range(131))
    for policy in POLICIES:
        runs = results[(PLOTTED, policy)]
        alloc_curves = [r.alloc_pct for r in runs if r.alloc_pct]
        frag_curves = [r.frag_pct for r in runs if r.frag_pct]
        alloc.plot(x, [statistics.mean(c[k] for c in alloc_curves) for k in x], label=policy)
        frag.plot(x, [statistics.mean(c[k] for c in frag_curves) for k in x], label=policy)
    for policy in ("bestfit", "fgd"):
        curves = refs[("default", REFERENCE_NAMES[policy])]
        alloc.plot(
            x,
            [statistics.mean(c[k] for c in curves) for k in x],
            "--",
            label=f"{policy} (published)",
        )
    alloc.set(
        xlabel="arrived GPU request (% of capacity)",
        ylabel="GPU allocation (%)",
        title="default trace: allocation",
        xlim=(80, 130),
        ylim=(80, 100),
    )
    frag.set(
        xlabel="arrived GPU request (% of capacity)",
        ylabel="fragmented GPUs (%)",
        title="default trace: fragmentation",
    )
    alloc.legend(fontsize=7)
    frag.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(DOCS / "fill-default.png", dpi=110)


if __name__ == "__main__":
    main()

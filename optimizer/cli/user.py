"""``stowage``: the user-facing command line (schema, report checks, simulations, plans)."""

import dataclasses
import json
import logging
import statistics
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from optimizer.cli.forecast import app as forecast_app
from optimizer.planner.cycle import DEFAULT_ACTIONS
from optimizer.planner.policies import DEFAULT_POLICY
from shared.logs import configure_logging
from shared.schema import ReportError, parse_report, report_json_schema
from shared.topology import best_connected_gpus, gpus_by_numa_node, nvlink_islands
from shared.version import __version__

if TYPE_CHECKING:
    from optimizer.simulate.replay import ReplayCluster, ReplayPolicy, ReplayResult, TraceJob

app = typer.Typer(
    name="stowage",
    help="Stowage: GPU scheduling optimization for AI workloads on Kubernetes.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _group(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
) -> None:
    """Logs go to stderr (warnings and errors unless --verbose)."""
    configure_logging(level=logging.INFO if verbose else logging.WARNING)


@app.command()
def version() -> None:
    """Print the Stowage version."""
    typer.echo(__version__)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the node report (the agent-optimizer contract)."""
    typer.echo(json.dumps(report_json_schema(), indent=2, sort_keys=True))


@app.command()
def check(
    path: Annotated[Path, typer.Argument(help="A NodeReport as JSON; '-' reads stdin.")],
) -> None:
    """Validate a node report against the contract and print its topology.

    Exits 1 with one line per problem (field path: message) when the report is invalid.
    """
    text = sys.stdin.read() if str(path) == "-" else _read_or_exit(path)
    try:
        report = parse_report(text)
    except ReportError as error:
        for problem in error.problems:
            typer.echo(f"{path}: {problem}", err=True)
        raise typer.Exit(1) from None
    indices = [g.index for g in report.gpus]
    numa_of = {g.index: g.numa_node for g in report.gpus}
    typer.echo(f"{path}: valid report for node {report.node_name}, {len(indices)} GPUs")
    typer.echo(f"  NVLink islands: {nvlink_islands(indices, report.links)}")
    typer.echo(f"  GPUs per NUMA node: {gpus_by_numa_node(report.gpus)}")
    for k in (2, 4):
        best = best_connected_gpus(k=k, candidates=indices, links=report.links, numa_of=numa_of)
        typer.echo(f"  best-connected {k} GPUs: {best}")


simulate_app = typer.Typer(help="Trace-driven simulations of the planner.", no_args_is_help=True)
app.add_typer(simulate_app, name="simulate")
app.add_typer(forecast_app, name="forecast")


def _seed_range(text: str) -> list[int]:
    low, dash, high = text.partition("-")
    if not low.isdigit() or (dash and not high.isdigit()):
        raise typer.BadParameter("a seed or a range like 42-51")
    return list(range(int(low), int(high if dash else low) + 1))


@simulate_app.command("fill")
def simulate_fill(
    nodes: Annotated[Path, typer.Option(help="openb node list CSV.")],
    pods: Annotated[Path, typer.Option(help="openb pod list CSV.")],
    policy: Annotated[str, typer.Option(help="Placement policy.")] = DEFAULT_POLICY,
    tune: Annotated[float, typer.Option(help="Arrived GPU request / capacity.")] = 1.3,
    seed: Annotated[int, typer.Option(help="Seed of one run.")] = 42,
    seeds: Annotated[str | None, typer.Option(help="Several runs, e.g. 42-51.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per run.")] = False,
) -> None:
    """The FGD paper's fill experiment: allocation and fragmentation at 0-130% arrived."""
    from optimizer.planner.policies import POLICIES
    from optimizer.simulate.fill import fill, load_nodes, load_pods

    if policy not in POLICIES:
        raise typer.BadParameter(f"unknown policy; known: {', '.join(sorted(POLICIES))}")
    node_list, pod_list = load_nodes(nodes), load_pods(pods)
    runs = [
        fill(node_list, pod_list, policy=policy, tune=tune, seed=s)
        for s in (_seed_range(seeds) if seeds else [seed])
    ]
    if as_json:
        for run in runs:
            data = dataclasses.asdict(run)
            data.pop("pods")
            typer.echo(json.dumps(data))
        return
    for run in runs:
        typer.echo(
            f"policy={run.policy} seed={run.seed} alloc@{int(tune * 100)}%="
            f"{run.alloc_pct[-1]:.2f} frag={run.frag_pct[-1]:.2f} failed_pods={run.failed_pods}"
            f"/{run.pods} elapsed_s={run.elapsed_s:.1f}"
        )
    if len(runs) > 1:
        finals = [r.alloc_pct[-1] for r in runs]
        typer.echo(
            f"mean alloc {statistics.mean(finals):.2f}% (stdev {statistics.stdev(finals):.2f}) "
            f"over {len(runs)} seeds"
        )


@simulate_app.command("replay")
def simulate_replay(
    jobs: Annotated[
        Path,
        typer.Option(
            help="Job table: Philly (timestamp,duration,num_gpus,…,cluster) or Tiresias "
            "(job_id,num_gpu,submit_time,…,duration)."
        ),
    ],
    cluster: Annotated[
        Path | None,
        typer.Option(help="Cluster YAML (pools and queues, see docs) or a Tiresias spec CSV."),
    ] = None,
    vcs: Annotated[
        Path | None,
        typer.Option(help="'vc,node num' table: one queue and pool of 8-GPU nodes per VC."),
    ] = None,
    load: Annotated[
        float | None,
        typer.Option(help="With --vcs: size each VC so its offered GPU load is this."),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--from", help="Keep jobs submitted from this date.")
    ] = None,
    until: Annotated[str | None, typer.Option("--to", help="…and before this date.")] = None,
    policy: Annotated[str, typer.Option(help="Scheduling policy.")] = "stowage",
    seed: Annotated[int, typer.Option(help="Seed (noisy estimates).")] = 0,
    borrow: Annotated[
        bool, typer.Option(help="With --vcs: share all nodes, queues borrow idle quota.")
    ] = False,
    depth: Annotated[int, typer.Option(help="Jobs of each queue a cycle looks at.")] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Replay a job trace through the scheduling cycle: JCT, waits, utilisation, fairness."""
    from optimizer.simulate.replay import (
        POLICIES,
        TraceError,
        load_cluster,
        load_jobs,
        load_vcs,
        size_for_load,
        vc_cluster,
    )

    def fail(message: str) -> typer.Exit:
        typer.echo(f"stowage simulate replay: {message}", err=True)
        return typer.Exit(2)

    if policy not in POLICIES:
        raise fail(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
    if (cluster is None) == (vcs is None):
        raise fail("give exactly one of --cluster and --vcs")
    if load is not None and vcs is None:
        raise fail("--load needs --vcs")
    try:
        trace = load_jobs(jobs, since=since, until=until)
        if vcs is not None:
            sizes = load_vcs(vcs)
            if load is not None:
                sizes = size_for_load([j for j in trace if j.queue in sizes], sizes, load)
            spec = vc_cluster(sizes, borrowing=borrow)
        else:
            assert cluster is not None
            spec = load_cluster(cluster)
        if not trace:
            raise fail("no jobs in the window")
        result = _replay_with_progress(trace, spec, POLICIES[policy], seed, depth)
    except (TraceError, ValueError) as error:
        raise fail(str(error)) from None
    if as_json:
        typer.echo(json.dumps(result.as_json()))
        return
    skipped = ", ".join(f"{n} {why}" for why, n in result.skipped.items()) or "none"
    typer.echo(
        f"policy={result.policy} jobs={result.jobs} nodes={result.nodes} "
        f"avg_jct={result.avg_jct_s:,.0f}s median_jct={result.median_jct_s:,.0f}s "
        f"p99_jct={result.p99_jct_s:,.0f}s avg_wait={result.avg_wait_s:,.0f}s "
        f"max_wait={result.max_wait_s:,.0f}s utilisation={result.utilisation:.3f} "
        f"preemptions={result.preemptions} fairness={result.fairness:.3f} "
        f"skipped: {skipped} elapsed={result.elapsed_s:.1f}s"
    )


def _replay_with_progress(
    trace: "Sequence[TraceJob]",
    spec: "ReplayCluster",
    policy: "ReplayPolicy",
    seed: int,
    depth: int,
) -> "ReplayResult":
    """A progress bar over finished jobs on a terminal, nothing when piped."""
    from rich.progress import Progress

    from optimizer.simulate.replay import Replay

    if not sys.stderr.isatty():
        return Replay(trace, spec, policy, seed=seed, depth=depth).run()
    with Progress(transient=True) as bar:
        task = bar.add_task(f"replaying {policy.name}", total=len(trace))
        run = Replay(
            trace, spec, policy, seed=seed, depth=depth, progress=lambda n: bar.advance(task, n)
        )
        return run.run()


@app.command()
def plan(
    snapshot: Annotated[
        Path,
        typer.Option(
            help="kubectl get namespaces,nodes,pods,podgroups -A -o yaml (YAML or JSON; '-' "
            "reads stdin)."
        ),
    ],
    reports: Annotated[
        Path | None, typer.Option(help="A folder of agents' NodeReports (*.json).")
    ] = None,
    policy: Annotated[str, typer.Option(help="Placement policy.")] = DEFAULT_POLICY,
    enable: Annotated[
        list[str] | None,
        typer.Option(help="Treat this namespace as opted in (repeatable)."),
    ] = None,
    actions: Annotated[
        str,
        typer.Option(help="The cycle's actions, in order (allocate,backfill,reclaim,preempt)."),
    ] = ",".join(DEFAULT_ACTIONS),
    ordering: Annotated[
        str, typer.Option(help="Ordering of queues that name none (fifo, priority, …).")
    ] = "priority",
    now: Annotated[
        str | None, typer.Option(help="The cycle's clock (RFC 3339); default: now.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as one object.")] = False,
) -> None:
    """What one scheduling cycle would do on a cluster dump: admissions with nodes and GPU
    indices, waits with reasons (quota, reservations), preemptions and their victims,
    objects left out."""
    from optimizer.cli.plan import DumpError, plan_dump, read_dump, read_reports, render

    text = sys.stdin.read() if str(snapshot) == "-" else _read_or_exit(snapshot)
    try:
        objects = read_dump(text)
        found, skipped = read_reports(reports) if reports else ({}, [])
        for line in skipped:
            typer.echo(line, err=True)
        clock = datetime.fromisoformat(now.replace("Z", "+00:00")) if now else None
        result = plan_dump(
            objects,
            reports=found,
            policy=policy,
            enable=enable or (),
            actions=[a for a in actions.split(",") if a],
            ordering=ordering,
            now=clock,
        )
    except (DumpError, ValueError) as error:
        typer.echo(f"stowage plan: {error}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(result.as_json(), indent=2))
        return
    for line in render(result):
        typer.echo(line)


def _read_or_exit(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as error:
        typer.echo(f"{path}: cannot read: {error.strerror}", err=True)
        raise typer.Exit(2) from None


def main() -> None:
    """Console-script entry point."""
    app()

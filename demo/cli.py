"""``stowage-demo``: the demo behind ``make demo``, printed for a person."""

import logging
import sys

import typer
from rich.console import Console
from rich.table import Table

from demo.scheduling import CORDONED, TAINTED
from demo.story import DemoResult, run_demo
from shared.logs import configure_logging
from shared.ranges import format_cpu_list

app = typer.Typer(
    name="stowage-demo",
    help="The whole Stowage story on a simulated cluster (no GPU or Kubernetes needed).",
    add_completion=False,
)


@app.command()
def demo(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more."),
) -> None:
    """Run the end-to-end demo on a simulated cluster (no GPU or Kubernetes needed)."""
    configure_logging(level=logging.INFO if verbose else logging.WARNING)
    _print_demo(run_demo(), Console(width=None if sys.stdout.isatty() else 140))


def _print_demo(result: DemoResult, console: Console) -> None:
    console.rule("[bold]Stowage demo: a simulated GPU cluster[/bold]")
    console.print(
        "Each node runs the real Stowage agent over a simulated NVML, host and kubelet, built\n"
        "from a real server design. The agents report over HTTP to a real optimizer (SQLite,\n"
        "bearer tokens); everything below is read back from the optimizer's API.\n"
    )
    console.print(
        f"{result.reports_acknowledged} reports acknowledged (topology, then samples); "
        f"{result.api_nodes} nodes ready in GET /v1/nodes.\n"
        f"An agent reporting for another node was refused with HTTP {result.forged_status} "
        "and audited.\n"
    )
    table = Table(title="What the optimizer knows about each node")
    columns = ("node", "GPUs", "NVLink islands", "NUMA", "health", "pods", "free", "best free pair")
    for column in columns:
        table.add_column(column)
    for node in result.nodes:
        numa = " ".join(
            f"{n}:{format_cpu_list(g)}" for n, g in sorted(node.numa_groups.items(), key=str)
        )
        health = ", ".join(f"GPU{i} {h.value}" for i, h in node.unhealthy.items()) or "ok"
        pair = (
            f"{format_cpu_list(node.best_free_pair)} ({node.best_pair_nvlinks} NVLinks)"
            if node.best_free_pair
            else "none"
        )
        table.add_row(
            node.node_name,
            f"{node.gpu_count} x {node.product}",
            " ".join("{" + format_cpu_list(i) + "}" for i in node.islands),
            numa,
            health,
            "\n".join(node.pods) or "-",
            format_cpu_list(node.free_gpus) or "-",
            pair,
        )
    console.print(table)
    cluster = result.cluster
    models = Table(title="GET /v1/cluster/summary")
    for column in ("GPU model", "total", "allocated", "allocated but idle", "free", "unhealthy"):
        models.add_column(column)
    for model, counts in sorted(cluster["by_model"].items()):
        models.add_row(
            model,
            *(
                str(counts[k])
                for k in ("total", "allocated", "allocated_idle", "free", "unhealthy")
            ),
        )
    console.print(models)
    shapes = "/".join(str(s) for s in cluster["request_shapes"])
    console.print(
        f"{cluster['nodes']} nodes, {cluster['gpus']['total']} GPUs drawing "
        f"{cluster['power_w']:,.0f} W; {cluster['fragmented_gpus']} free GPUs no "
        f"{shapes}-GPU request can use."
    )
    console.print("A corrupted report (a link to GPU 99) was refused:")
    for problem in result.rejected.problems:
        console.print(f"  [red]{problem}[/red]")
    console.rule("One scheduling cycle on this fleet (what `stowage plan` prints)")
    console.print(
        f"{CORDONED} is cordoned, {TAINTED} tainted for maintenance, and the DGX A100 lost a\n"
        "GPU (only 7 of its 8 are offered). Three gangs and a malformed pod wait behind the\n"
        "stowage.io/gang gate:\n"
    )
    for line in result.plan_lines:
        console.print(line, markup=False, highlight=False)
    _print_forecasts(result, console)
    console.print("[green]demo finished[/green]")


def _print_forecasts(result: DemoResult, console: Console) -> None:
    console.rule("Forecasts and a capacity plan (GET /v1/forecasts, /v1/capacity/plan)")
    console.print(
        "The fleet is minutes old, so three weeks of hourly demand per GPU model are made up\n"
        "(daily and weekly cycles, growth, noise; demo/forecasting.py). The leader's retraining\n"
        f"job ran once and stored {len(result.forecasts_trained)} forecasts.\n"
    )
    points = result.forecast["points"]
    p50 = [p["p50"] for p in points]
    last = points[-1]
    first, farthest = result.forecast["models"][0], result.forecast["models"][-1]
    console.print(
        f"Cluster GPU demand, next 24 h: p50 {min(p50):.0f}-{max(p50):.0f} GPUs; at +24 h "
        f"{last['p50']:.0f} (80% interval {last['p10']:.0f}-{last['p90']:.0f}). Models chosen "
        f"by validation: {first['model']} 1 h ahead, {farthest['model']} "
        f"{farthest['horizon_steps']} h ahead.\n"
    )
    table = Table(title="GPUs needed next week so that demand waits under 1 h (p90)")
    for column in ("GPU model", "capacity", "needed", "to add", "spare", "peak from"):
        table.add_column(column)
    for item in result.capacity_plan["items"]:
        table.add_row(
            item["model"] or item["scope"],
            f"{item['capacity_gpus']:.0f}",
            f"{item['needed_gpus']:.1f}",
            str(item["additional_gpus"]),
            str(item["spare_gpus"]),
            item["peak_window_start"],
        )
    console.print(table)
    what = result.what_if
    before, after = what["before"], what["after"]
    console.print(
        f"POST /v1/capacity/whatif, the next 3 days with {what['nodes_after']} nodes instead of "
        f"{what['nodes_before']} ({what['before']['jobs']} jobs sampled from the forecast and "
        f"{what['job_shapes']} finished jobs' shapes, replayed through the cycle): average wait "
        f"{before['avg_wait_s'] / 60:.0f} -> {after['avg_wait_s'] / 60:.0f} min, p90 "
        f"{before['p90_wait_s'] / 60:.0f} -> {after['p90_wait_s'] / 60:.0f} min, utilisation "
        f"{before['utilisation']:.0%} -> {after['utilisation']:.0%}."
    )


def main() -> None:
    """Console-script entry point."""
    app()

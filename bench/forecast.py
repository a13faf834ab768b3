"""The forecaster on real hourly cluster series, against persistence measured in the same run.

Run: ``.venv/bin/python -m bench.forecast [--write]``.

Series (``../shared/traces``): Philly's active nodes (``philly/philly_node_sequence.csv``,
per minute, 2017-10-03 to 2017-12-15) and the GPU demand (running + pending GPUs) of Helios
Earth's virtual cluster vc6YE (``helios/Earth_vcs/vc6YE/cluster_sequence_vc.csv``, May 2020),
both resampled to hourly means. Each cell is what ``stowage forecast backtest --json`` prints:
the last 7 days held out, every target forecast from its own rolling origin, the model
selected on the week before. ``--write`` replaces the forecast section of
docs/benchmarks.md and draws docs/forecast-backtest.png.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Final

from bench.docs import replace_section
from optimizer.forecast.backtest import Backtest, backtest
from optimizer.forecast.series import Series, read_csv

ROOT: Final = Path(__file__).resolve().parents[1]
TRACES: Final = ROOT.parent / "shared" / "traces"
DOCS: Final = ROOT / "docs"
SERIES: Final = {
    "Philly active nodes": (TRACES / "philly" / "philly_node_sequence.csv", "active"),
    "Helios vc6YE GPU demand": (
        TRACES / "helios" / "Earth_vcs" / "vc6YE" / "cluster_sequence_vc.csv",
        "running_gpu_num+pending_gpu_num",
    ),
}
HORIZONS: Final = (1, 24, 168)
TEST_HOURS: Final = 168
BEGIN: Final = "<!-- forecast-benchmark:begin -->"
END: Final = "<!-- forecast-benchmark:end -->"
BASELINES: Final = (
    "seasonal-naive-daily",
    "seasonal-naive-weekly",
    "rolling-mean-daily",
    "rolling-mean-weekly",
)


def _load(name: str) -> Series:
    path, column = SERIES[name]
    return read_csv(path, time_col="time", value_col=column, step_s=3600)


def _row(name: str, result: Backtest, elapsed_s: float) -> str:
    chosen = result.score(result.selected)
    persistence = result.score("persistence")
    best_baseline = min(BASELINES, key=lambda b: result.score(b).mae)
    baseline = result.score(best_baseline)
    return (
        f"| {name} | {result.horizon} h | {result.selected} | {persistence.mae:.2f} | "
        f"{chosen.mae:.2f} | {chosen.mae_vs_persistence:.3f} | {best_baseline} "
        f"{baseline.mae_vs_persistence:.3f} | {chosen.pinball:.2f} | {chosen.coverage_80:.2f} | "
        f"{elapsed_s:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    results: dict[tuple[str, int], Backtest] = {}
    rows = []
    for name in SERIES:
        series = _load(name)
        for horizon in HORIZONS:
            started = time.perf_counter()
            result = backtest(series, horizon=horizon, test=TEST_HOURS)
            results[name, horizon] = result
            rows.append(_row(name, result, time.perf_counter() - started))
    lines = [
        "Command: `.venv/bin/python -m bench.forecast --write`. Machine: "
        f"{platform.machine()}, Python {platform.python_version()}. Last {TEST_HOURS} hours "
        "held out; `vs persistence` is the selected model's MAE over persistence's on those "
        "hours; `best baseline` is the best of the seasonal-naive and rolling-mean models "
        "there (which selection could not know); `cover 80%` is the share of held-out hours "
        "inside the selected model's conformal p10-p90 interval; `s` is the backtest's time.",
        "",
        "| series | horizon | selected | persistence MAE | selected MAE | vs persistence | "
        "best baseline (vs persistence) | pinball | cover 80% | s |",
        "|---|---:|---|---:|---:|---:|---|---:|---:|---:|",
        *rows,
    ]
    report = "\n".join(lines)
    print(report)
    if args.write:
        replace_section(
            BEGIN,
            END,
            f"{report}\n\n![Backtest MAE relative to persistence](forecast-backtest.png)",
            heading="Forecasts: rolling-origin backtests on real cluster series",
        )
        _plot(results)


def _plot(results: dict[tuple[str, int], Backtest]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    figure, axes = plt.subplots(1, len(SERIES), figsize=(12, 4), sharey=True)
    for axis, name in zip(axes, SERIES, strict=True):
        models = [m.name for m in results[name, HORIZONS[0]].models]
        width = 0.8 / len(HORIZONS)
        for k, horizon in enumerate(HORIZONS):
            result = results[name, horizon]
            ratios = [result.score(m).mae_vs_persistence for m in models]
            positions = [i + k * width for i in range(len(models))]
            bars = axis.bar(positions, ratios, width, color=f"C{k}")
            chosen = models.index(result.selected)
            bars[chosen].set_edgecolor("black")
            bars[chosen].set_linewidth(2)
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_xticks([i + width for i in range(len(models))], models, rotation=40, ha="right")
        axis.set(title=f"{name} (selected: black edge)", ylabel="MAE / persistence MAE")
        axis.set_ylim(0, 2)
        axis.legend(handles=[Patch(color=f"C{k}", label=f"{h} h") for k, h in enumerate(HORIZONS)])
    figure.tight_layout()
    figure.savefig(DOCS / "forecast-backtest.png", dpi=110)


if __name__ == "__main__":
    main()

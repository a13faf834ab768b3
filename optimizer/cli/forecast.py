"""``stowage forecast``: offline evaluation of the forecasting models on a CSV series."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from optimizer.forecast.series import Series, SeriesError, read_csv
from shared.units import duration_s

if TYPE_CHECKING:
    from optimizer.forecast.backtest import Backtest

app = typer.Typer(help="Demand forecasts: offline evaluation.", no_args_is_help=True)


def parse_duration_s(text: str, *, default_unit: str = "h") -> int:
    """Seconds from ``90s``, ``5m``, ``1h``, ``7d``, ``1w``; a bare number is in
    ``default_unit`` (hours for the CLI's options)."""
    try:
        return duration_s(text, default_unit=default_unit)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


def _fail(message: str) -> typer.Exit:
    typer.echo(f"stowage forecast backtest: {message}", err=True)
    return typer.Exit(2)


@app.command("backtest")
def backtest_command(
    csv: Annotated[Path, typer.Option(help="A CSV file with a time column and a value column.")],
    time_col: Annotated[str, typer.Option(help="Its time column (ISO 8601 or epoch s).")],
    value_col: Annotated[str, typer.Option(help="Its value column; 'a+b' sums columns a and b.")],
    horizon: Annotated[str, typer.Option(help="How far ahead to forecast: 24 (hours), 30m, 7d.")],
    test_hours: Annotated[float, typer.Option(help="Hours held out at the end.")],
    resample: Annotated[str, typer.Option(help="Step of the series (mean per step).")] = "1h",
    seed: Annotated[int, typer.Option(help="Seed of the randomised models.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Rolling-origin backtest of every model on the last --test-hours: MAE, MAE relative to
    persistence, pinball loss and 80% interval coverage, and the model selection picks
    without seeing the held-out hours (it validates on the window before them)."""
    step_s = parse_duration_s(resample)
    horizon_s = parse_duration_s(horizon)
    if horizon_s % step_s:
        raise _fail(f"the horizon ({horizon}) is not a whole number of steps ({resample})")
    test_steps = round(test_hours * 3600 / step_s)
    from optimizer.forecast.backtest import BacktestError  # scikit-learn: imported on use

    try:
        series = read_csv(csv, time_col=time_col, value_col=value_col, step_s=step_s)
        result = _with_progress(series, horizon=horizon_s // step_s, test=test_steps, seed=seed)
    except (SeriesError, BacktestError) as error:
        raise _fail(str(error)) from None
    if as_json:
        typer.echo(json.dumps(as_json_object(result, series=series, horizon_s=horizon_s)))
        return
    typer.echo(
        f"{csv}: {len(series)} steps of {resample} ({series.gaps} gaps); horizon {horizon} "
        f"({result.horizon} steps); last {test_steps} steps held out"
    )
    typer.echo(
        f"{'model':<24}{'MAE':>10}{'vs persist.':>13}{'pinball':>10}{'cover 80%':>11}"
        f"{'valid. MAE':>12}"
    )
    for score in result.models:
        mark = "*" if score.name == result.selected else " "
        if score.skipped:
            typer.echo(f"{mark}{score.name:<23}  skipped: {score.skipped}")
            continue
        typer.echo(
            f"{mark}{score.name:<23}{score.mae:>10.3f}{score.mae_vs_persistence:>13.3f}"
            f"{score.pinball:>10.3f}{score.coverage_80:>11.2f}{score.validation_mae:>12.3f}"
        )
    typer.echo(f"selected: {result.selected} ({result.reason})")


def as_json_object(result: Backtest, *, series: Series, horizon_s: int) -> dict[str, object]:
    """The ``--json`` object: ``horizon`` in hours, ``selected``, and ``models`` (every model
    scored on the held-out window, persistence and the selected one included)."""
    hours = horizon_s / 3600
    return {
        "horizon": int(hours) if hours.is_integer() else hours,
        "horizon_steps": result.horizon,
        "step_s": series.step_s,
        "test_steps": result.test,
        "points": len(series),
        "gaps": series.gaps,
        "selected": result.selected,
        "reason": result.reason,
        "models": [score.as_json() for score in result.models],
    }


def _with_progress(series: Series, *, horizon: int, test: int, seed: int) -> Backtest:
    """A progress bar over model fits on a terminal, nothing when piped."""
    from optimizer.forecast.backtest import backtest
    from optimizer.forecast.models import MODELS

    if not sys.stderr.isatty():
        return backtest(series, horizon=horizon, test=test, seed=seed)
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("fitting models", total=2 * len(MODELS.names()))

        def advance(n: int) -> None:
            bar.advance(task, n)

        return backtest(series, horizon=horizon, test=test, seed=seed, progress=advance)

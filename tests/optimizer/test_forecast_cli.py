"""``stowage forecast backtest``: its JSON, its table, one-line errors, and the real
Philly and Helios series where ../shared is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from optimizer.cli.user import app
from tests.conftest import shared_data_path

runner = CliRunner()


def _wave_csv(tmp_path: Path, days: int = 30) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path / "demand.csv"
    rows = ["time,running,pending"]
    for minute in range(0, days * 24 * 60, 30):
        hour = minute / 60
        value = 100 + 30 * np.sin(2 * np.pi * hour / 24) + rng.normal(0, 2)
        rows.append(f"{int(1_588_291_200 + minute * 60)},{value:.2f},1")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_json_has_horizon_selected_and_every_model(tmp_path: Path) -> None:
    args = ["forecast", "backtest", "--csv", str(_wave_csv(tmp_path)), "--time-col", "time"]
    args += ["--value-col", "running+pending", "--horizon", "12", "--test-hours", "72", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["horizon"] == 12
    assert data["step_s"] == 3600
    assert data["test_steps"] == 72
    names = [m["name"] for m in data["models"]]
    assert "persistence" in names
    assert data["selected"] in names
    persistence = next(m for m in data["models"] if m["name"] == "persistence")
    assert persistence["mae_vs_persistence"] == 1.0
    selected = next(m for m in data["models"] if m["name"] == data["selected"])
    assert set(selected) >= {"name", "mae", "mae_vs_persistence", "pinball", "coverage_80"}
    assert selected["mae_vs_persistence"] < 0.5  # half a day ahead on a daily wave


def test_table_marks_the_selected_model(tmp_path: Path) -> None:
    args = ["forecast", "backtest", "--csv", str(_wave_csv(tmp_path)), "--time-col", "time"]
    args += ["--value-col", "running", "--horizon", "30m", "--resample", "30m"]
    args += ["--test-hours", "24"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    selected = result.stdout.splitlines()[-1].removeprefix("selected: ").split()[0]
    assert any(line.startswith(f"*{selected} ") for line in result.stdout.splitlines())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param(["--value-col", "nope"], "no column 'nope'", id="unknown-column"),
        pytest.param(["--horizon", "90m"], "not a whole number of steps", id="odd-horizon"),
        pytest.param(["--test-hours", "400"], "too short", id="window-too-long"),
        pytest.param(["--horizon", "soon"], "not a duration", id="bad-duration"),
    ],
)
def test_errors_are_one_line(tmp_path: Path, extra: list[str], message: str) -> None:
    args = ["forecast", "backtest", "--csv", str(_wave_csv(tmp_path, days=10))]
    args += ["--time-col", "time", "--value-col", "running", "--horizon", "1"]
    args += ["--test-hours", "24", *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


SERIES = {
    "philly-active-nodes": (("philly", "philly_node_sequence.csv"), "active"),
    "helios-vc6YE-demand": (
        ("helios", "Earth_vcs", "vc6YE", "cluster_sequence_vc.csv"),
        "running_gpu_num+pending_gpu_num",
    ),
}


@pytest.mark.shared_data
@pytest.mark.parametrize("series", sorted(SERIES))
def test_real_series_one_hour_ahead_is_never_much_worse_than_persistence(series: str) -> None:
    """The issue's 1-hour target, on the real series: what selection picks without seeing
    the held-out week is within 2% of persistence there."""
    parts, column = SERIES[series]
    path = shared_data_path("traces", *parts)
    args = ["forecast", "backtest", "--csv", str(path), "--time-col", "time"]
    args += ["--value-col", column, "--horizon", "1", "--test-hours", "168", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    selected = next(m for m in data["models"] if m["name"] == data["selected"])
    assert selected["mae_vs_persistence"] <= 1.02


@pytest.mark.shared_data
def test_philly_one_day_ahead_beats_persistence_by_15_percent() -> None:
    path = shared_data_path("traces", "philly", "philly_node_sequence.csv")
    args = ["forecast", "backtest", "--csv", str(path), "--time-col", "time"]
    args += ["--value-col", "active", "--horizon", "24", "--test-hours", "168", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    scores = {m["name"]: m for m in data["models"]}
    chosen = scores[data["selected"]]["mae"]
    assert chosen <= 0.85 * scores["persistence"]["mae"]
    baselines = ["seasonal-naive-daily", "seasonal-naive-weekly", "rolling-mean-daily"]
    assert chosen < min(scores[b]["mae"] for b in [*baselines, "rolling-mean-weekly"])


@pytest.mark.shared_data
def test_vc6ye_one_week_ahead_beats_seasonal_naive() -> None:
    """The issue's 168-hour target on vc6YE (31 days of history): met by the combination
    of the three models best on validation, where the single best was 1.14x."""
    path = shared_data_path("traces", *SERIES["helios-vc6YE-demand"][0])
    args = ["forecast", "backtest", "--csv", str(path), "--time-col", "time"]
    args += ["--value-col", SERIES["helios-vc6YE-demand"][1], "--horizon", "168"]
    args += ["--test-hours", "168", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    scores = {m["name"]: m for m in data["models"]}
    naive = min(scores[n]["mae"] for n in ("seasonal-naive-daily", "seasonal-naive-weekly"))
    assert scores[data["selected"]]["mae"] < naive

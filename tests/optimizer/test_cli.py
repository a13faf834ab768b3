"""The user-facing CLI and the console scripts the distribution installs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from optimizer.cli.user import app
from shared.report import NodeReport
from shared.schema import report_json_schema
from shared.version import __version__
from tests.shared.factories import full_report, full_report_dict

runner = CliRunner()


def test_schema_prints_the_json_schema() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == report_json_schema()


def test_check_accepts_a_valid_report_and_prints_its_topology(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text(full_report().model_dump_json())
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert "valid report for node gpu-node-1, 8 GPUs" in result.stdout
    assert "best-connected 4 GPUs: (0, 1, 2, 3)" in result.stdout


def test_check_lists_every_problem_with_its_path(tmp_path: Path) -> None:
    data = full_report_dict()
    data["samples"][0]["util_ratio"] = 3
    data["gpus"][1]["uuid"] = "nope"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 1
    assert f"{path}: gpus.1.uuid: String should match pattern" in result.stderr
    assert f"{path}: samples.0.util_ratio: Input should be less than or equal to 1" in (
        result.stderr
    )


def test_check_reads_stdin() -> None:
    result = runner.invoke(app, ["check", "-"], input=full_report().model_dump_json())
    assert result.exit_code == 0
    assert "valid report" in result.stdout


def test_check_reports_an_unreadable_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["check", str(tmp_path / "missing.json")])
    assert result.exit_code == 2
    assert "cannot read" in result.stderr


@pytest.mark.parametrize("script", ["stowage", "stowage-agent", "stowage-optimizer"])
def test_console_scripts_are_installed(script: str) -> None:
    path = Path(sys.executable).parent / script
    done = subprocess.run([str(path), "version"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == __version__


def test_schema_from_the_console_script_validates_a_report() -> None:
    path = Path(sys.executable).parent / "stowage"
    done = subprocess.run([str(path), "schema"], capture_output=True, text=True, check=True)
    schema = json.loads(done.stdout)
    assert schema["title"] == NodeReport.__name__

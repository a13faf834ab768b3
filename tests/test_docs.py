"""The README's configuration table names every setting the optimizer and the agent read,
and no setting that does not exist; docs/operations.md's configuration reference is what
tools/config_table.py generates from the code, and every setting and value has a meaning."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from agent.settings import AgentSettings
from optimizer.settings import OptimizerSettings
from tools import config_table

README = Path(__file__).resolve().parents[1] / "README.md"
#: Read by the settings loader itself rather than a field.
LOADER = {"STOWAGE_CONFIG_FILE"}


def test_the_configuration_table_names_every_setting() -> None:
    rows = re.findall(r"^\| (`STOWAGE_[^|]+)\|", README.read_text(), re.M)
    documented = {name for row in rows for name in re.findall(r"`(STOWAGE_[A-Z0-9_]+)`", row)}
    settings = {f"STOWAGE_{name.upper()}" for name in OptimizerSettings.model_fields} | {
        f"STOWAGE_AGENT_{name.upper()}" for name in AgentSettings.model_fields
    }
    assert sorted(settings - documented) == [], "settings missing from the README's table"
    assert sorted(documented - settings - LOADER) == [], "the table names unknown settings"


def test_the_configuration_reference_is_what_the_code_generates() -> None:
    assert config_table.current() is not None, "docs/operations.md lost its markers"
    assert config_table.current() == config_table.generate(), (
        "docs/operations.md's configuration reference is stale: "
        "run `.venv/bin/python -m tools.config_table --write`"
    )


def test_every_setting_and_chart_value_says_what_it_does() -> None:
    rows = [*config_table.settings_rows()][2:] + [*config_table.values_rows()][2:]
    assert len(rows) > 100
    silent = [row.split(" | ")[0] for row in rows if not row.rsplit("|", 2)[1].strip()]
    assert silent == [], "give these a description (settings) or a comment (values.yaml)"


def test_a_values_comment_belongs_to_the_key_below_it() -> None:
    comments = config_table._comments(
        "# the top\ntop: 1\n\n# orphan\n\nmap:\n  # inner\n  key: 2\n  other: 3\n"
    )
    assert comments == {"top": "the top", "map.key": "inner"}


OPERATIONS = README.parent / "docs" / "operations.md"
AS_RUN = re.compile(
    r"<!-- as-run -->\n```console\n\$ (?P<command>[^\n]+)\n(?P<output>.*?)\n```", re.S
)
#: What differs from run to run.
VOLATILE = [(re.compile(r"^cycle [0-9a-f]{12}:", re.M), "cycle <id>:")]


def _stable(text: str) -> str:
    for pattern, replacement in VOLATILE:
        text = pattern.sub(replacement, text)
    return text.rstrip()


def _as_run() -> list[tuple[str, str]]:
    return [(m["command"], m["output"]) for m in AS_RUN.finditer(OPERATIONS.read_text())]


def test_the_operations_guide_shows_commands_as_run() -> None:
    assert len(_as_run()) >= 3


@pytest.mark.parametrize(("command", "shown"), _as_run(), ids=lambda v: v.split(" ")[0])
def test_each_command_shown_prints_what_the_guide_shows(command: str, shown: str) -> None:
    program, *args = shlex.split(command)
    done = subprocess.run(
        [str(Path(sys.executable).parent / program), *args],
        cwd=README.parent,
        stdout=subprocess.PIPE,
        # `stowage` prints its refusals on stderr (shown); the agent's stderr holds only its
        # timestamped log lines (not shown)
        stderr=subprocess.STDOUT if program == "stowage" else subprocess.DEVNULL,
        text=True,
        check=False,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "100"},
    )
    assert _stable(done.stdout) == _stable(shown), f"re-run `{command}` and paste its output"

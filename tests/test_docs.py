"""The README's configuration table names every setting the optimizer and the agent read,
and no setting that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

from agent.settings import AgentSettings
from optimizer.settings import OptimizerSettings

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

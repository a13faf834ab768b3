"""Agent settings: environment, defaults, and refusals that name the setting."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.settings import AgentSettings


def test_environment_sets_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "gpu-node-12")
    monkeypatch.setenv("STOWAGE_AGENT_INTERVAL_S", "5")
    monkeypatch.setenv("STOWAGE_AGENT_OPTIMIZER_URL", "https://stowage.example:8080")
    settings = AgentSettings()
    assert settings.node_name == "gpu-node-12"
    assert settings.interval_s == 5.0
    assert str(settings.optimizer_url) == "https://stowage.example:8080/"
    assert settings.metrics_port == 9402


@pytest.mark.parametrize(
    ("variable", "value", "name"),
    [
        ("STOWAGE_AGENT_INTERVAL_S", "0", "interval_s"),
        ("STOWAGE_AGENT_METRICS_PORT", "70000", "metrics_port"),
        ("STOWAGE_AGENT_OPTIMIZER_URL", "not a url", "optimizer_url"),
        ("STOWAGE_AGENT_NODE_NAME", "Bad_Name", "node_name"),
        ("STOWAGE_AGENT_BUFFER_REPORTS", "0", "buffer_reports"),
    ],
)
def test_invalid_values_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, name: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as caught:
        AgentSettings()
    assert name in str(caught.value).lower()

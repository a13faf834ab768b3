"""Optimizer settings: environment, YAML file, precedence, refusals naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from optimizer.cli.server import app
from optimizer.settings import OptimizerSettings
from optimizer.store import migrate


def test_yaml_file_then_environment_then_arguments(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "stowage.yaml"
    config.write_text("port: 9000\nstale_after_s: 30\nauth: none\nrequest_shapes: [8, 2]\n")
    monkeypatch.setenv("STOWAGE_CONFIG_FILE", str(config))
    monkeypatch.setenv("STOWAGE_STALE_AFTER_S", "45")
    settings = OptimizerSettings(host="0.0.0.0")
    assert (settings.port, settings.stale_after_s, settings.host) == (9000, 45.0, "0.0.0.0")
    assert settings.request_shapes == [8, 2]


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("STOWAGE_PORT", "0", "port"),
        ("STOWAGE_DATABASE_URL", "mysql://x", "database_url"),
        ("STOWAGE_AUTH", "magic", "auth"),
        ("STOWAGE_TLS_CERT_FILE", "/etc/hostname", "tls_cert_file and tls_key_file"),
        ("STOWAGE_TOKENS_FILE", "/nonexistent/tokens.yaml", "no such file"),
    ],
)
def test_invalid_settings_stop_the_server_with_their_name(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv("STOWAGE_AUTH", "none")
    monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 1
    assert "invalid settings" in result.stderr
    assert fragment in result.stderr


def test_tokens_auth_needs_a_tokens_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STOWAGE_AUTH", raising=False)
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 1
    assert "STOWAGE_TOKENS_FILE" in result.stderr


def test_db_commands(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STOWAGE_AUTH", "none")
    monkeypatch.setenv("STOWAGE_DATABASE_URL", f"sqlite:///{tmp_path / 's.db'}")
    runner = CliRunner()
    before = runner.invoke(app, ["db", "current"])
    assert before.exit_code == 1
    assert before.stdout.startswith("empty")
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    after = runner.invoke(app, ["db", "current"])
    assert after.exit_code == 0
    assert after.stdout.startswith(f"{migrate.head_revision()} (this version needs")
    assert runner.invoke(app, ["db", "prune"]).exit_code == 0


def test_pools_name_nodes_by_pattern(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOWAGE_POOLS", '{"train": "gpu-h100-.*", "infer": "gpu-(l40s|a10)-.*"}')
    settings = OptimizerSettings(auth="none")
    assert settings.pool_of("gpu-h100-7") == "train"
    assert settings.pool_of("gpu-l40s-1") == "infer"
    assert settings.pool_of("cpu-1") is None


@pytest.mark.parametrize(
    ("pools", "fragment"),
    [('{"bad name": ".*"}', "pool name"), ('{"train": "("}', "bad regular expression")],
)
def test_bad_pools_are_refused(monkeypatch: pytest.MonkeyPatch, pools: str, fragment: str) -> None:
    monkeypatch.setenv("STOWAGE_POOLS", pools)
    with pytest.raises(ValueError, match=fragment):
        OptimizerSettings(auth="none")

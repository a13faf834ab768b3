"""The agent needs only pyproject's base dependencies: with every optimizer-only package made
unimportable, the agent's modules import and ``stowage-agent discover`` runs on a fake
profile. So the agent image (``pip install .``) carries no scikit-learn, SQLAlchemy,
FastAPI or Kubernetes client."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Importable names of the optimizer extra's packages (and what they pull in).
OPTIMIZER_ONLY = (
    "kubernetes",
    "fastapi",
    "starlette",
    "sklearn",
    "scipy",
    "sqlalchemy",
    "uvicorn",
    "alembic",
    "numpy",
    "rich",
    "fastapi_offline",
    "psycopg",
)
PROBE = """
import importlib.abc, json, sys
blocked = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"{name} is not in the agent's dependency set")
        return None
sys.meta_path.insert(0, Block())
import pkgutil, agent
for module in pkgutil.walk_packages(agent.__path__, "agent."):
    if not module.name.startswith("agent.podresources"):
        __import__(module.name)
from typer.testing import CliRunner
from agent.cli import app
result = CliRunner().invoke(app, ["discover", "--fake-profile", "dgx-h100"])
assert result.exit_code == 0, result.output
print(json.dumps({"gpus": len(json.loads(result.stdout)["gpus"])}))
"""


def test_the_agent_runs_without_the_optimizers_packages() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(OPTIMIZER_ONLY)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"gpus": 8}


def test_the_base_dependencies_are_the_agents_and_the_optimizers_are_an_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {r.split(">")[0].split("=")[0].split("[")[0].strip() for r in requirements}

    base = names(project["dependencies"])
    extra = names(project["optional-dependencies"]["optimizer"])
    assert {"scikit-learn", "sqlalchemy", "fastapi", "kubernetes", "numpy"} <= extra
    assert base.isdisjoint(extra)
    assert "stowage[optimizer,postgres,fake-api]" in project["optional-dependencies"]["dev"]

"""The Grafana dashboards (helm/stowage/dashboards/*.json) against a real Prometheus.

A real Prometheus (Debian's ``prometheus``, which .ci/run installs) scrapes a running
optimizer (uvicorn, SQLite, its controller leading against the fake API server with one
admitted and one waiting gang, forecasts retrained) and two fake-profile agents reporting to
it; then every panel's PromQL, with the dashboard's variables filled in as Grafana would,
must return data, and every variable's values query must find values. The chart ships each
dashboard as a ConfigMap for Grafana's sidecar, and every metric a panel reads is one that
Stowage declares.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from agent.fake.machine import FakeMachine
from agent.nvml import Nvml
from agent.profile import load_profile
from agent.runner import AgentRunner
from agent.settings import AgentSettings
from kubefake import FakeApiServer, serve
from optimizer.api.app import create_app
from optimizer.controller.kube import KubeApi
from optimizer.controller.loop import Controller
from optimizer.forecast.demand import Demand
from optimizer.metrics import NAMES
from optimizer.settings import OptimizerSettings
from optimizer.store import forecasts as store
from optimizer.store import migrate
from optimizer.store.engine import make_engine
from optimizer.store.models import Rollup
from optimizer.store.rollups import ROLLUP_LEVELS, bucket_start
from shared.labels import NAMESPACE_ENABLED, SCHEDULING_GATE
from tests.conftest import free_port, prometheus_binary

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = sorted((ROOT / "helm" / "stowage" / "dashboards").glob("*.json"))
#: What Grafana puts in for its built-in variables in these queries (the scrape is 1 s),
#: longest name first.
BUILT_IN = {"$__rate_interval": "30s", "$__range_s": "60", "$__range": "1m"}
NODES = {"gpu-node-1": "dgx-a100", "gpu-node-2": "hgx-h200"}


def _wait(what: str, ready: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what} not ready within {timeout_s} s")


def _pod(name: str, gang: str, size: int, gpus: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ml",
            "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "labels": {"stowage.io/gang": gang, "stowage.io/gang-size": str(size)},
        },
        "spec": {
            "schedulingGates": [{"name": SCHEDULING_GATE}],
            "containers": [
                {
                    "name": "main",
                    "resources": {
                        "requests": {"cpu": "1", "memory": "1Gi"},
                        "limits": {"nvidia.com/gpu": str(gpus)},
                    },
                }
            ],
        },
        "status": {"phase": "Pending"},
    }


def _cluster(server: FakeApiServer) -> None:
    """The two agents' nodes; a 2 x 4-GPU gang that fits, a 3 x 8-GPU gang that cannot."""
    server.put("v1/namespaces", {"metadata": {"name": "ml", "labels": {NAMESPACE_ENABLED: "true"}}})
    for name in NODES:
        server.put(
            "v1/nodes",
            {
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                "status": {
                    "allocatable": {"cpu": "128", "memory": "1Ti", "nvidia.com/gpu": "8"},
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            },
        )
    for i in range(2):
        server.put("v1/pods", _pod(f"small-{i}", "small", 2, 4))
    for i in range(3):
        server.put("v1/pods", _pod(f"big-{i}", "big", 3, 8))


def _history(engine: Engine, gpus: list[str], *, now: datetime) -> None:
    """Two days of the past a live cluster would have (demand samples every 5 minutes, the
    GPUs' 5-minute and hourly rollups), so the retraining job has series to forecast.
    Written before anything else writes: SQLite has one writer."""
    with Session(engine) as session, session.begin():
        for k in range(1, 2 * 288):
            at = now - timedelta(minutes=5 * k + 10)
            busy = 8 + 4 * math.sin(2 * math.pi * at.hour / 24)
            demand = {"cluster": Demand(capacity_gpus=16, allocated_gpus=busy, pending_gpus=2)}
            store.record_demand(session, at=at, demand=demand)
        for level, size in ROLLUP_LEVELS.items():
            steps = int(timedelta(days=2) / size)
            for k in range(2, steps):
                start = bucket_start(now - k * size, size)
                for uuid in gpus:
                    session.add(
                        Rollup(
                            gpu_uuid=uuid,
                            level=level,
                            bucket_start=start,
                            samples=10,
                            util_sum=5.0 + 2 * math.sin(2 * math.pi * start.hour / 24),
                            util_max=1.0,
                            memory_used_sum=0.0,
                            memory_used_max=0,
                            power_sum_w=3000.0,
                            temperature_max_c=60.0,
                        )
                    )


@dataclass
class Stack:
    prometheus: str  # base URL

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        body = answer.json()
        assert body["status"] == "success", (expr, body)
        return list(body["data"]["result"])

    def label_values(self, label: str, metric: str) -> list[str]:
        answer = httpx.get(
            f"{self.prometheus}/api/v1/label/{label}/values", params={"match[]": metric}
        )
        return list(answer.json()["data"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = prometheus_binary("prometheus")
    folder = tmp_path_factory.mktemp("stack")
    stop = threading.Event()
    engine = make_engine(f"sqlite:///{folder / 'stowage.db'}")
    migrate.upgrade(engine)
    settings = OptimizerSettings(
        database_url=f"sqlite:///{folder / 'stowage.db'}",
        auth="none",
        controller="enforce",
        controller_identity="replica-a",
        controller_namespace="stowage",
        idle_after_s=2,
        demand_sample_s=1,
        forecast_interval_s=0,
    )
    app = create_app(settings, authenticator=None, engine=engine, prune_in_background=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, name="optimizer", daemon=True).start()
    _wait("optimizer", lambda: server.started)
    url = f"http://127.0.0.1:{port}"
    machines = [FakeMachine(load_profile(p), node_name=n) for n, p in NODES.items()]
    gpus = [m.binding.uuid_of(i) for m in machines for i in range(len(m.profile.gpus))]
    _history(engine, gpus, now=datetime.now(UTC))
    runners: list[AgentRunner] = []
    threads: list[threading.Thread] = []
    agent_ports = []
    prometheus: subprocess.Popen[bytes] | None = None
    with serve() as (fake, client):
        _cluster(fake)
        controller = Controller(
            KubeApi(client), engine, settings, registry=app.state.stowage.registry
        )
        try:
            for name, machine in zip(NODES, machines, strict=True):
                agent_ports.append(free_port())
                runner = AgentRunner(
                    settings=AgentSettings(
                        node_name=name,
                        optimizer_url=url,  # type: ignore[arg-type]
                        metrics_port=agent_ports[-1],
                        metrics_host="127.0.0.1",
                        interval_s=1,
                    ),
                    nvml=Nvml(machine.binding),
                    root=machine.root,
                    podresources_socket=machine.podresources_socket,
                    before_cycle=machine.refresh_host,
                )
                runner.start()
                runners.append(runner)
                thread = threading.Thread(target=runner.run, kwargs={"stop": stop}, daemon=True)
                thread.start()
                threads.append(thread)
            _wait(
                "agents' reports",
                lambda: len(httpx.get(f"{url}/v1/nodes").json()["items"]) == len(NODES),
            )
            for _ in range(4):  # the leader admits one gang, keeps the other waiting
                controller.step()
                time.sleep(1)
            trained = controller.trainer.run_once()
            assert trained.trained, trained.skipped
            stepping = threading.Thread(
                target=controller.run, args=(stop,), kwargs={"interval_s": 1}, daemon=True
            )
            stepping.start()
            threads.append(stepping)
            web = free_port()
            config = {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "stowage-optimizer",
                        "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
                    },
                    {
                        "job_name": "stowage-agent",
                        "honor_labels": True,
                        "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in agent_ports]}],
                    },
                ],
            }
            (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
            prometheus = subprocess.Popen(
                [
                    binary,
                    f"--config.file={folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={folder / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{web}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            result = Stack(f"http://127.0.0.1:{web}")
            _wait("prometheus", lambda: httpx.get(f"{result.prometheus}/-/ready").is_success)
            time.sleep(12)  # a dozen scrapes: rates over 30 s have several samples
            yield result
        finally:
            stop.set()
            for thread in threads:  # their last cycle ends before what they use is closed
                thread.join(timeout=10)
            if prometheus is not None:
                prometheus.terminate()
                prometheus.wait(timeout=10)
            for runner in runners:
                runner.close()
            for machine in machines:
                machine.close()
            server.should_exit = True
            engine.dispose()


def _board(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def _filled(board: dict[str, Any], expr: str) -> str:
    """``expr`` with the dashboard's variables as Grafana fills them: "All" (``.*``) for
    query variables, the default for text boxes, and the built-ins."""
    for variable in board["templating"]["list"]:
        name = variable["name"]
        if variable["type"] == "query":
            expr = expr.replace(f"${name}", ".*")
        elif variable["type"] == "textbox":
            expr = expr.replace(f"${name}", str(variable["query"]))
    for built_in, value in BUILT_IN.items():
        expr = expr.replace(built_in, value)
    assert "$" not in expr, f"an unfilled variable in {expr}"
    return expr


PANELS = [
    pytest.param(path, panel["title"], target["expr"], id=f"{path.stem}: {panel['title']}")
    for path in DASHBOARDS
    for panel in _board(path)["panels"]
    for target in panel["targets"]
]


@pytest.mark.parametrize(("path", "title", "expr"), PANELS)
def test_every_panel_returns_data(stack: Stack, path: Path, title: str, expr: str) -> None:
    result = stack.query(_filled(_board(path), expr))
    assert result, f"{path.stem} / {title}: no data for {expr}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_variable_finds_values(stack: Stack, path: Path) -> None:
    for variable in _board(path)["templating"]["list"]:
        if variable["type"] != "query":
            continue
        found = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["query"]["query"])
        assert found, variable["query"]
        assert stack.label_values(found[2], found[1]), variable["name"]


def _declared_agent_names() -> set[str]:
    text = (ROOT / "agent" / "exporter.py").read_text()
    return set(re.findall(r'"(stowage_[a-z0-9_]+)"', text))


def test_every_metric_a_panel_reads_is_declared() -> None:
    declared = set()
    for name in NAMES | _declared_agent_names():
        declared |= {name, f"{name}_total", f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    used = {
        name
        for path in DASHBOARDS
        for panel in _board(path)["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bstowage_[a-z0-9_]+", target["expr"])
    }
    assert used
    assert used <= declared, sorted(used - declared)


def test_the_chart_ships_each_dashboard_for_grafanas_sidecar() -> None:
    import helm_python as helm

    rendered = helm.Chart.load(ROOT / "helm" / "stowage").render(
        None, name="stowage", namespace="gpu", is_install=True
    )
    maps = [
        doc
        for name, text in rendered.items()
        if name.endswith("dashboards.yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    assert len(maps) == len(DASHBOARDS)
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        [(key, text)] = config_map["data"].items()
        assert json.loads(text) == _board(ROOT / "helm" / "stowage" / "dashboards" / key)

"""``stowage-demo``: the whole story on a simulated cluster, end to end.

1. Each simulated node is a real server design (a shipped device profile) run by the real
   agent code over a fake NVML, a fake host filesystem and a fake kubelet: the agent
   discovers its GPUs, NVLink/PCIe wiring and NUMA layout, samples them, attributes GPU
   processes to pods and builds a ``NodeReport``.
2. A real optimizer (``create_app`` under uvicorn, SQLite, bearer tokens) runs on loopback;
   every agent's reporter delivers its topology and then a samples report over HTTP, and an
   agent that tries to report for another node is refused (and audited).
3. The optimizer's API answers with each node's topology, health and free GPUs and with the
   cluster summary; a corrupted report is refused with the offending field path.
4. One scheduling cycle runs on the fleet as ``stowage plan`` runs it (``demo.scheduling``):
   a cordoned node, a tainted one, the DGX A100's lost GPU and a malformed pod, explained.
5. Forecasts (``demo.forecasting``): three weeks of made-up demand history per GPU model,
   the real retraining job once, and the API's forecast and capacity plan.

Each later capability (planner, controller, forecasts) adds its chapter here.
"""

from __future__ import annotations

import secrets
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import httpx
import uvicorn
import yaml

from agent.collector import Collector
from agent.fake.machine import FakeMachine
from agent.nvml import Nvml
from agent.pods import PodAttributor
from agent.profile import load_profile
from agent.reporter import Reporter
from demo.forecasting import train_on_history
from demo.scheduling import plan_chapter
from optimizer.api.app import create_app
from optimizer.auth import TokensFile
from optimizer.planner.plan import Plan
from optimizer.settings import OptimizerSettings
from shared.report import GpuHealth, NodeReport
from shared.schema import ReportError, parse_report
from shared.topology import LinkMatrix, best_connected_gpus, gpus_by_numa_node, nvlink_islands

#: The simulated cluster: (node name, device profile).
SIMULATED_CLUSTER: Final = (
    ("gpu-h100-a", "dgx-h100"),
    ("gpu-h200-a", "hgx-h200"),
    ("gpu-a100-a", "dgx-a100"),
    ("gpu-v100-a", "dgx1-v100"),
    ("gpu-l40s-a", "l40s-pcie"),
    ("gb200-tray-a", "gb200-nvl72-tray"),
)
#: Simulated seconds since the nodes booted when the demo reads them (past dgx-a100's
#: scripted XID at 30 s and lost GPU at 120 s).
DEMO_TIME_S: Final = 150.0
#: A GPU below this utilisation with no process on it counts as free.
FREE_UTIL_RATIO: Final = 0.1
JOB_GPUS: Final = 2


@dataclass(frozen=True)
class NodeSummary:
    """What the optimizer learned about one node from its report."""

    node_name: str
    product: str
    gpu_count: int
    wire_bytes: int
    islands: tuple[tuple[int, ...], ...]
    numa_groups: dict[int | None, tuple[int, ...]]
    unhealthy: dict[int, GpuHealth]
    pods: tuple[str, ...]
    free_gpus: tuple[int, ...]
    best_free_pair: tuple[int, ...] | None
    best_pair_nvlinks: int
    mean_util_ratio: float
    power_w: float


@dataclass(frozen=True)
class DemoResult:
    """The demo's findings, printed by the CLI and asserted by the tests."""

    nodes: tuple[NodeSummary, ...]
    rejected: ReportError
    reports_acknowledged: int
    forged_status: int
    cluster: dict[str, Any]  # GET /v1/cluster/summary
    api_nodes: int  # nodes GET /v1/nodes lists as ready
    plan: Plan  # one scheduling cycle on the fleet (demo.scheduling)
    plan_lines: tuple[str, ...]
    forecasts_trained: tuple[str, ...]  # subjects the retraining job stored
    forecast: dict[str, Any]  # GET /v1/forecasts?scope=cluster&horizon=24h
    capacity_plan: dict[str, Any]  # GET /v1/capacity/plan?scope=cluster&horizon=7d
    what_if: dict[str, Any]  # POST /v1/capacity/whatif: two more nodes for three days


def agent_report(node_name: str, profile_name: str, *, at_s: float = DEMO_TIME_S) -> NodeReport:
    """What the real agent reports for ``profile_name`` after ``at_s`` simulated seconds."""
    now = [0.0]
    with FakeMachine(
        load_profile(profile_name), clock=lambda: now[0], node_name=node_name
    ) as machine:
        attributor = PodAttributor(
            socket_path=machine.podresources_socket, proc_root=machine.root / "proc"
        )
        collector = Collector(
            nvml=Nvml(machine.binding),
            root=machine.root,
            node_name=node_name,
            attributor=attributor,
        )
        collector.start()
        try:
            attributor.refresh()
            collector.collect()
            now[0] = at_s
            return collector.collect().report
        finally:
            collector.close()


def summarize(report: NodeReport, *, wire_bytes: int) -> NodeSummary:
    """Derive a node's topology, health and free GPUs from its (validated) report."""
    matrix = LinkMatrix.from_links(report.links)
    numa_of = {g.index: g.numa_node for g in report.gpus}
    index_of = {g.uuid: g.index for g in report.gpus}
    healthy = {g.index for g in report.gpus if g.health is GpuHealth.OK}
    free = tuple(
        sorted(
            index_of[s.gpu_uuid]
            for s in report.samples
            if index_of[s.gpu_uuid] in healthy
            and not s.processes
            and s.util_ratio is not None
            and s.util_ratio < FREE_UTIL_RATIO
        )
    )
    pair = best_connected_gpus(k=JOB_GPUS, candidates=free, links=matrix, numa_of=numa_of)
    pair_nvlinks = matrix.nvlink_count(*pair) if pair is not None else 0
    pods = sorted({f"{p.namespace}/{p.pod}" for s in report.samples for p in s.processes if p.pod})
    utils = [s.util_ratio for s in report.samples if s.util_ratio is not None]
    return NodeSummary(
        node_name=report.node_name,
        product=report.gpus[0].product if report.gpus else "-",
        gpu_count=len(report.gpus),
        wire_bytes=wire_bytes,
        islands=tuple(nvlink_islands(numa_of, report.links)),
        numa_groups=gpus_by_numa_node(report.gpus),
        unhealthy={g.index: g.health for g in report.gpus if g.health is not GpuHealth.OK},
        pods=tuple(pods),
        free_gpus=free,
        best_free_pair=pair,
        best_pair_nvlinks=pair_nvlinks,
        mean_util_ratio=sum(utils) / len(utils) if utils else 0.0,
        power_w=sum(s.power_w or 0.0 for s in report.samples),
    )


@contextmanager
def running_optimizer(tokens: dict[str, tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """A real optimizer on a free loopback port with a fresh SQLite database; yields its URL
    and the database's."""
    with tempfile.TemporaryDirectory(prefix="stowage-demo-") as folder:
        tokens_file = Path(folder) / "tokens.yaml"
        tokens_file.write_text(
            yaml.safe_dump([{"token": t, "subject": s, "role": r} for t, (s, r) in tokens.items()])
        )
        database_url = f"sqlite:///{Path(folder) / 'stowage.db'}"
        settings = OptimizerSettings(database_url=database_url, tokens_file=tokens_file)
        app = create_app(settings, authenticator=TokensFile.load(tokens_file))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False)
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the demo optimizer did not start")
            time.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}", database_url
        finally:
            server.should_exit = True
            thread.join(timeout=30)


def run_demo() -> DemoResult:
    """Agents report to a real optimizer; its API answers; a corrupted report is refused."""
    reports = [agent_report(node, profile) for node, profile in SIMULATED_CLUSTER]
    tokens = {secrets.token_urlsafe(24): (r.node_name, "agent") for r in reports}
    reader = secrets.token_urlsafe(24)
    tokens[reader] = ("demo-sre", "reader")
    token_of = {subject: token for token, (subject, _) in tokens.items()}
    acknowledged = 0
    with running_optimizer(tokens) as (url, database_url), tempfile.TemporaryDirectory() as folder:
        for report in reports:
            token_file = Path(folder) / f"{report.node_name}.token"
            token_file.write_text(token_of[report.node_name])
            reporter = Reporter(url=url, token_file=token_file)
            later = report.model_copy(
                update={
                    "sequence": report.sequence + 1,
                    "collected_at": report.collected_at + timedelta(seconds=10),
                }
            )
            for each in (report, later):  # the topology, then a samples-only report
                reporter.submit(each)
            acknowledged += reporter.flush()
            reporter.close()
        headers = {"Authorization": f"Bearer {reader}"}
        with httpx.Client(base_url=url, timeout=30) as client:
            forged = client.post(
                "/v1/reports",
                content=reports[1].model_dump_json(),
                headers={"Authorization": f"Bearer {token_of[reports[0].node_name]}"},
            )
            cluster = client.get("/v1/cluster/summary", headers=headers).json()
            listed = client.get("/v1/nodes", headers=headers).json()["items"]
            summaries = []
            for report in reports:
                detail = client.get(f"/v1/nodes/{report.node_name}", headers=headers)
                stored = parse_report(_report_from_node(detail.json(), report))
                summaries.append(summarize(stored, wire_bytes=len(report.model_dump_json())))
            capacity = Counter(g.product for r in reports for g in r.gpus)
            trained = train_on_history(database_url, capacity)
            forecast = client.get(
                "/v1/forecasts", params={"scope": "cluster", "horizon": "24h"}, headers=headers
            ).json()
            capacity_plan = client.get(
                "/v1/capacity/plan",
                params={"scope": "cluster", "horizon": "7d", "target_wait": "1h"},
                headers=headers,
            ).json()
            what_if = client.post(
                "/v1/capacity/whatif",
                json={"scope": "cluster", "horizon": "3d", "add_nodes": 2},
                headers=headers,
            ).json()
    corrupted = reports[0].model_dump_json().replace('"gpu_b":1,', '"gpu_b":99,', 1)
    try:
        parse_report(corrupted)
    except ReportError as error:
        rejected = error
    else:
        raise RuntimeError("a report linking a missing GPU was accepted")
    plan, plan_lines = plan_chapter(reports)
    return DemoResult(
        plan=plan,
        plan_lines=tuple(plan_lines),
        nodes=tuple(summaries),
        rejected=rejected,
        reports_acknowledged=acknowledged,
        forged_status=forged.status_code,
        cluster=cluster,
        api_nodes=sum(1 for n in listed if n["status"] == "ready"),
        forecasts_trained=tuple(trained),
        forecast=forecast,
        capacity_plan=capacity_plan,
        what_if=what_if,
    )


def _report_from_node(node: dict[str, Any], sent: NodeReport) -> str:
    """Rebuild a report from what the optimizer's API says about a node.

    The summary is then derived from the optimizer's stored view, not from the agent's copy.
    """
    gpus = [gpu["info"] for gpu in node["gpus"]]
    samples = [gpu["latest_sample"] for gpu in node["gpus"] if gpu["latest_sample"]]
    data = sent.model_dump(mode="json")
    data.update(host=node["host"], gpus=gpus, links=node["links"], samples=samples)
    return NodeReport.model_validate(data).model_dump_json()

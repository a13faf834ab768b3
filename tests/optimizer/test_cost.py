"""Energy, GPU-hours and cost per namespace on /metrics, from reports through the real API
(SQLite and PostgreSQL): each GPU's energy and time charged to the namespace whose pod ran on
it, a counter reset charging no energy, the prices from the settings."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from optimizer.settings import OptimizerSettings
from shared.report import NodeReport
from tests.optimizer.conftest import WallClock, auth, build_app
from tests.optimizer.reports import later, topology_report


def _report(base: NodeReport, *, at: Any, sequence: int, energy: dict[int, float]) -> NodeReport:
    """``base`` at ``at`` with GPU 0 in namespace ml, GPU 1 in research, and these counters."""
    data = base.model_dump(mode="json")
    data.update({"collected_at": at.isoformat(), "sequence": sequence})
    if sequence > 1:
        data.update({"host": None, "gpus": [], "links": []})
    for index, namespace in ((0, "ml"), (1, "research")):
        data["samples"][index]["energy_j"] = energy[index]
        data["samples"][index]["processes"] = [
            {"pid": 100 + index, "namespace": namespace, "pod": f"p{index}", "container": "c"}
        ]
    return NodeReport.model_validate(data)


def test_energy_gpu_hours_and_cost_per_namespace(
    settings: OptimizerSettings, engine: Engine, clock: WallClock
) -> None:
    priced = settings.model_copy(update={"price_per_kwh": 0.2, "price_per_gpu_hour": 2.0})
    with TestClient(build_app(priced, engine, clock)) as client:
        base = topology_report("gpu-node-1", at=clock.now)
        counters = [  # joules: ml draws 600 W for 10 min; research's counter resets midway
            {0: 1e6, 1: 5e6},
            {0: 1e6 + 180_000, 1: 5e6 + 90_000},
            {0: 1e6 + 360_000, 1: 1_000.0},
        ]
        start = clock.now
        for step, energy in enumerate(counters):
            clock.now = later(start, 300 * step)
            report = _report(base, at=clock.now, sequence=step + 1, energy=energy)
            answer = client.post(
                "/v1/reports", content=report.model_dump_json(), headers=auth("gpu-node-1")
            )
            assert answer.status_code == 202, answer.text
        clock.advance(1)
        values = {
            (s.name, s.labels["namespace"]): s.value
            for family in text_string_to_metric_families(client.get("/metrics").text)
            if family.name.startswith("stowage_namespace_gpu_")
            for s in family.samples
        }
    kwh = 360_000 / 3.6e6
    assert values["stowage_namespace_gpu_energy_kwh", "ml"] == pytest.approx(kwh)
    assert values["stowage_namespace_gpu_hours", "ml"] == pytest.approx(600 / 3600)
    assert values["stowage_namespace_gpu_cost", "ml"] == pytest.approx(kwh * 0.2 + 600 / 3600 * 2)
    assert values["stowage_namespace_gpu_energy_kwh", "research"] == pytest.approx(90_000 / 3.6e6)
    assert values["stowage_namespace_gpu_hours", "research"] == pytest.approx(600 / 3600)

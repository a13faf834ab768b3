"""Fuzz the API from its own OpenAPI schema: no generated input may crash it (no 5xx)."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from optimizer.api.app import create_app
from optimizer.settings import OptimizerSettings
from optimizer.store import migrate
from optimizer.store.engine import make_engine
from shared.samples import DGX_H100, build_report


def _app() -> FastAPI:
    folder = Path(tempfile.mkdtemp(prefix="stowage-fuzz-"))
    engine = make_engine(f"sqlite:///{folder / 'fuzz.db'}")
    migrate.upgrade(engine)
    app = create_app(
        OptimizerSettings(auth="none", database_url="sqlite://"),
        authenticator=None,
        engine=engine,
        migrate_on_start=False,
        prune_in_background=False,
    )
    with TestClient(app) as client:  # one node, so reads of real names are exercised too
        report = build_report(DGX_H100, node_name="gpu-node-1", collected_at=datetime.now(UTC))
        assert client.post("/v1/reports", content=report.model_dump_json()).status_code == 202
    return app


SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", _app())
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same inputs every run: CI stays reproducible
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(data=st.data())
def test_no_input_crashes_the_api(operation: Any, data: st.DataObject) -> None:
    case = data.draw(operation.as_strategy())
    case.call_and_validate(
        checks=[not_a_server_error, status_code_conformance, response_schema_conformance]
    )


def test_every_route_is_fuzzed() -> None:
    labels = {op.label for op in OPERATIONS}
    assert {
        "POST /v1/reports",
        "GET /v1/nodes",
        "GET /v1/nodes/{name}",
        "GET /v1/cluster/summary",
        "GET /v1/gpus/{uuid}/samples",
    } <= labels


def test_the_spec_declares_the_bearer_scheme_and_the_supported_schema_versions() -> None:
    spec = TestClient(_app()).get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert any(s.get("scheme") == "bearer" for s in schemes.values())
    assert spec["paths"]["/v1/nodes"]["get"]["security"]
    version = spec["components"]["schemas"]["NodeReport"]["properties"]["schema_version"]
    assert version["enum"] == [1]
    for code in ("401", "403", "409", "412", "413", "422", "503"):
        assert code in spec["paths"]["/v1/reports"]["post"]["responses"], code

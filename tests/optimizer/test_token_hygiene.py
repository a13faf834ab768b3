"""No token ever reaches a log line or the audit log: valid ones, a guessed one, one of the
wrong role, and one sent with a broken report, through the real app with Stowage's logging."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from optimizer.store.models import AuditEntry
from shared.logs import configure_logging
from tests.optimizer.conftest import TOKENS, WallClock, auth
from tests.optimizer.reports import topology_report

GUESS = "guessed-token-that-is-not-valid-0099"


def test_tokens_never_reach_the_logs_or_the_audit_log(
    client: TestClient,
    engine: Engine,
    clock: WallClock,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    configure_logging(level=logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    report = topology_report("gpu-node-1", at=clock.now)
    body = report.model_dump_json()
    assert client.post("/v1/reports", content=body, headers=auth("gpu-node-1")).status_code == 202
    # another node's token, a broken body, a guess, a reader where an admin is needed
    assert client.post("/v1/reports", content=body, headers=auth("gpu-node-2")).status_code == 403
    assert client.post("/v1/reports", content=b"{", headers=auth("gpu-node-1")).status_code == 422
    guess = {"Authorization": f"Bearer {GUESS}"}
    assert client.get("/v1/nodes", headers=guess).status_code == 401
    assert client.get("/v1/audit", headers=auth("sre@example.com")).status_code == 403
    assert client.get("/v1/audit", headers=auth("platform@example.com")).status_code == 200
    captured = capsys.readouterr()
    logged = captured.out + captured.err + caplog.text
    with Session(engine) as session:
        audited = " ".join(
            f"{e.actor} {e.verb} {e.object} {e.reason} {e.outcome}"
            for e in session.scalars(select(AuditEntry))
        )
    assert "denied:403" in audited  # the refusals were audited, by subject
    for token in [*TOKENS, GUESS]:
        assert token not in logged
        assert token not in audited
        assert token[:12] not in audited  # not even a prefix

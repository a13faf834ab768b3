"""``POST /v1/reports``: agents deliver node reports here."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from optimizer.api.deps import AgentOrAdmin, StateDep, refuse
from optimizer.api.state import AppState
from optimizer.auth import Role
from optimizer.ingest import IngestOverloadedError, IngestTimeoutError, ReportNotStorableError
from optimizer.store.reports import GpuOwnedError, TopologyUnknownError
from shared.report import SUPPORTED_SCHEMA_VERSIONS, NodeReport
from shared.schema import ReportError, parse_report

router = APIRouter(tags=["reports"])

_REPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NodeReport"}}},
    }
}


def _out_of_window(report: NodeReport, state: AppState) -> str | None:
    """Why ``collected_at`` is unacceptable by the server's clock, or None: a report from the
    future would stand as a node's latest forever, one older than retention is pruned at
    once."""
    now = state.clock()
    ahead = (report.collected_at - now).total_seconds()
    skew = state.settings.max_clock_skew_s
    if ahead > skew:
        return (
            f"{report.collected_at.isoformat()} is {ahead:.0f} s ahead of the optimizer's "
            f"clock; at most {skew:.0f} s is allowed (STOWAGE_MAX_CLOCK_SKEW_S)"
        )
    retention = state.settings.raw_retention_s
    if (now - report.collected_at).total_seconds() > retention:
        return (
            f"{report.collected_at.isoformat()} is older than the raw retention "
            f"({retention:.0f} s, STOWAGE_RAW_RETENTION_S)"
        )
    return None


@router.post(
    "/v1/reports",
    status_code=202,
    openapi_extra=_REPORT_BODY,
    responses={
        200: {"description": "A resend of a report already stored; nothing changed."},
        202: {"description": "Stored."},
        400: {"description": "Unsupported schema_version; the supported ones are named."},
        401: {"description": "No valid bearer token."},
        403: {"description": "An agent may only report for its own node."},
        409: {
            "description": "The topology claims GPUs another node owns and still reports "
            "for (each UUID and its owner named; audited)."
        },
        412: {"description": "Samples for a topology the optimizer lacks: resend topology."},
        413: {"description": "Body over the size limit."},
        429: {"description": "This agent reports faster than its rate limit; Retry-After."},
        422: {"description": "The report breaks the contract; every problem with its path."},
        503: {"description": "Database unavailable; retry after Retry-After seconds."},
    },
)
async def post_report(request: Request, state: StateDep, principal: AgentOrAdmin) -> JSONResponse:
    """Store one NodeReport (one transaction; a resent report is stored once)."""
    if state.report_buckets is not None and principal.role is Role.AGENT:
        wait_s = state.report_buckets.take(principal.subject, now=state.clock().timestamp())
        if wait_s:
            state.metrics.reports.labels(outcome="rate_limited").inc()
            raise HTTPException(
                429,
                f"node {principal.subject} reports faster than "
                f"{state.settings.report_rate_per_node:g}/s; retry later",
                headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
            )
    body = await request.body()  # bounded by the BodyLimit middleware (413)
    try:
        report = parse_report(body)
    except ReportError as error:
        version = next((p for p in error.problems if p.path == "schema_version"), None)
        if version is not None and "unsupported" in version.message:
            state.metrics.reports.labels(outcome="unsupported_version").inc()
            supported = sorted(SUPPORTED_SCHEMA_VERSIONS)
            raise HTTPException(
                400, {"message": version.message, "supported_schema_versions": supported}
            ) from None
        state.metrics.reports.labels(outcome="invalid").inc()
        raise HTTPException(
            422,
            [
                {"loc": p.path.split(".") if p.path else [], "msg": p.message}
                for p in error.problems
            ],
        ) from None
    if problem := _out_of_window(report, state):
        state.metrics.reports.labels(outcome="invalid").inc()
        raise HTTPException(422, [{"loc": ["collected_at"], "msg": problem}])
    if principal.role is Role.AGENT and report.node_name != principal.subject:
        reason = f"agent of node {principal.subject} may not report for node {report.node_name}"
        await run_in_threadpool(
            refuse, state, request, status=403, actor=principal.subject, reason=reason
        )
        raise HTTPException(403, reason)
    try:
        result = await state.ingest.submit(report, size_bytes=len(body))
    except TopologyUnknownError as error:
        state.metrics.reports.labels(outcome="topology_unknown").inc()
        raise HTTPException(412, str(error)) from None
    except GpuOwnedError as error:
        state.metrics.reports.labels(outcome="gpu_owned").inc()
        await run_in_threadpool(
            refuse, state, request, status=409, actor=principal.subject, reason=str(error)
        )
        raise HTTPException(
            409,
            {
                "message": str(error),
                "owned": [{"uuid": uuid, "node": owner} for uuid, owner in error.claims],
            },
        ) from None
    except ReportNotStorableError as error:
        state.metrics.reports.labels(outcome="not_storable").inc()
        raise HTTPException(422, f"the database refused this report: {error}") from None
    except (IngestOverloadedError, IngestTimeoutError) as error:
        overloaded = isinstance(error, IngestOverloadedError)
        state.metrics.reports.labels(outcome="overloaded" if overloaded else "timeout").inc()
        raise HTTPException(
            503,
            f"{error}; retry later (a resend is stored once)",
            headers={"Retry-After": str(state.settings.retry_after_s)},
        ) from None
    outcome = "stored" if result.stored else "duplicate"
    state.metrics.reports.labels(outcome=outcome).inc()
    return JSONResponse(
        status_code=202 if result.stored else 200,
        content={
            "node_name": report.node_name,
            "sequence": report.sequence,
            "stored": result.stored,
            "topology_changed": result.topology_changed,
            "samples": result.samples,
        },
    )

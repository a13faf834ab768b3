"""Reports for optimizer tests, made by the same builders as the contract tests."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from shared.report import NodeReport
from shared.samples import DGX_H100, L40S_PCIE, build_report


def topology_report(
    node: str,
    *,
    at: datetime,
    sequence: int = 1,
    utils: list[float] | None = None,
    l40s: bool = False,
) -> NodeReport:
    """A topology report of a DGX H100 (or an 8x L40S server) named ``node``."""
    report = build_report(
        L40S_PCIE if l40s else DGX_H100, node_name=node, collected_at=at, util_ratios=utils
    )
    return report.model_copy(update={"sequence": sequence})


def samples_report(base: NodeReport, *, at: datetime, sequence: int) -> NodeReport:
    """``base``'s samples again as a samples report, later."""
    return base.model_copy(
        update={"host": None, "gpus": [], "links": [], "collected_at": at, "sequence": sequence}
    )


def with_process(report: NodeReport, gpu: int, **process: Any) -> NodeReport:
    """``report`` with one process on GPU ``gpu``."""
    data = report.model_dump(mode="json")
    data["samples"][gpu]["processes"] = [{"pid": 100 + gpu, **process}]
    return NodeReport.model_validate(data)


def later(at: datetime, seconds: float) -> datetime:
    return at + timedelta(seconds=seconds)

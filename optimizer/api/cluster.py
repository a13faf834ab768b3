"""``GET /v1/cluster/summary``: GPUs by model and pool, fragmentation, power, stale nodes."""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from optimizer.api.deps import Reader, SessionDep, StateDep
from optimizer.api.state import AppState
from optimizer.store.queries import gpu_states
from optimizer.summary import Summary, summarize

router = APIRouter(tags=["cluster"])


@router.get("/v1/cluster/summary")
def summary(
    session: SessionDep,
    state: StateDep,
    _: Reader,
    shapes: Annotated[
        str | None,
        Query(
            description="Request shapes (GPUs per pod, comma-separated) for fragmentation; "
            "default from settings.",
            pattern=r"^\d{1,2}(,\d{1,2})*$",
        ),
    ] = None,
) -> dict[str, Any]:
    """Counts of fresh nodes' GPUs; ``fragmented_gpus`` are free GPUs no shape can use."""
    requested = [int(s) for s in shapes.split(",") if int(s) > 0] if shapes else []
    return asdict(cluster_summary(state, session, request_shapes=requested or None))


def cluster_summary(
    state: AppState, session: Session, *, request_shapes: list[int] | None = None
) -> Summary:
    """The summary from the store with the settings' thresholds (shapes: settings' default)."""
    settings = state.settings
    return summarize(
        gpu_states(session, idle_util_ratio=settings.idle_util_ratio),
        now=state.clock(),
        stale_after=timedelta(seconds=settings.stale_after_s),
        request_shapes=request_shapes or settings.request_shapes,
    )

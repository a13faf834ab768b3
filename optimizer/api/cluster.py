"""``GET /v1/cluster/summary``: GPUs by model and pool, fragmentation, power, stale nodes."""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from optimizer.api.deps import Reader, SessionDep, StateDep
from optimizer.store.queries import gpu_states
from optimizer.summary import summarize

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
    request_shapes = (
        [int(s) for s in shapes.split(",") if int(s) > 0]
        if shapes
        else state.settings.request_shapes
    )
    result = summarize(
        gpu_states(session, idle_util_ratio=state.settings.idle_util_ratio),
        now=state.clock(),
        stale_after=timedelta(seconds=state.settings.stale_after_s),
        request_shapes=request_shapes or state.settings.request_shapes,
    )
    return asdict(result)

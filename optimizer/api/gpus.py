"""``GET /v1/gpus/{uuid}/samples``: a GPU's history, downsampled on the fly."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Final

from fastapi import APIRouter, HTTPException, Query
from pydantic import AwareDatetime

from optimizer.api.deps import Reader, SessionDep, StateDep
from optimizer.store.queries import choose_source, gpu_exists, gpu_series

router = APIRouter(tags=["gpus"])

MAX_POINTS: Final = 10_000


@router.get(
    "/v1/gpus/{uuid}/samples",
    responses={
        400: {"description": "from after to, or more points than allowed."},
        404: {"description": "No such GPU."},
    },
)
def samples(
    uuid: str,
    session: SessionDep,
    state: StateDep,
    _: Reader,
    start: Annotated[AwareDatetime | None, Query(alias="from")] = None,
    end: Annotated[AwareDatetime | None, Query(alias="to")] = None,
    step: Annotated[float | None, Query(gt=0, le=86400 * 31, description="seconds")] = None,
) -> dict[str, Any]:
    """Points in ``[from, to)`` averaged per ``step`` (default: about 300 points).

    Short steps read raw samples; steps of 5 minutes or more read 5-minute rollups, of an
    hour or more 1-hour rollups; ranges older than raw retention use rollups.
    """
    now = state.clock()
    end_at: datetime = end or now
    start_at: datetime = start or end_at - timedelta(hours=1)
    if start_at >= end_at:
        raise HTTPException(400, "'from' must be before 'to'")
    span = (end_at - start_at).total_seconds()
    step_s = step or max(span / 300, 10.0)
    if span / step_s > MAX_POINTS:
        raise HTTPException(400, f"more than {MAX_POINTS} points: use a larger step")
    if not gpu_exists(session, uuid):
        raise HTTPException(404, f"no GPU {uuid}")
    raw_since = now - timedelta(seconds=state.settings.raw_retention_s)
    source = choose_source(step=timedelta(seconds=step_s), start=start_at, raw_since=raw_since)
    points = gpu_series(
        session,
        uuid=uuid,
        start=start_at,
        end=end_at,
        step=timedelta(seconds=step_s),
        source=source,
    )
    return {
        "gpu_uuid": uuid,
        "from": start_at,
        "to": end_at,
        "step_s": step_s,
        "source": source,
        "points": [p.__dict__ for p in points],
    }

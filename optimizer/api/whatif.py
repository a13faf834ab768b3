"""``POST /v1/capacity/whatif``: predicted waits and utilisation with nodes added or removed.

The stored hourly demand forecast of the scope and the cluster's finished jobs
(``job_runs``) become arrivals (:mod:`optimizer.forecast.whatif`), replayed through the
scheduling cycle on today's node count and on the changed one, so the answer compares the
two on the same sampled week.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from optimizer.api.deps import Reader, SessionDep, StateDep
from optimizer.api.forecasts import DURATION, points_within, seconds, stored
from optimizer.controller.durations import LOOKBACK
from optimizer.forecast.whatif import JobShape, WhatIfError, arrivals, replay
from optimizer.simulate.replay import POLICIES
from optimizer.store.forecasts import finished_runs

router = APIRouter(tags=["forecasts"])

#: The fewest finished jobs a what-if draws shapes from.
MIN_JOBS: Final = 10
Policy = Literal["fifo", "sjf-oracle", "srtf-oracle", "tiresias-las", "qssf-noisy", "stowage"]


class WhatIf(BaseModel):
    """A change to try against the scope's forecast demand."""

    scope: str = Field("cluster", description="A demand scope with a stored hourly forecast.")
    horizon: Annotated[str, Field(pattern=DURATION, description="How far ahead, up to 7d.")] = "7d"
    add_nodes: int = Field(0, ge=-1_000, le=1_000, description="Nodes to add (negative: remove).")
    gpus_per_node: int = Field(8, ge=1, le=64)
    quantile: Literal["p50", "p90"] = Field("p50", description="The demand path replayed.")
    policy: Policy = "fifo"
    seed: int = Field(0, ge=0, le=2**31 - 1)


@router.post(
    "/v1/capacity/whatif",
    responses={
        400: {"description": "A horizon beyond the forecast, or a cluster with no node."},
        404: {"description": "No hourly demand forecast of the scope yet."},
        409: {"description": "Too few finished jobs to draw job shapes from."},
    },
)
def what_if(body: WhatIf, session: SessionDep, state: StateDep, _: Reader) -> dict[str, Any]:
    """Predicted waits and utilisation of the jobs arriving over the horizon, on today's
    node count and with ``add_nodes`` more (or fewer), from the same sampled arrivals."""
    row = stored(session, state, metric="gpu_demand", scope=body.scope, step_s=3600)
    points = points_within(row, seconds(body.horizon, "horizon"))
    shapes = [
        JobShape(max(1, round(r.gpus)), r.duration_s)
        for r in finished_runs(session, since=state.clock() - LOOKBACK)
        if r.duration_s > 0 and r.gpus > 0
    ]
    if len(shapes) < MIN_JOBS:
        raise HTTPException(
            409,
            f"{len(shapes)} jobs finished in the last {LOOKBACK / timedelta(days=1):g} days; "
            f"a what-if draws job shapes from at least {MIN_JOBS}",
        )
    capacity = float(row.payload.get("capacity_gpus") or 0.0)
    before = max(1, round(capacity / body.gpus_per_node))
    after = before + body.add_nodes
    demand = [float(p[body.quantile]) for p in points]

    policy = POLICIES[body.policy]
    try:
        jobs = arrivals(demand, step_s=3600, shapes=shapes, seed=body.seed)
        outcomes = {
            name: replay(
                jobs, nodes=nodes, gpus_per_node=body.gpus_per_node, policy=policy, seed=body.seed
            ).as_json()
            for name, nodes in (("before", before), ("after", after))
        }
    except WhatIfError as error:
        raise HTTPException(400, str(error)) from None
    return {
        "scope": body.scope,
        "horizon_s": len(points) * 3600,
        "quantile": body.quantile,
        "policy": body.policy,
        "capacity_gpus": capacity,
        "nodes_before": before,
        "nodes_after": after,
        "job_shapes": len(shapes),
        "forecast_created_at": row.created_at,
        **outcomes,
    }

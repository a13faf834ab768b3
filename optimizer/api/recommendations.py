"""``GET /v1/recommendations``: idle pods and GPU right-sizing from the agents' samples.

Computed on request from the recent window (the aggregation runs in the database), so a
recommendation never lags the data it rests on; ``/metrics`` exports the same with a
minute's cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from datetime import timedelta
from typing import Annotated, Any, Final, Literal, get_args

from fastapi import APIRouter, HTTPException, Query
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from optimizer import metrics as metric_names
from optimizer.api.deps import Reader, SessionDep, StateDep
from optimizer.api.forecasts import DURATION, seconds
from optimizer.api.state import AppState, Refreshed
from optimizer.forecast.rightsizing import Recommendation
from optimizer.store.usage import recommendations

router = APIRouter(tags=["recommendations"])

Kind = Literal["idle", "gpu-count", "gpu-memory", "cpu", "memory"]
KINDS: Final = get_args(Kind)
#: The longest window asked for (raw samples are kept for days, not years).
MAX_WINDOW_S: Final = 366 * 86_400


def current(
    state: AppState, session: Any, *, window_s: float, min_window_s: float
) -> list[Recommendation]:
    return recommendations(
        session,
        now=state.clock(),
        window=timedelta(seconds=window_s),
        min_window=timedelta(seconds=min_window_s),
    )


@router.get("/v1/recommendations", responses={400: {"description": "A zero or too long duration."}})
def list_recommendations(
    session: SessionDep,
    state: StateDep,
    _: Reader,
    namespace: str | None = None,
    kind: Kind | None = None,
    window: Annotated[
        str | None,
        Query(description="How far back to look (default: the setting).", pattern=DURATION),
    ] = None,
    min_window: Annotated[
        str | None,
        Query(description="A pod observed for less is not judged yet.", pattern=DURATION),
    ] = None,
) -> dict[str, Any]:
    """Per workload (the Deployment, Job, PyTorchJob, JobSet, ... that owns the pods, as the
    controller last saw it; a bare pod is its own): idle (every held GPU under 5% activity),
    GPUs it holds and leaves idle (ask for fewer; across a gang's pods), single-GPU pods whose
    peak memory fits a smaller MIG profile or GPU share; and per container, CPU and memory
    requests more than 30% away from the decayed p90 plus 15% (``cpu``, ``memory``, VPA's
    way); each with its pods, the reason and the signal it rests on."""
    settings = state.settings
    window_s = seconds(window, "window") if window else settings.rightsizing_window_s
    min_window_s = seconds(min_window, "min_window") if min_window else settings.idle_after_s
    for name, value in (("window", window_s), ("min_window", min_window_s)):
        if value > MAX_WINDOW_S:
            raise HTTPException(400, f"{name}: at most {MAX_WINDOW_S // 86_400} d")
    items = current(state, session, window_s=window_s, min_window_s=min_window_s)
    return {
        "window_s": window_s,
        "min_window_s": min_window_s,
        "items": [
            asdict(r)
            for r in items
            if (namespace is None or r.namespace == namespace) and (kind is None or r.kind == kind)
        ],
    }


class RecommendationCollector(Collector):
    """Recommendations by kind and idle GPUs by namespace, recomputed at most once a minute."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._items = Refreshed(self._read)

    def _read(self) -> list[Recommendation]:
        settings = self.state.settings
        with self.state.sessions() as session:
            return current(
                self.state,
                session,
                window_s=settings.rightsizing_window_s,
                min_window_s=settings.idle_after_s,
            )

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        items = self._items.get()
        if items is None:
            return
        kinds = GaugeMetricFamily(
            metric_names.RECOMMENDATIONS,
            "Open right-sizing recommendations by kind.",
            labels=["kind"],
        )
        for kind in KINDS:
            kinds.add_metric([kind], sum(1 for r in items if r.kind == kind))
        yield kinds
        idle = GaugeMetricFamily(
            metric_names.IDLE_GPUS,
            "GPUs held by pods that leave them idle (idle pods and the idle share of others).",
            labels=["namespace"],
        )
        per_namespace: dict[str, int] = {}
        for r in items:
            if r.kind in ("idle", "gpu-count"):
                per_namespace[r.namespace] = per_namespace.get(r.namespace, 0) + len(r.gpus)
        for ns, count in sorted(per_namespace.items()):
            idle.add_metric([ns], count)
        yield idle

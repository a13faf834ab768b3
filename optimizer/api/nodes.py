"""``GET /v1/nodes`` and ``GET /v1/nodes/{name}``: topology, health, latest sample, age."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from optimizer.api.deps import Reader, SessionDep, StateDep
from optimizer.store.queries import GpuRow, NodeRow, get_node, list_nodes

router = APIRouter(tags=["nodes"])


def _gpu_view(gpu: GpuRow, *, detail: bool) -> dict[str, Any]:
    view: dict[str, Any] = {
        "index": gpu.index,
        "uuid": gpu.uuid,
        "product": gpu.product,
        "memory_bytes": gpu.memory_bytes,
        "health": gpu.health,
        "numa_node": gpu.numa_node,
        "clique": gpu.clique,
        "util_ratio": gpu.util_ratio,
        "memory_used_bytes": gpu.memory_used_bytes,
        "power_w": gpu.power_w,
        "process_count": gpu.process_count,
        "sampled_at": gpu.latest_at,
    }
    if detail:
        view["info"] = gpu.info
        view["latest_sample"] = gpu.latest_sample
    return view


def node_view(
    node: NodeRow, *, now: datetime, stale_after_s: float, detail: bool
) -> dict[str, Any]:
    """The API's view of a node: ``stale`` when its agent has not reported for the TTL."""
    age_s = (now - node.last_seen).total_seconds()
    view: dict[str, Any] = {
        "name": node.name,
        "status": "stale" if age_s > stale_after_s else "ready",
        "last_seen": node.last_seen,
        "last_seen_age_s": round(age_s, 3),
        "agent_version": node.agent_version,
        "driver_version": node.driver_version,
        "cuda_version": node.cuda_version,
        "pool": node.pool,
        "gpu_count": len(node.gpus),
        "gpus": [_gpu_view(g, detail=detail) for g in node.gpus],
    }
    if detail:
        view["host"] = node.host
        view["links"] = list(node.links)
        view["first_seen"] = node.first_seen
        view["last_sequence"] = node.last_sequence
    return view


@router.get("/v1/nodes")
def nodes(
    session: SessionDep,
    state: StateDep,
    _: Reader,
    limit: Annotated[int, Query(ge=1, le=5000, description="Nodes per page.")] = 500,
    continue_: Annotated[
        str | None,
        Query(alias="continue", max_length=253, description="From the previous page."),
    ] = None,
) -> dict[str, Any]:
    """Nodes in name order with their GPUs, health, latest sample and last-seen age.

    Paged like Kubernetes lists: pass the previous page's ``continue`` to get the next; it
    is null on the last page.
    """
    now = state.clock()
    stale = state.settings.stale_after_s
    page = list_nodes(session, after=continue_, limit=limit + 1)
    more = len(page) > limit
    page = page[:limit]
    return {
        "items": [node_view(n, now=now, stale_after_s=stale, detail=False) for n in page],
        "continue": page[-1].name if more else None,
    }


@router.get("/v1/nodes/{name}", responses={404: {"description": "No such node."}})
def node(name: str, session: SessionDep, state: StateDep, _: Reader) -> dict[str, Any]:
    """One node in full: host, GPUs, links, latest samples."""
    found = get_node(session, name)
    if found is None:
        raise HTTPException(404, f"no node named {name!r}")
    return node_view(
        found, now=state.clock(), stale_after_s=state.settings.stale_after_s, detail=True
    )

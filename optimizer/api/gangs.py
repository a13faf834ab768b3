"""``GET /v1/gangs``: every gang the controller has seen, why it waits or where it went.

The leader writes each gang's status; every replica serves it from the database, so the
explanation an ML engineer reads here is the one ``kubectl describe pod`` shows as an Event.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from sqlalchemy import select

from optimizer.api.deps import Reader, SessionDep
from optimizer.store.models import GangStatus

router = APIRouter(tags=["gangs"])


def _view(row: GangStatus) -> dict[str, Any]:
    return {
        "namespace": row.namespace,
        "name": row.gang,
        "phase": row.phase,
        "message": row.message,
        "size": row.size,
        "members": row.members,
        "queue": row.queue,
        "first_seen": row.first_seen,
        "updated_at": row.updated_at,
        "plan_id": row.plan_id,
        "placement": (row.placement or {}).get("pods", {}),
    }


@router.get("/v1/gangs")
def list_gangs(
    session: SessionDep, _: Reader, namespace: str | None = None, phase: str | None = None
) -> dict[str, Any]:
    """Gangs by namespace and name, optionally of one namespace or phase."""
    query = select(GangStatus).order_by(GangStatus.namespace, GangStatus.gang)
    if namespace is not None:
        query = query.where(GangStatus.namespace == namespace)
    if phase is not None:
        query = query.where(GangStatus.phase == phase)
    return {"items": [_view(row) for row in session.scalars(query)]}


@router.get("/v1/gangs/{namespace}/{name}", responses={404: {"description": "No such gang."}})
def get_gang(session: SessionDep, _: Reader, namespace: str, name: str) -> dict[str, Any]:
    """One gang's status and explanation."""
    row = session.get(GangStatus, (namespace, name))
    if row is None:
        raise HTTPException(404, f"no gang {name!r} in namespace {namespace!r}")
    return _view(row)

"""``GET /v1/audit``: the newest audit entries (who, what, why), for admins."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from optimizer.api.deps import SessionDep, require
from optimizer.auth import Principal, Role
from optimizer.store.queries import audit_entries

router = APIRouter(tags=["audit"])

Admin = Annotated[Principal, Depends(require(Role.ADMIN))]


@router.get("/v1/audit")
def audit(
    session: SessionDep,
    _: Admin,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Newest first: actor, verb, object, reason, outcome and plan id of each entry."""
    return {"items": audit_entries(session, limit=limit)}

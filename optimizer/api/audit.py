"""``GET /v1/audit``: audit entries (who, what, why), newest first, filtered and paged, for
admins."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import AwareDatetime

from optimizer.api.deps import SessionDep, require
from optimizer.auth import Principal, Role
from optimizer.store.queries import audit_entries

router = APIRouter(tags=["audit"])

Admin = Annotated[Principal, Depends(require(Role.ADMIN))]


@router.get("/v1/audit", responses={422: {"description": "A filter out of range."}})
def audit(
    session: SessionDep,
    _: Admin,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[
        int | None,
        Query(ge=1, le=2**63 - 1, description="Entries older than this id: the next page."),
    ] = None,
    actor: Annotated[str | None, Query(max_length=253)] = None,
    verb: Annotated[str | None, Query(max_length=64, description="e.g. evict-pod.")] = None,
    object_prefix: Annotated[
        str | None, Query(alias="object", max_length=512, description="e.g. pod/ml/.")
    ] = None,
    outcome: Annotated[str | None, Query(max_length=32, description="e.g. dry-run.")] = None,
    since: Annotated[AwareDatetime | None, Query(description="RFC 3339, inclusive.")] = None,
    until: Annotated[AwareDatetime | None, Query(description="RFC 3339, exclusive.")] = None,
) -> dict[str, Any]:
    """Newest first: id, time, actor, verb, object, reason, outcome and plan id of each
    entry; filters combine; ``next`` is the ``before`` of the following page (absent on the
    last)."""
    items = audit_entries(
        session,
        limit=limit + 1,
        before_id=before,
        actor=actor,
        verb=verb,
        object_prefix=object_prefix,
        outcome=outcome,
        since=_utc(since, "since"),
        until=_utc(until, "until"),
    )
    page: dict[str, Any] = {"items": items[:limit]}
    if len(items) > limit:
        page["next"] = items[limit - 1]["id"]
    return page


def _utc(moment: AwareDatetime | None, name: str) -> datetime | None:
    """``moment`` in UTC; 422 when it has none (year 1 minus an offset, 9999 plus one)."""
    if moment is None:
        return None
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise HTTPException(
            422, f"{name}: {moment.isoformat()} is outside the years 1-9999 in UTC"
        ) from None

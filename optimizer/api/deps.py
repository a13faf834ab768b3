"""FastAPI dependencies: the shared state, a database session, the caller's principal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Final

import structlog
from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from optimizer.api.state import AppState
from optimizer.auth import Principal, Role
from optimizer.store.queries import record_audit

log = structlog.get_logger(__name__)


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.stowage
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    with state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def refuse(state: AppState, request: Request, *, status: int, actor: str, reason: str) -> None:
    """Audit a refusal (best effort: a database outage must not turn 401 into 500).
    Unauthenticated refusals are aggregated: one row per source and reason a minute."""
    state.metrics.denied.labels(status=str(status)).inc()
    if status == 401:
        source = request.client.host if request.client else "unknown"
        repeats = state.refusals.admit((source, reason), int(state.clock().timestamp() // 60))
        if repeats is None:
            return
        actor = f"{actor} from {source}"
        if repeats:
            reason = f"{reason} ({repeats} more from {source} in its previous minute)"
    try:
        with state.sessions.begin() as session:
            record_audit(
                session,
                at=state.clock(),
                actor=actor,
                verb=request.method,
                obj=request.url.path,
                reason=reason,
                outcome=f"denied:{status}",
            )
    except SQLAlchemyError as error:
        log.warning("audit_write_failed", error=type(error).__name__)
    log.info("request_denied", status=status, actor=actor, path=request.url.path, reason=reason)


#: Reads the bearer token and declares the scheme in the OpenAPI document (the Authorize
#: button in /docs); it never refuses by itself, so a missing token is audited like a bad one.
BEARER: Final = HTTPBearer(auto_error=False, description="An agent, reader or admin token.")


def require(*roles: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting callers with one of ``roles`` (admins always)."""
    allowed = {*roles, Role.ADMIN}

    async def dependency(
        request: Request,
        state: StateDep,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
    ) -> Principal:
        # async, so that an admitted request costs no hop to a worker thread; what may
        # block (a TokenReview, an audit write) runs in one
        authenticator = state.authenticator
        if authenticator is None:
            return Principal(subject="anonymous", role=Role.ADMIN)
        token = bearer.credentials.strip() if bearer is not None else ""
        if not token:
            principal = None
        elif authenticator.blocking:
            principal = await run_in_threadpool(authenticator.authenticate, token)
        else:
            principal = authenticator.authenticate(token)
        if principal is None:
            header = request.headers.get("Authorization", "")
            reason = "no bearer token" if not header else "invalid bearer token"
            await run_in_threadpool(
                refuse, state, request, status=401, actor="anonymous", reason=reason
            )
            raise HTTPException(401, reason, headers={"WWW-Authenticate": "Bearer"})
        if principal.role not in allowed:
            reason = f"role {principal.role.value} may not {request.method} {request.url.path}"
            await run_in_threadpool(
                refuse, state, request, status=403, actor=principal.subject, reason=reason
            )
            raise HTTPException(403, reason)
        return principal

    return dependency


Reader = Annotated[Principal, Depends(require(Role.READER))]
AgentOrAdmin = Annotated[Principal, Depends(require(Role.AGENT))]

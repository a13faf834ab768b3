"""Where the controller records what it did (or, in dry-run, would have done) and why."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from optimizer.store.queries import record_audit

#: The actor name on the controller's audit entries.
CONTROLLER: str = "stowage-controller"


class Audit(Protocol):
    """Records one action on the cluster."""

    def __call__(
        self, *, verb: str, obj: str, reason: str, outcome: str, plan_id: str | None = None
    ) -> None: ...


class StoreAudit:
    """Appends each entry to the audit log table in its own transaction.

    Args:
        engine: the optimizer's database.
        actor: who acts (the controller's identity, e.g. its pod name).
        clock: the current time (injectable for tests).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        actor: str = CONTROLLER,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._actor = actor
        self._clock = clock

    def __call__(
        self, *, verb: str, obj: str, reason: str, outcome: str, plan_id: str | None = None
    ) -> None:
        with Session(self._engine) as session, session.begin():
            record_audit(
                session,
                at=self._clock(),
                actor=self._actor,
                verb=verb,
                obj=obj,
                reason=reason,
                outcome=outcome,
                plan_id=plan_id,
            )

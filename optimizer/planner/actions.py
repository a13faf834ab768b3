"""Actions: the steps of a cycle, each ``execute(session) -> decisions`` (Volcano's actions).

``allocate`` places every job in order (priority, then age), whole or not at all, on the
nodes the filters allow; what it cannot place is left in ``session.unplaced`` with the
reason. ``preempt`` then looks, for each unplaced managed job, for lower-priority gangs whose
eviction would make room, trying them on a statement it discards: evicted pods free their
room only once they are gone, so the job is placed by a later cycle. The next issues add
``backfill``, ``reclaim`` and ``defragment`` here, registered by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np

from optimizer.planner.filters import resource_shortfalls, summarise
from optimizer.planner.framework import Registry
from optimizer.planner.gangs import GangRequest, place_gang
from optimizer.planner.objects import PodInfo
from optimizer.planner.plan import (
    FILTERED,
    NO_ROOM,
    PREEMPTING,
    UNSUPPORTED,
    Admit,
    Evict,
    Job,
    PodPlacement,
    Wait,
)
from optimizer.planner.policies import Placement
from optimizer.planner.session import Masks, Session

Decision = Admit | Evict


class Action(Protocol):
    @property
    def name(self) -> str: ...

    def execute(self, session: Session) -> list[Decision]: ...


ACTIONS: Final[Registry[Action]] = Registry("action")


def job_order(job: Job) -> tuple[int, str, str, str]:
    """Higher priority first, then the oldest, then by name (kube-scheduler's queue order)."""
    return (-job.priority, job.created, job.namespace, job.name)


def _members(job: Job) -> list[PodInfo]:
    """The members to place, largest first (they are the hardest to fit), then by name; an
    elastic job never gets more than its maximum, counting members already released."""
    members = sorted(
        job.pending,
        key=lambda p: (
            -p.request.num_gpu,
            -p.request.gpu_milli,
            -p.request.cpu_milli,
            -p.request.memory_mib,
            p.name,
        ),
    )
    if job.max_size is not None:
        members = members[: max(job.max_size - job.released, 0)]
    return members


def place_job(session: Session, job: Job, *, commit: bool = True) -> Admit | Wait:
    """Place ``job`` on the session whole, or say why not. With ``commit`` the placement is
    kept in the session; without, it is only tried (for preemption's trials)."""
    if job.managed:
        unsupported = sorted({u for p in job.pending for u in p.unsupported})
        if unsupported:
            return Wait(
                job,
                f"the planner does not model {', '.join(unsupported)} yet, so it does not "
                "place this gang (kube-scheduler might refuse the pin)",
                UNSUPPORTED,
            )
    members = _members(job)
    if len(members) < job.size:
        return Wait(job, f"waiting for members: {len(members)} of {job.size} to place", NO_ROOM)
    preferred = any(m.preferred_terms for m in members)
    last: Wait | None = None
    for only_preferred in (True, False) if preferred else (False,):
        masks = session.install_masks(job, members, preferred=only_preferred)
        try:
            outcome = _place(session, job, members, masks, commit=commit)
        finally:
            session.remove_masks(masks)
        if isinstance(outcome, Admit):
            return outcome
        last = outcome
    assert last is not None
    return last


def _place(
    session: Session, job: Job, members: Sequence[PodInfo], masks: Masks, *, commit: bool
) -> Admit | Wait:
    state = session.state
    total = len(state.names)
    if masks.usable == 0:
        return Wait(job, summarise(total, masks.reasons), FILTERED)
    requests = masks.requests
    count = len(members)
    if count == 1 and job.size == 1 and job.topology_level is None:
        placement = session.policy(state, requests[0], session.ctx)
        placements: tuple[Placement, ...] = () if placement is None else (placement,)
        domain, reason = None, ""
    else:
        gang = GangRequest(
            job.name,
            requests[0],
            size=job.size,
            topology_level=job.topology_level,
            required=job.required,
            max_size=count if count > job.size else None,
            members=tuple(requests),
        )
        try:
            decision = place_gang(
                state,
                gang,
                policy=session.policy,
                ctx=session.ctx,
                domains=session.snapshot.base.domains,
            )
        except ValueError as error:  # e.g. a topology level no node is labelled with
            return Wait(job, str(error), FILTERED)
        placements, domain, reason = decision.placements, decision.domain, decision.reason or ""
    if not placements:
        if count == 1 or masks.reasons:
            usable = state.masks.get(requests[0].mask_key)
            pool = state if usable is None else state.subset(np.flatnonzero(usable))
            summary = summarise(total, masks.reasons + resource_shortfalls(pool, requests[0]))
            reason = summary if count == 1 else f"{reason}; {summary}"
        return Wait(job, reason or "no room", NO_ROOM)
    statement = session.statement()
    try:
        for placement, request, info in zip(placements, requests, members, strict=False):
            statement.allocate(placement.node, placement.gpus, request, info)
    except ValueError as error:  # the policy and the state disagree: never half a gang
        statement.discard()
        return Wait(job, f"internal planner error, nothing placed: {error}", NO_ROOM)
    if commit:
        statement.commit()
    else:
        statement.discard()
    pods = tuple(
        PodPlacement(info.name, info.uid, state.names[p.node], p.gpus, request)
        for p, request, info in zip(placements, requests, members, strict=False)
    )
    return Admit(job, pods, domain)


@dataclass(frozen=True)
class Allocate:
    """Place every job in order; the ones that do not fit wait in ``session.unplaced``."""

    name: str = "allocate"

    def execute(self, session: Session) -> list[Decision]:
        decisions: list[Decision] = []
        for job in sorted(session.snapshot.jobs, key=job_order):
            outcome = place_job(session, job)
            if isinstance(outcome, Admit):
                decisions.append(outcome)
            else:
                session.unplaced[job.key] = outcome
        return decisions


@dataclass(frozen=True)
class Preempt:
    """For each unplaced managed job: the fewest lowest-priority whole gangs (lowest
    priority, then newest, first) whose eviction lets it fit. Gangs with a member marked
    non-preemptible, or of the same or higher priority, are never victims."""

    name: str = "preempt"

    def execute(self, session: Session) -> list[Decision]:
        decisions: list[Decision] = []
        for key, wait in list(session.unplaced.items()):
            job = wait.job
            if not job.managed or wait.code in (FILTERED, UNSUPPORTED):
                continue
            outcome = self._for(session, job, wait)
            if outcome is None:
                continue
            new_wait, evictions = outcome
            session.unplaced[key] = new_wait
            decisions.extend(evictions)
        return decisions

    def _for(self, session: Session, job: Job, wait: Wait) -> tuple[Wait, list[Evict]] | None:
        head = wait.reason.rstrip(".")  # kube-scheduler's sentence ends with a full stop
        bound = session.snapshot.bound
        held = session.snapshot.base.held
        going = [
            i
            for i, b in enumerate(bound)
            if b.terminating and held[i] is not None and i not in session.evicted
        ]
        groups: dict[tuple[str, str], list[int]] = {}
        for i, b in enumerate(bound):
            if b.gang is not None and b.gang != job.key and held[i] is not None:
                groups.setdefault(b.gang, []).append(i)
        eligible = [
            (gang, rows)
            for gang, rows in groups.items()
            if not any(i in session.evicted for i in rows)
            and not all(bound[i].terminating for i in rows)
            and all(bound[i].info.preemptible for i in rows)
            and max(bound[i].info.priority for i in rows) < job.priority
        ]
        statement = session.statement()
        try:
            for i in going:
                statement.evict(i)
            if going and isinstance(place_job(session, job, commit=False), Admit):
                return (
                    Wait(
                        job,
                        f"{head}; waiting for {len(going)} terminating pod(s) to go",
                        PREEMPTING,
                    ),
                    [],
                )
            if not eligible:
                return None
            newest = {g: max(bound[i].info.created for i in rows) for g, rows in eligible}
            eligible.sort(key=lambda item: newest[item[0]], reverse=True)
            eligible.sort(key=lambda item: max(bound[i].info.priority for i in item[1]))
            chosen: list[tuple[tuple[str, str], list[int]]] = []
            for gang, rows in eligible:
                for i in rows:
                    statement.evict(i)
                chosen.append((gang, rows))
                if isinstance(place_job(session, job, commit=False), Admit):
                    break
            else:
                return (
                    Wait(
                        job,
                        f"{head}; preempting every lower-priority gang "
                        f"({len(eligible)}) would not make room",
                        wait.code,
                    ),
                    [],
                )
        finally:
            statement.discard()
        names = ", ".join(f"{g[0]}/{g[1]}" for g, _ in chosen)
        why = (
            f"preempted by gang {job.label} (priority {job.priority}), which needs "
            f"{job.size} pods and cannot fit otherwise"
        )
        evictions = [
            Evict(bound[i].info.namespace, bound[i].info.name, bound[i].info.uid, why, job.key, g)
            for g, rows in chosen
            for i in sorted(rows, key=lambda i: bound[i].info.name)
        ]
        for _, rows in chosen:
            session.evicted.update(rows)
        reason = f"{head}; preempting {len(chosen)} lower-priority gang(s): {names}"
        return Wait(job, reason, PREEMPTING), evictions


for _action in (Allocate(), Preempt()):
    ACTIONS.register(_action.name, _action)

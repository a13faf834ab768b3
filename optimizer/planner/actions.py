"""Actions: the steps of a cycle, each ``execute(session) -> decisions`` (Volcano's actions).

``allocate`` serves the queues in fair-share order, each in its ordering, and places every
job whole or not at all, within its queue's quota, on the nodes the filters allow; what it
cannot place is left in ``session.unplaced`` with the reason. ``backfill`` runs jobs behind
a queue's stopped head where the head's reservation holds (EASY). The actions that evict,
``reclaim`` and ``preempt``, are in :mod:`optimizer.planner.eviction`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final, Protocol

import numpy as np

from optimizer.planner.cluster import PodRequest
from optimizer.planner.filters import resource_shortfalls, summarise
from optimizer.planner.framework import Registry
from optimizer.planner.gangs import GangRequest, place_gang
from optimizer.planner.objects import PodInfo
from optimizer.planner.ordering import KeyFunction, SortKey
from optimizer.planner.plan import (
    FILTERED,
    NO_QUEUE,
    NO_ROOM,
    QUOTA,
    RESERVED,
    UNSUPPORTED,
    Admit,
    Evict,
    Job,
    PodPlacement,
    Wait,
)
from optimizer.planner.policies import Placement
from optimizer.planner.queues import demand, placed_demand
from optimizer.planner.session import Masks, Session

Decision = Admit | Evict


class Action(Protocol):
    @property
    def name(self) -> str: ...

    def execute(self, session: Session) -> list[Decision]: ...


ACTIONS: Final[Registry[Action]] = Registry("action")


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


#: Called with each member's request and node row while a job's placement is applied, before
#: it is kept: (wait code, reason) to refuse it, or None.
Check = Callable[[Sequence[tuple[PodRequest, int]]], "tuple[str, str] | None"]


def place_job(
    session: Session, job: Job, *, commit: bool = True, check: Check | None = None
) -> Admit | Wait:
    """Place ``job`` on the session whole, or say why not. With ``commit`` the placement is
    kept in the session; without, it is only tried (for preemption's trials). ``check``
    may refuse a placement found (quota per GPU model, a backfill reservation)."""
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
            outcome = _place(session, job, members, masks, commit=commit, check=check)
        finally:
            session.remove_masks(masks)
        if isinstance(outcome, Admit):
            return outcome
        last = outcome
        if outcome.code in (QUOTA, RESERVED):
            break
    assert last is not None
    return last


def _place(
    session: Session,
    job: Job,
    members: Sequence[PodInfo],
    masks: Masks,
    *,
    commit: bool,
    check: Check | None,
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
    if check is not None:
        refused = check([(r, p.node) for p, r in zip(placements, requests, strict=False)])
        if refused is not None:
            statement.discard()
            return Wait(job, refused[1], refused[0])
    if commit:
        statement.commit()
    else:
        statement.discard()
    pods = tuple(
        PodPlacement(info.name, info.uid, state.names[p.node], p.gpus, request)
        for p, request, info in zip(placements, requests, members, strict=False)
    )
    return Admit(job, pods, domain)


def quota_check(session: Session, queue: str | None) -> Check | None:
    if queue is None:
        return None
    state = session.state

    def check(placed: Sequence[tuple[PodRequest, int]]) -> tuple[str, str] | None:
        used = placed_demand((r, state.models[state.model_id[row]]) for r, row in placed)
        refused = session.book.check(queue, used)
        return None if refused is None else (QUOTA, refused)

    return check


def _admitted(session: Session, admit: Admit, queue: str | None) -> None:
    if queue is not None:
        state = session.state
        session.book.add(
            queue,
            placed_demand(
                (p.request, state.models[state.model_id[session.row_of[p.node]]])
                for p in admit.pods
            ),
        )
    session.admitted.append(admit)


@dataclass
class _Line:
    """One queue's jobs in its order."""

    queue: str | None
    ordering: str
    jobs: list[tuple[SortKey, Job]]
    at: int = 0
    #: (head index, the queue's usage version) -> its share then: fair share asks every
    #: line each round, and a line's share changes only with its head or its usage.
    share: tuple[tuple[int, int], float] | None = None

    @property
    def head(self) -> tuple[SortKey, Job] | None:
        return self.jobs[self.at] if self.at < len(self.jobs) else None


def queue_lines(session: Session, jobs: Sequence[Job]) -> list[_Line]:
    """``jobs`` by queue, each line in its queue's order; a job naming a queue that does
    not exist waits in ``session.unplaced`` (Kueue: "LocalQueue doesn't exist")."""
    queues = session.snapshot.queues
    now = session.snapshot.now_s
    lines: dict[str | None, _Line] = {}
    keys: dict[str | None, KeyFunction] = {}
    for job in jobs:
        queue = session.queue_of(job)
        key = keys.get(queue)
        if key is None:
            if queue is not None and queue not in queues.specs:
                session.unplaced[job.key] = Wait(job, f"queue {queue} does not exist", NO_QUEUE)
                continue
            ordering = session.ordering_of(queue)
            key = keys[queue] = ordering.key
            lines[queue] = _Line(queue, ordering.name, [])
        lines[queue].jobs.append((key(job, job.gpus, now), job))
    for line in lines.values():
        line.jobs.sort(key=lambda item: item[0])
    return list(lines.values())


def _next_line(session: Session, lines: Sequence[_Line]) -> _Line | None:
    """Fair share: the line whose queue would have the lowest weighted dominant share of
    what it borrows once its head is admitted; ties to the best head when the lines share
    an ordering, then by name."""
    best: tuple[object, ...] | None = None
    chosen = None
    for line in lines:
        head = line.head
        if head is None:
            continue
        share = 0.0
        if line.queue is not None and len(lines) > 1:
            book = session.book
            stamp = (line.at, book.version.get(line.queue, 0))
            if line.share is None or line.share[0] != stamp:
                asked = demand(p.request for p in head[1].pending)
                line.share = (stamp, book.share(line.queue, asked))
            share = line.share[1]
        rank = (share, line.ordering, head[0], line.queue or "")
        if best is None or rank < best:
            best, chosen = rank, line
    return chosen


@dataclass(frozen=True)
class Allocate:
    """Serve the queues in fair-share order, each in its own order, placing each job whole
    or not at all; what does not fit waits in ``session.unplaced``. In a strict session a
    queue stops at its first job that does not fit (``backfill`` may then go around it)."""

    name: str = "allocate"

    def execute(self, session: Session) -> list[Decision]:
        decisions: list[Decision] = []
        failed: dict[tuple[object, ...], Wait] = {}
        lines = queue_lines(session, session.snapshot.jobs)
        while (line := _next_line(session, lines)) is not None:
            _, job = line.jobs[line.at]
            line.at += 1
            outcome = _try(session, job, line.queue, failed)
            if isinstance(outcome, Admit):
                decisions.append(outcome)
                continue
            session.unplaced[job.key] = outcome
            if session.strict and outcome.code in (NO_ROOM, QUOTA):
                session.blocked[line.queue] = (job, line.jobs[line.at :])
                for _, behind in line.jobs[line.at :]:
                    session.unplaced[behind.key] = Wait(
                        behind, f"waiting behind {job.label} in its queue", NO_ROOM
                    )
                line.at = len(line.jobs)
        return decisions


def _try(
    session: Session,
    job: Job,
    queue: str | None,
    failed: dict[tuple[object, ...], Wait],
    check: Check | None = None,
) -> Admit | Wait:
    """Place ``job`` against its queue's quota (and ``check``), or say why not; ``failed``
    remembers shapes that did not fit, so a cycle tries each shape once."""
    shape = (job.shape, queue)  # a shape that failed stays failed: a cycle only allocates
    if shape in failed and check is None:
        known = failed[shape]
        return Wait(job, known.reason, known.code)
    if queue is not None:
        refused = session.book.check(queue, demand(p.request for p in _members(job)))
        if refused is not None:
            failed[shape] = Wait(job, refused, QUOTA)  # usage only grows in a cycle
            return failed[shape]
    quota = quota_check(session, queue)
    combined = quota
    if check is not None:

        def combined(placed: Sequence[tuple[PodRequest, int]]) -> tuple[str, str] | None:
            return (quota(placed) if quota is not None else None) or check(placed)

    outcome = place_job(session, job, check=combined)
    if isinstance(outcome, Admit):
        _admitted(session, outcome, queue)
    elif outcome.code != RESERVED:
        failed[shape] = outcome
    return outcome


@dataclass
class _Reservation:
    """A blocked head's earliest predicted start and what must have ended by then."""

    head: Job
    at_s: float
    bound: list[int]  # bound pods that end before ``at_s``
    admits: list[Admit]  # this cycle's admissions that end before ``at_s``


def _ends(session: Session) -> list[tuple[float, list[int], Admit | None]]:
    """Everything that holds capacity and has a predicted end, soonest first; pods already
    being evicted end now."""
    now = session.snapshot.now_s
    out: list[tuple[float, list[int], Admit | None]] = []
    for key, rows in session.gang_rows.items():
        if any(i in session.evicted for i in rows):
            out.append((now, rows, None))
            continue
        job = session.running.get(key)
        if job is not None and job.duration_s is not None:
            out.append((now + job.duration_s, rows, None))
    for admit in session.admitted:
        if admit.job.duration_s is not None:
            out.append((now + admit.job.duration_s, [], admit))
    out.sort(key=lambda item: item[0])
    return out


def _fits_after(session: Session, head: Job, bound: Sequence[int], admits: Sequence[Admit]) -> bool:
    """Whether ``head`` would fit once ``bound`` pods and ``admits`` have ended."""
    statement = session.statement()
    try:
        for i in bound:
            statement.evict(i)
        for admit in admits:
            for pod in admit.pods:
                statement.free(session.row_of[pod.node], pod.gpus, pod.request)
        return isinstance(place_job(session, head, commit=False), Admit)
    finally:
        statement.discard()


def reservation(session: Session, head: Job) -> _Reservation | None:
    """``head``'s earliest predicted start: the fewest soonest-ending holders whose end lets
    it fit (binary search: freeing more never makes it fit less); None when it would not
    fit even once everything with a predicted end has ended."""
    ends = _ends(session)

    def split(count: int) -> tuple[list[int], list[Admit]]:
        bound = [i for _, rows, admit in ends[:count] if admit is None for i in rows]
        admits = [admit for _, _, admit in ends[:count] if admit is not None]
        return bound, admits

    if not ends or not _fits_after(session, head, *split(len(ends))):
        return None
    low, high = 1, len(ends)
    while low < high:
        middle = (low + high) // 2
        if _fits_after(session, head, *split(middle)):
            high = middle
        else:
            low = middle + 1
    bound, admits = split(low)
    return _Reservation(head, ends[low - 1][0], bound, admits)


@dataclass(frozen=True)
class Backfill:
    """EASY backfilling behind the heads a strict ``allocate`` stopped at: each head gets a
    reservation at its earliest predicted start; a job behind it runs now only when it fits
    and every reservation still holds: it is predicted to end before the reservation, or
    the head still fits at its reservation with the job still running."""

    name: str = "backfill"

    def execute(self, session: Session) -> list[Decision]:
        if not session.blocked:
            return []
        now = session.snapshot.now_s
        reservations: list[_Reservation] = []
        for head, _ in session.blocked.values():
            booked = reservation(session, head)
            if booked is None:
                continue
            reservations.append(booked)
            wait = session.unplaced[head.key]
            session.unplaced[head.key] = replace(
                wait,
                reason=f"{wait.reason.rstrip('.')}; reserved to start in "
                f"{_span(booked.at_s - now)} (predicted)",
            )
        decisions: list[Decision] = []
        failed: dict[tuple[object, ...], Wait] = {}
        lines = [
            _Line(queue, session.ordering_of(queue).name, rest)
            for queue, (_, rest) in session.blocked.items()
        ]
        while (line := _next_line(session, lines)) is not None:
            _, job = line.jobs[line.at]
            line.at += 1
            ends_at = now + job.duration_s if job.duration_s is not None else math.inf
            check = _keeps(session, reservations, ends_at)
            outcome = _try(session, job, line.queue, failed, check)
            if isinstance(outcome, Admit):
                heads = ", ".join(r.head.label for r in reservations) or "none"
                outcome = replace(outcome, note=f"backfilled; reservations kept: {heads}")
                session.admitted[-1] = outcome
                session.unplaced.pop(job.key, None)
                decisions.append(outcome)
            elif outcome.code in (RESERVED, QUOTA, NO_ROOM):
                session.unplaced[job.key] = outcome
        return decisions


def _keeps(session: Session, reservations: Sequence[_Reservation], ends_at: float) -> Check:
    def check(placed: Sequence[tuple[PodRequest, int]]) -> tuple[str, str] | None:
        for booked in reservations:
            if ends_at <= booked.at_s:
                continue
            if not _fits_after(session, booked.head, booked.bound, booked.admits):
                return (
                    RESERVED,
                    f"would delay {booked.head.label}, which has room reserved from "
                    f"{_span(booked.at_s - session.snapshot.now_s)} from now",
                )
        return None

    return check


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7_200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3_600:.1f} h"


for _action in (Allocate(), Backfill()):
    ACTIONS.register(_action.name, _action)

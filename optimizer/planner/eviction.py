"""Eviction actions: ``preempt`` (within a queue) and ``reclaim`` (across queues).

Both look, for each job ``allocate`` left unplaced, for running work whose eviction lets it
fit, trying victims on a statement they then discard: evicted pods free their room only once
they are gone, so the job is placed by a later cycle (and, while the victims terminate, it
waits for them instead of choosing more).

Victims are whole gangs, the members an elastic gang has beyond its minimum (always taken
first: shrinking loses less than stopping), and pods of no gang at all. None that ran less
than its queue's minimum runtime, none with a member marked non-preemptible. Among the
rest: the lowest priority first, then (preemptive orderings) the furthest behind, then the
least work lost (GPU-seconds since start, or since the last checkpoint the job reported),
then the newest.

* ``preempt``: victims of lower priority in the job's queue (all queues, when it has
  none), or gangs its queue's preemptive ordering (``srtf-oracle``, ``tiresias-las``)
  ranks behind it.
* ``reclaim``: a job asking for no more than its queue's nominal quota takes back what
  other queues of its tree borrowed: victims of queues that use more than their own nominal
  quota, the most borrowing queue first, whatever their priority (Kueue's
  ``reclaimWithinCohort: Any``); a victim is taken only while its queue still borrows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from optimizer.planner.actions import ACTIONS, Check, Decision, place_job, quota_check
from optimizer.planner.ordering import Ordering, SortKey
from optimizer.planner.plan import (
    FILTERED,
    NO_QUEUE,
    NO_ROOM,
    PREEMPTING,
    QUOTA,
    UNSUPPORTED,
    Admit,
    Evict,
    Job,
    Wait,
)
from optimizer.planner.queues import GPU, ResourceKey, demand
from optimizer.planner.session import Session

#: Waits that evicting nothing can change.
_HOPELESS: Final = (FILTERED, UNSUPPORTED, NO_QUEUE, PREEMPTING)


@dataclass(frozen=True)
class Victim:
    """Pods that may be evicted together: a whole gang, an elastic gang's surplus, or one
    pod of no gang (``gang`` is then its namespace and name)."""

    gang: tuple[str, str]
    rows: list[int]
    queue: str | None
    priority: int
    key: SortKey | None  # its rank under its queue's ordering, when that is preemptive
    lost_gpu_s: float
    created: str
    #: The members an elastic gang has beyond its minimum (the gang keeps running).
    surplus: bool = False
    #: A pod of no gang.
    plain: bool = False

    @property
    def label(self) -> str:
        what = "the surplus of elastic gang" if self.surplus else "pod" if self.plain else "gang"
        return f"{what} {self.gang[0]}/{self.gang[1]}"


@dataclass
class Victims:
    """One cycle's possible victims, in the order they are taken, built once per cycle."""

    victims: list[Victim]
    going: list[int]  # terminating pods that still hold room
    lowest: dict[str | None, int]  # per queue: the lowest victim priority
    worst: dict[str | None, SortKey]  # per queue: the furthest-behind victim's rank
    #: The victims of each queue, in order (built on first use).
    by_queue: dict[str | None, list[Victim]] = field(default_factory=dict)

    @classmethod
    def of(cls, session: Session) -> Victims:
        bound = session.snapshot.bound
        held = session.snapshot.base.held
        now = session.snapshot.now_s
        specs = session.snapshot.queues.specs
        victims: list[Victim] = []
        orderings: dict[str | None, Ordering] = {}

        def gpus_of(rows: Sequence[int]) -> float:
            return max(sum(bound[i].info.request.gpu_request_milli for i in rows) / 1000, 1.0)

        for gang, rows in session.gang_rows.items():
            if len(rows) == 1:  # most gangs: one pod (no generator per attribute)
                pod = bound[rows[0]]
                if pod.terminating or not pod.info.preemptible:
                    continue
                pods = [pod]
                held_gpus = pod.info.request.gpu_request_milli / 1000
                priority, newest = pod.info.priority, pod.info.created
            else:
                pods = [bound[i] for i in rows]
                if all(b.terminating for b in pods) or not all(b.info.preemptible for b in pods):
                    continue
                held_gpus = sum(b.info.request.gpu_request_milli for b in pods) / 1000
                priority = max(b.info.priority for b in pods)
                newest = max(b.info.created for b in pods)
            queue = pods[0].queue
            running = session.running.get(gang)
            key: SortKey | None = None
            if running is not None:
                ordering = orderings.get(queue)
                if ordering is None:
                    ordering = orderings[queue] = session.ordering_of(queue)
                if ordering.preemptive:  # its rank by the GPUs its pods hold
                    key = ordering.key(running, held_gpus, now)
            ran = 0.0
            if running is not None and running.started_s is not None:
                spec = specs.get(queue or "")
                if spec is not None and now - running.started_s < spec.min_runtime_s:
                    continue
                saved = max(running.started_s, running.checkpoint_s or running.started_s)
                ran = max(now - saved, 0.0)
            if running is not None and running.min_size is not None:
                live = sorted((i for i in rows if not bound[i].terminating), key=_name_of(session))
                extra = live[running.min_size :]
                if extra:
                    victims.append(
                        Victim(
                            gang,
                            extra,
                            queue,
                            priority,
                            key,
                            ran * gpus_of(extra),
                            newest,
                            surplus=True,
                        )
                    )
            lost = ran * max(held_gpus, 1.0)
            victims.append(Victim(gang, rows, queue, priority, key, lost, newest))
        for i, pod in enumerate(bound):
            if not pod.plain or pod.terminating or held[i] is None or not pod.info.preemptible:
                continue
            started = pod.created_s
            ran = max(now - started, 0.0) if started is not None else 0.0
            spec = specs.get(pod.queue or "")
            if spec is not None and started is not None and ran < spec.min_runtime_s:
                continue
            name = (pod.info.namespace, pod.info.name)
            victims.append(
                Victim(
                    name,
                    [i],
                    pod.queue,
                    pod.info.priority,
                    None,
                    ran * gpus_of([i]),
                    pod.info.created,
                    plain=True,
                )
            )
        victims.sort(key=lambda v: v.created, reverse=True)
        victims.sort(key=lambda v: v.lost_gpu_s)
        victims.sort(key=lambda v: v.key or (), reverse=True)
        victims.sort(key=lambda v: v.priority)
        victims.sort(key=lambda v: not v.surplus)
        lowest: dict[str | None, int] = {}
        worst: dict[str | None, SortKey] = {}
        for v in victims:
            lowest[v.queue] = min(lowest.get(v.queue, v.priority), v.priority)
            if v.key is not None and (v.queue not in worst or v.key > worst[v.queue]):
                worst[v.queue] = v.key
        going = [
            i
            for i, b in enumerate(bound)
            if b.terminating and held[i] is not None and i not in session.evicted
        ]
        return cls(victims, going, lowest, worst)

    def for_preemption(
        self, session: Session, job: Job, queue: str | None, job_key: SortKey | None
    ) -> list[Victim]:
        """Whom ``job`` (of ``queue``) may preempt: lower priority, or ranked behind it by a
        preemptive ordering (``job_key``: its rank there; None: the ordering is not
        preemptive); of its own queue when it has one; not already going."""
        if queue is not None:
            lower = self.lowest.get(queue, job.priority) < job.priority
            behind = job_key is not None and queue in self.worst and self.worst[queue] > job_key
            if not lower and not behind:
                return []
        out = []
        for v in self.victims:
            if v.gang == job.key or (queue is not None and v.queue != queue):
                continue
            if any(i in session.evicted for i in v.rows):
                continue
            if v.priority < job.priority or (
                job_key is not None
                and v.priority == job.priority
                and v.key is not None
                and v.key > job_key
            ):
                out.append(v)
        return out

    def for_reclaim(
        self, session: Session, job: Job, queue: str, keys: Sequence[ResourceKey]
    ) -> list[Victim]:
        """What ``job`` may take back: victims of the other queues of its tree that borrow
        some of ``keys`` now, the queues that borrow the most first (each queue's victims in
        the usual order)."""
        queues = session.snapshot.queues
        root = queues.path[queue][-1]
        book = session.book
        if not self.by_queue:
            for v in self.victims:
                self.by_queue.setdefault(v.queue, []).append(v)
        lenders = [
            name
            for name in queues.specs
            if name != queue
            and name in self.by_queue
            and queues.path[name][-1] == root
            and any(book.borrowed(name, k) > 0 for k in keys)
        ]
        lenders.sort(key=lambda name: -book.share(name))
        return [v for name in lenders for v in self.by_queue[name] if v.gang != job.key]


def _name_of(session: Session) -> Callable[[int], str]:
    bound = session.snapshot.bound
    return lambda i: bound[i].info.name


def _job_demand(job: Job) -> dict[ResourceKey, int]:
    members = sorted(job.pending, key=lambda p: -p.request.gpu_request_milli)[: job.size]
    return demand(p.request for p in members)


def _make_room(
    session: Session,
    job: Job,
    wait: Wait,
    victims: Victims,
    eligible: Sequence[Victim],
    *,
    check: Check | None = None,
    keep: Callable[[Victim], bool] | None = None,
) -> tuple[Wait, list[Victim]] | None:
    """Evict the first of ``eligible`` (those ``keep`` allows at the time) until ``job``
    fits, on a statement that is discarded. Returns the wait with the victims chosen (none:
    it waits for terminating pods), or None when nothing evictable would make room."""
    head = wait.reason.rstrip(".")  # kube-scheduler's sentence ends with a full stop
    bound = session.snapshot.bound
    going = [i for i in victims.going if i not in session.evicted]
    if not going and not eligible:
        return None
    gpus = _job_demand(job)[(GPU, "")]
    statement = session.statement()
    taken: list[tuple[str, dict[ResourceKey, int]]] = []  # quota given back on trial
    try:
        for i in going:
            statement.evict(i)
        if going and isinstance(place_job(session, job, commit=False, check=check), Admit):
            why = f"{head}; waiting for {len(going)} terminating pod(s) to go"
            return Wait(job, why, PREEMPTING), []
        chosen: list[Victim] = []
        evicted = session.evicted
        tried: set[int] = set()  # rows this trial evicted (a surplus, then its whole gang)
        for victim in eligible:
            if any(i in evicted for i in victim.rows):
                continue  # another job's victim already
            if keep is not None and not keep(victim):
                continue
            fresh = [i for i in victim.rows if i not in tried]
            tried.update(fresh)
            for i in fresh:
                statement.evict(i)
            if victim.queue is not None and victim.queue in session.snapshot.queues.specs:
                amounts = demand(bound[i].info.request for i in fresh)
                session.book.add(victim.queue, amounts, sign=-1)
                taken.append((victim.queue, amounts))
            chosen.append(victim)
            if int(session.state.gpu_free.sum()) < gpus:
                continue  # not enough GPUs free anywhere yet: no need to try
            if isinstance(place_job(session, job, commit=False, check=check), Admit):
                whole = {v.gang for v in chosen if not v.surplus}
                return wait, [v for v in chosen if not (v.surplus and v.gang in whole)]
        if not chosen:
            return None
        why = f"{head}; evicting every victim it may ({len(chosen)}) would not make room"
        return Wait(job, why, wait.code), []
    finally:
        statement.discard()
        for queue, amounts in taken:
            session.book.add(queue, amounts)


def _evictions(
    session: Session, job: Job, chosen: Sequence[Victim], why: str, *, action: str
) -> list[Evict]:
    bound = session.snapshot.bound
    for v in chosen:
        session.evicted.update(v.rows)
    return [
        Evict(
            bound[i].info.namespace,
            bound[i].info.name,
            bound[i].info.uid,
            why,
            job.key,
            v.gang,
            action,
        )
        for v in chosen
        for i in sorted(v.rows, key=_name_of(session))
    ]


def _names(chosen: Sequence[Victim]) -> tuple[str, str]:
    """(``gang(s)`` or ``victim(s)``, their names) for a wait's reason."""
    if not any(v.surplus or v.plain for v in chosen):
        return "gang(s)", ", ".join(f"{v.gang[0]}/{v.gang[1]}" for v in chosen)
    return "victim(s)", ", ".join(v.label for v in chosen)


@dataclass(frozen=True)
class Preempt:
    """For each unplaced managed job: the fewest victims of its queue, of lower priority
    or ranked behind it by a preemptive ordering, whose eviction lets it fit."""

    name: str = "preempt"

    def execute(self, session: Session) -> list[Decision]:
        decisions: list[Decision] = []
        victims: Victims | None = None
        #: (shape, queue, priority) -> (order key, label, wait) of a job that found no
        #: room (wait None: nothing it could evict): a later job of that shape ranked no
        #: better may only take a subset of its victims, of which fewer remain (others'
        #: victims are taken), so it finds none either.
        hopeless: dict[tuple[object, ...], tuple[SortKey | None, str, Wait | None]] = {}
        for key, wait in list(session.unplaced.items()):
            job = wait.job
            if not job.managed or wait.code in _HOPELESS:
                continue
            queue = session.queue_of(job)
            ordering = session.ordering_of(queue)
            rank = session.order_key(job, queue) if ordering.preemptive else None
            memo = (job.shape, queue, job.priority)
            known = hopeless.get(memo) if key not in session.running else None
            if known is not None and (rank is None or (known[0] is not None and known[0] <= rank)):
                if known[2] is not None:
                    head = wait.reason.rstrip(".")
                    why = (
                        f"{head}; evicting every victim it may would not make room (nor "
                        f"for {known[1]}, of its shape and ahead of it)"
                    )
                    session.unplaced[key] = Wait(job, why, wait.code)
                continue
            if victims is None:
                victims = Victims.of(session)
            eligible = victims.for_preemption(session, job, queue, rank)
            found = _make_room(session, job, wait, victims, eligible)
            failed = found is None or (not found[1] and found[0].code != PREEMPTING)
            if failed and key not in session.running:
                hopeless.setdefault(memo, (rank, job.label, None if found is None else found[0]))
            if found is None:
                continue
            new_wait, chosen = found
            if chosen:
                ahead = all(v.priority < job.priority for v in chosen)
                by_rank = "" if ahead else f" or ranks ahead of them by {ordering.name}"
                why = (
                    f"preempted by gang {job.label} (priority {job.priority}{by_rank}), which "
                    f"needs {job.size} pods and cannot fit otherwise"
                )
                decisions.extend(_evictions(session, job, chosen, why, action="preempt"))
                what, names = _names(chosen)
                what = f"lower-priority {what}" if ahead else what
                head = wait.reason.rstrip(".")
                new_wait = Wait(
                    job, f"{head}; preempting {len(chosen)} {what}: {names}", PREEMPTING
                )
            session.unplaced[key] = new_wait
        return decisions


@dataclass(frozen=True)
class Reclaim:
    """For each unplaced managed job within its queue's nominal quota: take back what other
    queues of its tree borrowed, until it fits."""

    name: str = "reclaim"

    def execute(self, session: Session) -> list[Decision]:
        queues = session.snapshot.queues
        if not queues:
            return []
        decisions: list[Decision] = []
        victims: Victims | None = None
        book = session.book
        for key, wait in list(session.unplaced.items()):
            job = wait.job
            queue = session.queue_of(job)
            if not job.managed or wait.code not in (NO_ROOM, QUOTA) or queue not in queues.specs:
                continue
            need = _job_demand(job)
            nominal = queues.nominal[queue]
            limited = queues.limited[queues.path[queue][-1]]
            asked = {k: a for k, a in need.items() if a > 0 and k in limited}
            beyond = any(book.used(queue, k) + a > nominal.get(k, 0) for k, a in asked.items())
            if not asked or beyond:
                continue  # beyond its guarantee: it may only borrow, not reclaim
            if victims is None:
                victims = Victims.of(session)

            def borrows(victim: Victim, keys: Sequence[ResourceKey] = tuple(asked)) -> bool:
                return any(book.borrowed(victim.queue or "", k) > 0 for k in keys)

            found = _make_room(
                session,
                job,
                wait,
                victims,
                victims.for_reclaim(session, job, queue, tuple(asked)),
                check=quota_check(session, queue),
                keep=borrows,
            )
            if found is None:
                continue
            new_wait, chosen = found
            if chosen:
                lenders = sorted({v.queue or "" for v in chosen})
                why = (
                    f"reclaimed by queue {queue} for gang {job.label}: queue(s) "
                    f"{', '.join(lenders)} borrowed beyond their nominal quota"
                )
                decisions.extend(_evictions(session, job, chosen, why, action="reclaim"))
                head = wait.reason.rstrip(".")
                new_wait = Wait(
                    job,
                    f"{head}; reclaiming queue {queue}'s quota from "
                    f"{', '.join(lenders)}: {_names(chosen)[1]}",
                    PREEMPTING,
                )
            session.unplaced[key] = new_wait
        return decisions


for _action in (Preempt(), Reclaim()):
    ACTIONS.register(_action.name, _action)

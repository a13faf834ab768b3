"""Commit: carry out a cycle's Plan on the cluster, in crash-safe steps, audited.

For each admission: the **intent** is written to the database, then a required
``kubernetes.io/hostname`` affinity is added to **every** pod (intersected with the pod's
own affinity: Kubernetes lets a gated pod's affinity be narrowed, never widened), then
**every** gate is removed, then the intent is closed. A crash between any two steps leaves an
intent the next leader completes (:meth:`Committer.complete`), so no gang is ever partly
released and no pod placed twice; a pod deleted mid-admission is replaced, in the intent, by
its recreated twin.

Evictions go through the Eviction API: a victim already gone (404) is fine; a
PodDisruptionBudget's 429 stops that preemption and the plan is redone next cycle. Waits
become Events (only when the reason changes) and gang status; a gang past its timeout gets
``GangTimeout`` and a backoff kept in the database, so a new leader honours it. In dry-run
the plan is explained and audited and nothing in the cluster changes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import structlog
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from optimizer.controller.audit import Audit
from optimizer.controller.errors import SpecError
from optimizer.controller.kube import (
    POD_GROUP_GROUP,
    POD_GROUP_VERSION,
    ConflictError,
    KubeApi,
    KubeError,
    NotFoundError,
)
from optimizer.controller.observe import GangView, Observed, api_seconds, finished
from optimizer.controller.pods import (
    GangSpec,
    declared_gang,
    is_gated,
    pin_patch,
    pinned_node,
    pod_request,
    ungate_patch,
)
from optimizer.planner.plan import Admit, Evict, Invalid, Plan
from optimizer.store.models import GangIntent, GangStatus, JobRun

log = structlog.get_logger(__name__)

ADMITTING: Final = "admitting"
ADMITTED: Final = "admitted"
WAITING: Final = "waiting"
TIMED_OUT: Final = "timed-out"
INVALID: Final = "invalid"
WOULD_ADMIT: Final = "would-admit"  # dry-run
RUNNING: Final = "running"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
FIRST_BACKOFF: Final = timedelta(seconds=60)
MAX_BACKOFF: Final = timedelta(minutes=10)


@dataclass(frozen=True)
class Outcome:
    """What a cycle decided for one gang."""

    namespace: str
    gang: str
    phase: str
    message: str
    placement: Mapping[str, str] = field(default_factory=dict)  # pod -> node


class Committer:
    """Carries out plans.

    Args:
        api: the Kubernetes adapter.
        engine: the database (intents, gang status).
        audit: the audit log.
        dry_run: explain and audit, change nothing in the cluster.
        clock: the current time.
    """

    def __init__(
        self,
        api: KubeApi,
        engine: Engine,
        audit: Audit,
        *,
        dry_run: bool,
        clock: Callable[[], datetime],
    ) -> None:
        self._api = api
        self._engine = engine
        self._audit = audit
        self._dry_run = dry_run
        self._clock = clock
        self._told: set[tuple[Any, str]] = set()  # (object uid or gang key, message) said
        self._groups: Mapping[tuple[str, str], Mapping[str, Any]] = {}

    # -- a plan ---------------------------------------------------------------------------

    def apply(
        self, plan: Plan, observed: Observed, statuses: Mapping[tuple[str, str], GangStatus]
    ) -> list[Outcome]:
        """Carry out ``plan``; one outcome per managed gang it concerns."""
        now = self._clock()
        self._groups = observed.groups
        outcomes = [o for o in (self._invalid(i) for i in plan.invalid) if o]
        refused = self._evict(plan.evict, plan.cycle_id)
        for admit in plan.admit:
            outcomes.append(self._admit(admit, observed, now))
        for wait in plan.wait:
            reason = wait.reason
            if wait.job.key in refused:
                head = reason.split("; preempting", 1)[0]
                reason = f"{head}; {refused[wait.job.key]}"
            view = observed.gangs[wait.job.key]
            outcomes.append(self._wait(view, reason, now, statuses.get(wait.job.key)))
        for key, message in observed.skipped.items():
            view = observed.gangs[key]
            status = statuses.get(key)
            if status is not None and status.phase == TIMED_OUT and status.retry_at:
                outcomes.append(Outcome(key[0], key[1], TIMED_OUT, status.message))
            else:
                outcomes.append(self._wait(view, message, now, status))
        planned = {a.job.key for a in plan.admit} | {w.job.key for w in plan.wait}
        for key, view in observed.gangs.items():
            if key not in planned and key not in observed.skipped and not view.gated:
                outcomes.append(self._follow(view, statuses.get(key), now))
        return outcomes

    # -- invalid objects -------------------------------------------------------------------

    def _invalid(self, invalid: Invalid) -> Outcome | None:
        """Explain a left-out object once per reason: an ``InvalidGang`` event and an outcome
        for a pod Stowage was to place, an ``InvalidPod`` event for another pod (its
        request is not counted), a log line for the rest."""
        outcome = (
            Outcome(invalid.namespace, invalid.name, INVALID, invalid.reason)
            if invalid.managed
            else None
        )
        if (invalid.uid or invalid.name, invalid.reason) in self._told:
            return outcome
        self._told.add((invalid.uid or invalid.name, invalid.reason))
        log.warning(
            "object left out of the cycle",
            kind=invalid.kind,
            name=invalid.name,
            namespace=invalid.namespace,
            reason=invalid.reason,
        )
        if invalid.kind == "Pod":
            involved = {
                "metadata": {
                    "name": invalid.name,
                    "namespace": invalid.namespace,
                    "uid": invalid.uid or None,
                }
            }
            reason = "InvalidGang" if invalid.managed else "InvalidPod"
            message = (
                invalid.reason
                if invalid.managed
                else (
                    f"Stowage cannot read this pod, so its request is not counted: {invalid.reason}"
                )
            )
            self._event(involved, reason, message, kind="Warning")
        return outcome

    # -- admissions -----------------------------------------------------------------------

    def _admit(self, admit: Admit, observed: Observed, now: datetime) -> Outcome:
        job = admit.job
        view = observed.gangs[job.key]
        message = admit.message()
        where = {p.name: p.node for p in admit.pods}
        plan_id = uuid.uuid4().hex
        if self._dry_run:
            self._audit_admission(view.spec, message, outcome="dry-run", plan_id=plan_id)
            self._set_status(view, WOULD_ADMIT, f"dry-run: would have {message}", now, plan_id)
            return Outcome(job.namespace, job.name, WOULD_ADMIT, message, where)
        slots = [
            {
                "name": p.name,
                "uid": p.uid,
                "node": p.node,
                "gpus": list(p.gpus),
                "request": [
                    p.request.cpu_milli,
                    p.request.memory_mib,
                    p.request.num_gpu,
                    p.request.gpu_milli,
                ],
                "extra": [list(e) for e in p.request.extra],
            }
            for p in admit.pods
        ]
        self._write_intent(view.spec, plan_id, slots, admit.domain, now)
        self._audit_admission(view.spec, message, outcome="applied", plan_id=plan_id)
        self.complete(plan_id, observed.pods)
        self._set_status(view, ADMITTED, message, now, plan_id, placement=where)
        for pod in view.gated:
            if pod["metadata"]["name"] in where:
                self._event(pod, "GangAdmitted", message)
        self._group_event(view.spec, "GangAdmitted", message)
        return Outcome(job.namespace, job.name, ADMITTED, message, where)

    def recover(self, pods_by_uid: Mapping[str, dict[str, Any]]) -> None:
        """Finish every admission a previous leader recorded but did not complete."""
        for intent in self.open_intents():
            log.info("finishing an earlier admission", plan_id=intent.plan_id, gang=intent.gang)
            self.complete(intent.plan_id, pods_by_uid)

    def complete(self, plan_id: str, pods_by_uid: Mapping[str, dict[str, Any]]) -> None:
        """Pin every slot's pod, then release every gate, then close the intent. Idempotent:
        each step skips what is already done, so it resumes after a crash anywhere."""
        with Session(self._engine) as session:
            intent = session.get(GangIntent, plan_id)
            if intent is None or intent.state != ADMITTING:
                return
            slots = [dict(s) for s in intent.placements["pods"]]
            namespace, gang = intent.namespace, intent.gang
        pods = dict(pods_by_uid)
        taken = {s["uid"] for s in slots}
        twins = [
            p
            for p in pods.values()
            if p["metadata"].get("namespace") == namespace
            and declared_gang(p) == gang
            and is_gated(p)
            and pinned_node(p) is None
            and p["metadata"]["uid"] not in taken
            and not finished(p)
        ]
        changed = False
        for slot in slots:
            if slot["uid"] in pods:
                continue
            if not twins:
                log.info("intent waits for a recreated pod", plan_id=plan_id, slot=slot["name"])
                continue
            twin = twins.pop(0)
            log.info("recreated pod takes a slot", plan_id=plan_id, pod=twin["metadata"]["name"])
            slot.update(name=twin["metadata"]["name"], uid=twin["metadata"]["uid"])
            changed = True
        if changed:
            self._update_intent(plan_id, slots)
        members = [pods[s["uid"]] for s in slots if s["uid"] in pods]
        for slot in slots:  # step 1: pin all
            pod = pods.get(slot["uid"])
            if pod is None or not is_gated(pod) or pinned_node(pod) == slot["node"]:
                continue
            pods[slot["uid"]] = self._patch(pod, plan_id, node=slot["node"])
        if len(members) < len(slots):
            return  # a slot still waits for its pod: release nothing yet
        for slot in slots:  # step 2: release all
            pods[slot["uid"]] = self._patch(pods[slot["uid"]], plan_id, node=None)
        with Session(self._engine) as session, session.begin():
            row = session.get(GangIntent, plan_id)
            if row is not None:
                row.state = ADMITTED

    def _patch(self, pod: dict[str, Any], plan_id: str, *, node: str | None) -> dict[str, Any]:
        """Pin ``pod`` to ``node`` or, with no node, remove its gate. A stale read (409) is
        re-read once and the step redone, unless the fresh pod shows it done already."""
        meta = pod["metadata"]
        namespace, name = meta.get("namespace") or "default", meta["name"]
        where = f"pod/{namespace}/{name}"
        for attempt in (1, 2):
            if (pinned_node(pod) is not None) if node else not is_gated(pod):
                return pod
            patch = pin_patch(pod, node) if node else ungate_patch(pod)
            try:
                updated = self._api.patch_pod(namespace, name, patch)
                break
            except ConflictError:
                fresh = self._api.get_pod(namespace, name)
                if attempt == 2 or fresh is None or fresh["metadata"].get("uid") != meta.get("uid"):
                    raise NotFoundError(where) from None
                pod = fresh
        self._audit(
            verb="pin-pod" if node else "release-pod",
            obj=where,
            reason=f"gang admission pins the pod to {node}"
            if node
            else "gang admission removes the stowage.io/gang gate",
            outcome="applied",
            plan_id=plan_id,
        )
        return updated

    # -- evictions ------------------------------------------------------------------------

    def _evict(self, evictions: Iterable[Evict], cycle_id: str) -> dict[tuple[str, str], str]:
        """Evict in plan order; returns, per preempting gang stopped by a
        PodDisruptionBudget, the clause its wait message ends with."""
        refused: dict[tuple[str, str], str] = {}
        for evict in evictions:
            if evict.for_gang in refused:
                continue
            where = f"pod/{evict.namespace}/{evict.pod}"
            reason, outcome = evict.reason, "dry-run"
            if not self._dry_run:
                # "gone": it finished meanwhile, the room is free all the same
                outcome = self._api.evict_pod_outcome(evict.namespace, evict.pod)
                if outcome == "refused:429":
                    reason = f"{evict.reason}; refused by a PodDisruptionBudget"
                    victim = "/".join(evict.victim_gang) if evict.victim_gang else where
                    refused[evict.for_gang] = (
                        f"preempting {victim} was refused by a PodDisruptionBudget; the plan "
                        "is redone next cycle"
                    )
            self._audit(
                verb="evict-pod", obj=where, reason=reason, outcome=outcome, plan_id=cycle_id
            )
            if outcome == "applied":
                involved = {
                    "metadata": {"name": evict.pod, "namespace": evict.namespace, "uid": evict.uid}
                }
                self._event(involved, "Preempted", evict.reason, kind="Warning")
        return refused

    # -- waiting, timeouts, lifecycle ------------------------------------------------------

    def _wait(
        self, gang: GangView, message: str, now: datetime, status: GangStatus | None
    ) -> Outcome:
        spec = gang.spec
        phase = WAITING
        first_seen = status.first_seen if status else now
        retry_at: datetime | None = None
        backoff = timedelta(seconds=status.backoff_s) if status else timedelta(0)
        if now - first_seen >= timedelta(seconds=spec.timeout_s):
            phase = TIMED_OUT
            backoff = min(max(backoff * 2, FIRST_BACKOFF), MAX_BACKOFF)
            retry_at = now + backoff
            if status is None or status.phase != TIMED_OUT:
                text = f"gang {spec.name} not placed within {spec.timeout_s}s: {message}"
                for pod in gang.live:
                    self._event(pod, "GangTimeout", text, kind="Warning")
                self._group_event(spec, "GangTimeout", text, kind="Warning")
                self._pod_group_condition(spec, text, now)
        changed = status is None or status.message != message or status.phase != phase
        self._set_status(gang, phase, message, now, None, retry_at=retry_at, backoff=backoff)
        if changed and phase == WAITING:
            for pod in gang.gated:
                self._event(pod, "GangWaiting", f"gang {spec.name} waits: {message}")
            self._group_event(spec, "GangWaiting", f"gang {spec.name} waits: {message}")
        return Outcome(spec.namespace, spec.name, phase, message)

    def _follow(self, gang: GangView, status: GangStatus | None, now: datetime) -> Outcome:
        """A gang with no member left to place: its status follows its pods (running,
        succeeded, failed)."""
        spec = gang.spec
        phases = [(p.get("status") or {}).get("phase") for p in gang.members]
        phase = status.phase if status else ADMITTED
        if phases and all(p == "Succeeded" for p in phases):
            phase = SUCCEEDED
        elif "Failed" in phases:
            phase = FAILED
        elif phases and all(p == "Running" for p in phases):
            phase = RUNNING
        message = status.message if status else ""
        if status is not None and status.phase != phase and status.phase != WOULD_ADMIT:
            message = f"{phase}: {sum(p == 'Running' for p in phases)} running, " + (
                f"{phases.count('Succeeded')} succeeded, {phases.count('Failed')} failed"
            )
            self._set_status(gang, phase, message, now, None)
            if phase in (SUCCEEDED, FAILED):
                self._record_run(gang, phase, now)
        return Outcome(spec.namespace, spec.name, phase, message)

    def _record_run(self, gang: GangView, phase: str, now: datetime) -> None:
        """A gang that just ended, for run-time predictions: from its first pod's start to
        its last container's end (now when the kubelet gave no end)."""
        starts = [api_seconds((p.get("status") or {}).get("startTime")) for p in gang.members]
        ends = [
            api_seconds(((c.get("state") or {}).get("terminated") or {}).get("finishedAt"))
            for p in gang.members
            for c in (p.get("status") or {}).get("containerStatuses") or ()
        ]
        first = min((t for t in starts if t is not None), default=None)
        if first is None:
            return  # it never started as far as the API says: nothing to learn
        started = datetime.fromtimestamp(first, UTC)
        last = max((t for t in ends if t is not None), default=None)
        finished = now if last is None else datetime.fromtimestamp(last, UTC)
        try:
            gpus = sum(pod_request(p).gpu_request_milli for p in gang.members) / 1000
        except SpecError:
            return
        with Session(self._engine) as session, session.begin():
            session.add(
                JobRun(
                    namespace=gang.spec.namespace,
                    gang=gang.spec.name,
                    queue=gang.spec.queue,
                    gpus=gpus,
                    pods=len(gang.members),
                    started_at=started,
                    finished_at=max(finished, started),
                    phase=phase,
                )
            )

    def forget(self, key: tuple[str, str], now: datetime, reason: str) -> None:
        """After a rollback: the gang waits again, with the reason, and is planned anew."""
        with Session(self._engine) as session, session.begin():
            row = session.get(GangStatus, key)
            if row is not None:
                row.phase = WAITING
                row.message = reason
                row.updated_at = now
                row.retry_at = None

    def collect(self, *, retention: timedelta, present: set[tuple[str, str]]) -> int:
        """Delete closed intents and the status of gangs gone from the cluster, older than
        ``retention``; returns how many rows went."""
        cutoff = self._clock() - retention
        with Session(self._engine) as session, session.begin():
            closed = list(
                session.scalars(
                    select(GangIntent).where(
                        GangIntent.state != ADMITTING, GangIntent.created_at < cutoff
                    )
                )
            )
            for intent in closed:
                session.delete(intent)
            old = session.scalars(select(GangStatus).where(GangStatus.updated_at < cutoff))
            stale = [s for s in old if (s.namespace, s.gang) not in present]
            for row in stale:
                session.delete(row)
        return len(closed) + len(stale)

    # -- the database ---------------------------------------------------------------------

    def open_intents(self) -> list[GangIntent]:
        with Session(self._engine, expire_on_commit=False) as session:
            return list(session.scalars(select(GangIntent).where(GangIntent.state == ADMITTING)))

    def statuses(self) -> dict[tuple[str, str], GangStatus]:
        with Session(self._engine, expire_on_commit=False) as session:
            return {(s.namespace, s.gang): s for s in session.scalars(select(GangStatus))}

    def _write_intent(
        self,
        spec: GangSpec,
        plan_id: str,
        slots: list[dict[str, Any]],
        domain: str | None,
        now: datetime,
    ) -> None:
        with Session(self._engine) as session, session.begin():
            session.add(
                GangIntent(
                    plan_id=plan_id,
                    namespace=spec.namespace,
                    gang=spec.name,
                    created_at=now,
                    state=ADMITTING,
                    placements={"pods": slots, "domain": domain},
                )
            )

    def _update_intent(self, plan_id: str, slots: list[dict[str, Any]]) -> None:
        with Session(self._engine) as session, session.begin():
            row = session.get(GangIntent, plan_id)
            if row is not None:
                row.placements = {**row.placements, "pods": slots}

    def _set_status(
        self,
        gang: GangView,
        phase: str,
        message: str,
        now: datetime,
        plan_id: str | None,
        placement: Mapping[str, str] | None = None,
        *,
        retry_at: datetime | None = None,
        backoff: timedelta | None = None,
    ) -> None:
        spec = gang.spec
        with Session(self._engine) as session, session.begin():
            row = session.get(GangStatus, (spec.namespace, spec.name))
            if row is None:
                row = GangStatus(
                    namespace=spec.namespace, gang=spec.name, first_seen=now, placement={}
                )
                session.add(row)
            row.phase = phase
            row.message = message
            row.size = spec.size
            row.members = len(gang.live)
            row.queue = spec.queue
            row.updated_at = now
            row.plan_id = plan_id or row.plan_id
            row.retry_at = retry_at
            if backoff is not None:
                row.backoff_s = backoff.total_seconds()
            if placement is not None:
                row.placement = {"pods": dict(placement)}

    # -- events and audit -----------------------------------------------------------------

    def _audit_admission(self, spec: GangSpec, message: str, *, outcome: str, plan_id: str) -> None:
        self._audit(
            verb="admit-gang",
            obj=f"gang/{spec.namespace}/{spec.name}",
            reason=message,
            outcome=outcome,
            plan_id=plan_id,
        )

    def _event(
        self,
        obj: Mapping[str, Any],
        reason: str,
        message: str,
        *,
        kind: str = "Normal",
        api_version: str = "v1",
        object_kind: str = "Pod",
    ) -> None:
        involved = {**obj, "apiVersion": api_version, "kind": object_kind}
        try:
            self._api.create_event(
                involved=involved, reason=reason, message=message, kind=kind, at=self._clock()
            )
        except Exception:  # an event is advice; never let it stop an admission
            log.exception("event not recorded", reason=reason)

    def _group_event(
        self, spec: GangSpec, reason: str, message: str, *, kind: str = "Normal"
    ) -> None:
        """The same explanation on the gang's PodGroup, when it has one."""
        group = self._groups.get(spec.key)
        if group is not None:
            self._event(
                group,
                reason,
                message,
                kind=kind,
                api_version=f"{POD_GROUP_GROUP}/{POD_GROUP_VERSION}",
                object_kind="PodGroup",
            )

    def event_once(self, gang: GangView, *, reason: str, message: str, kind: str) -> None:
        if (gang.spec.key, message) in self._told:
            return
        self._told.add((gang.spec.key, message))
        for pod in gang.live:
            self._event(pod, reason, message, kind=kind)

    def _pod_group_condition(self, spec: GangSpec, message: str, now: datetime) -> None:
        if spec.key not in self._groups or self._dry_run:
            return
        condition = {
            "type": "Scheduled",
            "status": "False",
            "reason": "GangTimeout",
            "message": message[:1024],
            "lastTransitionTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        try:
            self._api.patch_pod_group_status(spec.namespace, spec.name, {"conditions": [condition]})
        except KubeError:
            log.exception("PodGroup condition not written", gang=spec.name)

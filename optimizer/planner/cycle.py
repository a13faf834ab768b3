"""One scheduling cycle: a snapshot in, a Plan out. Pure; the controller, ``stowage plan``
and the simulators all run it.

Steps, numbered as the logs and docs/architecture.md number them:

1. **session**: copy the snapshot's arrays; build the workload context the score plugin
   uses (the shapes of every bound and pending pod);
2. **actions**, in the configured order (default ``allocate``, ``reclaim``, ``preempt``),
   each on the session through statements;
3. **plan**: admissions of managed jobs, room reserved for unmanaged pending pods, waits
   with reasons, evictions, and the objects left out as invalid.

Each step's duration is in :attr:`Plan.timings_s`, logged with the cycle id.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import structlog

from optimizer.planner import eviction  # noqa: F401 (registers reclaim and preempt)
from optimizer.planner.actions import ACTIONS, Decision
from optimizer.planner.filters import DEFAULT_FILTERS, FILTERS
from optimizer.planner.ordering import ORDERINGS
from optimizer.planner.plan import Admit, ClusterSnapshot, Evict, Plan
from optimizer.planner.policies import DEFAULT_POLICY, PlanContext, policy_or_raise
from optimizer.planner.session import Session

log = structlog.get_logger(__name__)

DEFAULT_ACTIONS: Final = ("allocate", "reclaim", "preempt")
DEFAULT_ORDERING: Final = "priority"


@dataclass(frozen=True)
class CycleConfig:
    """Which plugins a cycle runs, by registered name."""

    policy: str = DEFAULT_POLICY
    actions: tuple[str, ...] = DEFAULT_ACTIONS
    filters: tuple[str, ...] = DEFAULT_FILTERS
    #: How jobs are ordered in a queue that does not name its own ordering.
    ordering: str = DEFAULT_ORDERING
    #: Whether a queue stops at its first job that does not fit; always so when
    #: ``backfill`` runs (it decides what may go around the stopped job).
    strict: bool = False

    def validate(self) -> None:
        """Raise ValueError naming any unknown plugin."""
        policy_or_raise(self.policy)
        ORDERINGS.get_or_raise(self.ordering)
        for name in self.actions:
            ACTIONS.get_or_raise(name)
        for name in self.filters:
            FILTERS.get_or_raise(name)


def workload_context(snapshot: ClusterSnapshot, *, seed: int = 0) -> PlanContext:
    """The score plugins' context: the shapes of every bound and pending pod."""
    requests = [b.info.request for b in snapshot.bound] + [
        p.request for job in snapshot.jobs for p in job.pending
    ]
    return PlanContext.for_workload(requests, rng=np.random.default_rng(seed))


def new_session(
    snapshot: ClusterSnapshot, *, config: CycleConfig, ctx: PlanContext | None = None
) -> Session:
    """Step 1: a session on ``snapshot`` with the configured plugins."""
    return Session(
        snapshot,
        policy=policy_or_raise(config.policy),
        ctx=ctx if ctx is not None else workload_context(snapshot),
        filters=[FILTERS.get_or_raise(name) for name in config.filters],
        ordering=ORDERINGS.get_or_raise(config.ordering),
        strict=config.strict or "backfill" in config.actions,
    )


def run_cycle(
    snapshot: ClusterSnapshot,
    *,
    config: CycleConfig = CycleConfig(),
    number: int = 0,
    cycle_id: str | None = None,
    timer: Callable[[], float] = time.perf_counter,
    ctx: PlanContext | None = None,
    quiet: bool = False,
) -> Plan:
    """Run one cycle on ``snapshot`` and return its plan (the snapshot is not changed).
    ``ctx``: the score plugins' context (default: built from the snapshot's workload);
    ``quiet``: no log line (a simulator runs thousands of cycles)."""
    cycle_id = cycle_id or uuid.uuid4().hex[:12]
    timings: dict[str, float] = {}
    started = timer()
    session = new_session(snapshot, config=config, ctx=ctx)
    timings["session"] = timer() - started
    decisions: list[Decision] = []
    for name in config.actions:
        begun = timer()
        decisions.extend(ACTIONS.get_or_raise(name).execute(session))
        timings[name] = timer() - begun
    admits = [d for d in decisions if isinstance(d, Admit)]
    plan = Plan(
        cycle_id=cycle_id,
        number=number,
        admit=tuple(a for a in admits if a.job.managed),
        reserved=tuple(a for a in admits if not a.job.managed),
        wait=tuple(w for w in session.unplaced.values() if w.job.managed),
        evict=tuple(d for d in decisions if isinstance(d, Evict)),
        invalid=snapshot.invalid,
        timings_s=timings,
    )
    if quiet:
        return plan
    log.info(
        "cycle planned",
        cycle=number,
        cycle_id=cycle_id,
        admit=len(plan.admit),
        wait=len(plan.wait),
        evict=len(plan.evict),
        invalid=len(plan.invalid),
        **{f"{k}_ms": round(v * 1e3, 2) for k, v in timings.items()},
    )
    return plan

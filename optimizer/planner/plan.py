"""The cycle's input beyond the cluster arrays (jobs, bound pods) and its output (a Plan)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final

from optimizer.planner.cluster import PodRequest
from optimizer.planner.objects import NodeInfo, PodInfo
from optimizer.planner.queues import QueueSet, ResourceKey
from optimizer.planner.snapshot import Snapshot

# Wait codes (module constants so events, the CLI and tests share them).
NO_ROOM: Final = "no-room"
FILTERED: Final = "filtered"
UNSUPPORTED: Final = "unsupported-constraint"
PREEMPTING: Final = "preempting"
QUOTA: Final = "quota"
NO_QUEUE: Final = "no-queue"
#: Refused so that a blocked job's reserved start is kept (backfill).
RESERVED: Final = "reserved"


@dataclass(frozen=True)
class Job:
    """A gang, or a lone pod, to place: all of ``size`` more members or none.

    ``pending`` are the members still to place (gated by Stowage, or, for an unmanaged job,
    the one pod kube-scheduler will place: planned only so that its room is not promised to
    a gang). ``released`` members already run and count toward ``max_size``.
    """

    namespace: str
    name: str
    size: int
    pending: tuple[PodInfo, ...]
    max_size: int | None = None  # total members, released ones included
    released: int = 0
    topology_level: str | None = None
    required: bool = True
    queue: str | None = None
    priority: int = 0
    created: str = ""
    managed: bool = True
    #: Submission time on the cycle's clock (seconds), for orderings and aging.
    submitted_s: float = 0.0
    #: Predicted remaining run time (seconds); None: nobody predicted it.
    duration_s: float | None = None
    #: GPU-seconds it has run so far (a preempted job keeps them).
    attained_gpu_s: float = 0.0
    #: When it started on the cycle's clock (a running job; None: pending).
    started_s: float | None = None
    #: A running elastic gang may lose members down to this many (None: whole gangs only).
    min_size: int | None = None
    #: Its last checkpoint on the cycle's clock: work before it is not lost by preemption.
    checkpoint_s: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"

    @cached_property
    def shape(self) -> tuple[object, ...]:
        """Equal for jobs that fit or fail alike: the same members' requests and
        constraints, the same size and topology."""
        members = tuple(
            (
                p.request,
                p.constraint_signature(),
                p.anti_affinity,
                tuple(sorted(p.labels.items())),
                p.preferred_terms,
                p.unsupported,
            )
            for p in self.pending
        )
        return (
            members,
            self.size,
            self.max_size,
            self.released,
            self.topology_level,
            self.required,
            self.managed,
        )

    @cached_property
    def gpus(self) -> float:
        """The GPUs its minimum asks for (its ``size`` largest pending members)."""
        if len(self.pending) == 1:
            return self.pending[0].request.gpu_request_milli / 1000
        milli = sorted((p.request.gpu_request_milli for p in self.pending), reverse=True)
        return sum(milli[: self.size]) / 1000


@dataclass(frozen=True)
class BoundPod:
    """A pod holding capacity on a node: bound, admitted and not bound yet, nominated, or a
    slot of an unfinished admission. ``gang`` is its gang's key (None: not a gang member)."""

    info: PodInfo
    node: str
    gpus: tuple[int, ...] = ()
    gang: tuple[str, str] | None = None
    terminating: bool = False
    #: The queue its quota is counted against (None: no queue).
    queue: str | None = None
    #: A pod of no gang at all (no gang label, PodGroup or job framework) in a namespace
    #: that opted in: preemption may take it alone, as kube-scheduler's would.
    plain: bool = False
    #: When it was created, in epoch seconds (None: unknown): a plain pod's lost work.
    created_s: float | None = None


@dataclass(frozen=True)
class Invalid:
    """An object left out of the cycle, and why."""

    kind: str
    namespace: str
    name: str
    reason: str
    uid: str = ""
    #: A pod Stowage was to place (a gang member in an opted-in namespace).
    managed: bool = False


@dataclass(frozen=True)
class ClusterSnapshot:
    """Everything one cycle reads, immutable: nodes (in the state's row order), the arrays
    with every bound pod's resources taken, the jobs, and what was left out."""

    nodes: tuple[NodeInfo, ...]
    base: Snapshot
    bound: tuple[BoundPod, ...] = ()
    jobs: tuple[Job, ...] = ()
    invalid: tuple[Invalid, ...] = ()
    #: The queues (empty: no quotas, one ordering for every job).
    queues: QueueSet = field(default_factory=lambda: QueueSet(()))
    #: Gangs that run now (``pending`` empty), by the key their bound pods' ``gang`` holds:
    #: what preemption and backfill know about them (start, predicted remaining time).
    running: tuple[Job, ...] = ()
    #: The cycle's clock, seconds (the controller's wall clock, the simulator's time).
    now_s: float = 0.0
    #: Each queue's decayed past usage per resource, for time-based fair share.
    usage_history: Mapping[str, Mapping[ResourceKey, float]] = field(default_factory=dict)
    #: The static filters' verdicts by pod constraints, kept by a builder whose nodes do not
    #: change between cycles (a simulator); None: each cycle judges afresh.
    filter_cache: dict[tuple[object, ...], Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if [n.name for n in self.nodes] != self.base.state.names:
            raise ValueError("nodes must be in the state's row order (sorted by name)")


@dataclass(frozen=True)
class PodPlacement:
    """One member's node and the GPU indices it gets there."""

    name: str
    uid: str
    node: str
    gpus: tuple[int, ...]
    request: PodRequest


@dataclass(frozen=True)
class Admit:
    job: Job
    pods: tuple[PodPlacement, ...]
    domain: str | None = None
    #: Why it went now when that needs saying (a backfill ahead of a reservation).
    note: str = ""

    def message(self) -> str:
        where = f" in {self.job.topology_level} {self.domain}" if self.domain else ""
        why = f" ({self.note})" if self.note else ""
        return (
            f"admitted {len(self.pods)} pods{where}: "
            + ", ".join(f"{p.name} -> {p.node}" for p in sorted(self.pods, key=lambda p: p.name))
            + why
        )


@dataclass(frozen=True)
class Wait:
    job: Job
    reason: str
    code: str = NO_ROOM


@dataclass(frozen=True)
class Evict:
    """Evict ``pod`` (a whole victim gang is a run of these) so that ``for_gang`` fits."""

    namespace: str
    pod: str
    uid: str
    reason: str
    for_gang: tuple[str, str]
    victim_gang: tuple[str, str] | None = None
    #: The action that chose it: ``preempt`` (within a queue) or ``reclaim`` (across).
    action: str = "preempt"


@dataclass(frozen=True)
class Plan:
    """What one cycle decided. ``reserved`` are unmanaged pending pods the plan kept room
    for (kube-scheduler places them); ``timings_s`` each action's duration."""

    cycle_id: str
    number: int
    admit: tuple[Admit, ...] = ()
    wait: tuple[Wait, ...] = ()
    evict: tuple[Evict, ...] = ()
    invalid: tuple[Invalid, ...] = ()
    reserved: tuple[Admit, ...] = ()
    timings_s: Mapping[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        """The ``stowage plan --json`` object."""
        return {
            "cycle_id": self.cycle_id,
            "admit": [
                {
                    "namespace": a.job.namespace,
                    "gang": a.job.name,
                    "pods": [
                        {"name": p.name, "node": p.node, "gpus": list(p.gpus)}
                        for p in sorted(a.pods, key=lambda p: p.name)
                    ],
                }
                for a in self.admit
            ],
            "wait": [
                {"namespace": w.job.namespace, "gang": w.job.name, "reason": w.reason}
                for w in self.wait
            ],
            "evict": [
                {
                    "namespace": e.namespace,
                    "pod": e.pod,
                    "reason": e.reason,
                    "for_gang": f"{e.for_gang[0]}/{e.for_gang[1]}",
                }
                for e in self.evict
            ],
            "invalid": [
                {"kind": i.kind, "namespace": i.namespace, "name": i.name, "reason": i.reason}
                for i in self.invalid
            ],
        }

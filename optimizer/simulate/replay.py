"""Replay a cluster's job trace through the scheduling cycle, event by event.

Each job of the trace arrives at its submit time, asks for its GPUs (a job over one node's
GPUs is a gang of whole-node pods), runs for its recorded duration once admitted, and
leaves. At every instant where something arrived or ended, the simulator builds a
:class:`~optimizer.planner.plan.ClusterSnapshot` (the nodes, the running pods, the pending
jobs, the queues) and runs :func:`~optimizer.planner.cycle.run_cycle` on it, as the
controller does; it then applies the plan: admitted gangs start, evicted gangs stop and
go back to wait with the work they have done kept (as with a checkpoint at eviction), and
if anything was evicted the cycle runs again at the same instant.

A *policy* is a cycle configuration (ordering, actions) plus what the simulator tells the
cycle about durations: nothing (``fifo``, ``tiresias-las``), the truth (the oracles, which
are bounds, not policies), the truth with the Helios study's estimate errors
(``qssf-noisy``), or a prediction learned from the jobs that have already ended
(``stowage``: the Gittins effort of their remaining times, never the future).

Pure apart from reading the CSV files; deterministic for a seed.
"""

from __future__ import annotations

import bisect
import csv
import heapq
import math
import statistics
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np

from optimizer.planner.cluster import ClusterState, NodeSpec, PodRequest
from optimizer.planner.cycle import CycleConfig, run_cycle
from optimizer.planner.objects import NodeInfo, PodInfo
from optimizer.planner.ordering import ORDERINGS, SortKey
from optimizer.planner.plan import BoundPod, ClusterSnapshot, Job, Plan
from optimizer.planner.policies import PlanContext
from optimizer.planner.queues import GPU, QueueSet, QueueSpec, Quota
from optimizer.planner.snapshot import Snapshot

GPUS_PER_NODE: Final = 8
POOL_LABEL: Final = "stowage.io/pool"
#: Cycles at one instant after evictions, at most (evicted room is used by the next one).
MAX_CYCLES_PER_INSTANT: Final = 4
#: Completed jobs per (queue, GPUs) kept for predictions.
HISTORY_PER_KEY: Final = 256
DEFAULT_PREDICTION_S: Final = 3_600.0


class TraceError(ValueError):
    """A trace or cluster file that cannot be read; the message names the file and row."""


@dataclass(frozen=True)
class TraceJob:
    index: int
    submit_s: float
    duration_s: float
    gpus: int
    queue: str


@dataclass(frozen=True)
class ReplayCluster:
    """Node pools (``pool -> nodes``, 8 GPUs each) and the queues. ``partitioned``: each
    queue's jobs may use only the nodes of the pool named like it (Philly's virtual
    clusters); otherwise every job may use every node and quotas alone divide them."""

    pools: Mapping[str, int]
    queues: tuple[QueueSpec, ...]
    partitioned: bool = True
    gpus_per_node: int = GPUS_PER_NODE


def _timestamp(text: str, where: str) -> float:
    """A date or date-time (UTC), or a number of seconds (a trace whose clock starts at 0)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise TraceError(f"{where}: {text!r} is not a date and time") from None


#: Job table formats by their columns: (submit, duration, GPUs, queue or None: one queue).
TRACE_FORMATS: Final = {
    "Philly": ("timestamp", "duration", "num_gpus", "cluster"),
    "Tiresias": ("submit_time", "duration", "num_gpu", None),
}
#: The queue of a trace without queues (Tiresias): the whole cluster.
DEFAULT_QUEUE: Final = "default"


def load_jobs(path: Path, *, since: str | None = None, until: str | None = None) -> list[TraceJob]:
    """Jobs from a Philly table (``timestamp,duration,num_gpus,…,cluster``) or a Tiresias
    trace (``job_id,num_gpu,submit_time,…,duration``: seconds from 0, one queue), those
    submitted in ``[since, until)`` when given (dates, date-times, or seconds), by submit
    time."""
    low = _timestamp(since, "--from") if since else -math.inf
    high = _timestamp(until, "--to") if until else math.inf
    jobs: list[TraceJob] = []
    try:
        handle = path.open(newline="")
    except OSError as error:
        raise TraceError(f"{path}: cannot read: {error.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or [])
        found = [
            fields
            for fields in TRACE_FORMATS.values()
            if {f for f in fields if f is not None} <= columns
        ]
        if not found:
            wanted = "; ".join(
                f"{name}: {', '.join(f for f in fields if f)}"
                for name, fields in TRACE_FORMATS.items()
            )
            raise TraceError(f"{path}: not a job table I know (columns {wanted})")
        submit_col, duration_col, gpus_col, queue_col = found[0]
        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            submit = _timestamp(row[submit_col], where)
            if not low <= submit < high:
                continue
            try:
                duration, gpus = float(row[duration_col]), int(float(row[gpus_col]))
            except ValueError:
                what = f"{duration_col} and {gpus_col}"
                raise TraceError(f"{where}: {what} must be numbers") from None
            if not (duration >= 0 and math.isfinite(duration)) or gpus < 0:
                raise TraceError(f"{where}: a negative or infinite duration or GPU count")
            queue = row[queue_col] if queue_col is not None else DEFAULT_QUEUE
            jobs.append(TraceJob(len(jobs), submit, duration, gpus, queue))
    jobs.sort(key=lambda j: (j.submit_s, j.index))
    return [replace(j, index=i) for i, j in enumerate(jobs)]


def load_vcs(path: Path) -> dict[str, int]:
    """``vc,node num`` -> nodes per virtual cluster."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise TraceError(f"{path}: cannot read: {error.strerror}") from None
    out: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        try:
            out[row["vc"]] = int(row["node num"])
        except (KeyError, ValueError):
            raise TraceError(f"{path}:{line}: needs columns vc and 'node num' (a count)") from None
    return out


def size_for_load(
    jobs: Sequence[TraceJob], vcs: Iterable[str], load: float, gpus_per_node: int = GPUS_PER_NODE
) -> dict[str, int]:
    """Nodes per virtual cluster so that its offered GPU load over the window is ``load``:
    max(ceil(GPU-seconds / (window x GPUs per node x load)), nodes of its largest job, 1)."""
    if not load > 0:
        raise ValueError("--load must be above 0")
    window = (max(j.submit_s for j in jobs) - min(j.submit_s for j in jobs)) if jobs else 0.0
    work: dict[str, float] = defaultdict(float)
    widest: dict[str, int] = defaultdict(int)
    for job in jobs:
        work[job.queue] += job.duration_s * job.gpus
        widest[job.queue] = max(widest[job.queue], job.gpus)
    out = {}
    for vc in vcs:
        by_load = math.ceil(work[vc] / (window * gpus_per_node * load)) if window > 0 else 1
        out[vc] = max(by_load, math.ceil(widest[vc] / gpus_per_node), 1)
    return out


def vc_cluster(nodes: Mapping[str, int], *, borrowing: bool = False) -> ReplayCluster:
    """One queue per virtual cluster with a nominal GPU quota of its GPUs; partitioned
    (each queue on its own nodes) unless ``borrowing``, where queues share every node and
    borrow each other's unused quota."""
    queues = [QueueSpec("philly", weight=1.0)] if borrowing else []
    for vc, count in sorted(nodes.items()):
        queues.append(
            QueueSpec(
                vc,
                parent="philly" if borrowing else None,
                quotas={(GPU, ""): Quota(count * GPUS_PER_NODE * 1000)},
                namespaces=frozenset({vc}),
            )
        )
    return ReplayCluster(dict(nodes), tuple(queues), partitioned=not borrowing)


def load_cluster_spec(path: Path) -> ReplayCluster:
    """A Tiresias cluster spec (``num_switch,num_node_p_switch,num_gpu_p_node,…``): one pool
    and one queue (``default``, every GPU its nominal quota); switches are not modelled."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise TraceError(f"{path}: cannot read: {error.strerror}") from None
    try:
        [row] = rows
        nodes = int(row["num_switch"]) * int(row["num_node_p_switch"])
        per_node = int(row["num_gpu_p_node"])
    except (KeyError, ValueError, TypeError):
        raise TraceError(
            f"{path}: needs one row of num_switch, num_node_p_switch and num_gpu_p_node"
        ) from None
    if nodes < 1 or per_node < 1:
        raise TraceError(f"{path}: no nodes or no GPUs per node")
    quota = Quota(nodes * per_node * 1000)
    queue = QueueSpec(DEFAULT_QUEUE, quotas={(GPU, ""): quota}, namespaces=frozenset())
    return ReplayCluster({DEFAULT_QUEUE: nodes}, (queue,), True, per_node)


def load_cluster(path: Path) -> ReplayCluster:
    """A cluster file: a Tiresias cluster spec (``.csv``, :func:`load_cluster_spec`) or
    YAML::

    gpusPerNode: 8           # optional, 8
    partitioned: true        # optional: each queue only on the pool named like it
    pools: {a: 4, b: 2}      # nodes per pool
    queues:
      - name: a
        parent: org          # optional
        weight: 1            # optional
        gpus: 32             # nominal quota
        borrowingLimit: 8    # optional, GPUs
        lendingLimit: 16     # optional, GPUs
        minRuntimeSeconds: 600
    """
    import yaml

    if path.suffix == ".csv":
        return load_cluster_spec(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise TraceError(f"{path}: cannot read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise TraceError(f"{path}: not YAML: {error}") from None
    if not isinstance(data, dict):
        raise TraceError(f"{path}: expected a mapping with pools and queues")
    try:
        per_node = int(data.get("gpusPerNode", GPUS_PER_NODE))
        pools = {str(k): int(v) for k, v in (data.get("pools") or {}).items()}
        queues = []
        for i, item in enumerate(data.get("queues") or []):
            where = f"{path}: queues[{i}]"

            def gpus(field: str, item: dict[str, Any] = item) -> int | None:
                value = item.get(field)
                return None if value is None else int(float(value) * 1000)

            try:
                queues.append(
                    QueueSpec(
                        str(item["name"]),
                        parent=item.get("parent"),
                        weight=float(item.get("weight", 1.0)),
                        quotas={
                            (GPU, ""): Quota(
                                gpus("gpus") or 0, gpus("borrowingLimit"), gpus("lendingLimit")
                            )
                        },
                        min_runtime_s=float(item.get("minRuntimeSeconds", 0.0)),
                    )
                )
            except (KeyError, TypeError, ValueError) as error:
                raise TraceError(f"{where}: {error}") from None
    except (TypeError, ValueError, AttributeError) as error:
        raise TraceError(f"{path}: {error}") from None
    return ReplayCluster(pools, tuple(queues), bool(data.get("partitioned", True)), per_node)


def pod_sizes(gpus: int, per_node: int = GPUS_PER_NODE) -> list[int]:
    """A job's GPUs as pods: one pod up to a node's GPUs, else as few pods as nodes it
    needs, equal where the GPUs divide evenly (12 -> 6 + 6), else full nodes and the rest."""
    if gpus <= per_node:
        return [gpus]
    count = math.ceil(gpus / per_node)
    if gpus % count == 0:
        return [gpus // count] * count
    return [per_node] * (count - 1) + [gpus - per_node * (count - 1)]


# --- what the cycle is told about durations ---------------------------------------------


class Estimator:
    """Predicts a job's remaining run time from what the simulator lets it know."""

    def predict(self, job: TraceJob, ran_s: float) -> float | None:
        return None

    def predict_running(self, job: TraceJob, ran_at_start_s: float, ran_s: float) -> float | None:
        """What a running job, started with ``ran_at_start_s`` done, is predicted to need."""
        return self.predict(job, ran_s)

    def ended(self, job: TraceJob) -> None:
        """``job`` ended: its duration is now known (history for later predictions)."""


class Oracle(Estimator):
    """The true remaining time (a bound: no scheduler knows it)."""

    def predict(self, job: TraceJob, ran_s: float) -> float | None:
        return max(job.duration_s - ran_s, 0.0)


class Noisy(Estimator):
    """The true duration times an error drawn once per job with the Helios study's
    accuracy: 10% of estimates within 10%, 50% within 50%, 70% within 100%, 90% within 10x
    (the rest up to 100x); over or under with equal odds."""

    BANDS: Final = ((0.1, 0.1), (0.5, 0.5), (0.7, 1.0), (0.9, 9.0), (1.0, 99.0))

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._ratio: dict[int, float] = {}

    def _error(self) -> float:
        u = float(self._rng.random())
        low_q, low_m, magnitude = 0.0, 0.0, self.BANDS[-1][1]
        for q, m in self.BANDS:
            if u <= q:
                within = (u - low_q) / (q - low_q)
                # uniform in the first band, log-uniform in the others
                magnitude = within * m if low_m == 0 else low_m * (m / low_m) ** within
                break
            low_q, low_m = q, m
        return 1 + magnitude if self._rng.random() < 0.5 else 1 / (1 + magnitude)

    def predict(self, job: TraceJob, ran_s: float) -> float | None:
        if job.index not in self._ratio:
            self._ratio[job.index] = self._error()
        return max(job.duration_s * self._ratio[job.index] - ran_s, 0.0)


class History(Estimator):
    """Learned from jobs that have ended, never from the future: the median duration of the
    last jobs of the same queue and GPU count (else the same queue, else all), conditioned
    on having run ``ran_s`` already (the median of the longer ones, minus ``ran_s``)."""

    def __init__(self) -> None:
        self._recent: dict[tuple[str, int] | str, deque[float]] = defaultdict(
            lambda: deque(maxlen=HISTORY_PER_KEY)
        )
        self._sorted: dict[tuple[str, int] | str, list[float]] = {}

    def ended(self, job: TraceJob) -> None:
        for key in ((job.queue, job.gpus), job.queue, ""):
            self._recent[key].append(job.duration_s)
            self._sorted.pop(key, None)

    def durations(self, job: TraceJob) -> list[float] | None:
        """The ended jobs' durations, sorted, of the first of (same queue and GPU count,
        same queue, all) with at least 8; None before any job has ended."""
        for key in ((job.queue, job.gpus), job.queue, ""):
            samples = self._recent.get(key)
            if samples and (len(samples) >= 8 or key == ""):
                ordered = self._sorted.get(key)
                if ordered is None:
                    ordered = self._sorted[key] = sorted(samples)
                return ordered
        return None

    def predict(self, job: TraceJob, ran_s: float) -> float | None:
        ordered = self.durations(job)
        if ordered is None:
            return max(DEFAULT_PREDICTION_S - ran_s, 1.0)
        longer = bisect.bisect_right(ordered, ran_s)
        if longer == len(ordered):
            return ran_s  # it outlived every one we saw: as long again
        middle = (longer + len(ordered) - 1) / 2  # the median of the longer ones
        median = (ordered[int(middle)] + ordered[math.ceil(middle)]) / 2
        return max(median - ran_s, 1.0)


class Gittins(History):
    """The same history, read as the Gittins index does for a job whose size is unknown:
    the least expected effort per completion, min over quanta q of
    E[min(R, q)] / P(R <= q), where R is the remaining time of the past jobs (same queue
    and GPU count, else queue, else all) that ran longer than this one has. Serving the
    smallest first minimises mean completion time on one server when sizes are drawn from
    that history; for a heavy-tailed history it favours the jobs that have run least, as
    least-attained-service does, and for a light-tailed one the shortest, as SRPT does."""

    def __init__(self) -> None:
        super().__init__()
        #: job -> (work done at its start, the history it was ranked on, its index then).
        self._at_start: dict[int, tuple[float, list[float] | None, tuple[float, float]]] = {}

    def ended(self, job: TraceJob) -> None:
        super().ended(job)
        self._at_start.pop(job.index, None)

    def _index(self, job: TraceJob, ran_s: float) -> tuple[float, float]:
        """(least expected effort per completion, the quantum that attains it)."""
        ordered = self.durations(job)
        if ordered is None:
            fallback = max(DEFAULT_PREDICTION_S - ran_s, 1.0)
            return fallback, fallback
        remaining = np.asarray(ordered[bisect.bisect_right(ordered, ran_s) :]) - ran_s
        if len(remaining) == 0:
            return max(ran_s, 1.0), max(ran_s, 1.0)
        count = np.arange(1, len(remaining) + 1)
        # E[min(R, r_k)] * n = sum of the k smallest + (n - k) * r_k
        effort = (np.cumsum(remaining) + (len(remaining) - count) * remaining) / count
        best = int(np.argmin(effort))
        return max(float(effort[best]), 1.0), float(remaining[best])

    def predict(self, job: TraceJob, ran_s: float) -> float | None:
        return self._index(job, ran_s)[0]

    def predict_running(self, job: TraceJob, ran_at_start_s: float, ran_s: float) -> float | None:
        """The index a job started with holds until it has run the quantum that index was
        computed for (the policy's own rule: serve a job for its quantum, then look again),
        so running jobs are not re-ranked, and preempted, at every arrival."""
        ordered = self.durations(job)
        known = self._at_start.get(job.index)
        if known is not None and known[0] == ran_at_start_s and known[1] is ordered:
            effort, quantum = known[2]  # the same history (its sorted list) as last time
        else:
            effort, quantum = self._index(job, ran_at_start_s)
            self._at_start[job.index] = (ran_at_start_s, ordered, (effort, quantum))
        if ran_s < ran_at_start_s + quantum:
            return effort
        return self._index(job, ran_s)[0]


@dataclass(frozen=True)
class ReplayPolicy:
    name: str
    config: CycleConfig
    estimator: Callable[[int], Estimator]
    description: str


def _config(ordering: str, *actions: str, strict: bool = False) -> CycleConfig:
    return CycleConfig(policy="bestfit", actions=actions, ordering=ordering, strict=strict)


POLICIES: Final = {
    p.name: p
    for p in (
        ReplayPolicy(
            "fifo",
            _config("fifo", "allocate", strict=True),
            lambda seed: Estimator(),
            "arrival order; a job that does not fit holds its queue (strict)",
        ),
        ReplayPolicy(
            "sjf-oracle",
            _config("sjf-oracle", "allocate"),
            lambda seed: Oracle(),
            "shortest true duration first (a bound)",
        ),
        ReplayPolicy(
            "srtf-oracle",
            _config("srtf-oracle", "allocate", "preempt"),
            lambda seed: Oracle(),
            "shortest true remaining time first, preemptive (a bound)",
        ),
        ReplayPolicy(
            "tiresias-las",
            _config("tiresias-las", "allocate", "preempt"),
            lambda seed: Estimator(),
            "Tiresias' discretised 2D least attained service, preemptive",
        ),
        ReplayPolicy(
            "qssf-noisy",
            _config("qssf", "allocate"),
            Noisy,
            "shortest service first with the Helios study's estimate errors",
        ),
        ReplayPolicy(
            "stowage",
            _config("shortest-service", "allocate", "preempt"),
            lambda seed: Gittins(),
            "shortest predicted remaining service first, preemptive; the prediction is the "
            "Gittins effort of the jobs of the same queue and GPU count that have ended",
        ),
    )
}


# --- the simulation ----------------------------------------------------------------------


@dataclass
class _Running:
    job: TraceJob
    key: tuple[str, str]
    pods: list[tuple[str, int, tuple[int, ...], PodRequest]]  # (name, row, gpus, request)
    started_s: float
    ran_before_s: float  # work done before this start (kept across evictions)
    epoch: int


@dataclass
class ReplayResult:
    policy: str
    seed: int
    jobs: int
    avg_jct_s: float
    median_jct_s: float
    p95_jct_s: float
    p99_jct_s: float
    avg_wait_s: float
    p99_wait_s: float
    max_wait_s: float
    utilisation: float
    makespan_s: float
    preemptions: int
    fairness: float
    elapsed_s: float
    cycles: int = 0
    nodes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in JSON_KEYS}


JSON_KEYS: Final = (
    "policy",
    "seed",
    "jobs",
    "avg_jct_s",
    "median_jct_s",
    "p95_jct_s",
    "p99_jct_s",
    "avg_wait_s",
    "p99_wait_s",
    "max_wait_s",
    "utilisation",
    "makespan_s",
    "preemptions",
    "fairness",
    "elapsed_s",
)


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one has everything."""
    if not values:
        return 1.0
    total, squares = sum(values), sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares > 0 else 1.0


class Replay:
    """One run; :meth:`run` returns the statistics.

    What each cycle sees: the pending jobs of every queue whose world changed at that
    instant (an arrival, an end, an eviction), at most ``depth`` of each in its order (the
    scheduler's look-ahead, as Slurm's ``bf_max_job_test``), with the pods and running
    gangs of those queues. With partitioned pools a queue's decisions depend on nothing
    else, so this is the cycle over the whole cluster; with shared nodes every queue is
    in every cycle. The simulator keeps each queue sorted by the cycle's own ordering key
    (which does not change while a job waits) instead of sorting thousands each time.
    """

    def __init__(
        self,
        jobs: Sequence[TraceJob],
        cluster: ReplayCluster,
        policy: ReplayPolicy,
        *,
        seed: int = 0,
        depth: int = 64,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.policy = policy
        self.seed = seed
        self.depth = depth
        self.cluster = cluster
        self.queues = QueueSet(cluster.queues)
        self.estimator = policy.estimator(seed)
        self.ordering = ORDERINGS.get_or_raise(policy.config.ordering)
        self._progress = progress
        self.skipped: dict[str, int] = defaultdict(int)
        specs, infos = [], []
        for pool, count in sorted(cluster.pools.items()):
            for i in range(count):
                name = f"{pool}-{i:04d}"
                specs.append(NodeSpec(name, 10**9, 10**9, cluster.gpus_per_node, "gpu"))
                infos.append(NodeInfo(name, labels={POOL_LABEL: pool}))
        self.state = ClusterState.from_nodes(specs)
        self.row_of = {name: row for row, name in enumerate(self.state.names)}
        #: No workload shapes: the placement policy packs, gangs go to the tightest room.
        self.ctx = PlanContext(rng=np.random.default_rng(seed))
        self.nodes = tuple(sorted(infos, key=lambda n: n.name))
        #: The nodes never change: each constraint is judged by the filters once per run.
        self.filter_cache: dict[tuple[object, ...], Any] = {}
        self.jobs: list[TraceJob] = []
        for job in jobs:
            if job.queue not in self.queues.specs:
                self.skipped["queue not in the cluster"] += 1
            elif job.gpus == 0:
                self.skipped["no GPUs"] += 1
            elif cluster.partitioned and job.gpus > cluster.pools.get(job.queue, 0) * (
                cluster.gpus_per_node
            ):
                self.skipped["larger than its virtual cluster"] += 1
            else:
                self.jobs.append(job)
        self._needs_running = any(a in policy.config.actions for a in ("backfill", "preempt"))
        self.trace = {job.index: job for job in self.jobs}
        self.pending: dict[int, Job] = {}
        self.lines: dict[str, list[tuple[SortKey, int]]] = defaultdict(list)
        self.sort_key: dict[int, SortKey] = {}
        self._requests: dict[int, PodRequest] = {}
        #: Running jobs by queue, then index (a cycle sees the running gangs of its queues).
        self.running: dict[str, dict[int, _Running]] = defaultdict(dict)
        self.bound: dict[str, dict[str, tuple[BoundPod, tuple[int, tuple[int, ...]]]]] = (
            defaultdict(dict)
        )
        self.ran: dict[int, float] = defaultdict(float)
        self.attained: dict[int, float] = defaultdict(float)
        self.epochs: dict[int, int] = defaultdict(int)
        self.finished: dict[int, float] = {}
        self.preemptions = self.cycles = 0
        self.busy_gpu_s = 0.0

    def _wait(self, job: TraceJob, now: float) -> None:
        """``job`` (new, or evicted) joins its queue's line."""
        index = job.index
        selector = {POOL_LABEL: job.queue} if self.cluster.partitioned else {}
        members = tuple(
            PodInfo(
                job.queue,
                f"j{index}-{m}",
                f"j{index}-{m}",
                self._request(gpus),
                node_selector=selector,
                created=f"{job.submit_s:014.1f}",
            )
            for m, gpus in enumerate(pod_sizes(job.gpus, self.cluster.gpus_per_node))
        )
        pending = Job(
            job.queue,
            f"j{index}",
            size=len(members),
            pending=members,
            queue=job.queue,
            created=f"{job.submit_s:014.1f}",
            submitted_s=job.submit_s,
            duration_s=self.estimator.predict(job, self.ran[index]),
            attained_gpu_s=self.attained[index],
        )
        self.pending[index] = pending
        key = (*self.ordering.key(pending, pending.gpus, now), index)
        self.sort_key[index] = key
        bisect.insort(self.lines[job.queue], (key, index))

    def _request(self, gpus: int) -> PodRequest:
        """One request object per GPU count: jobs of a shape then compare by identity."""
        request = self._requests.get(gpus)
        if request is None:
            request = self._requests[gpus] = PodRequest(f"g{gpus}", 0, 0, gpus, 1000)
        return request

    def _leave_line(self, index: int) -> None:
        del self.pending[index]
        line = self.lines[self.trace[index].queue]
        at = bisect.bisect_left(line, (self.sort_key.pop(index), index))
        del line[at]

    def run(self) -> ReplayResult:
        started = time.perf_counter()
        events: list[tuple[float, int, int, int]] = []  # (time, 0 end / 1 arrive, job, epoch)
        for job in self.jobs:
            heapq.heappush(events, (job.submit_s, 1, job.index, 0))
        every = set(self.queues.specs)
        while events:
            now = events[0][0]
            dirty: set[str] = set()
            while events and events[0][0] == now:
                _, kind, index, epoch = heapq.heappop(events)
                job = self.trace[index]
                if kind == 1:
                    self._wait(job, now)
                    dirty.add(job.queue)
                elif self.epochs[index] == epoch and index in self.running[job.queue]:
                    run = self._stop(index)
                    self._release(run)
                    self.busy_gpu_s += job.gpus * (now - run.started_s)
                    self.finished[index] = now
                    self.estimator.ended(job)
                    dirty.add(job.queue)
                    if self._progress is not None:
                        self._progress(1)
            if not self.cluster.partitioned and dirty:
                dirty = every
            dirty = {q for q in dirty if self.lines[q]}
            for _ in range(MAX_CYCLES_PER_INSTANT):
                if not dirty:
                    break
                plan = run_cycle(
                    self._snapshot(now, dirty),
                    config=self.policy.config,
                    number=self.cycles,
                    cycle_id=str(self.cycles),
                    ctx=self.ctx,
                    quiet=True,
                )
                self.cycles += 1
                evicted = self._apply(plan, now, events)
                dirty = {self.trace[i].queue for i in evicted}
                dirty = {q for q in dirty if self.lines[q]}
        return self._result(time.perf_counter() - started)

    def _snapshot(self, now: float, queues: set[str]) -> ClusterSnapshot:
        jobs = [self.pending[i] for q in sorted(queues) for _, i in self.lines[q][: self.depth]]
        views = []
        if self._needs_running:
            for index, run in (r for q in sorted(queues) for r in self.running[q].items()):
                done = run.ran_before_s + now - run.started_s
                views.append(
                    Job(
                        run.job.queue,
                        f"j{index}",
                        size=len(run.pods),
                        pending=(),
                        queue=run.job.queue,
                        submitted_s=run.job.submit_s,
                        created=f"{run.job.submit_s:014.1f}",
                        duration_s=self.estimator.predict_running(run.job, run.ran_before_s, done),
                        attained_gpu_s=self.attained[index] + run.job.gpus * (now - run.started_s),
                        started_s=run.started_s,
                    )
                )
        pods = [pod for q in sorted(queues) for pod in self.bound[q].values()]
        return ClusterSnapshot(
            nodes=self.nodes,
            base=Snapshot(state=self.state, held=tuple(h for _, h in pods)),
            bound=tuple(b for b, _ in pods),
            jobs=tuple(jobs),
            queues=self.queues,
            running=tuple(views),
            now_s=now,
            filter_cache=self.filter_cache,
        )

    def _stop(self, index: int) -> _Running:
        return self.running[self.trace[index].queue].pop(index)

    def _release(self, run: _Running) -> None:
        pods = self.bound[run.job.queue]
        for name, row, gpus, request in run.pods:
            self.state.release(row, gpus, request)
            pods.pop(name, None)

    def _apply(
        self, plan: Plan, now: float, events: list[tuple[float, int, int, int]]
    ) -> list[int]:
        """Stop the evicted gangs (back to their line, work kept), start the admitted ones;
        the evicted jobs' indices."""
        evicted = []
        for gang in dict.fromkeys(e.victim_gang for e in plan.evict if e.victim_gang):
            index = int(gang[1][1:])
            run = self._stop(index)
            self._release(run)
            self.busy_gpu_s += run.job.gpus * (now - run.started_s)
            self.ran[index] = run.ran_before_s + now - run.started_s
            self.attained[index] += run.job.gpus * (now - run.started_s)
            self.epochs[index] += 1
            self.preemptions += 1
            self._wait(run.job, now)
            evicted.append(index)
        for admit in plan.admit:
            index = int(admit.job.name[1:])
            job = self.pending[index]
            self._leave_line(index)
            trace_job = self.trace[index]
            members = {p.name: p for p in job.pending}
            pods = []
            for placement in admit.pods:
                row = self.row_of[placement.node]
                self.state.allocate(row, placement.gpus, placement.request)
                self.bound[job.queue or ""][placement.name] = (
                    BoundPod(
                        members[placement.name],
                        placement.node,
                        placement.gpus,
                        gang=job.key,
                        queue=job.queue,
                    ),
                    (row, placement.gpus),
                )
                pods.append((placement.name, row, placement.gpus, placement.request))
            run = _Running(trace_job, job.key, pods, now, self.ran[index], self.epochs[index])
            self.running[trace_job.queue][index] = run
            end = now + trace_job.duration_s - run.ran_before_s
            heapq.heappush(events, (end, 0, index, run.epoch))
        return evicted

    def _result(self, elapsed: float) -> ReplayResult:
        finished = self.finished
        done = [j for j in self.jobs if j.index in finished]
        jct = np.array([finished[j.index] - j.submit_s for j in done]) if done else np.zeros(1)
        wait = np.maximum(jct - np.array([j.duration_s for j in done] or [0.0]), 0.0)
        first = min((j.submit_s for j in self.jobs), default=0.0)
        makespan = max(finished.values(), default=first) - first
        gpus = sum(self.cluster.pools.values()) * self.cluster.gpus_per_node
        slowdowns: dict[str, list[float]] = defaultdict(list)
        for j in done:
            slowdowns[j.queue].append((finished[j.index] - j.submit_s) / max(j.duration_s, 1.0))
        return ReplayResult(
            policy=self.policy.name,
            seed=self.seed,
            jobs=len(done),
            avg_jct_s=float(jct.mean()),
            median_jct_s=float(np.median(jct)),
            p95_jct_s=float(np.percentile(jct, 95)),
            p99_jct_s=float(np.percentile(jct, 99)),
            avg_wait_s=float(wait.mean()),
            p99_wait_s=float(np.percentile(wait, 99)),
            max_wait_s=float(wait.max()),
            utilisation=self.busy_gpu_s / (gpus * makespan) if makespan > 0 and gpus else 0.0,
            makespan_s=makespan,
            preemptions=self.preemptions,
            fairness=jain([statistics.mean(v) for v in slowdowns.values()]),
            elapsed_s=elapsed,
            cycles=self.cycles,
            nodes=sum(self.cluster.pools.values()),
            skipped=dict(self.skipped),
        )

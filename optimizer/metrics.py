"""Every metric the optimizer serves on ``/metrics``, declared here by name.

Dashboards and alert rules are checked against :data:`NAMES` (and the agent's exporter's
names), so a renamed metric fails a test instead of silently emptying a panel. The
controller's own metrics (:class:`ControllerMetrics`) live in the API's registry when the
controller runs beside it (``stowage-optimizer serve`` with ``STOWAGE_CONTROLLER`` on).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from optimizer.planner.objects import PodInfo
from optimizer.planner.plan import Job, Plan

# -- served by the API (optimizer/api/*): collected from the store on each scrape ---------
CLUSTER_GPUS: Final = "stowage_cluster_gpus"
CLUSTER_FRAGMENTED_GPUS: Final = "stowage_cluster_fragmented_gpus"
POOL_GPUS: Final = "stowage_pool_gpus"
FRAGMENTED_GPUS: Final = "stowage_fragmented_gpus"
CLUSTER_POWER_WATTS: Final = "stowage_cluster_power_watts"
CLUSTER_STALE_NODES: Final = "stowage_cluster_stale_nodes"
OPTIMIZER_REPORTS: Final = "stowage_optimizer_reports"
OPTIMIZER_REQUESTS_DENIED: Final = "stowage_optimizer_requests_denied"
INGEST_DURATION_SECONDS: Final = "stowage_optimizer_ingest_duration_seconds"
INGEST_BATCH_REPORTS: Final = "stowage_optimizer_ingest_batch_reports"
FORECAST_GPU_DEMAND: Final = "stowage_forecast_gpu_demand_gpus"
FORECAST_GPU_ACTIVITY: Final = "stowage_forecast_gpu_activity_ratio"
FORECAST_GPU_DEMAND_PEAK: Final = "stowage_forecast_gpu_demand_peak_gpus"
GPU_DEMAND: Final = "stowage_gpu_demand_gpus"
GPU_CAPACITY: Final = "stowage_gpu_capacity_gpus"
RECOMMENDATIONS: Final = "stowage_recommendations"
NAMESPACE_ENERGY_KWH: Final = "stowage_namespace_gpu_energy_kwh"
NAMESPACE_GPU_HOURS: Final = "stowage_namespace_gpu_hours"
NAMESPACE_COST: Final = "stowage_namespace_gpu_cost"
IDLE_GPUS: Final = "stowage_idle_gpus"

# -- the controller (this module) -----------------------------------------------------------
CONTROLLER_LEADER: Final = "stowage_controller_leader"
CONTROLLER_CYCLE_SECONDS: Final = "stowage_controller_cycle_duration_seconds"
PENDING_GANGS: Final = "stowage_controller_pending_gangs"
PENDING_GPUS: Final = "stowage_controller_pending_gpus"
GANG_WAIT_SECONDS: Final = "stowage_controller_gang_wait_seconds"
GANGS_PAST_TIMEOUT: Final = "stowage_controller_gangs_past_timeout"
UNGATED_GANG_PODS: Final = "stowage_controller_ungated_gang_pods"
ADMISSIONS: Final = "stowage_controller_admissions"
PREEMPTIONS: Final = "stowage_controller_preemptions"
ROLLBACKS: Final = "stowage_controller_rollbacks"

#: Every name above; counters are exposed with a ``_total`` suffix, histograms with
#: ``_bucket``, ``_sum`` and ``_count``.
NAMES: Final = frozenset(
    value
    for name, value in dict(globals()).items()
    if name.isupper() and isinstance(value, str) and value.startswith("stowage_")
)

#: Why an admitted gang was rolled back (admission.py).
ROLLBACK_CAUSES: Final = ("node-refused", "failed-scheduling", "bind-deadline")
#: Gang waits span seconds (room was there) to days (a big gang behind a busy queue).
WAIT_BUCKETS: Final = (10, 30, 60, 300, 900, 1800, 3600, 7200, 14_400, 43_200, 86_400, 259_200)


#: The ``queue`` label of gangs that name no queue (Prometheus drops empty label values).
NO_QUEUE_LABEL: Final = "none"


def _queue(job: Job) -> str:
    return job.queue or NO_QUEUE_LABEL


class ControllerMetrics:
    """The controller's metrics, in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.leader = Gauge(
            CONTROLLER_LEADER,
            "1 while this replica holds the controller's Lease.",
            registry=registry,
        )
        self.cycle_seconds = Histogram(
            CONTROLLER_CYCLE_SECONDS,
            "Duration of each step of a controller cycle (observe, plan, commit).",
            ["step"],
            registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.pending_gangs = Gauge(
            PENDING_GANGS,
            "Managed gangs waiting after the last cycle, by queue and why (the wait code).",
            ["queue", "reason"],
            registry=registry,
        )
        self.pending_gpus = Gauge(
            PENDING_GPUS,
            "GPUs the waiting managed gangs ask for, by queue.",
            ["queue"],
            registry=registry,
        )
        self.past_timeout = Gauge(
            GANGS_PAST_TIMEOUT,
            "Managed gangs still waiting past their stowage.io/gang-timeout, by queue.",
            ["queue"],
            registry=registry,
        )
        self.ungated = Gauge(
            UNGATED_GANG_PODS,
            "Members of waiting gangs that run without the stowage.io/gang gate (created "
            "while the webhook was not answering, or bypassing it).",
            registry=registry,
        )
        self.gang_wait = Histogram(
            GANG_WAIT_SECONDS,
            "How long each admitted gang waited, from its creation to its admission.",
            ["queue"],
            registry=registry,
            buckets=WAIT_BUCKETS,
        )
        self.admissions = Counter(
            ADMISSIONS,
            "Gangs admitted (decided; in dry run, planned).",
            ["queue"],
            registry=registry,
        )
        self.preemptions = Counter(
            PREEMPTIONS,
            "Pod evictions decided to make room for a gang, by action (preempt within a queue, "
            "reclaim across queues); one a PodDisruptionBudget refuses is decided again.",
            ["action"],
            registry=registry,
        )
        self.rollbacks = Counter(
            ROLLBACKS,
            "Admitted gangs rolled back, by why (node-refused, failed-scheduling, bind-deadline).",
            ["reason"],
            registry=registry,
        )
        # known label values start at 0, so a dashboard's rate exists before the first event
        for action in ("preempt", "reclaim"):
            self.preemptions.labels(action)
        for cause in ROLLBACK_CAUSES:
            self.rollbacks.labels(cause)

    def record_plan(
        self,
        plan: Plan,
        *,
        now_s: float,
        created_s: Mapping[str, float],
        timeouts_s: Mapping[str, float],
        ungated: int,
    ) -> None:
        """A cycle's decisions: waiting gangs, their GPUs and those past their timeout
        (replacing the last cycle's), admissions with their waits (``created_s``: a job's
        label -> its creation time; ``timeouts_s``: -> its timeout), evictions by action;
        ``ungated``: members of gangs that slipped past the gate."""
        self.ungated.set(ungated)
        late: Tally[str] = Tally()
        waiting: Tally[tuple[str, str]] = Tally()
        gpus: dict[str, float] = {}
        for wait in plan.wait:
            if wait.job.managed:
                waiting[_queue(wait.job), wait.code] += 1
                queue = _queue(wait.job)
                gpus[queue] = gpus.get(queue, 0.0) + _gpus(wait.job.pending)
                created = created_s.get(wait.job.label)
                timeout = timeouts_s.get(wait.job.label)
                late[queue] += int(
                    created is not None and timeout is not None and now_s - created > timeout
                )
        self.pending_gangs.clear()
        for (queue, reason), count in waiting.items():
            self.pending_gangs.labels(queue, reason).set(count)
        self.pending_gpus.clear()
        for queue, count_gpus in gpus.items():
            self.pending_gpus.labels(queue).set(count_gpus)
        self.past_timeout.clear()
        for queue, count in late.items():
            self.past_timeout.labels(queue).set(count)
        for admit in plan.admit:
            if not admit.job.managed:
                continue
            self.admissions.labels(_queue(admit.job)).inc()
            created = created_s.get(admit.job.label)
            if created is not None:
                self.gang_wait.labels(_queue(admit.job)).observe(max(now_s - created, 0.0))
        for evict in plan.evict:
            self.preemptions.labels(evict.action).inc()


def _gpus(pods: Iterable[PodInfo]) -> float:
    return sum(p.request.gpu_request_milli for p in pods) / 1000

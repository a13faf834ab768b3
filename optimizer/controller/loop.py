"""The controller: every replica runs it, only the elected leader acts.

Each cycle the replica tries to acquire or renew the Lease; as leader it brings node labels in
line with the agents' latest reports and runs a gang admission cycle. Followers do nothing but
keep trying for the lease (they serve the HTTP API all along). A failed cycle is logged and the
next one starts fresh from the cluster and the database, which is what makes a crash harmless.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

import structlog
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from optimizer.controller.admission import GangAdmitter
from optimizer.controller.audit import StoreAudit
from optimizer.controller.cache import ClusterView, LiveView
from optimizer.controller.forecasting import DemandRecorder, ForecastTrainer
from optimizer.controller.idle import IdleReclaimer
from optimizer.controller.kube import KubeApi
from optimizer.controller.leader import LeaderElector
from optimizer.controller.node_labels import NodeLabeller
from optimizer.controller.rightsizing import RightSizer
from optimizer.metrics import ControllerMetrics
from optimizer.planner.cycle import CycleConfig
from optimizer.settings import OptimizerSettings
from optimizer.store.queries import latest_topologies, stale_nodes
from shared.report import NodeReport

log = structlog.get_logger(__name__)

#: The Lease replicas compete for.
LEASE_NAME = "stowage-controller"


class Controller:
    """One replica's controller.

    Args:
        api: the Kubernetes adapter.
        engine: the optimizer's database.
        settings: mode, identity, lease and pool settings.
        clock: the current time.
        view: where nodes and pods are read (the watch cache when serving).
    """

    def __init__(
        self,
        api: KubeApi,
        engine: Engine,
        settings: OptimizerSettings,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        view: ClusterView | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if settings.controller == "off":
            raise ValueError("the controller is off (STOWAGE_CONTROLLER)")
        self._engine = engine
        self._clock = clock
        self._stale_after = timedelta(seconds=settings.stale_after_s)
        dry_run = settings.controller == "dry-run"
        audit = StoreAudit(engine, actor=settings.controller_identity, clock=clock)
        self.elector = LeaderElector(
            api,
            namespace=settings.controller_namespace,
            name=LEASE_NAME,
            identity=settings.controller_identity,
            lease_duration=timedelta(seconds=settings.lease_duration_s),
            clock=clock,
        )
        self.labeller = NodeLabeller(
            api,
            audit,
            pool_of=settings.pool_of,
            dry_run=dry_run,
            view=view,
            defer_to_gfd=settings.gfd_labels == "defer",
        )
        self._label_grace = timedelta(seconds=settings.label_grace_s)
        self.metrics = ControllerMetrics(registry or CollectorRegistry())
        self.admitter = GangAdmitter(
            api,
            engine,
            audit,
            reports=self.reports,
            stale=self.stale,
            dry_run=dry_run,
            config=CycleConfig(
                policy=settings.planner_policy,
                actions=tuple(settings.planner_actions),
                ordering=settings.planner_ordering,
            ),
            levels=settings.levels(),
            clock=clock,
            view=view,
            bind_deadline=timedelta(seconds=settings.bind_deadline_s),
            retention=timedelta(seconds=settings.gang_retention_s),
            fair_share_half_life=timedelta(seconds=settings.fair_share_half_life_s),
            metrics=self.metrics,
        )

        listed = view or LiveView(api)  # what idle reclaim and right-sizing read pods from
        self.idle = IdleReclaimer(
            api,
            engine,
            audit,
            clock=clock,
            grace=timedelta(seconds=settings.idle_reclaim_after_s),
            dry_run=dry_run,
            view=listed,
        )
        self.rightsizer = RightSizer(
            api,
            engine,
            audit,
            clock=clock,
            window=timedelta(seconds=settings.rightsizing_window_s),
            min_window=timedelta(seconds=settings.idle_after_s),
            dry_run=dry_run,
            view=listed,
        )
        self.demand = DemandRecorder(
            engine, clock=clock, interval=timedelta(seconds=settings.demand_sample_s)
        )
        self.trainer = ForecastTrainer(
            engine,
            clock=clock,
            interval=timedelta(seconds=settings.forecast_interval_s),
            history=timedelta(seconds=settings.forecast_history_s),
            demand_retention=timedelta(seconds=settings.demand_retention_s),
        )

    def reports(self) -> Mapping[str, NodeReport]:
        """The latest topology of every node whose agent is not stale."""
        with Session(self._engine) as session:
            return latest_topologies(session, seen_since=self._clock() - self._stale_after)

    def known_reports(self) -> Mapping[str, NodeReport]:
        """The latest topology of every node that ever reported, quiet agents' included."""
        with Session(self._engine) as session:
            return latest_topologies(session, seen_since=datetime(1970, 1, 1, tzinfo=UTC))

    def lapsed(self) -> frozenset[str]:
        """Nodes whose agent has been quiet for longer than stale plus the label grace."""
        with Session(self._engine) as session:
            quiet = stale_nodes(
                session, seen_before=self._clock() - self._stale_after - self._label_grace
            )
        return frozenset(quiet)

    def stale(self) -> set[str]:
        """Nodes whose agent reported once but has gone quiet: no new gang goes there."""
        with Session(self._engine) as session:
            return stale_nodes(session, seen_before=self._clock() - self._stale_after)

    def step(self) -> bool:
        """One cycle; returns whether this replica led it."""
        leading = self.elector.step()
        self.metrics.leader.set(1 if leading else 0)
        if not leading:
            return False
        try:
            self.labeller.sync(self.known_reports(), lapsed=self.lapsed())
            if self.elector.is_leader:  # the lease may lapse during a slow pass
                self.admitter.cycle()
                if self.admitter.last_snapshot is not None:
                    self.demand.maybe_record(self.admitter.last_snapshot)
                self.idle.maybe_run()
                self.rightsizer.maybe_run()
        except Exception:
            log.exception("controller cycle failed; the next one starts afresh")
        return True

    def run(self, stop: threading.Event, *, interval_s: float) -> None:
        """Cycle until ``stop`` is set, then hand the lease over; forecasts are retrained in
        a thread of their own while this replica leads."""
        trainer = threading.Thread(
            target=self.trainer.run,
            args=(stop,),
            kwargs={"is_leader": lambda: self.elector.is_leader, "poll_s": interval_s},
            name="forecasts",
            daemon=True,
        )
        if self.trainer.interval > timedelta(0):
            trainer.start()
        while not stop.is_set():
            self.step()
            stop.wait(interval_s)
        self.elector.release()

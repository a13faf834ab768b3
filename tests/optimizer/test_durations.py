"""Run times learned from finished gangs: recorded when a gang ends, predicted (median of
the same queue and GPU count, conditioned on time run) where a job declares no estimate,
and used by the cycle; the fake API server and the store on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from kubefake import FakeApiServer
from optimizer.controller.admission import ADMITTED
from optimizer.controller.commit import RUNNING, SUCCEEDED
from optimizer.controller.durations import REFRESH, DurationModel, history_of, predictor
from optimizer.controller.kube import KubeApi
from optimizer.controller.observe import observe
from optimizer.store.models import JobRun
from tests.optimizer.conftest import WallClock
from tests.optimizer.test_admission_rules import (
    NS,
    _admitter,
    _gang_pods,
    _nodes_and_a_gang_of_two,
    _outcome,
    _pod,
    server,
)

__all__ = ["server"]  # the fixture, shared with the admission rules' tests

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def _run(queue: str | None, gpus: float, seconds: float, k: int = 0) -> JobRun:
    start = T0 + timedelta(minutes=k)
    return JobRun(
        namespace=NS,
        gang=f"g{k}",
        queue=queue,
        gpus=gpus,
        pods=1,
        started_at=start,
        finished_at=start + timedelta(seconds=seconds),
        phase="succeeded",
    )


@pytest.mark.parametrize(
    ("queue", "gpus", "ran_s", "want"),
    [
        pytest.param("q", 2, 0.0, 600.0, id="median-of-the-same-queue-and-size"),
        pytest.param("q", 8, 0.0, 6000.0, id="other-size-falls-back-to-the-queue"),
        pytest.param("q", 2, 300.0, 300.0, id="conditioned-on-time-run"),
        pytest.param("other", 2, 0.0, 100.0, id="unknown-queue-falls-back-to-all"),
    ],
)
def test_prediction_from_finished_runs(queue: str, gpus: float, ran_s: float, want: float) -> None:
    runs = [_run("q", 2, 600, k) for k in range(8)]  # q, 2 GPUs: 8 runs of 10 min
    runs += [_run("q", 4, 6000, 8 + k) for k in range(9)]  # q, 4 GPUs: 9 of 100 min
    runs += [_run("r", 1, 100, 17 + k) for k in range(30)]  # another queue: 30 short ones
    predict = predictor(history_of(runs))
    assert predict(queue, gpus, ran_s) == pytest.approx(want)


def test_nothing_is_predicted_before_any_run_ended(engine: Engine, clock: WallClock) -> None:
    model = DurationModel(engine, clock=clock)
    assert model.current() is None
    with Session(engine) as session, session.begin():
        session.add(_run("q", 2, 600))
    assert model.current() is None  # reread only every REFRESH
    clock.advance(REFRESH.total_seconds())
    predict = model.current()
    assert predict is not None
    assert predict("q", 2, 0.0) == 600


def test_a_finished_gang_is_recorded_and_predicts_the_next_one(
    server: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    fake, api = server
    _nodes_and_a_gang_of_two(fake, "a1", "a2")
    clock = WallClock()
    admitter = _admitter(api, engine, clock)
    assert _outcome(admitter.cycle()).phase == ADMITTED
    for pod in _gang_pods(fake):
        fake.objects["v1/pods", NS, pod["metadata"]["name"]].patch(
            {"spec": {"nodeName": "a1"}, "status": {"phase": "Running"}}
        )
    assert _outcome(admitter.cycle()).phase == RUNNING
    for pod in _gang_pods(fake):
        fake.objects["v1/pods", NS, pod["metadata"]["name"]].patch(
            {
                "status": {
                    "phase": "Succeeded",
                    "startTime": "2026-11-29T10:00:00Z",
                    "containerStatuses": [
                        {
                            "name": "main",
                            "image": "trainer",
                            "imageID": "trainer@sha256:0",
                            "ready": False,
                            "restartCount": 0,
                            "state": {
                                "terminated": {
                                    "exitCode": 0,
                                    "finishedAt": "2026-11-29T11:30:00Z",
                                }
                            },
                        }
                    ],
                }
            }
        )
    assert _outcome(admitter.cycle()).phase == SUCCEEDED
    admitter.cycle()  # still succeeded: recorded once
    with Session(engine) as session:
        [run] = session.scalars(select(JobRun)).all()
    assert (run.namespace, run.gang, run.gpus, run.pods) == (NS, "train", 16.0, 2)
    assert run.finished_at - run.started_at == timedelta(minutes=90)
    # a new gang of the same shape without an estimate is predicted to run as long
    for i in range(2):
        fake.put("v1/pods", _pod(f"next-{i}", gang="next"))
    predict = DurationModel(engine, clock=clock).current()
    snapshot = observe(
        nodes=fake.items("nodes"), pods=fake.items("pods"), enabled={NS}, durations=predict
    ).snapshot
    [job] = [j for j in snapshot.jobs if j.name == "next"]
    assert job.duration_s == 90 * 60

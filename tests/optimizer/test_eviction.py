"""Reclaim and preempt on the pure cycle: whom they evict and why, as table tests, and the
invariants (whole gangs only, elastic gangs never below their minimum, no job before its
queue's minimum runtime) as properties over random clusters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optimizer.planner.cluster import ClusterState
from optimizer.planner.plan import BoundPod, Job, Plan
from optimizer.planner.queues import QueueSpec, Quota
from tests.optimizer.test_queues import ANY, _cluster, _cycle, _gpus, _job, _queue

Running = tuple[list[BoundPod], list[tuple[int, tuple[int, ...]]], Job]


def _run(
    state: ClusterState,
    job: Job,
    nodes: Sequence[int],
    *,
    started: float,
    priority: int = 0,
    min_size: int | None = None,
    checkpoint: float | None = None,
    plain: bool = False,
) -> Running:
    """``job``'s members bound one per node of ``nodes`` (a running gang, or a plain pod)."""
    bound, held = [], []
    for info, node in zip(job.pending, nodes, strict=True):
        info = replace(info, priority=priority)
        free = [g for g in range(state.gpu_free.shape[1]) if state.gpu_free[node, g] == 1000]
        gpus = tuple(free[: info.request.num_gpu])
        state.allocate(node, gpus, info.request)
        gang = None if plain else job.key
        bound.append(BoundPod(info, state.names[node], gpus, gang, queue=job.queue, plain=plain))
        held.append((node, gpus))
    view = Job(
        job.namespace,
        job.name,
        size=job.size,
        pending=(),
        queue=job.queue,
        priority=priority,
        started_s=started,
        min_size=min_size,
        checkpoint_s=checkpoint,
    )
    return bound, held, view


def _evicted(plan: Plan) -> list[str]:
    return sorted(e.pod for e in plan.evict)


ACTIONS = ("allocate", "reclaim", "preempt")
TREE = [_queue("root"), _queue("a", 8, parent="root"), _queue("b", 8, parent="root")]


def test_reclaim_takes_back_borrowed_quota_least_lost_work_first() -> None:
    nodes, state = _cluster(2)
    old = _run(state, _job("old", 8, queue="b"), [0], started=0)
    new = _run(state, _job("new", 8, queue="b"), [1], started=500)  # b borrows a's 8 GPUs
    plan = _cycle(
        nodes,
        state,
        [_job("mine", 8, queue="a")],
        queues=TREE,
        running=[old, new],
        now=1000,
        actions=ACTIONS,
    )
    assert _evicted(plan) == ["new-0"]
    assert plan.evict[0].reason == (
        "reclaimed by queue a for gang ml/mine: queue(s) b borrowed beyond their nominal quota"
    )
    [wait] = plan.wait
    assert "reclaiming queue a's quota from b: ml/new" in wait.reason


@dataclass(frozen=True)
class NoReclaim:
    name: str
    mine: float  # GPUs the new job asks for
    a_uses: float  # GPUs a already runs
    b_uses: float


NO_RECLAIM = [
    NoReclaim("beyond its own nominal quota a job may only borrow", 8, 8, 8),
    NoReclaim("the other queue borrows nothing", 8, 0, 8),
]


@pytest.mark.parametrize("case", NO_RECLAIM, ids=lambda c: c.name)
def test_reclaim_takes_nothing_that_is_not_borrowed(case: NoReclaim) -> None:
    nodes, state = _cluster(2)
    running = []
    if case.a_uses:
        running.append(_run(state, _job("a-run", int(case.a_uses), queue="a"), [0], started=0))
    if case.b_uses:
        running.append(_run(state, _job("b-run", int(case.b_uses), queue="b"), [1], started=0))
    if not case.a_uses:  # the node b does not use is full of work in no queue
        running.append(_run(state, _job("other", 8), [0], started=0, priority=100))
    plan = _cycle(
        nodes,
        state,
        [_job("mine", int(case.mine), queue="a")],
        queues=TREE,
        running=running,
        now=1000,
        actions=ACTIONS,
    )
    assert plan.evict == ()


def test_reclaim_ignores_priority_preempt_does_not() -> None:
    nodes, state = _cluster(2)
    b1 = _run(state, _job("b1", 8, queue="b"), [0], started=0, priority=100)
    b2 = _run(state, _job("b2", 8, queue="b"), [1], started=0, priority=100)
    mine = replace(_job("mine", 8, queue="a"), priority=1)
    plan = _cycle(nodes, state, [mine], queues=TREE, running=[b1, b2], now=10, actions=ACTIONS)
    assert len(plan.evict) == 1  # reclaimed from a higher-priority borrower
    plan = _cycle(
        nodes, state, [mine], queues=TREE, running=[b1, b2], now=10, actions=("allocate", "preempt")
    )
    assert plan.evict == ()


def test_an_elastic_gang_shrinks_to_its_minimum_before_anything_is_evicted() -> None:
    nodes, state = _cluster(3)
    elastic = _run(state, _job("e", 8, pods=2), [0, 1], started=0, min_size=1)
    whole = _run(state, _job("w", 8), [2], started=900)  # less work lost than e's surplus
    high = replace(_job("high", 8), priority=10)
    plan = _cycle(nodes, state, [high], running=[elastic, whole], now=1000, actions=ACTIONS)
    assert _evicted(plan) == ["e-1"]
    assert plan.evict[0].victim_gang == ("ml", "e")
    [wait] = plan.wait
    assert "the surplus of elastic gang ml/e" in wait.reason
    # a job of two needs more than the surplus: the surplus, then the least lost work
    pair = replace(_job("pair", 8, pods=2), priority=10)
    plan = _cycle(nodes, state, [pair], running=[elastic, whole], now=1000, actions=ACTIONS)
    assert _evicted(plan) == ["e-1", "w-0"]


@pytest.mark.parametrize(
    ("checkpoint", "victim"),
    [(None, "young-0"), (950.0, "saved-0")],
    ids=["without a checkpoint the youngest loses least", "a recent checkpoint loses less"],
)
def test_lost_work_counts_from_the_last_checkpoint(checkpoint: float | None, victim: str) -> None:
    nodes, state = _cluster(2)
    saved = _run(state, _job("saved", 8), [0], started=0, checkpoint=checkpoint)
    young = _run(state, _job("young", 8), [1], started=500)
    high = replace(_job("high", 8), priority=10)
    plan = _cycle(nodes, state, [high], running=[saved, young], now=1000, actions=ACTIONS)
    assert _evicted(plan) == [victim]


@pytest.mark.parametrize(
    ("plain", "evicted"),
    [(True, ["web-0"]), (False, [])],
    ids=["in an opted-in namespace", "elsewhere it is only counted"],
)
def test_a_pod_of_no_gang_is_a_victim_where_its_namespace_opted_in(
    plain: bool, evicted: list[str]
) -> None:
    nodes, state = _cluster(1)
    bound, held, view = _run(state, _job("web", 8), [0], started=0, plain=True)
    bound = [replace(b, plain=plain) for b in bound]
    high = replace(_job("high", 8), priority=10)
    plan = _cycle(nodes, state, [high], running=[(bound, held, view)], now=1000, actions=ACTIONS)
    assert _evicted(plan) == evicted


# --- properties ---------------------------------------------------------------------------


@st.composite
def _cluster_with_work(draw: st.DrawFn) -> tuple[object, ...]:
    node_count = draw(st.integers(2, 5))
    nodes, state = _cluster(node_count, gpus=4)
    min_runtime = draw(st.sampled_from([0.0, 300.0, 3000.0]))
    queues = [
        _queue("root"),
        QueueSpec(
            "a",
            parent="root",
            quotas={ANY: Quota(_gpus(2 * node_count))},
            min_runtime_s=min_runtime,
        ),
        QueueSpec(
            "b",
            parent="root",
            quotas={ANY: Quota(_gpus(2 * node_count))},
            min_runtime_s=min_runtime,
        ),
    ]
    running: list[Running] = []
    free = list(range(node_count))
    for i in range(draw(st.integers(0, node_count))):
        pods = draw(st.integers(1, min(2, len(free)))) if free else 0
        if not pods:
            break
        where, free = free[:pods], free[pods:]
        job = _job(f"r{i}", 4, queue=draw(st.sampled_from(["a", "b"])), pods=pods)
        elastic = pods == 2 and draw(st.booleans())
        running.append(
            _run(
                state,
                job,
                where,
                started=draw(st.floats(0, 5000)),
                priority=draw(st.integers(0, 3)),
                min_size=1 if elastic else None,
                checkpoint=draw(st.one_of(st.none(), st.floats(0, 5000))),
            )
        )
    pending = [
        replace(
            _job(
                f"p{i}",
                draw(st.sampled_from([1, 2, 4])),
                queue=draw(st.sampled_from(["a", "b"])),
                pods=draw(st.integers(1, 2)),
                submitted=float(i),
            ),
            priority=draw(st.integers(0, 4)),
        )
        for i in range(draw(st.integers(1, 4)))
    ]
    return nodes, state, queues, running, pending


@settings(max_examples=80, deadline=None)
@given(_cluster_with_work(), st.sampled_from(["priority", "srtf-oracle", "tiresias-las"]))
def test_evictions_take_whole_gangs_never_below_minimum_or_before_min_runtime(
    work: tuple[object, ...], ordering: str
) -> None:
    nodes, state, queues, running, pending = work
    now = 5000.0

    def plan_once() -> Plan:
        return _cycle(
            nodes,
            state,
            pending,
            queues=queues,
            running=running,
            now=now,  # type: ignore[arg-type]
            ordering=ordering,
            actions=ACTIONS,
        )

    plan = plan_once()
    specs = {q.name: q for q in queues}  # type: ignore[attr-defined]
    views = {r[2].key: r for r in running}  # type: ignore[attr-defined]
    assert len({e.uid for e in plan.evict}) == len(plan.evict)  # no pod evicted twice
    evicted: dict[tuple[str, str], int] = {}
    for evict in plan.evict:
        assert evict.victim_gang is not None
        evicted[evict.victim_gang] = evicted.get(evict.victim_gang, 0) + 1
    for gang, count in evicted.items():
        bound, _, view = views[gang]
        assert now - (view.started_s or 0) >= specs[view.queue].min_runtime_s
        if count < len(bound):  # only an elastic gang loses part of its members
            assert view.min_size is not None
            assert len(bound) - count >= view.min_size
    again = plan_once()
    assert again.evict == plan.evict  # the same input evicts the same pods


def test_a_gang_taken_after_its_surplus_gives_back_its_quota_once() -> None:
    """An elastic gang's surplus, then the whole gang: its quota is counted back once, so
    reclaim sees that the tree is still over its quota and takes the next borrower too."""
    nodes, state = _cluster(3)
    queues = [
        _queue("root"),
        _queue("a", 16, parent="root"),
        _queue("b", 0, parent="root"),
        _queue("f", 0, parent="root"),
    ]
    elastic = _run(state, _job("e", 8, queue="b", pods=2), [0, 1], started=0, min_size=1)
    other = _run(state, _job("g", 8, queue="f"), [2], started=0)
    plan = _cycle(
        nodes,
        state,
        [_job("mine", 8, queue="a", pods=2)],
        queues=queues,
        running=[elastic, other],
        now=1000,
        actions=ACTIONS,
    )
    assert _evicted(plan) == ["e-0", "e-1", "g-0"]


def test_a_shape_that_found_no_room_is_not_tried_again_behind_it() -> None:
    """big-1 may evict only low (high outranks it): 4 GPUs, not the 8 it needs. big-2, of
    its shape and behind it, could only take fewer victims: it is not tried again, and its
    wait says why. small, of another shape, still preempts low."""
    nodes, state = _cluster(1)
    low = _run(state, _job("low", 4), [0], started=0, priority=0)
    high = _run(state, _job("high", 4), [0], started=0, priority=100)
    pending = [
        replace(_job(name, gpus, submitted=float(i)), priority=10)
        for i, (name, gpus) in enumerate([("big-1", 8), ("big-2", 8), ("small", 4)])
    ]
    plan = _cycle(nodes, state, pending, running=[low, high], now=1000, actions=ACTIONS)
    waits = {w.job.name: w.reason for w in plan.wait}
    assert "evicting every victim it may (1) would not make room" in waits["big-1"]
    assert "would not make room (nor for ml/big-1, of its shape and ahead of it)" in waits["big-2"]
    assert _evicted(plan) == ["low-0"]
    assert "preempting 1 lower-priority gang(s): ml/low" in waits["small"]

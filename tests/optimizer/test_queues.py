"""Queues: quota with borrowing and lending (table tests, Kueue's semantics), fair share,
orderings, EASY backfill and preemption by ordering, on the pure cycle."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optimizer.planner.cluster import ClusterState, NodeSpec, PodRequest
from optimizer.planner.cycle import CycleConfig, run_cycle
from optimizer.planner.objects import NodeInfo, PodInfo
from optimizer.planner.plan import (
    NO_QUEUE,
    QUOTA,
    RESERVED,
    BoundPod,
    ClusterSnapshot,
    Job,
    Plan,
)
from optimizer.planner.queues import GPU, QueueError, QueueSet, QueueSpec, Quota, QuotaBook
from optimizer.planner.snapshot import Snapshot

ANY = (GPU, "")


def _gpus(count: float) -> int:
    return int(count * 1000)


def _queue(name: str, nominal: float = 0, **options: object) -> QueueSpec:
    borrowing = options.pop("borrowing", None)
    lending = options.pop("lending", None)
    quota = Quota(
        _gpus(nominal),
        None if borrowing is None else _gpus(float(borrowing)),  # type: ignore[arg-type]
        None if lending is None else _gpus(float(lending)),  # type: ignore[arg-type]
    )
    return QueueSpec(name, quotas={ANY: quota}, **options)  # type: ignore[arg-type]


@dataclass(frozen=True)
class QuotaCase:
    name: str
    queues: Sequence[QueueSpec]
    used: dict[str, float]  # GPUs in use per queue
    queue: str
    asks: float
    refused: str | None  # a phrase of the reason, or None: it fits


QUOTA_CASES = [
    QuotaCase("within nominal", [_queue("a", 4)], {"a": 2}, "a", 2, None),
    QuotaCase("a lone queue cannot borrow", [_queue("a", 4)], {"a": 2}, "a", 3, "tree has 2"),
    QuotaCase(
        "borrows a sibling's unused quota",
        [_queue("root"), _queue("a", 4, parent="root"), _queue("b", 4, parent="root")],
        {"a": 4},
        "a",
        4,
        None,
    ),
    QuotaCase(
        "not beyond what the tree has",
        [_queue("root"), _queue("a", 4, parent="root"), _queue("b", 4, parent="root")],
        {"a": 4, "b": 1},
        "a",
        4,
        "tree has 3",
    ),
    QuotaCase(
        "borrowing limit",
        [
            _queue("root"),
            _queue("a", 4, parent="root", borrowing=1),
            _queue("b", 4, parent="root"),
        ],
        {"a": 4},
        "a",
        2,
        "may borrow 1 GPUs",
    ),
    QuotaCase(
        "a sibling's lending limit keeps the rest",
        [_queue("root"), _queue("a", 4, parent="root"), _queue("b", 4, parent="root", lending=1)],
        {"a": 4},
        "a",
        2,
        "kept by queues that do not lend",
    ),
    QuotaCase(
        "what a sibling uses of its kept part is not kept twice",
        [_queue("root"), _queue("a", 4, parent="root"), _queue("b", 4, parent="root", lending=1)],
        {"a": 4, "b": 3},
        "a",
        1,
        None,
    ),
    QuotaCase(
        "a parent's borrowing limit caps its subtree",
        [
            _queue("root"),
            _queue("org", 0, parent="root", borrowing=2),
            _queue("a", 2, parent="org"),
            _queue("b", 8, parent="root"),
        ],
        {"a": 2},
        "a",
        3,
        "parent queue org",
    ),
    QuotaCase(
        "a resource no queue names is not limited",
        [QueueSpec("a", quotas={("cpu", ""): Quota(1000)})],
        {},
        "a",
        64,
        None,
    ),
]


@pytest.mark.parametrize("case", QUOTA_CASES, ids=lambda c: c.name)
def test_quota(case: QuotaCase) -> None:
    book = QuotaBook(QueueSet(case.queues))
    for queue, gpus in case.used.items():
        book.add(queue, {ANY: _gpus(gpus)})
    refused = book.check(case.queue, {ANY: _gpus(case.asks)})
    if case.refused is None:
        assert refused is None
    else:
        assert refused is not None
        assert case.refused in refused, refused


@pytest.mark.parametrize(
    ("specs", "phrase"),
    [
        ([QueueSpec("a", parent="b")], "parent b is not a queue"),
        ([QueueSpec("a", parent="b"), QueueSpec("b", parent="a")], "cycle"),
        ([QueueSpec("a"), QueueSpec("a")], "defined twice"),
        (
            [
                QueueSpec("a", namespaces=frozenset({"ml"})),
                QueueSpec("b", namespaces=frozenset({"ml"})),
            ],
            "namespace ml is served by both",
        ),
    ],
)
def test_invalid_queue_sets_are_refused_with_the_reason(
    specs: list[QueueSpec], phrase: str
) -> None:
    with pytest.raises(QueueError, match=phrase):
        QueueSet(specs)


def test_share_is_weighted_borrowing_over_the_tree() -> None:
    queues = QueueSet(
        [
            _queue("root"),
            _queue("a", 4, parent="root"),
            QueueSpec("b", parent="root", weight=2, quotas={ANY: Quota(_gpus(4))}),
        ]
    )
    book = QuotaBook(queues)
    book.add("a", {ANY: _gpus(6)})
    book.add("b", {ANY: _gpus(6)})
    assert book.share("a") == pytest.approx(2 / 8)
    assert book.share("b") == pytest.approx(2 / 8 / 2)


# --- the cycle with queues ---------------------------------------------------------------


def _cluster(nodes: int, gpus: int = 8) -> tuple[tuple[NodeInfo, ...], ClusterState]:
    specs = [NodeSpec(f"n{i}", 64_000, 512_000, gpus, "H100") for i in range(nodes)]
    return tuple(NodeInfo(s.name) for s in specs), ClusterState.from_nodes(specs)


def _job(
    name: str,
    gpus: int,
    *,
    queue: str | None = None,
    submitted: float = 0.0,
    duration: float | None = None,
    pods: int = 1,
    namespace: str = "ml",
) -> Job:
    members = tuple(
        PodInfo(namespace, f"{name}-{i}", f"{name}-{i}", PodRequest("p", 1000, 1024, gpus, 1000))
        for i in range(pods)
    )
    return Job(
        namespace,
        name,
        size=pods,
        pending=members,
        queue=queue,
        submitted_s=submitted,
        created=f"{submitted:010.1f}",
        duration_s=duration,
    )


def _running(
    state: ClusterState, job: Job, node: int, *, started: float, remaining: float | None
) -> tuple[list[BoundPod], list[tuple[int, tuple[int, ...]]], Job]:
    bound, held = [], []
    for info in job.pending:
        free = [g for g in range(state.gpu_free.shape[1]) if state.gpu_free[node, g] == 1000]
        gpus = tuple(free[: info.request.num_gpu])
        state.allocate(node, gpus, info.request)
        bound.append(BoundPod(info, state.names[node], gpus, gang=job.key, queue=job.queue))
        held.append((node, gpus))
    view = Job(
        job.namespace,
        job.name,
        size=job.size,
        pending=(),
        queue=job.queue,
        submitted_s=job.submitted_s,
        duration_s=remaining,
        started_s=started,
    )
    return bound, held, view


def _cycle(
    nodes: tuple[NodeInfo, ...],
    state: ClusterState,
    jobs: Sequence[Job],
    *,
    queues: Sequence[QueueSpec] = (),
    running: Sequence[tuple[list[BoundPod], list[tuple[int, tuple[int, ...]]], Job]] = (),
    now: float = 0.0,
    ordering: str = "priority",
    actions: tuple[str, ...] = ("allocate", "preempt"),
) -> Plan:
    snapshot = ClusterSnapshot(
        nodes=nodes,
        base=Snapshot(state=state, held=tuple(h for r in running for h in r[1])),
        bound=tuple(b for r in running for b in r[0]),
        jobs=tuple(jobs),
        queues=QueueSet(queues),
        running=tuple(r[2] for r in running),
        now_s=now,
    )
    config = CycleConfig(policy="bestfit", ordering=ordering, actions=actions)
    return run_cycle(snapshot, config=config, quiet=True)


def _admitted(plan: Plan) -> list[str]:
    return [a.job.name for a in plan.admit]


def _waits(plan: Plan) -> dict[str, tuple[str, str]]:
    return {w.job.name: (w.code, w.reason) for w in plan.wait}


def test_quota_refusal_says_which_queue_and_how_much() -> None:
    nodes, state = _cluster(2)
    plan = _cycle(nodes, state, [_job("big", 8, queue="a")], queues=[_queue("a", 4)])
    assert _admitted(plan) == []
    code, reason = _waits(plan)["big"]
    assert code == QUOTA
    assert "queue a needs 8 GPUs of nvidia.com/gpu" in reason


def test_namespace_default_queue_and_a_missing_queue() -> None:
    nodes, state = _cluster(1)
    queues = [_queue("a", 2, namespaces=frozenset({"ml"}))]
    jobs = [_job("one", 2), _job("two", 2), _job("lost", 1, queue="nope")]
    plan = _cycle(nodes, state, jobs, queues=queues)
    assert _admitted(plan) == ["one"]  # the namespace's queue: its quota holds two GPUs
    waits = _waits(plan)
    assert waits["two"][0] == QUOTA
    assert waits["lost"] == (NO_QUEUE, "queue nope does not exist")


def test_fair_share_serves_the_queue_that_borrows_least() -> None:
    nodes, state = _cluster(2)  # 16 GPUs
    queues = [_queue("root"), _queue("a", 8, parent="root"), _queue("b", 8, parent="root")]
    # a asks for everything first (older); b's jobs are newer: without fair share a takes all
    jobs = [_job(f"a{i}", 4, queue="a", submitted=i) for i in range(4)]
    jobs += [_job(f"b{i}", 4, queue="b", submitted=10 + i) for i in range(2)]
    plan = _cycle(nodes, state, jobs, queues=queues, ordering="fifo")
    assert sorted(_admitted(plan)) == ["a0", "a1", "b0", "b1"]


def test_a_queue_borrows_what_its_sibling_leaves_idle() -> None:
    nodes, state = _cluster(2)
    queues = [_queue("root"), _queue("a", 8, parent="root"), _queue("b", 8, parent="root")]
    jobs = [_job(f"a{i}", 4, queue="a", submitted=i) for i in range(4)]
    plan = _cycle(nodes, state, jobs, queues=queues, ordering="fifo")
    assert _admitted(plan) == ["a0", "a1", "a2", "a3"]


@pytest.mark.parametrize(
    ("ordering", "first"),
    [
        ("fifo", "long"),
        ("sjf-oracle", "short"),
        ("qssf", "narrow"),
        ("stowage", "narrow"),
    ],
)
def test_orderings_choose_who_goes_first(ordering: str, first: str) -> None:
    nodes, state = _cluster(1)
    jobs = [
        _job("long", 8, submitted=0, duration=10_000),
        _job("short", 8, submitted=1, duration=100),
        _job("narrow", 1, submitted=2, duration=500),  # longer, less service
    ]
    # one 8-GPU node: whoever goes first decides what else fits
    plan = _cycle(nodes, state, jobs, ordering=ordering, actions=("allocate",))
    assert _admitted(plan)[0] == first


def test_virtual_finish_lets_an_old_long_job_ahead_of_new_short_ones() -> None:
    nodes, state = _cluster(1)
    old = _job("old", 8, submitted=0, duration=1_000)
    new = _job("new", 8, submitted=9_000, duration=100)  # after old's virtual finish (8,000)
    plan = _cycle(nodes, state, [new, old], ordering="stowage", actions=("allocate",))
    assert _admitted(plan) == ["old"]


def test_backfill_runs_only_what_ends_before_the_reservation() -> None:
    nodes, state = _cluster(1)
    # 6 of 8 GPUs held for another 1,000 s; the head needs all 8
    holder = _running(state, _job("holder", 6), 0, started=0, remaining=1_000)
    jobs = [
        _job("head", 8, submitted=0, duration=500),
        _job("quick", 2, submitted=1, duration=300),  # ends before 1,000: may go
        _job("slow", 2, submitted=2, duration=5_000),  # would delay the head
    ]
    plan = _cycle(
        nodes,
        state,
        jobs,
        running=[holder],
        ordering="fifo",
        actions=("allocate", "backfill"),
    )
    assert _admitted(plan) == ["quick"]
    assert "backfilled" in plan.admit[0].note
    waits = _waits(plan)
    assert "reserved to start in 17 min" in waits["head"][1]
    # quick took the two free GPUs first, so slow does not fit now at all; with more
    # room it is refused for the reservation's sake:
    nodes, state = _cluster(2)
    holder = _running(state, _job("holder", 6), 0, started=0, remaining=1_000)
    filler = _running(state, _job("filler", 8), 1, started=0, remaining=10_000)
    plan = _cycle(
        nodes,
        state,
        [jobs[0], jobs[2]],
        running=[holder, filler],
        ordering="fifo",
        actions=("allocate", "backfill"),
    )
    assert _admitted(plan) == []
    assert _waits(plan)["slow"][0] == RESERVED
    assert "would delay ml/head" in _waits(plan)["slow"][1]


def test_without_backfill_a_strict_queue_holds_everything_behind_its_head() -> None:
    nodes, state = _cluster(1)
    holder = _running(state, _job("holder", 6), 0, started=0, remaining=1_000)
    jobs = [_job("head", 8, submitted=0), _job("small", 1, submitted=1)]
    snapshot_plan = run_cycle(
        ClusterSnapshot(
            nodes=nodes,
            base=Snapshot(state=state, held=tuple(holder[1])),
            bound=tuple(holder[0]),
            jobs=tuple(jobs),
        ),
        config=CycleConfig(policy="bestfit", ordering="fifo", actions=("allocate",), strict=True),
        quiet=True,
    )
    assert _admitted(snapshot_plan) == []
    assert "waiting behind ml/head" in _waits(snapshot_plan)["small"][1]


def test_a_preemptive_ordering_evicts_the_job_it_ranks_behind() -> None:
    nodes, state = _cluster(1)
    queues = [_queue("a", 8)]
    long_run = _running(state, _job("long", 8, queue="a"), 0, started=0, remaining=50_000)
    short = _job("short", 8, queue="a", submitted=100, duration=60)
    plan = _cycle(
        nodes, state, [short], queues=queues, running=[long_run], now=100, ordering="srtf-oracle"
    )
    assert [e.pod for e in plan.evict] == ["long-0"]
    assert "ranks ahead of them by srtf-oracle" in plan.evict[0].reason
    # a job that is not shorter preempts nothing
    longer = _job("longer", 8, queue="a", submitted=100, duration=90_000)
    plan = _cycle(
        nodes, state, [longer], queues=queues, running=[long_run], now=100, ordering="srtf-oracle"
    )
    assert plan.evict == ()


def test_minimum_runtime_protects_a_fresh_job() -> None:
    nodes, state = _cluster(1)
    queues = [QueueSpec("a", quotas={ANY: Quota(_gpus(8))}, min_runtime_s=600)]
    fresh = _running(state, _job("fresh", 8, queue="a"), 0, started=50, remaining=50_000)
    short = _job("short", 8, queue="a", submitted=100, duration=60)
    plan = _cycle(
        nodes, state, [short], queues=queues, running=[fresh], now=100, ordering="srtf-oracle"
    )
    assert plan.evict == ()


# --- properties ---------------------------------------------------------------------------


@st.composite
def _scenario(draw: st.DrawFn) -> tuple[list[QueueSpec], list[Job], int]:
    count = draw(st.integers(1, 4))
    queues = [_queue("root")]
    for i in range(count):
        queues.append(
            _queue(
                f"q{i}",
                draw(st.integers(0, 16)),
                parent="root",
                borrowing=draw(st.one_of(st.none(), st.integers(0, 8))),
                lending=None,
            )
        )
    jobs = [
        _job(
            f"j{i}",
            draw(st.sampled_from([1, 2, 4, 8])),
            queue=f"q{draw(st.integers(0, count - 1))}",
            submitted=float(i),
            duration=float(draw(st.integers(1, 10_000))),
            pods=draw(st.integers(1, 3)),
        )
        for i in range(draw(st.integers(0, 25)))
    ]
    return queues, jobs, draw(st.integers(1, 4))


@settings(max_examples=60, deadline=None)
@given(_scenario(), st.sampled_from(["fifo", "priority", "stowage", "qssf"]))
def test_quota_is_never_exceeded_unless_borrowing_allows_it(
    scenario: tuple[list[QueueSpec], list[Job], int], ordering: str
) -> None:
    queues, jobs, node_count = scenario
    nodes, state = _cluster(node_count)
    plans = [
        _cycle(nodes, state, jobs, queues=queues, ordering=ordering, actions=actions)
        for actions in (("allocate",), ("allocate", "backfill"))
    ]
    specs = {q.name: q for q in queues}
    for plan in plans:
        used: dict[str, int] = {}
        for admit in plan.admit:
            assert len(admit.pods) == admit.job.size  # never part of a gang
            queue = admit.job.queue or ""
            used[queue] = used.get(queue, 0) + sum(p.request.gpu_request_milli for p in admit.pods)
        total = sum(specs[q].quotas[ANY].nominal for q in specs)
        assert sum(used.values()) <= total
        for queue, amount in used.items():
            quota = specs[queue].quotas[ANY]
            if quota.borrowing_limit is not None:
                assert amount <= quota.nominal + quota.borrowing_limit
    # the same input gives the same plan
    again = _cycle(nodes, state, jobs, queues=queues, ordering=ordering, actions=("allocate",))
    assert _admitted(again) == _admitted(plans[0])


def test_usage_history_decays_borrowing_with_its_half_life() -> None:
    from optimizer.planner.queues import UsageHistory

    queues = QueueSet(
        [_queue("root"), _queue("a", 4, parent="root"), _queue("b", 4, parent="root")]
    )
    book = QuotaBook(queues)
    book.add("a", {ANY: _gpus(8)})  # a borrows 4 GPUs
    history = UsageHistory(half_life_s=3600)
    assert history.update(book, now_s=0) == {"root": {}, "a": {}, "b": {}}  # no time has passed
    after = history.update(book, now_s=3600)  # one half-life borrowing 4: half of it
    assert after["a"][ANY] == pytest.approx(_gpus(2))
    idle = QuotaBook(queues)
    later = history.update(idle, now_s=7200)  # a stops borrowing: the memory halves
    assert later["a"][ANY] == pytest.approx(_gpus(1))
    assert UsageHistory(half_life_s=0).update(book, now_s=10) == {}


def test_fair_share_with_history_serves_the_queue_that_borrowed_less_lately() -> None:
    nodes, state = _cluster(1)
    queues = [_queue("root"), _queue("a", 4, parent="root"), _queue("b", 4, parent="root")]
    jobs = [_job("from-a", 8, queue="a", submitted=0), _job("from-b", 8, queue="b", submitted=1)]
    plain = _cycle(nodes, state, jobs, queues=queues, ordering="fifo")
    assert _admitted(plain) == ["from-a"]  # equal shares: the earlier job
    snapshot = ClusterSnapshot(
        nodes=nodes,
        base=Snapshot(state=state, held=()),
        bound=(),
        jobs=tuple(jobs),
        queues=QueueSet(queues),
        usage_history={"a": {ANY: float(_gpus(3))}},  # a borrowed lately
    )
    plan = run_cycle(snapshot, config=CycleConfig(policy="bestfit", ordering="fifo"), quiet=True)
    assert _admitted(plan) == ["from-b"]

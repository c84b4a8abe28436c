"""Pull planning over three consumers: priority, then online, then batch (pure)."""

from __future__ import annotations

import itertools

from workers.intake import PullPlan, PullState, plan_pulls, priority_reserve

BASE = PullState(
    capacity=16,
    in_flight=0,
    online_outstanding=0,
    batch_outstanding=0,
    online_backlog=False,
    online_reserve=4,
    min_pull=2,
    priority_reserve=1,
)


def plan(**changes: object) -> PullPlan:
    return plan_pulls(BASE._replace(**changes))  # type: ignore[arg-type]


def test_idle_keeps_a_reserve_on_priority_and_online_the_rest_to_batch() -> None:
    assert plan() == PullPlan(online=4, batch=11, priority=1)


def test_an_online_backlog_never_takes_the_priority_reserve() -> None:
    assert plan(online_backlog=True) == PullPlan(online=15, batch=0, priority=1)
    # Saturated by online work: the one slot left is the priority credit, kept.
    assert plan(online_backlog=True, in_flight=15, priority_outstanding=1) == PullPlan(0, 0)


def test_a_priority_backlog_takes_all_free_capacity_before_online() -> None:
    p = plan(
        priority_backlog=True,
        online_backlog=True,
        in_flight=10,
        online_outstanding=2,
        batch_outstanding=2,
    )
    assert p == PullPlan(online=0, batch=0, withdraw_batch=True, priority=4)
    # Online's own outstanding credit stays (it is never taken back), but gets no more.
    assert plan(priority_backlog=True, in_flight=12) == PullPlan(online=0, batch=0, priority=4)


def test_a_used_priority_reserve_is_refilled_from_batch_credit() -> None:
    # A priority request took the reserve credit while batch credit held the rest.
    p = plan(in_flight=1, online_outstanding=4, batch_outstanding=11)
    assert p == PullPlan(online=0, batch=10, withdraw_batch=True, priority=1)


def test_the_first_backlog_in_order_wins() -> None:
    # Priority idle (its reserve kept), online backlog: online gets the rest, batch nothing.
    assert plan(online_backlog=True, batch_outstanding=4) == PullPlan(15, 0, True, 1)
    # Priority backlog with online idle: the online reserve is not topped up meanwhile.
    assert plan(priority_backlog=True) == PullPlan(online=0, batch=0, priority=16)


def test_never_exceeds_capacity_and_never_starves_priority() -> None:
    for in_flight, pr, on, ba in itertools.product(range(17), range(3), range(5), range(17)):
        if in_flight + pr + on + ba > 16:
            continue
        for pb, ob in itertools.product((False, True), repeat=2):
            s = BASE._replace(
                in_flight=in_flight,
                priority_outstanding=pr,
                online_outstanding=on,
                batch_outstanding=ba,
                priority_backlog=pb,
                online_backlog=ob,
            )
            p = plan_pulls(s)
            kept_batch = 0 if p.withdraw_batch else ba
            assert min(p.priority, p.online, p.batch) >= 0
            total = in_flight + pr + on + kept_batch + p.priority + p.online + p.batch
            assert total <= 16, (s, p)
            # Whenever anything is pulled or kept for online or batch beyond what runs, the
            # priority consumer has at least its reserve.
            if p.online or p.batch:
                assert pr + p.priority >= 1, (s, p)


def test_priority_reserve_is_at_least_one_and_within_capacity() -> None:
    assert priority_reserve(8) == 1
    assert priority_reserve(8, 0) == 1
    assert priority_reserve(8, 3) == 3
    assert priority_reserve(2, 5) == 1  # online work keeps a slot
    assert priority_reserve(1) == 0

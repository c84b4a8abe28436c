"""Max-min fair split of a model's free dispatch window between tenants (scheduler/fairshare)."""

from __future__ import annotations

from scheduler.fairshare import fair_split


def test_a_newcomer_gets_the_freed_slots_until_shares_are_equal() -> None:
    # A holds 60 of a 64 window; 4 slots free: all go to B.
    assert fair_split(4, {"a": 60}, {"a": 10_000, "b": 200}) == {"a": 0, "b": 4}
    # Later: A 40, B 20 in flight, 4 free: still B's.
    assert fair_split(4, {"a": 40, "b": 20}, {"a": 9_000, "b": 180}) == {"a": 0, "b": 4}
    # Equal shares: split evenly, ties to the first listed.
    assert fair_split(5, {"a": 30, "b": 30}, {"a": 100, "b": 100}) == {"a": 3, "b": 2}


def test_the_whole_window_splits_evenly_and_small_wants_leave_the_rest() -> None:
    assert fair_split(64, {}, {"a": 1000, "b": 1000}) == {"a": 32, "b": 32}
    assert fair_split(64, {}, {"a": 1000, "b": 10, "c": 1000}) == {"a": 27, "b": 10, "c": 27}
    assert fair_split(64, {}, {"a": 5}) == {"a": 5}
    assert fair_split(0, {}, {"a": 5}) == {"a": 0}
    assert fair_split(10, {"x": 3}, {"a": 0, "b": 4}) == {"a": 0, "b": 4}


def test_every_slot_is_given_and_no_tenant_gets_more_than_it_wants() -> None:
    for free in range(0, 70, 7):
        wants = {"a": 50, "b": 3, "c": 17, "d": 400}
        held = {"a": 5, "c": 30, "d": 1}
        got = fair_split(free, held, wants)
        assert sum(got.values()) == min(free, sum(wants.values()))
        assert all(got[t] <= wants[t] for t in wants)
        # Max-min: a tenant below another's final level is one that got all it wanted.
        levels = {t: held.get(t, 0) + got[t] for t in wants}
        for t in wants:
            if got[t] < wants[t]:
                assert all(levels[t] >= levels[u] - 1 for u in wants if got[u] > 0)

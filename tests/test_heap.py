"""`jetserve.heap.settle`: the collector settings of a long-running server process."""

from __future__ import annotations

import gc
import sys
import weakref
from collections.abc import Iterator

import pytest

from jetserve.heap import YOUNG_THRESHOLD, settle


@pytest.fixture
def restored_collector() -> Iterator[None]:
    # Garbage earlier tests left (e.g. a connection whose event loop is gone, after a failed
    # test) is collected first: its finalizers' complaints are not this test's.
    hook = sys.unraisablehook
    sys.unraisablehook = lambda _: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.mark.usefixtures("restored_collector")
def test_settle_hides_what_exists_and_still_collects_later_cycles() -> None:
    before = Node()
    settle()
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    assert gc.get_freeze_count() > 0
    # What existed at start-up is out of the collector's sight ...
    assert not any(o is before for o in gc.get_objects())
    # ... and garbage made afterwards is still found.
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    assert gone() is not None  # a cycle: reference counting alone does not free it
    gc.collect()
    assert gone() is None


def test_the_worker_command_settles_the_heap_once_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    import jetserve.heap
    import workers.worker
    from jetserve.cli import cmd_worker

    seen: dict[str, object] = {}

    def fake_main(spec: object, env: object, on_serving: object = None) -> int:
        seen["on_serving"] = on_serving
        return 0

    settled: list[bool] = []
    monkeypatch.setattr(workers.worker, "main", fake_main)
    monkeypatch.setattr(jetserve.heap, "settle", lambda: settled.append(True))
    monkeypatch.delenv("JETSERVE_READY_FILE", raising=False)
    args = argparse.Namespace(model="m", model_class="echo", option=[])
    assert cmd_worker(args) == 0
    on_serving = seen["on_serving"]
    assert callable(on_serving)
    assert settled == []  # not before the worker serves ...
    on_serving()
    assert settled == [True]  # ... and once it does

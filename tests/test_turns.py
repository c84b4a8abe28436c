"""loadtest.turns: two lanes of real processes taking turns (SIGSTOP / SIGCONT)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.turns import Slice, Turns, active_between, family

#: A parent (sh) whose child counts as fast as it can in an 8-byte file.
COUNTER = """
import mmap, sys
with open(sys.argv[1], "r+b") as f, mmap.mmap(f.fileno(), 8) as m:
    view = memoryview(m).cast("q")
    n = 0
    while True:
        n += 1
        view[0] = n
"""


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return chr(stat[stat.rindex(b")") + 2])


def _until(check: object, timeout_s: float = 20.0) -> None:
    end = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def _read(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[:8], "little")


@pytest.fixture
def lanes(tmp_path: Path) -> Iterator[list[tuple[subprocess.Popen[bytes], Path]]]:
    """Two lanes, each a shell whose child process counts."""
    started = []
    for i in (0, 1):
        counter = tmp_path / f"c{i}"
        counter.write_bytes(bytes(8))
        script = tmp_path / "count.py"
        script.write_text(COUNTER)
        shell = f"{sys.executable} {script} {counter} & wait"
        proc = subprocess.Popen(["sh", "-c", shell], start_new_session=True)
        started.append((proc, counter))
    for _, counter in started:
        _until(lambda c=counter: _read(c) > 0)
    yield started
    for proc, _ in started:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_family_finds_the_descendants(lanes: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
    shell = lanes[0][0]
    members = family([shell.pid])
    assert members[0] == shell.pid
    assert len(members) == 2  # the shell and its counting child
    assert lanes[1][0].pid not in members


def test_a_stopped_lane_does_no_work_until_continued(
    lanes: list[tuple[subprocess.Popen[bytes], Path]],
) -> None:
    (shell, counter), (other, other_counter) = lanes
    turns = Turns([[shell.pid], [other.pid]])
    turns.stop(0)
    child = family([shell.pid])[1]
    _until(lambda: _state(child) == "T" and _state(shell.pid) == "T")
    frozen = _read(counter)
    time.sleep(0.2)
    assert _read(counter) == frozen
    moving = _read(other_counter)
    _until(lambda: _read(other_counter) > moving)  # the other lane ran on
    turns.cont(0)
    _until(lambda: _read(counter) > frozen)


def test_run_alternates_and_accounts_each_lanes_work(
    lanes: list[tuple[subprocess.Popen[bytes], Path]],
) -> None:
    counters = [counter for _, counter in lanes]
    turns = Turns([[p.pid] for p, _ in lanes], slice_s=0.02, read=lambda i: _read(counters[i]))
    turns.run(lambda: min(len(s) for s in turns.slices) >= 6, first=1)
    first, second = turns.slices[1], turns.slices[0]
    assert len(first) == len(second) == 6
    for a, b in zip(first, second, strict=True):  # lane 1 first, then 0, never together
        assert a.cont < a.stop <= b.cont < b.stop
    for lane in (0, 1):
        readings = [s.before for s in turns.slices[lane]] + [turns.final[lane]]
        assert readings == sorted(readings)
        assert readings[-1] > readings[0]
        work, ran_s = turns.window(lane, 1, 4)
        assert work == turns.slices[lane][5].before - turns.slices[lane][1].before
        assert ran_s == pytest.approx(sum(s.stop - s.cont for s in turns.slices[lane][1:5]))
    # both run again afterwards
    _until(lambda: all(_state(pid) != "T" for pid in family([p.pid for p, _ in lanes])))


def test_active_between_counts_only_running_time() -> None:
    slices = [Slice(0.0, 1.0, 0), Slice(2.0, 3.0, 0), Slice(4.0, 5.0, 0)]
    assert active_between(slices, 0.5, 4.5) == pytest.approx(2.0)
    assert active_between(slices, 1.2, 1.8) == 0.0
    assert active_between(slices, -1.0, 9.0) == pytest.approx(3.0)

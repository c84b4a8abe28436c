"""Two lanes of processes taking turns on the machine: one runs while the other is stopped.

`Turns` sends SIGSTOP to every process of one lane (its root processes and all their
descendants, e.g. PostgreSQL's backends) and SIGCONT to the other's, and swaps every
`slice_s` on average (each slice drawn between 0.5x and 1.5x, so that no timer of a lane's
processes, e.g. PostgreSQL's 200 ms writers, keeps one phase against the turns). It records,
per lane, each slice it ran: when it was continued and stopped (wall clock, `time.time()`,
the clock PostgreSQL's timestamps use), and a reading taken just before it was continued
(the lane's work counter, read while it is stopped and so still). Linux only (reads /proc).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


def _children() -> dict[int, list[int]]:
    """Every process's children, from /proc/*/stat (parent pid: the 4th field)."""
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # exited meanwhile
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def family(roots: Sequence[int]) -> list[int]:
    """`roots` and all their descendants."""
    kids = _children()
    found: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(kids.get(pid, ()))
    return found


def _signal(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def active_between(slices: Sequence[Slice], start: float, end: float) -> float:
    """Seconds the lane ran between wall-clock times `start` and `end`."""
    return sum(max(0.0, min(s.stop, end) - max(s.cont, start)) for s in slices)


@dataclass(frozen=True)
class Slice:
    cont: float  #: time.time() when the lane was continued
    stop: float  #: time.time() when it was stopped again
    before: int  #: the lane's reading just before it was continued (0 without one)


@dataclass
class Turns:
    """`roots[i]`: lane i's root processes (the caller may change them between runs)."""

    roots: list[list[int]]
    slice_s: float = 0.2
    #: Lane i's work counter, read while the lane is stopped (before each slice, and at the end).
    read: Callable[[int], int] | None = None
    slices: list[list[Slice]] = field(default_factory=lambda: [[], []])
    #: Each lane's reading after its last slice (the end of `run`).
    final: list[int] = field(default_factory=lambda: [0, 0])
    _stopped: list[list[int]] = field(default_factory=lambda: [[], []])
    _draw: random.Random = field(default_factory=random.Random)

    def stop(self, lane: int) -> None:
        """Stop the roots first (no new child after that), then all their descendants."""
        _signal(self.roots[lane], signal.SIGSTOP)
        self._stopped[lane] = family(self.roots[lane])
        _signal(self._stopped[lane], signal.SIGSTOP)

    def cont(self, lane: int) -> None:
        """Continue what `stop` stopped (a stopped process cannot have forked since)."""
        _signal(self._stopped[lane] or family(self.roots[lane]), signal.SIGCONT)
        self._stopped[lane] = []

    def _reading(self, lane: int) -> int:
        return self.read(lane) if self.read is not None else 0

    def run(
        self, done: Callable[[], bool], first: int = 0, begin: Callable[[], None] | None = None
    ) -> None:
        """Both lanes stopped, `begin()` (e.g. start the clients that wait on the lanes), then
        lane `first` runs a slice, then the other, ... until `done()` (asked after each
        slice); both run again at the end, also on an error."""
        self.stop(0)
        self.stop(1)
        lane = first
        try:
            if begin is not None:
                begin()
            while not done():
                before = self._reading(lane)
                self.cont(lane)
                started = time.time()
                time.sleep(self.slice_s * self._draw.uniform(0.5, 1.5))
                self.stop(lane)
                stopped = time.time()
                self.slices[lane].append(Slice(started, stopped, before))
                lane = 1 - lane
            self.final = [self._reading(0), self._reading(1)]
        finally:
            self.cont(0)
            self.cont(1)

    def window(self, lane: int, first: int, count: int) -> tuple[int, float]:
        """Work done (readings' difference) and seconds run in lane's slices
        [first, first + count)."""
        slices = self.slices[lane]
        end = slices[first + count].before if first + count < len(slices) else self.final[lane]
        ran = sum(s.stop - s.cont for s in slices[first : first + count])
        return end - slices[first].before, ran

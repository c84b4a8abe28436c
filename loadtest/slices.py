"""Two lanes' loads taking turns on the machine, a fraction of a second each.

Each lane is a whole stack (bridge, workers, nats-server) under its own `wrk`. Both wrk
processes run for the whole measurement, but only one at a time: a controller stops one
(SIGSTOP) and continues the other (SIGCONT) every `slice_s` (0.1 s by default), so each lane
has the whole machine during its slices, and whatever changes the machine's speed over
seconds (another process, the host's neighbours, frequency) falls on both lanes alike. A lane
served at the same time as the other (`side_by_side --mode together`) shares the two cores with
it, and how the kernel splits them between ten processes moves each round by several per cent;
one after the other, the drift of a minute lands in the ratio.

What a lane served is counted by its own bridge (`jetserve_http_requests_total`, every route
but `/metrics`), read between slices, and divided by the lane's active time (from continuing
its wrk to stopping it, measured). The requests a lane has in flight when it is stopped finish
during the other lane's slice, and the other's during its own: in steady state the two
exchanges match to within the difference of the lanes' costs times wrk's connections (about
0.1 % of a slice here), so the ratio of the two rates is the ratio of what each lane serves on
the whole machine. The bridge and worker CPU per request are counted over the same window.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtest.http_bridge import _cpu_s

_SERIES = re.compile(r'^jetserve_http_requests_total\{route="([^"]*)",status="(\d+)"\} (\S+)$')


def answered(base: str) -> tuple[int, int]:
    """Requests the bridge at `base` has answered so far: (2xx, other statuses), `/metrics`
    aside."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        return count_answered(r.read().decode())


def count_answered(text: str) -> tuple[int, int]:
    """(2xx, other statuses) in a bridge's metrics text, `/metrics` aside."""
    ok = bad = 0
    for line in text.splitlines():
        match = _SERIES.match(line)
        if match is None or match.group(1) == "/metrics":
            continue
        count = int(float(match.group(3)))
        if match.group(2).startswith("2"):
            ok += count
        else:
            bad += count
    return ok, bad


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def start_stopped(cmd: Sequence[str]) -> subprocess.Popen[str]:
    """`cmd` started, stopped before it does anything (a shell stops itself, then execs it)."""
    proc = subprocess.Popen(
        ["sh", "-c", 'kill -STOP $$ && exec "$@"', "sh", *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    while _state(proc.pid) != "T":
        time.sleep(0.002)
    return proc


@dataclass
class Turn:
    """One lane under alternating load: its bridge's base URL, the processes whose CPU per
    request to report ("bridge" first), its wrk command."""

    base: str
    pids: dict[str, int]
    wrk: list[str]


@dataclass
class _Count:
    answered: int
    failed: int
    cpu_s: dict[str, float]


def _count(turn: Turn) -> _Count:
    ok, bad = answered(turn.base)
    return _Count(ok, bad, {name: _cpu_s(pid) for name, pid in turn.pids.items()})


def take_turns(
    turns: Sequence[Turn], rounds: int, active_s: float, slice_s: float = 0.1, warm_s: float = 2.0
) -> list[list[dict[str, float]]]:
    """Per round, per lane: req_per_s (answered / active time), <process>_cpu_us_per_req,
    active_s. Each round gives each lane `active_s` of slices; `warm_s` of slices first,
    not counted."""
    procs = [start_stopped(t.wrk) for t in turns]
    active = [0.0] * len(turns)

    def cycle() -> None:
        for i, proc in enumerate(procs):
            began = time.monotonic()
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(slice_s)
            os.kill(proc.pid, signal.SIGSTOP)
            active[i] += time.monotonic() - began

    try:
        for _ in range(max(1, round(warm_s / slice_s))):
            cycle()
        results: list[list[dict[str, float]]] = []
        before = [_count(t) for t in turns]
        for _ in range(rounds):
            active = [0.0] * len(turns)
            for _ in range(max(1, round(active_s / slice_s))):
                cycle()
            after = [_count(t) for t in turns]
            results.append(
                [_figures(b, a, s) for b, a, s in zip(before, after, active, strict=True)]
            )
            before = after
        return results
    finally:
        for proc, turn in zip(procs, turns, strict=True):
            out = _interrupt(proc)
            if re.search(r"Non-2xx or 3xx responses|Socket errors", out):
                raise RuntimeError(f"wrk saw failures against {turn.base}:\n{out}")


def _interrupt(proc: subprocess.Popen[str]) -> str:
    """wrk's summary. Its SIGINT handler only sets a flag: the signal must reach the main
    thread (asleep for the duration) to end it, so it is sent again until wrk exits."""
    os.kill(proc.pid, signal.SIGCONT)
    for _ in range(100):
        os.kill(proc.pid, signal.SIGINT)
        try:
            return proc.communicate(timeout=0.3)[0]
        except subprocess.TimeoutExpired:
            continue
    proc.kill()
    raise RuntimeError("wrk did not stop on SIGINT")


def _figures(before: _Count, after: _Count, active_s: float) -> dict[str, float]:
    if after.failed > before.failed:
        raise RuntimeError(f"{after.failed - before.failed} requests failed in the round")
    n = after.answered - before.answered
    figures = {"req_per_s": n / active_s, "requests": float(n), "active_s": active_s}
    for name, cpu in after.cpu_s.items():
        figures[f"{name}_cpu_us_per_req"] = (cpu - before.cpu_s[name]) / n * 1e6
    return figures

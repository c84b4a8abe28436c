"""What the load generator records and how it reports it: one sample per request, backlog
samples over time, process RSS; the summary (throughput, percentiles, errors by code) as JSON,
and a PNG of latency and backlog over time."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.common import percentile


@dataclass
class Sample:
    """One request, as the client saw it."""

    #: http-chat, http-stream, nats, nats-stream, batch-nats, batch-api
    kind: str
    #: Seconds since the run started: when it was sent, and when its answer was complete.
    sent_s: float
    done_s: float
    #: "ok", or the error code (HTTP `error.code` / status, NATS ErrorCode, exception name).
    outcome: str
    #: Streams: seconds to the first token, and the gaps between later tokens.
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)

    @property
    def latency_s(self) -> float:
        return self.done_s - self.sent_s


@dataclass
class BacklogSample:
    at_s: float
    #: "<model>/<consumer>" -> num_pending (waiting in the stream)
    pending: dict[str, int]
    #: "<model>/<consumer>" -> num_ack_pending (held by workers)
    ack_pending: dict[str, int]
    #: requests sent and not answered yet, as the load generator counts them
    in_flight: int


def _ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ms = [v * 1000 for v in values]
    return {
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3),
    }


def summarize(samples: list[Sample], elapsed_s: float) -> dict[str, Any]:
    """Per kind and overall: count, ok, throughput, latency percentiles of successes,
    TTFT / inter-token latency of streams, errors by code."""
    by_kind: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_kind[s.kind].append(s)
    out: dict[str, Any] = {}
    for kind, group in [*sorted(by_kind.items()), ("all", samples)]:
        ok = [s for s in group if s.outcome == "ok"]
        entry: dict[str, Any] = {
            "requests": len(group),
            "ok": len(ok),
            "throughput_per_s": round(len(ok) / elapsed_s, 2) if elapsed_s > 0 else 0.0,
            "latency": _ms([s.latency_s for s in ok]),
            "errors": dict(Counter(s.outcome for s in group if s.outcome != "ok")),
        }
        ttft = [s.ttft_s for s in ok if s.ttft_s is not None]
        if ttft:
            entry["ttft"] = _ms(ttft)
            entry["itl"] = _ms([gap for s in ok for gap in s.itl_s])
        out[kind] = entry
    return out


# ---- process memory --------------------------------------------------------------------


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    """Direct children of `pid` (PostgreSQL's backends, for instance)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def pss_mb(pid: int) -> float | None:
    """Proportional set size: shared pages split among the processes sharing them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def rss_of(processes: Mapping[str, int]) -> dict[str, float]:
    """RSS in MB of each named process; PostgreSQL's also as the PSS summed over the
    postmaster and its backends (their RSS would count shared buffers once per backend)."""
    out: dict[str, float] = {}
    for name, pid in processes.items():
        value = rss_mb(pid)
        if value is None:
            continue
        out[name] = round(value, 1)
        if name == "postgres":
            pss = [pss_mb(p) for p in (pid, *children(pid))]
            out["postgres + backends (PSS)"] = round(sum(p for p in pss if p is not None), 1)
    return out


def rss_growth(start: Mapping[str, float], end: Mapping[str, float]) -> dict[str, float]:
    return {k: round(end[k] - start[k], 1) for k in start if k in end}


# ---- the plot --------------------------------------------------------------------------


def plot(samples: Iterable[Sample], backlog: list[BacklogSample], path: Path, title: str) -> None:
    """Latency of each request at the time it completed (one colour per kind), and the
    backlog (messages waiting per consumer, and requests in flight) over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True)
    by_kind: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_kind[s.kind].append(s)
    for kind, group in sorted(by_kind.items()):
        ok = [s for s in group if s.outcome == "ok"]
        if ok:
            top.scatter([s.done_s for s in ok], [s.latency_s * 1000 for s in ok], s=4, label=kind)
        bad = [s for s in group if s.outcome != "ok"]
        if bad:
            top.scatter(
                [s.done_s for s in bad],
                [s.latency_s * 1000 for s in bad],
                s=14,
                marker="x",
                label=f"{kind} errors",
            )
    top.set_yscale("log")
    top.set_ylabel("latency (ms, log)")
    top.set_title(title)
    top.legend(loc="upper left", fontsize=8, markerscale=2)
    top.grid(True, which="both", alpha=0.3)
    times = [b.at_s for b in backlog]
    keys = sorted({k for b in backlog for k in b.pending})
    for key in keys:
        line = bottom.plot(times, [b.pending.get(key, 0) for b in backlog], label=f"{key} waiting")
        held = [b.ack_pending.get(key, 0) for b in backlog]
        if any(held):
            bottom.plot(
                times,
                held,
                linestyle=":",
                color=line[0].get_color(),
                label=f"{key} held by workers",
            )
    bottom.plot(
        times, [b.in_flight for b in backlog], linestyle="--", color="grey", label="in flight"
    )
    bottom.set_xlabel("seconds since start")
    bottom.set_ylabel("requests")
    bottom.legend(loc="upper left", fontsize=8)
    bottom.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

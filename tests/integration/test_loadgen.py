"""The load generator against the session's bridge (auth on) and the small-context LLM worker:
a short open-loop run of every request kind writes its JSON report and PNG plot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from loadtest import loadgen
from loadtest.loadreport import Sample, rss_of, summarize

from .conftest import ECHO, BridgeStack

pytestmark = pytest.mark.integration


def test_a_short_run_reports_every_kind(
    bridge_stack: BridgeStack, llm_worker: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code = loadgen.main(
        [
            "--http-url", bridge_stack.url,
            "--nats-url", bridge_stack.nats_url,
            "--api-key", bridge_stack.key,
            "--echo-model", ECHO,
            "--stream-model", llm_worker,
            "--stream-tokens", "8",
            "--mix", "http-chat=3,http-stream=1,nats=3,nats-stream=1,batch-nats=1",
            "--batch-api-every-s", "0",
            "--arrival", "fixed",
            "--rate", "40",
            "--duration-s", "2",
            "--sample-every-s", "0.2",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    summary = report["summary"]
    assert summary["all"]["requests"] == 80  # fixed rate: 40/s for 2 s
    assert summary["all"]["ok"] == 80, summary
    for kind in loadgen.KINDS:
        assert summary[kind]["ok"] > 0, kind
        assert set(summary[kind]["latency"]) == {"p50_ms", "p90_ms", "p99_ms", "max_ms"}
    for kind in ("http-stream", "nats-stream"):
        assert summary[kind]["ttft"]["p50_ms"] > 0
        assert summary[kind]["itl"]["p50_ms"] > 0
    assert len(report["backlog"]) >= 5
    assert f"{ECHO}/online" in report["backlog"][0]["pending"]
    assert "api_key" not in report["config"]
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_and_rss() -> None:
    samples = [Sample("nats", 0.0, i / 1000, "ok") for i in range(1, 101)]
    samples.append(Sample("nats", 0.0, 0.5, "backlog_full"))
    summary = summarize(samples, 2.0)["nats"]
    assert summary["ok"] == 100
    assert summary["throughput_per_s"] == 50.0
    assert summary["latency"]["p50_ms"] == pytest.approx(50, abs=1)
    assert summary["latency"]["max_ms"] == 100
    assert summary["errors"] == {"backlog_full": 1}
    rss = rss_of({"me": os.getpid()})
    assert rss["me"] > 10


def test_only_loopback_targets() -> None:
    with pytest.raises(SystemExit, match="loopback"):
        loadgen.Target("http://10.0.0.1:8000", "nats://127.0.0.1:4222", {})

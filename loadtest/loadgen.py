"""Load generator: open-loop traffic (Poisson or fixed-rate arrivals; closed loop optional) on
the HTTP path and the NATS path, online and batch mixed, bounded by count and time.

    python -m loadtest.loadgen [--rate 40] [--duration-s 30] [--requests 5000]
        [--arrival poisson|fixed|closed] [--mix http-chat=4,http-stream=1,nats=3,...]
        [--batch-api-every-s 10 --batch-api-lines 200] [--soak] [--out loadgen-out]
        [--stack-json .jetserve/stack.json | --http-url URL --nats-url URL]

Without URLs it starts its own stack (as `jetserve up` does, auth off) under a temporary
folder: nats-server, PostgreSQL, an `echo` worker, a `tiny` LLM worker (the random Llama on
the engine, for token streams), the bridge and the scheduler. Only loopback addresses are
accepted.

Request kinds (`--mix`, relative weights):
    http-chat     POST /v1/chat/completions to echo
    http-stream   the same with stream=true to tiny (TTFT, inter-token latency from SSE)
    nats          producer client request to echo (jetserve.req.echo.online)
    nats-stream   producer client stream to tiny
    batch-nats    producer client request to echo with priority=batch
and, apart from the arrivals, every `--batch-api-every-s` a batch of `--batch-api-lines`
through the Batches API (upload, create, poll to completion): kind `batch-api`.

Writes `<out>/report.json` (throughput, p50/p90/p99/max latency, TTFT/ITL, errors by code,
backlog over time, RSS of every process at start and end with `--soak`) and
`<out>/report.png` (latency and backlog over time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from loadtest.loadreport import BacklogSample, Sample, plot, rss_growth, rss_of, summarize

KINDS = ("http-chat", "http-stream", "nats", "nats-stream", "batch-nats")
ECHO, TINY = "echo", "tiny"
MODELS_TOML = """
[[models]]
name = "echo"
engine = "sdk"
class = "echo"
capacity = 256

[[models]]
name = "tiny"
engine = "llm"
path = "builtin:tiny"
dtype = "float32"
capacity = 16

[models.options]
kv_cache_mib = 32
max_model_len = 512
"""
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _loopback(url: str) -> str:
    host = urlsplit(url).hostname
    if host not in LOOPBACK:
        raise SystemExit(f"refusing {url}: the load generator only talks to loopback addresses")
    return url


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in KINDS:
            raise SystemExit(f"unknown request kind {name!r} in --mix (one of {KINDS})")
        mix[name.strip()] = float(weight or 1)
    return {k: w for k, w in mix.items() if w > 0}


class Target:
    """Where the load goes: URLs, and the processes whose memory is reported."""

    def __init__(self, http_url: str, nats_url: str, processes: dict[str, int]) -> None:
        self.http_url = _loopback(http_url)
        self.nats_url = _loopback(nats_url)
        self.processes = processes


@contextlib.contextmanager
def own_stack(workers: int) -> Iterator[Target]:
    """The whole system on this machine, auth off, in a temporary folder."""
    from jetserve.stack import Stack, StackOptions

    tmp = Path(tempfile.mkdtemp(prefix="jetserve-loadgen-", dir="/var/tmp"))
    models = tmp / "models.toml"
    models.write_text(MODELS_TOML)
    stack = Stack(
        StackOptions(
            data_dir=tmp / "data",
            models_file=models,
            auth="off",
            workers=workers,
            child_env={"JETSERVE_LOG_LEVEL": "WARNING"},
        )
    )
    try:
        stack.start_servers()
        stack.start_children()
        stack.write_info()
        url = str(stack.info["http_url"])
        _wait_ready(url, [ECHO, TINY], stack)
        yield Target(url, str(stack.info["nats_url"]), stack.processes())
    finally:
        stack.stop()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def _wait_ready(url: str, models: list[str], stack: Any, timeout_s: float = 180) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        for child in stack.children:
            if child.proc is not None and child.proc.poll() is not None:
                raise SystemExit(f"{child.name} exited: see {child.log_path}")
        with contextlib.suppress(httpx.HTTPError):
            body = httpx.get(f"{url}/readyz", timeout=2).text
            if all(f'"{m}":true' in body for m in models):
                return
        time.sleep(0.3)
    raise SystemExit(f"the stack at {url} was not ready in {timeout_s:.0f}s")


class Run:
    """One load run: sends, records, samples the backlog."""

    def __init__(self, args: argparse.Namespace, target: Target) -> None:
        self.args = args
        self.target = target
        self.samples: list[Sample] = []
        self.backlog: list[BacklogSample] = []
        self.in_flight = 0
        self.start = 0.0
        #: Soak: RSS of every process once the warm-up has passed.
        self.rss_warm: dict[str, float] = {}
        self.http: httpx.AsyncClient | None = None
        self.client: Any = None
        self.mix = parse_mix(args.mix)
        self.echo = args.echo_model
        self.tiny = args.stream_model

    def now(self) -> float:
        return time.monotonic() - self.start

    async def _timed(self, kind: str, send: Callable[[Sample], Awaitable[str]]) -> None:
        sample = Sample(kind, self.now(), 0.0, "unfinished")
        self.in_flight += 1
        try:
            async with asyncio.timeout(self.args.timeout_s):
                sample.outcome = await send(sample)
        except TimeoutError:
            sample.outcome = "client_timeout"
        except Exception as exc:  # every failure is counted, by its name or code
            sample.outcome = getattr(exc, "code", None) or type(exc).__name__
            sample.outcome = str(sample.outcome)
        finally:
            self.in_flight -= 1
            sample.done_s = self.now()
            self.samples.append(sample)

    # ---- the request kinds ------------------------------------------------------------

    async def http_chat(self, sample: Sample) -> str:
        assert self.http is not None
        body = {"model": self.echo, "messages": [{"role": "user", "content": "Hello, load!"}]}
        r = await self.http.post("/v1/chat/completions", json=body)
        return "ok" if r.status_code == 200 else _http_code(r)

    async def http_stream(self, sample: Sample) -> str:
        assert self.http is not None
        body = {
            "model": self.tiny,
            "messages": [{"role": "user", "content": "Tell me something."}],
            "stream": True,
            "max_tokens": self.args.stream_tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        last: float | None = None
        async with self.http.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return _http_code(r)
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return str(event["error"].get("code") or "stream_error")
                choices = event.get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    last = self._token(sample, last)
        return "ok"

    def _token(self, sample: Sample, last: float | None) -> float:
        """A token arrived: time to first token, or the gap since the last; now."""
        now = self.now()
        if last is None:
            sample.ttft_s = now - sample.sent_s
        else:
            sample.itl_s.append(now - last)
        return now

    async def nats_request(self, sample: Sample, *, batch: bool = False) -> str:
        from schemas.names import Priority

        priority = Priority.BATCH if batch else Priority.ONLINE
        result = await self.client.request(
            self.echo, "predict", {"x": 1}, timeout_s=self.args.timeout_s, priority=priority
        )
        return "ok" if result.output == {"x": 1} else "wrong_output"

    async def nats_stream(self, sample: Sample) -> str:
        from schemas.messages import StreamChunk

        last: float | None = None
        params = {"max_tokens": self.args.stream_tokens, "temperature": 0, "ignore_eos": True}
        async for item in self.client.stream(
            self.tiny, "completion", {"prompt": "Once upon"}, parameters=params
        ):
            if isinstance(item, StreamChunk) and item.delta:
                last = self._token(sample, last)
        return "ok"

    async def batch_api(self, sample: Sample) -> str:
        assert self.http is not None
        lines = "".join(
            json.dumps(
                {
                    "custom_id": f"r{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": self.echo,
                        "messages": [{"role": "user", "content": f"n{i}"}],
                    },
                }
            )
            + "\n"
            for i in range(self.args.batch_api_lines)
        )
        files = {"file": ("load.jsonl", io.BytesIO(lines.encode()))}
        r = await self.http.post("/v1/files", data={"purpose": "batch"}, files=files)
        if r.status_code != 200:
            return _http_code(r)
        create = {
            "input_file_id": r.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
        r = await self.http.post("/v1/batches", json=create)
        if r.status_code != 200:
            return _http_code(r)
        batch_id = r.json()["id"]
        while True:
            await asyncio.sleep(0.25)
            batch = (await self.http.get(f"/v1/batches/{batch_id}")).json()
            if batch["status"] in ("completed", "failed", "expired", "cancelled"):
                break
        counts = batch["request_counts"]
        if batch["status"] != "completed" or counts["completed"] != self.args.batch_api_lines:
            return f"batch_{batch['status']}"
        return "ok"

    def sender(self, kind: str) -> Callable[[Sample], Awaitable[str]]:
        return {
            "http-chat": self.http_chat,
            "http-stream": self.http_stream,
            "nats": self.nats_request,
            "nats-stream": self.nats_stream,
            "batch-nats": lambda s: self.nats_request(s, batch=True),
        }[kind]

    # ---- arrivals, sampling -------------------------------------------------------------

    async def arrivals(self, tasks: set[asyncio.Task[None]]) -> None:
        a = self.args
        rng = random.Random(a.seed)
        kinds, weights = list(self.mix), list(self.mix.values())
        next_at = 0.0
        for _ in range(a.requests):
            if a.arrival == "poisson":
                next_at += rng.expovariate(a.rate)
            else:
                next_at += 1.0 / a.rate
            if next_at >= a.duration_s:
                break
            await asyncio.sleep(max(0.0, next_at - self.now()))
            kind = rng.choices(kinds, weights)[0]
            if self.in_flight >= a.max_in_flight:  # open loop: counted, not queued
                now = self.now()
                self.samples.append(Sample(kind, now, now, "client_overload"))
                continue
            task = asyncio.create_task(self._timed(kind, self.sender(kind)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def closed_loop(self, tasks: set[asyncio.Task[None]]) -> None:
        a = self.args
        rng = random.Random(a.seed)
        kinds, weights = list(self.mix), list(self.mix.values())
        budget = [a.requests]

        async def user() -> None:
            while budget[0] > 0 and self.now() < a.duration_s:
                budget[0] -= 1
                kind = rng.choices(kinds, weights)[0]
                await self._timed(kind, self.sender(kind))

        await asyncio.gather(*[user() for _ in range(a.concurrency)])

    async def batches(self, tasks: set[asyncio.Task[None]]) -> None:
        every = self.args.batch_api_every_s
        if every <= 0:
            return
        while self.now() + every < self.args.duration_s:
            await asyncio.sleep(every)
            task = asyncio.create_task(self._timed("batch-api", self.batch_api))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def sample_backlog(self, stop: asyncio.Event) -> None:
        from schemas import names

        js = self.client.nc.jetstream(timeout=2)
        while not stop.is_set():
            pending: dict[str, int] = {}
            held: dict[str, int] = {}
            for model in (self.echo, self.tiny):
                for consumer in ("online", "batch"):
                    with contextlib.suppress(Exception):
                        info = await js.consumer_info(names.stream_name(model), consumer)
                        pending[f"{model}/{consumer}"] = int(info.num_pending or 0)
                        held[f"{model}/{consumer}"] = int(info.num_ack_pending or 0)
            self.backlog.append(BacklogSample(self.now(), pending, held, self.in_flight))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.args.sample_every_s)

    async def run(self) -> float:
        from producer.client import Client

        a = self.args
        limits = httpx.Limits(max_connections=a.max_in_flight, max_keepalive_connections=256)
        self.client = await Client.connect(self.target.nats_url)
        headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
        async with httpx.AsyncClient(
            base_url=self.target.http_url, timeout=a.timeout_s, limits=limits, headers=headers
        ) as http:
            self.http = http
            stop = asyncio.Event()
            tasks: set[asyncio.Task[None]] = set()
            self.start = time.monotonic()
            sampler = asyncio.create_task(self.sample_backlog(stop))
            warm = asyncio.create_task(self._rss_after_warmup())
            load = self.closed_loop(tasks) if a.arrival == "closed" else self.arrivals(tasks)
            await asyncio.gather(load, self.batches(tasks))
            sent_until = self.now()
            if tasks:  # bounded: every request has its own timeout
                await asyncio.wait(set(tasks), timeout=a.timeout_s + 5)
            stop.set()
            await sampler
            warm.cancel()
        await self.client.close()
        return sent_until

    async def _rss_after_warmup(self) -> None:
        if self.args.soak:
            await asyncio.sleep(self.args.warmup_s)
            self.rss_warm = await asyncio.to_thread(rss_of, self.target.processes)


def _http_code(r: httpx.Response) -> str:
    with contextlib.suppress(Exception):
        code = r.json()["error"]["code"]
        if code:
            return f"{r.status_code} {code}"
    return str(r.status_code)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arrival", choices=["poisson", "fixed", "closed"], default="poisson")
    p.add_argument("--rate", type=float, default=40.0, help="arrivals per second (open loop)")
    p.add_argument("--concurrency", type=int, default=16, help="users (closed loop)")
    p.add_argument("--duration-s", type=float, default=30.0)
    p.add_argument("--requests", type=int, default=100_000, help="at most this many arrivals")
    p.add_argument(
        "--mix",
        default="http-chat=4,http-stream=1,nats=3,nats-stream=1,batch-nats=1",
        help=f"relative weights of {', '.join(KINDS)}",
    )
    p.add_argument("--stream-tokens", type=int, default=32)
    p.add_argument("--echo-model", default=ECHO, help="model of the non-stream kinds")
    p.add_argument("--stream-model", default=TINY, help="model of the stream kinds")
    p.add_argument("--api-key", help="bearer key, for a bridge with auth on")
    p.add_argument("--batch-api-every-s", type=float, default=10.0, help="0: no Batches API")
    p.add_argument("--batch-api-lines", type=int, default=200)
    p.add_argument("--timeout-s", type=float, default=30.0)
    p.add_argument("--max-in-flight", type=int, default=1000)
    p.add_argument("--sample-every-s", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--soak", action="store_true", help="also report every process's RSS")
    p.add_argument(
        "--rss-bound-mb",
        type=float,
        default=30.0,
        help="soak: allowed RSS growth per process from the end of the warm-up to the end",
    )
    p.add_argument("--warmup-s", type=float, default=60.0, help="soak: warm-up before the bound")
    p.add_argument("--workers", type=int, default=1, help="replicas per model (own stack)")
    p.add_argument("--stack-json", help="use a running `jetserve up` (its stack.json)")
    p.add_argument("--http-url")
    p.add_argument("--nats-url")
    p.add_argument("--out", default="loadgen-out")
    a = p.parse_args(argv)
    if a.rate <= 0 or a.duration_s <= 0 or a.requests <= 0:
        raise SystemExit("--rate, --duration-s and --requests must be positive")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    if a.stack_json or a.http_url:
        info = json.loads(Path(a.stack_json).read_text()) if a.stack_json else {}
        target_cm: Any = contextlib.nullcontext(
            Target(
                a.http_url or info["http_url"],
                a.nats_url or info["nats_url"],
                {k: int(v) for k, v in info.get("processes", {}).items()},
            )
        )
    else:
        target_cm = own_stack(a.workers)
    with target_cm as target:
        run = Run(a, target)
        rss_start = rss_of(target.processes) if a.soak else {}
        sent_until = asyncio.run(run.run())
        rss_end = rss_of(target.processes) if a.soak else {}
    report = {
        "config": {k: v for k, v in vars(a).items() if k not in ("out", "api_key")},
        "sent_for_s": round(sent_until, 2),
        "summary": summarize(run.samples, sent_until),
        "backlog": [vars(b) for b in run.backlog],
    }
    if a.soak:
        warm = run.rss_warm or rss_start
        growth = rss_growth(warm, rss_end)
        report["rss_mb"] = {
            "start": rss_start,
            "after_warmup": warm,
            "end": rss_end,
            "growth_after_warmup": growth,
        }
        report["rss_bound_mb"] = a.rss_bound_mb
        report["rss_flat"] = all(g <= a.rss_bound_mb for g in growth.values())
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    title = (
        f"{a.arrival} arrivals, {a.rate:g}/s for {a.duration_s:g}s, mix {a.mix}"
        if a.arrival != "closed"
        else f"closed loop, {a.concurrency} users, {a.duration_s:g}s"
    )
    plot(run.samples, run.backlog, out / "report.png", title)
    _print(report, out)
    return 0 if report.get("rss_flat", True) else 1


def _print(report: dict[str, Any], out: Path) -> None:
    print(f"load for {report['sent_for_s']} s; report: {out / 'report.json'}, {out / 'report.png'}")
    for kind, s in report["summary"].items():
        lat = s["latency"]
        line = f"  {kind:<12} {s['requests']:>6} sent {s['ok']:>6} ok {s['throughput_per_s']:>8} /s"
        if lat:
            line += (
                f"  p50 {lat['p50_ms']:.1f} p90 {lat['p90_ms']:.1f} p99 {lat['p99_ms']:.1f} "
                f"max {lat['max_ms']:.1f} ms"
            )
        if "ttft" in s:
            line += f"  TTFT p50 {s['ttft']['p50_ms']:.1f} ms, ITL p50 {s['itl']['p50_ms']:.2f} ms"
        if s["errors"]:
            line += f"  errors {s['errors']}"
        print(line)
    if report["backlog"]:
        peak = max(sum(b["pending"].values()) for b in report["backlog"])
        print(f"  backlog: peak {peak} waiting in the streams")
    if "rss_mb" in report:
        rss = report["rss_mb"]
        print(
            f"  RSS (MB): start, after the warm-up, end (bound: +{report['rss_bound_mb']:g} MB "
            "per process after the warm-up):"
        )
        for name, start in rss["start"].items():
            warm, end = rss["after_warmup"].get(name), rss["end"].get(name)
            print(f"    {name:<28} {start:>8.1f} {warm!s:>8} {end!s:>8}")
        print(f"  memory flat: {'yes' if report['rss_flat'] else 'NO'}")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())

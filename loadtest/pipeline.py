"""Benchmark: the echo pipeline against raw nats-py JetStream on the same server, in one run.

    python -m loadtest.pipeline [--messages 20000] [--in-flight 256] [--latency-samples 2000]

1. raw limit: an async JetStream publisher (this process) and a pull consumer in a second
   process (fetch 256 + decode + ack), 1 KiB msgspec messages, running together; throughput is
   messages / wall time until the consumer has acked them all.
2. echo pipeline: the producer client (this process) -> JetStream -> `jetserve worker` (second
   process, echo model) -> reply subject, with `--in-flight` requests outstanding.
3. latency at low load, one request at a time: core NATS request/reply to a responder in a
   second process vs the echo pipeline. "Added" is pipeline minus core, per percentile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import msgspec
import nats
from nats.aio.msg import Msg

from loadtest.common import echo_worker, nats_server, percentile, spawn
from producer.client import Client, make_request
from schemas import names

PAYLOAD = {"blob": "x" * 900}  # the request envelope brings it to ~1 KiB


async def _raw_consumer(url: str, count: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe("bench.raw", durable="raw", stream="RAW")
    decoder = msgspec.json.Decoder()
    done = 0
    while done < count:
        try:
            msgs = await sub.fetch(256, timeout=1)
        except nats.errors.TimeoutError:
            continue
        for m in msgs:
            decoder.decode(m.data)
            await m.ack()
        done += len(msgs)
    await nc.flush()
    await nc.close()


async def _core_responder(url: str) -> None:
    nc = await nats.connect(url)

    async def respond(msg: Msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe("bench.core", cb=respond)
    print("ready", flush=True)
    await asyncio.Event().wait()


async def raw_limit(url: str, count: int) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="RAW", subjects=["bench.raw"], retention="workqueue", storage="file")
    await js.add_consumer("RAW", durable_name="raw", ack_policy="explicit")
    body = msgspec.json.encode(make_request("m", "predict", PAYLOAD))
    consumer = spawn(["-m", "loadtest.pipeline", "--raw-consumer", url, str(count)])
    start = time.perf_counter()
    window = asyncio.Semaphore(1024)

    async def publish() -> None:
        async with window:
            await js.publish("bench.raw", body)

    await asyncio.gather(*[publish() for _ in range(count)])
    await asyncio.to_thread(consumer.wait)
    elapsed = time.perf_counter() - start
    await js.delete_stream("RAW")
    await nc.close()
    return count / elapsed


async def pipeline(client: Client, model: str, count: int, in_flight: int) -> float:
    window = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with window:
            await client.request(model, "predict", PAYLOAD, timeout_s=120)

    start = time.perf_counter()
    await asyncio.gather(*[one() for _ in range(count)])
    return count / (time.perf_counter() - start)


async def latencies(
    url: str, client: Client, model: str, samples: int
) -> tuple[list[float], list[float]]:
    responder = spawn(["-m", "loadtest.pipeline", "--core-responder", url])
    nc = await nats.connect(url)
    body = msgspec.json.encode(make_request(model, "predict", PAYLOAD))
    for _ in range(100):  # until the responder is subscribed
        try:
            await nc.request("bench.core", body, timeout=0.5)
            break
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            await asyncio.sleep(0.05)
    core, piped = [], []
    for _ in range(samples):
        t = time.perf_counter()
        await nc.request("bench.core", body, timeout=5)
        core.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        await client.request(model, "predict", PAYLOAD, timeout_s=5)
        piped.append((time.perf_counter() - t) * 1000)
    responder.kill()
    await nc.close()
    return core, piped


async def run(args: argparse.Namespace) -> dict[str, float]:
    with nats_server() as url:
        raw = await raw_limit(url, args.messages)
        model = "bench-echo"
        worker = echo_worker(
            model, {"JETSERVE_NATS_URL": url, "JETSERVE_LOG_LEVEL": "WARNING"}, args.in_flight
        )
        client = await Client.connect(url)
        for _ in range(200):
            try:
                await client.request(model, "predict", 0, timeout_s=2)
                break
            except Exception:
                await asyncio.sleep(0.1)
        await pipeline(client, model, min(2000, args.messages), args.in_flight)  # warm-up
        piped = await pipeline(client, model, args.messages, args.in_flight)
        core, lat = await latencies(url, client, model, args.latency_samples)
        await client.close()
        worker.terminate()
        worker.wait()
        js_ok = names.stream_name(model)
    result = {
        "raw_msgs_per_s": raw,
        "pipeline_req_per_s": piped,
        "ratio": piped / raw,
        "core_p50_ms": percentile(core, 50),
        "core_p99_ms": percentile(core, 99),
        "pipeline_p50_ms": percentile(lat, 50),
        "pipeline_p99_ms": percentile(lat, 99),
    }
    result["added_p50_ms"] = result["pipeline_p50_ms"] - result["core_p50_ms"]
    result["added_p99_ms"] = result["pipeline_p99_ms"] - result["core_p99_ms"]
    print(f"stream {js_ok}: {args.messages} messages, {args.in_flight} in flight, 1 KiB bodies")
    print(f"  raw JetStream publish + fetch(256) + ack  {raw:10.0f} msg/s")
    print(f"  echo pipeline (client->JS->worker->reply) {piped:10.0f} req/s")
    print(f"  ratio pipeline / raw                      {result['ratio']:10.2f}   (target >= 0.40)")
    print(
        f"  one at a time: core request/reply p50 {result['core_p50_ms']:.3f} ms  "
        f"p99 {result['core_p99_ms']:.3f} ms"
    )
    print(
        f"                 echo pipeline      p50 {result['pipeline_p50_ms']:.3f} ms  "
        f"p99 {result['pipeline_p99_ms']:.3f} ms"
    )
    print(
        f"                 added              p50 {result['added_p50_ms']:.3f} ms  "
        f"p99 {result['added_p99_ms']:.3f} ms   (targets <= 2 ms, <= 10 ms)"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--latency-samples", type=int, default=2000)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--raw-consumer", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--core-responder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_consumer:
        asyncio.run(_raw_consumer(args.raw_consumer[0], int(args.raw_consumer[1])))
        return
    if args.core_responder:
        asyncio.run(_core_responder(args.core_responder))
        return
    result = asyncio.run(run(args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

"""The load of one pipeline lane (`loadtest.lanes_whole`): the echo pipeline's producer with
`in_flight` requests always outstanding, counting the answers in a shared file.

    python loadtest/lane_producer.py NATS_URL MODEL IN_FLIGHT COUNTER_FILE

Run by path with PYTHONPATH set to the lane's tree, so that `producer.client` is that tree's
(an older commit's copy, or this one): only the standard library and the tree's own client
are imported. The counter file holds two int64: 1 once the worker answers, then the number of
requests answered so far (the controller reads it while this process is stopped).
"""

from __future__ import annotations

import asyncio
import mmap
import sys

from producer.client import Client

PAYLOAD = {"blob": "x" * 900}  # the request envelope brings it to ~1 KiB, as loadtest.pipeline


async def run(url: str, model: str, in_flight: int, counter: memoryview) -> None:
    client = await Client.connect(url)
    for _ in range(600):  # until the worker answers
        try:
            await client.request(model, "predict", 0, timeout_s=2)
            break
        except Exception:
            await asyncio.sleep(0.1)
    answered = 0
    counter[0] = 1

    async def one() -> None:
        nonlocal answered
        while True:
            await client.request(model, "predict", PAYLOAD, timeout_s=120)
            answered += 1
            counter[1] = answered  # one aligned 8-byte store (struct.pack_into zero-fills first)

    await asyncio.gather(*[one() for _ in range(in_flight)])


def main() -> None:
    url, model, in_flight, path = sys.argv[1:5]
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 16) as shared:
        counter = memoryview(shared).cast("q")
        try:
            asyncio.run(run(url, model, int(in_flight), counter))
        finally:
            counter.release()


if __name__ == "__main__":
    main()

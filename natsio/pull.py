"""nats-py pull subscriptions: the fetch the scheduler's loops make, and the messages a fetch
left behind.

`undelivered` is the one place jetserve reads a private attribute of a dependency: nats-py
keeps messages that arrived after a `fetch` gave up in the subscription's queue
(`PullSubscription._sub._pending_queue`) for the next fetch, and has no API to take them. A
scheduler that stops fetching naks them, so the server redelivers them at once instead of
after the consumer's ack wait. tests/natsio/test_pull.py fails if nats-py moves it.
"""

from __future__ import annotations

import asyncio

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext


async def fetch(sub: JetStreamContext.PullSubscription, batch: int, timeout_s: float) -> list[Msg]:
    """Up to `batch` messages, or none if none came within `timeout_s`."""
    try:
        return await sub.fetch(batch, timeout=timeout_s)
    except (TimeoutError, nats.errors.TimeoutError):
        return []


def undelivered(sub: JetStreamContext.PullSubscription) -> list[Msg]:
    """Take the messages waiting in the subscription that no fetch took (status messages
    left out). Raises AttributeError if nats-py no longer keeps them where it did."""
    queue: asyncio.Queue[Msg] = sub._sub._pending_queue
    msgs = []
    while not queue.empty():
        msg = queue.get_nowait()
        if not JetStreamContext.is_status_msg(msg):
            msgs.append(msg)
    return msgs

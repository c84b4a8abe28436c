"""Every live worker of a model, from one ping: each answers `names.ping_subject(model)`
with its `WorkerInfo` (capacity, load, state)."""

from __future__ import annotations

import contextlib
import time

import msgspec
from nats.aio.client import Client as NATS

from schemas import names
from schemas.codec import decode_worker_info
from schemas.messages import WorkerInfo


async def ping_workers(nc: NATS, model: str, *, window_s: float) -> list[WorkerInfo]:
    """The answers that arrive within `window_s` of the ping (an answer that cannot be
    decoded is skipped)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    found: list[WorkerInfo] = []
    try:
        await nc.publish(names.ping_subject(model), b"", reply=inbox)
        end = time.monotonic() + window_s
        while (left := end - time.monotonic()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except Exception:  # the window closed (a nats-py TimeoutError), or no responders
                break
            if msg.data:
                with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                    found.append(decode_worker_info(msg.data))
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return found


def serving_capacity(workers: list[WorkerInfo]) -> int:
    """The slots of the workers that take new requests (not loading, not draining)."""
    return sum(w.capacity for w in workers if w.state == "serving" and not w.draining)

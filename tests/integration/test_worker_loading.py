"""A worker whose model is still loading: its queue exists and it answers pings `loading`, so a
request published meanwhile waits and is answered once the model is ready (real nats-server,
real worker process)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from producer.client import Client
from schemas import names
from schemas.codec import decode_worker_info

pytestmark = pytest.mark.integration


async def _ping_state(nc: NATS, model: str) -> str | None:
    try:
        msg = await nc.request(names.ping_subject(model), b"", timeout=0.5)
    except Exception:
        return None
    return decode_worker_info(msg.data).state


async def test_a_request_for_a_loading_model_is_answered_once_it_is_ready(
    nc: NATS, model_name: str, start_worker: Any
) -> None:
    start_worker(model_name, "tests.models:SlowLoadModel", options={"load_s": 4.0})
    started = time.monotonic()
    for _ in range(300):
        if await _ping_state(nc, model_name) == "loading":
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the loading worker never answered a ping")
    # The stream exists before the model is loaded: the publish is stored, not refused.
    client = Client(nc)
    result = await client.request(model_name, "predict", {"x": 1}, timeout_s=60)
    assert result.output == {"x": 1}
    assert time.monotonic() - started >= 3.5  # it waited for the load
    assert await _ping_state(nc, model_name) == "serving"
    await client.close()


async def test_pings_are_answered_through_the_hand_over_from_loading_to_serving(
    nc: NATS, model_name: str, start_worker: Any
) -> None:
    """The loading connection stops answering only once the serving worker answers: a ping in
    between finding nobody would make a bridge refuse the requests waiting for the model."""
    start_worker(model_name, "tests.models:SlowLoadModel", options={"load_s": 2.0})
    states: list[str] = []
    nobody = slow = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "serving" not in states[-1:]:
        try:
            msg = await nc.request(names.ping_subject(model_name), b"", timeout=2)
        except NoRespondersError:
            nobody += 1 if states else 0  # before the first answer the worker is starting
        except NatsTimeoutError:
            slow += 1
        else:
            states.append(decode_worker_info(msg.data).state)
        await asyncio.sleep(0.005)
    assert states, "no ping was answered"
    assert states[0] == "loading", states[:3]
    assert states[-1] == "serving", states[-3:]
    assert nobody == 0, f"{nobody} pings found no worker in the hand-over ({slow} slow)"

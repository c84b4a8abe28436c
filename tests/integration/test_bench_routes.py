"""The benchmark's endpoints (`JETSERVE_HTTP_ECHO_ROUTE=1`): `/bench/echo` returns its body,
`/bench/chat` answers a chat request as the echo model would without publishing anything;
neither exists unless switched on."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

import httpx
import pytest
from nats.aio.client import Client as NATS

from jetserve.servers import NatsServer
from schemas import names

pytestmark = pytest.mark.integration

BODY = {
    "model": "bench-nowhere",
    "messages": [{"role": "user", "content": "queues are patient"}],
    "max_tokens": 8,
}


async def test_bench_routes(
    nats_server: NatsServer, nc: NATS, bridge_on: Callable[..., str]
) -> None:
    url = bridge_on(nats_server.url, JETSERVE_HTTP_ECHO_ROUTE="1")
    seen: list[str] = []

    async def spy(msg: object) -> None:
        seen.append(msg.subject)  # type: ignore[attr-defined]

    await nc.subscribe(f"{names.ROOT}.>", cb=spy)
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        echo = await http.post("/bench/echo", json=BODY)
        assert echo.status_code == 200
        assert echo.json() == BODY

        chat = await http.post("/bench/chat", json=BODY)
        assert chat.status_code == 200, chat.text
        body = chat.json()
        assert body["object"] == "chat.completion"
        assert body["model"] == "bench-nowhere"  # no stream, no worker: answered in-process
        assert body["choices"][0]["message"] == {
            "role": "assistant",
            "content": "queues are patient",
        }
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}

        stream = await http.post("/bench/chat", json={**BODY, "stream": True})
        assert stream.status_code == 200
        events = [line[6:] for line in stream.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        text = "".join(
            json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
        )
        assert text == "queues are patient"

        # The same checks as the real endpoint: a bad body is a 400 naming the parameter.
        bad = await http.post("/bench/chat", json={**BODY, "temperature": 9})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "temperature"

        await nc.flush()
        assert not [s for s in seen if ".req." in s], seen
        # The spy does see a request that goes through NATS (it never answers: give up).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(http.post("/v1/chat/completions", json=BODY), 1.0)
    await nc.flush()
    assert [s for s in seen if ".req." in s]


async def test_bench_routes_are_off_by_default(
    nats_server: NatsServer, bridge_on: Callable[..., str]
) -> None:
    url = bridge_on(nats_server.url)
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        assert (await http.post("/bench/echo", json=BODY)).status_code == 404
        assert (await http.post("/bench/chat", json=BODY)).status_code == 404

"""Tenant limits through real bridge processes, NATS and PostgreSQL: a rate shared by two
bridges, OpenAI's 429 and headers (the `openai` SDK retrying on them), tokens settled with
real usage, requests in flight, `GET /v1/limits`, and the batch queue limit."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Callable

import httpx
import openai
import pytest

from scheduler.store.keys import create_key
from scheduler.store.limits import set_limits
from scheduler.store.pool import create_pool
from schemas.limits import TenantLimits

from .conftest import ECHO, SLOW, BridgeStack

pytestmark = pytest.mark.integration

RATE_HEADERS = {
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
}


def tenant_with(
    stack: BridgeStack, limits: TenantLimits, model: str = "*", tenant: str | None = None
) -> str:
    """A new tenant (`tenant`, or a made-up name) with `limits`; its key."""
    tenant = tenant or f"lim-{uuid.uuid4().hex[:10]}"

    async def make() -> str:
        pool = await create_pool(stack.dsn)
        try:
            await set_limits(pool, tenant, limits, model)
            return (await create_key(pool, tenant, "limits test")).secret
        finally:
            await pool.close()

    return asyncio.run(make())


def chat_body(text: str = "hi", **extra: object) -> dict[str, object]:
    return {"model": ECHO, "messages": [{"role": "user", "content": text}], **extra}


def test_two_bridges_share_one_rate(
    bridge_stack: BridgeStack, bridge_on: Callable[..., str]
) -> None:
    second = bridge_on(
        bridge_stack.nats_url,
        JETSERVE_AUTH="required",
        JETSERVE_DATABASE_URL=bridge_stack.dsn,
        JETSERVE_KEY_CACHE_TTL_S="0",
    )
    rpm, seconds, per_s = 1200, 8.0, 60  # 20/s and a bucket of 200; sent at 3x
    key = tenant_with(bridge_stack, TenantLimits(rpm=rpm))
    statuses: list[int] = []
    refusals: list[httpx.Response] = []

    async def load() -> None:
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(timeout=30, headers=headers) as client:

            async def one(url: str) -> None:
                r = await client.post(f"{url}/v1/chat/completions", json=chat_body())
                statuses.append(r.status_code)
                assert set(r.headers) >= RATE_HEADERS, r.headers
                if r.status_code == 429:
                    refusals.append(r)

            tasks = []
            start = time.monotonic()
            for i in range(int(seconds * per_s)):
                await asyncio.sleep(max(0.0, start + i / per_s - time.monotonic()))
                url = bridge_stack.url if i % 2 else second
                tasks.append(asyncio.create_task(one(url)))
            await asyncio.gather(*tasks)

    asyncio.run(load())
    admitted = statuses.count(200)
    assert set(statuses) == {200, 429}
    expected = rpm / 6 + rpm / 60 * seconds  # the bucket, then the rate
    assert abs(admitted - expected) <= 0.10 * expected, (admitted, expected)
    r = refusals[-1]
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(r.headers["retry-after-ms"]) <= 1000
    assert r.headers["retry-after"] == "1"
    assert r.headers["x-ratelimit-remaining-requests"] == "0"


def test_sdk_gets_429_and_its_retry_succeeds(bridge_stack: BridgeStack) -> None:
    key = tenant_with(bridge_stack, TenantLimits(rpm=60))  # 1/s, a bucket of 10
    plain = openai.OpenAI(base_url=bridge_stack.v1, api_key=key, max_retries=0)
    retrying = openai.OpenAI(base_url=bridge_stack.v1, api_key=key, max_retries=3)
    try:
        for _ in range(10):
            plain.chat.completions.create(**chat_body())  # type: ignore[call-overload]
        with pytest.raises(openai.RateLimitError) as refused:
            plain.chat.completions.create(**chat_body())  # type: ignore[call-overload]
        assert refused.value.code == "rate_limit_exceeded"
        assert "retry-after-ms" in refused.value.response.headers
        raw = retrying.chat.completions.with_raw_response.create(**chat_body("again"))  # type: ignore[call-overload]
        assert raw.parse().choices[0].message.content == "again"
        assert raw.retries_taken >= 1
        assert raw.headers["x-ratelimit-limit-requests"] == "60"
    finally:
        plain.close()
        retrying.close()


def test_tokens_are_settled_with_real_usage(bridge_stack: BridgeStack) -> None:
    key = tenant_with(bridge_stack, TenantLimits(tpm=600))  # 10/s, a bucket of 100
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=bridge_stack.url, headers=headers, timeout=30) as client:
        r = client.post("/v1/chat/completions", json=chat_body(max_tokens=90))
        assert r.status_code == 200, r.text
        # Estimated: the body's bytes / 4 plus max_tokens (> the bucket: it needed it full).
        assert int(r.headers["x-ratelimit-remaining-tokens"]) <= 10
        used = r.json()["usage"]["total_tokens"]
        assert used < 10
        limits = client.get("/v1/limits").json()
        assert limits["enforced"]
        assert limits["limits"] == {"tpm": 600}
        # The estimate less what was used came back at once (a second's refill is 10).
        assert limits["usage"]["remaining_tokens"] >= 80
        r = client.post("/v1/chat/completions", json=chat_body(max_tokens=700))
        assert r.status_code == 429
        assert "Request too large" in r.json()["error"]["message"]


def test_requests_in_flight_across_two_bridges(
    bridge_stack: BridgeStack, bridge_on: Callable[..., str]
) -> None:
    """The limit holds across replicas: a request in flight on one bridge takes the tenant's
    only slot on the other too; once it is answered, the slot is free everywhere."""
    second = bridge_on(
        bridge_stack.nats_url,
        JETSERVE_AUTH="required",
        JETSERVE_DATABASE_URL=bridge_stack.dsn,
        JETSERVE_KEY_CACHE_TTL_S="0",
    )
    key = tenant_with(bridge_stack, TenantLimits(max_in_flight=1))
    headers = {"Authorization": f"Bearer {key}"}

    async def run() -> tuple[list[int], str, float]:
        async with httpx.AsyncClient(headers=headers, timeout=30) as c:
            slow = asyncio.create_task(
                c.post(
                    f"{bridge_stack.url}/v1/chat/completions",
                    json={**chat_body("sleep 1.5"), "model": SLOW},
                )
            )
            await asyncio.sleep(0.5)
            on_first = await c.post(f"{bridge_stack.url}/v1/chat/completions", json=chat_body())
            on_second = await c.post(f"{second}/v1/chat/completions", json=chat_body())
            first = await slow
            # Freed: the first bridge gives its idle slot back within moments.
            answered = time.monotonic()
            while True:
                third = await c.post(f"{second}/v1/chat/completions", json=chat_body())
                if third.status_code != 429 or time.monotonic() - answered > 5:
                    break
                await asyncio.sleep(0.05)
            codes = [first.status_code, on_first.status_code, on_second.status_code]
            return [*codes, third.status_code], on_second.text, time.monotonic() - answered

    codes, refusal, freed_after_s = asyncio.run(run())
    assert codes == [200, 429, 429, 200], (codes, refusal)
    assert "the limit is 1" in refusal
    assert freed_after_s < 2.0


def test_batch_over_the_queue_limit_fails_at_creation(bridge_stack: BridgeStack) -> None:
    key = tenant_with(bridge_stack, TenantLimits(batch_queue_lines=3))
    client = openai.OpenAI(base_url=bridge_stack.v1, api_key=key, max_retries=0)

    def upload(lines: int) -> str:
        text = "".join(
            f'{{"custom_id": "r{i}", "method": "POST", "url": "/v1/chat/completions", '
            f'"body": {{"model": "{ECHO}", "messages": [{{"role": "user", "content": "x"}}]}}}}\n'
            for i in range(lines)
        )
        return client.files.create(file=("in.jsonl", io.BytesIO(text.encode())), purpose="batch").id

    try:
        big = client.batches.create(
            input_file_id=upload(5), endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert big.status == "failed"
        assert big.errors is not None
        assert big.errors.data is not None
        assert big.errors.data[0].code == "line_limit_exceeded"
        assert "Limit: 3" in (big.errors.data[0].message or "")
        counts = client.batches.retrieve(big.id).request_counts
        assert counts is None or counts.total == 0  # nothing queued
        small = client.batches.create(
            input_file_id=upload(2), endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert small.status in ("validating", "in_progress")
    finally:
        client.close()


def test_responses_count_against_the_same_limits(bridge_stack: BridgeStack) -> None:
    key = tenant_with(bridge_stack, TenantLimits(rpm=60))  # a bucket of 10
    client = openai.OpenAI(base_url=bridge_stack.v1, api_key=key, max_retries=0)
    try:
        for i in range(5):  # chat and Responses share the tenant's bucket
            client.chat.completions.create(**chat_body())  # type: ignore[call-overload]
            raw = client.responses.with_raw_response.create(
                model=ECHO, input=f"turn {i}", store=False
            )
            assert raw.parse().output_text == f"turn {i}"
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(openai.RateLimitError):
            client.responses.create(model=ECHO, input="one too many", store=False)
    finally:
        client.close()

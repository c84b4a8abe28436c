"""Tenant limits on requests a tenant publishes straight to NATS (its own subject,
`jetserve.req.<model>.online.<tenant>`), through a real nats-server, PostgreSQL and an echo
worker reading the limits: refused with `rate_limit_exceeded` over the limit, other tenants
unaffected, and HTTP (through the bridge) and NATS counted together, once."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import nats
import pytest

from producer.client import make_request
from schemas import names
from schemas.codec import decode_reply, encode
from schemas.errors import ErrorCode
from schemas.limits import TenantLimits
from schemas.messages import ErrorResult, FinalResult
from schemas.names import Header

from .conftest import ECHO, BridgeStack
from .test_tenant_limits import chat_body, tenant_with

pytestmark = pytest.mark.integration


async def publish_direct(
    nats_url: str, tenant: str, count: int
) -> tuple[list[FinalResult], list[ErrorResult], float]:
    """`count` requests published by plain nats-py on `tenant`'s own subject, one after the
    other: the answers (completed, refused) and the seconds it took."""
    nc = await nats.connect(nats_url)
    try:
        inbox = f"_INBOX.limits.{uuid.uuid4().hex}"
        sub = await nc.subscribe(inbox)
        js = nc.jetstream()
        subject = names.tenant_request_subject(ECHO, tenant)
        start = time.monotonic()
        for i in range(count):
            request = make_request(ECHO, "predict", {"n": i})
            await js.publish(
                subject,
                encode(request),
                headers={Header.MSG_ID.value: request.id, Header.REPLY_TO.value: inbox},
            )
        done: list[FinalResult] = []
        refused: list[ErrorResult] = []
        while len(done) + len(refused) < count:
            reply = decode_reply((await sub.next_msg(timeout=30)).data)
            if isinstance(reply, FinalResult):
                done.append(reply)
            elif isinstance(reply, ErrorResult):
                refused.append(reply)
        return done, refused, time.monotonic() - start
    finally:
        await nc.close()


def test_direct_requests_over_the_rate_are_refused(bridge_stack: BridgeStack) -> None:
    # 60 a minute: a bucket of 10, then 1 a second.
    limited = f"natslim-{uuid.uuid4().hex[:8]}"
    tenant_with(bridge_stack, TenantLimits(rpm=60), tenant=limited)
    other = f"natsfree-{uuid.uuid4().hex[:8]}"
    tenant_with(bridge_stack, TenantLimits(rpm=60), tenant=other)

    done, refused, took_s = asyncio.run(publish_direct(bridge_stack.nats_url, limited, 25))
    assert 10 <= len(done) <= 10 + took_s + 2, (len(done), took_s)
    assert len(refused) == 25 - len(done) >= 1
    for error in refused:
        assert error.code is ErrorCode.RATE_LIMIT_EXCEEDED
        assert error.retryable
        assert error.retry_after_ms is not None
        assert 1 <= error.retry_after_ms <= 60_000
        assert "requests per minute: 60" in error.message

    # Another tenant's bucket is its own: all of its requests run.
    done, refused, _ = asyncio.run(publish_direct(bridge_stack.nats_url, other, 8))
    assert (len(done), refused) == (8, [])


def test_http_and_nats_are_counted_together_once(bridge_stack: BridgeStack) -> None:
    tenant = f"natsboth-{uuid.uuid4().hex[:8]}"
    key = tenant_with(bridge_stack, TenantLimits(rpm=60), tenant=tenant)  # a bucket of 10
    start = time.monotonic()
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=30, headers=headers) as client:
        for _ in range(6):
            r = client.post(f"{bridge_stack.v1}/chat/completions", json=chat_body())
            # Had the worker counted the bridge's requests as well, the bucket would run dry
            # here (6 counted twice).
            assert r.status_code == 200, r.text
    done, refused, _ = asyncio.run(publish_direct(bridge_stack.nats_url, tenant, 12))
    elapsed = time.monotonic() - start
    # What is left of the bucket after the bridge's 6 (plus the refill meanwhile, and what
    # one lease may hold back), and no more.
    assert 3 <= len(done) <= 4 + elapsed + 1, (len(done), elapsed)
    assert refused
    assert all(e.code is ErrorCode.RATE_LIMIT_EXCEEDED for e in refused)

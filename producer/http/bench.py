"""The HTTP benchmark's routes (`loadtest/http_bridge.py`), added to the app by the
composition root (`jetserve/bridge.py`) only with `JETSERVE_HTTP_ECHO_ROUTE=1`:

- `POST /bench/echo`: the trivial endpoint. The same route shape, body reading and response
  as the POST routes, without NATS;
- `POST /bench/chat`: the chat endpoint's own code (auth, body decoding, conversion, the
  call, the OpenAI response) answered in-process, as the echo model would answer, without
  the queue. Between the trivial endpoint and `/v1/chat/completions` it splits the
  benchmark's gap in two: what the OpenAI handling costs the bridge, and what the round trip
  through NATS costs it. (A request with an `Idempotency-Key` still goes through the queue:
  the key's bookkeeping lives there.)
"""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, post
from litestar.types import ASGIApp, ControllerRouterHandler

from producer.http.body import read_body, wanted_headers
from producer.http.calls import Call, Calls, Watch
from producer.http.endpoints import CHAT
from producer.http.handlers import Bridge
from producer.http.routes import BridgeHolder, Sent, serve
from producer.pending import Pending
from schemas.messages import FinalResult, InferenceRequest, Usage
from schemas.payloads import ChatPayload, CompletionPayload


def echo_result(request: InferenceRequest) -> FinalResult:
    """The echo model's answer: the last message (or the prompt) back, words as tokens."""
    payload = request.payload
    if isinstance(payload, ChatPayload):
        text = payload.messages[-1].text() if payload.messages else ""
    elif isinstance(payload, CompletionPayload) and isinstance(payload.prompt, str):
        text = payload.prompt
    else:
        text = ""
    words = len(text.split())
    usage = Usage(prompt_tokens=words, completion_tokens=words, total_tokens=2 * words)
    return FinalResult(request.id, request.model, {"text": text}, "stop", usage)


class EchoCalls(Calls):
    """Opens calls whose terminal reply is already there; nothing is published."""

    # Overrides `Calls.open`, so its signature is the same.
    async def open(
        self,
        request: InferenceRequest,
        *,
        streaming: bool,
        timeout_s: float,
        watch: Watch | None = None,
    ) -> Call:
        pending = Pending(request, streaming)
        pending.done.set_result(echo_result(request))
        return Call(self, pending, asyncio.get_running_loop().time() + timeout_s)

    @classmethod
    def like(cls, calls: Calls) -> EchoCalls:
        """One with the same client, presence, metrics and settings as `calls`."""
        return cls(
            calls.client,
            calls.presence,
            calls.metrics,
            no_worker_timeout_s=calls.no_worker_timeout_s,
            retry_after_s=calls.retry_after_s,
            share=calls.share,
        )


class BenchRoutes:
    def __init__(self, max_body_bytes: int) -> None:
        self._max_body_bytes = max_body_bytes
        self._holder = BridgeHolder()

    async def on_startup(self, bridge: Bridge) -> None:
        """Serve `/bench/chat` with `bridge`, its calls answered in-process."""
        self._holder.bridge = bridge.with_calls(EchoCalls.like(bridge.calls))

    def routes(self) -> list[ControllerRouterHandler]:
        holder, limit = self._holder, self._max_body_bytes

        @post("/bench/echo", status_code=200, include_in_schema=False)
        async def echo(request: Request[Any, Any, Any]) -> ASGIApp:
            """The trivial endpoint: the OpenAI routes' body reading and answer (`Sent`)."""
            wanted_headers(request.scope["headers"])
            body = await read_body(request.receive, limit)
            return Sent(200, body, {})

        @post("/bench/chat", status_code=200, include_in_schema=False)
        async def bench_chat(request: Request[Any, Any, Any]) -> ASGIApp:
            """`/v1/chat/completions` answered in-process as the echo model would."""
            return await serve(request, CHAT, holder.get(), limit)

        return [echo, bench_chat]

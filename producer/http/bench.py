"""`POST /bench/chat`: the chat endpoint's own code (auth, body decoding, conversion, the call,
the OpenAI response) answered in-process, as the echo model would answer, without the queue.

Served only with `JETSERVE_HTTP_ECHO_ROUTE=1`, beside `/bench/echo`. Between the trivial
endpoint and `/v1/chat/completions` it splits the benchmark's gap in two: what the OpenAI
handling costs the bridge, and what the round trip through NATS costs it. (A request with an
`Idempotency-Key` still goes through the queue: the key's bookkeeping lives there.)
"""

from __future__ import annotations

import asyncio

from producer.http.dispatch import Call, Dispatcher
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


class EchoDispatcher(Dispatcher):
    """Opens calls whose terminal reply is already there; nothing is published."""

    async def open(self, request: InferenceRequest, *, streaming: bool, timeout_s: float) -> Call:
        pending = Pending(request, streaming)
        pending.done.set_result(echo_result(request))
        return Call(self, pending, asyncio.get_running_loop().time() + timeout_s)

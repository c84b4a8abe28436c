"""Publishing chunks and results to a request's reply subject.

Interactive replies are core NATS publishes: a requester that has gone away is not an error.
Replies on durable subjects (`jetserve.results.>`, captured by the results stream) wait for the
JetStream acknowledgement, so the request is acked only once its result is stored.
"""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from schemas.codec import encode
from schemas.messages import ErrorResult, FinalResult, StreamChunk, TokenLogprobs
from schemas.names import Encoding, Header, is_durable_reply


class ReplySink:
    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        subject: str | None,
        encoding: Encoding,
        request_id: str,
        attempt: int,
    ) -> None:
        self._nc = nc
        self._js = js
        self.subject = subject or None
        self._encoding = encoding
        self.request_id = request_id
        self._attempt = attempt
        self._seq = 0
        self._durable = self.subject is not None and is_durable_reply(self.subject)

    async def chunk(
        self,
        delta: str,
        token_ids: list[int] | None = None,
        logprobs: list[TokenLogprobs] | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> None:
        if self.subject is None or self._durable:
            return  # durable replies carry only the final result
        chunk = StreamChunk(
            id=self.request_id,
            seq=self._seq,
            delta=delta,
            token_ids=token_ids or [],
            logprobs=logprobs,
            tool_calls=tool_calls,
            attempt=self._attempt,
        )
        self._seq += 1
        await self._publish(encode(chunk, self._encoding))

    async def final(self, result: FinalResult | ErrorResult) -> None:
        await self._publish(encode(result, self._encoding))

    async def _publish(self, data: bytes) -> None:
        if self.subject is None:
            return
        if self._durable:
            # The result id de-duplicates a redelivered request's second result.
            headers = {
                Header.ENCODING.value: self._encoding.value,
                Header.MSG_ID.value: f"result-{self.request_id}",
            }
            await self._js.publish(self.subject, data, headers=headers)
        else:
            # The requester chose the encoding; core replies carry no headers (hot path).
            await self._nc.publish(self.subject, data)

"""The Responses API's store (`producer.http.responses_api.ResponseStore`) on the bridge's
PostgreSQL pool: `scheduler/store/responses.py`, composed here because `producer` must not
import `scheduler`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from producer.http.responses_storage import StoredResponse
from schemas import names
from schemas.messages import InferenceRequest

if TYPE_CHECKING:
    from jetserve.bridge import LazyPool

#: How long a stored response is kept (OpenAI keeps them 30 days).
KEEP_S_SETTING = "JETSERVE_RESPONSES_KEEP_S"
DEFAULT_KEEP_S = 30 * 86400.0
#: How long the async record of a cancelled background request is kept (the response row
#: holds the outcome).
ASYNC_KEEP_S = 86400.0


class PgResponseStore:
    def __init__(self, pools: LazyPool, keep_s: float) -> None:
        self._pools = pools
        self._keep_s = keep_s

    async def put(self, tenant: str, stored: StoredResponse, status: str) -> None:
        from scheduler.store import responses

        row = responses.ResponseRow(
            stored.id, tenant, status, stored.response, stored.conversation, stored.input_items
        )
        await responses.put(await self._pools.get(), row, self._keep_s)

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        from scheduler.store import responses

        row = await responses.get(await self._pools.get(), response_id, tenant)
        if row is None:
            return None
        return StoredResponse(
            row.id, row.response, row.conversation, row.input_items, row.stream_seq
        )

    async def delete(self, tenant: str, response_id: str) -> bool:
        from scheduler.store import responses

        return await responses.delete(await self._pools.get(), response_id, tenant)

    async def enqueue(self, tenant: str, stored: StoredResponse, request: InferenceRequest) -> None:
        from scheduler.store import async_requests, responses
        from schemas.codec import encode

        row = responses.ResponseRow(
            stored.id, tenant, "queued", stored.response, stored.conversation, stored.input_items
        )
        pool = await self._pools.get()
        async with pool.acquire() as conn, conn.transaction():
            await responses.put(conn, row, self._keep_s)
            await async_requests.insert(
                conn,
                request_id=request.id,
                tenant=tenant,
                endpoint=names.RESPONSES_ENDPOINT,
                model=request.model,
                request=encode(request),
                callback_url=None,
            )

    async def dispatched(self, response_id: str, request_id: str, stream_seq: int) -> None:
        from scheduler.store import async_requests, responses

        pool = await self._pools.get()
        async with pool.acquire() as conn, conn.transaction():
            await async_requests.mark_dispatched(conn, request_id)
            await responses.set_stream_seq(conn, response_id, stream_seq)

    async def end(self, request_id: str, reply: bytes) -> bool:
        from scheduler.store.async_answers import answer
        from schemas.codec import decode_reply
        from schemas.messages import FinalResult

        ok = isinstance(decode_reply(reply), FinalResult)
        pool = await self._pools.get()
        async with pool.acquire() as conn, conn.transaction():
            answered = await answer(conn, [(request_id, ok, reply)], ASYNC_KEEP_S)
        return bool(answered)

    async def discard(self, tenant: str, response_id: str, request_id: str) -> None:
        from scheduler.store import async_requests, responses

        pool = await self._pools.get()
        async with pool.acquire() as conn, conn.transaction():
            await responses.delete(conn, response_id, tenant)
            await async_requests.delete(conn, request_id)

    async def reply(self, request_id: str) -> bytes | None:
        from scheduler.store import async_requests

        row = await async_requests.get(await self._pools.get(), request_id)
        return None if row is None else row.reply

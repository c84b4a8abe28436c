"""The Responses API's store (`producer.http.responses_api.ResponseStore`) on the bridge's
PostgreSQL pool: `scheduler/store/responses.py`, composed here because `producer` must not
import `scheduler`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from producer.http.responses_api import StoredResponse

if TYPE_CHECKING:
    from jetserve.bridge import LazyPool

#: How long a stored response is kept (OpenAI keeps them 30 days).
KEEP_S_SETTING = "JETSERVE_RESPONSES_KEEP_S"
DEFAULT_KEEP_S = 30 * 86400.0


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
        return StoredResponse(row.id, row.response, row.conversation, row.input_items)

    async def delete(self, tenant: str, response_id: str) -> bool:
        from scheduler.store import responses

        return await responses.delete(await self._pools.get(), response_id, tenant)

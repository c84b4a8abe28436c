"""What the Responses API keeps in PostgreSQL: the `ResponseStore` protocol (implemented on
the bridge's pool by `jetserve/responses_store.py`) and its record."""

from __future__ import annotations

from typing import Protocol

import msgspec

from producer.http.errors import ApiError
from schemas.messages import InferenceRequest


class StoredResponse(msgspec.Struct, frozen=True):
    id: str
    #: The response object, JSON.
    response: bytes
    #: The conversation a continuation starts from (chat messages, JSON).
    conversation: bytes
    #: This request's input items (JSON list).
    input_items: bytes
    #: A background response's request in its model's stream, once stored there.
    stream_seq: int | None = None


class ResponseStore(Protocol):
    async def put(self, tenant: str, stored: StoredResponse, status: str) -> None: ...

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None: ...

    async def delete(self, tenant: str, response_id: str) -> bool: ...

    async def enqueue(self, tenant: str, stored: StoredResponse, request: InferenceRequest) -> None:
        """Record a background response (`queued`) and its request on the durable async path
        (the scheduler publishes it again if this bridge dies before it is published)."""
        ...

    async def dispatched(self, response_id: str, request_id: str, stream_seq: int) -> None: ...

    async def end(self, request_id: str, reply: bytes) -> bool:
        """Store `reply` as the background request's outcome (and queue its webhook event)
        unless one is stored already; False if it was."""
        ...

    async def discard(self, tenant: str, response_id: str, request_id: str) -> None:
        """Forget a background response whose request was refused (nothing will run)."""
        ...

    async def reply(self, request_id: str) -> bytes | None:
        """The outcome of a background request, once stored."""
        ...


def no_database() -> ApiError:
    return ApiError(
        503,
        "Stored responses need a database (JETSERVE_DATABASE_URL).",
        code="no_database",
        param="store",
    )

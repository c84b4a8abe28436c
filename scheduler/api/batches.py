"""The Batches API, OpenAI's contract (tenant-scoped).

    POST /v1/batches                  {input_file_id, endpoint, completion_window, metadata}
    GET  /v1/batches                  ?after= &limit= (1-100, default 20); newest first
    GET  /v1/batches/{batch_id}
    POST /v1/batches/{batch_id}/cancel

`completion_window` is "24h" (OpenAI's only value); shorter windows such as "1h" or "90s" are
accepted too. The scheduler does the rest (validation, dispatch, files); creating a batch only
records it and wakes the scheduler.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.types import ControllerRouterHandler
from msgspec import Meta

from scheduler.api.deps import JSON, Deps, notify_scheduler, query_limit
from scheduler.api.objects import batch_object, list_page
from scheduler.store import batches as bs
from scheduler.store.batches import TERMINAL, BatchStatus
from scheduler.store.files import get_file
from scheduler.store.limits import enqueued, queue_error
from schemas.openai_errors import BODY_ERRORS, ApiError, from_decode_error, invalid, require_found

_WINDOW_RE = re.compile(r"^(\d{1,6})([smh])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600}
MAX_WINDOW_S = 24 * 3600
_encode = msgspec.json.encode

MetadataKey = Annotated[str, Meta(max_length=64)]
MetadataValue = Annotated[str, Meta(max_length=512)]


class BatchCreate(msgspec.Struct, frozen=True):
    input_file_id: Annotated[str, Meta(min_length=1, max_length=128)]
    endpoint: str
    completion_window: str
    metadata: Annotated[dict[MetadataKey, MetadataValue], Meta(max_length=16)] | None = None


_decode_create = msgspec.json.Decoder(BatchCreate).decode


def window_seconds(window: str) -> int:
    match = _WINDOW_RE.fullmatch(window)
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)] if match else 0
    if not 1 <= seconds <= MAX_WINDOW_S:
        raise invalid(
            "completion_window must be '24h' (or a shorter window such as '1h' or '90s').",
            "completion_window",
        )
    return seconds


def batch_routes(deps: Deps) -> list[ControllerRouterHandler]:
    @post("/v1/batches", status_code=200, summary="Create a batch")
    async def create(request: Request[Any, Any, Any]) -> Response[Any]:
        tenant = await deps.authenticate(request.headers)
        raw = await deps.read_body(request.receive, deps.max_body_bytes)
        try:
            body = _decode_create(raw)
        except BODY_ERRORS as exc:
            raise from_decode_error(exc) from None
        if not deps.codec.accepts(body.endpoint):
            raise invalid(f"endpoint must be one of {sorted(deps.codec.endpoints)}.", "endpoint")
        window_s = window_seconds(body.completion_window)
        pool = await deps.pool()
        source = require_found(
            await get_file(pool, tenant, body.input_file_id),
            "file",
            body.input_file_id,
            "input_file_id",
        )
        if source.purpose != "batch":
            raise invalid("The input file's purpose must be 'batch'.", "input_file_id")
        limits = await deps.tenant_limits(pool, tenant)
        async with pool.acquire() as conn, conn.transaction():
            # One creation per tenant at a time: the queue check and the insert together.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"batches:{tenant}")
            over = None
            if limits.batch_queue_lines is not None or limits.batch_queue_tokens is not None:
                adding = (source.lines, source.bytes // 4)
                over = queue_error(limits, tenant, await enqueued(conn, tenant), adding)
            batch = await bs.create_batch(
                conn,
                tenant=tenant,
                endpoint=body.endpoint,
                input_file_id=source.id,
                completion_window=body.completion_window,
                window_s=window_s,
                metadata=body.metadata,
            )
            if over is not None:  # failed at creation, as OpenAI's are: nothing is queued
                await bs.fail_batch(conn, batch.id, [over])
                batch = await bs.get_batch(conn, batch.id) or batch
        if over is None:
            await notify_scheduler(pool)
        return Response(_encode(batch_object(batch)), media_type=JSON)

    @get("/v1/batches", summary="List batches, newest first")
    async def list_batches(request: Request[Any, Any, Any]) -> Response[Any]:
        tenant = await deps.authenticate(request.headers)
        limit = query_limit(request.query_params.get("limit"), default=20, maximum=100)
        rows = await bs.list_batches(
            await deps.pool(), tenant, after=request.query_params.get("after"), limit=limit
        )
        return Response(_encode(list_page(rows, limit, batch_object)), media_type=JSON)

    @get("/v1/batches/{batch_id:str}", summary="Retrieve a batch")
    async def retrieve(request: Request[Any, Any, Any], batch_id: str) -> Response[Any]:
        tenant = await deps.authenticate(request.headers)
        batch = await bs.get_batch(await deps.pool(), batch_id, tenant)
        found = require_found(batch, "batch", batch_id, "batch_id")
        return Response(_encode(batch_object(found)), media_type=JSON)

    @post("/v1/batches/{batch_id:str}/cancel", status_code=200, summary="Cancel a batch")
    async def cancel(request: Request[Any, Any, Any], batch_id: str) -> Response[Any]:
        tenant = await deps.authenticate(request.headers)
        pool = await deps.pool()
        batch = require_found(
            await bs.request_cancel(pool, tenant, batch_id), "batch", batch_id, "batch_id"
        )
        if batch.status in TERMINAL and batch.status is not BatchStatus.CANCELLED:
            raise ApiError(
                409,
                f"Cannot cancel a batch with status '{batch.status}'.",
                code="batch_not_cancellable",
            )
        if batch.status is BatchStatus.FINALIZING:
            raise ApiError(
                409, "The batch is finalizing: every request has finished.", code="finalizing"
            )
        await notify_scheduler(pool)
        return Response(_encode(batch_object(batch)), media_type=JSON)

    return [create, list_batches, retrieve, cancel]

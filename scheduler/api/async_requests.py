"""Async single requests over HTTP: submit (202 + id), then poll.

    POST /v1/async/chat/completions   the body of POST /v1/chat/completions (never streamed)
    POST /v1/async/completions        the body of POST /v1/completions
    POST /v1/async/embeddings         the body of POST /v1/embeddings
    POST /v1/async/v2/models/{name}/infer    the body of POST /v2/models/{name}/infer (JSON
                                      tensors; no binary extension)
    POST /v1/async/models/{name}:predict     the body of POST /v1/models/{name}:predict
    GET  /v1/async/requests/{id}      status; once finished, `response` {status_code,
                                      request_id, body} (body: what the sync endpoint returns)

`X-Jetserve-Callback-Url: <url>` (a webhook endpoint the tenant registered) gets a signed
`request.completed` / `request.failed` event when the request finishes. The request is
recorded in Postgres before it is published, so once the 202 is sent it is not lost; a bad
body, an unknown model or a full backlog are refused with the synchronous endpoint's error.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.types import ControllerRouterHandler

from scheduler.api.deps import JSON, Deps
from scheduler.api.objects import AsyncRequestObject, ResponseObject, async_request_object
from scheduler.codec import Envelope, Reply
from scheduler.store import async_requests as ar
from scheduler.store.async_requests import AsyncRow
from scheduler.store.webhooks import endpoint_by_url
from scheduler.urlguard import registered_form
from schemas import names
from schemas.codec import decode_reply, decode_request, encode
from schemas.messages import ErrorResult, StreamChunk
from schemas.names import Priority, ResultKind
from schemas.openai_errors import ApiError, invalid, require_found
from schemas.routes import sticky_of_body

log = logging.getLogger(__name__)
CALLBACK_HEADER = names.HTTP_CALLBACK_URL
ROUTE_KEY_HEADER = names.HTTP_ROUTE_KEY
_encode = msgspec.json.encode
#: Refusals after which nothing was stored; anything else (NATS unavailable) leaves the request
#: queued for the scheduler to publish.
_REFUSED = {400, 404, 413, 429}


def async_routes(deps: Deps) -> list[ControllerRouterHandler]:
    async def submit(request: Request[Any, Any, Any], endpoint: str) -> Response[Any]:
        tenant = await deps.authenticate(request.headers)
        body = await deps.read_body(request.receive, deps.max_body_bytes)
        request_id = ar.new_async_id()
        wire = deps.codec.request(endpoint, body, Envelope(request_id, tenant, Priority.ONLINE))
        # Recorded for its version, so the scheduler's republish goes where this one goes.
        wire = deps.route(wire, sticky_of_body(body) or request.headers.get(ROUTE_KEY_HEADER))
        pool = await deps.pool()
        raw_callback = request.headers.get(CALLBACK_HEADER)
        callback = registered_form(raw_callback) if raw_callback else None
        if callback and await endpoint_by_url(pool, tenant, callback) is None:
            raise invalid(
                "The callback URL must be a webhook endpoint registered first (POST /v1/webhooks).",
                "X-Jetserve-Callback-Url",
                "callback_url_not_registered",
            )
        data = encode(wire)
        await ar.insert(
            pool,
            request_id=request_id,
            tenant=tenant,
            endpoint=endpoint,
            model=wire.model,
            request=data,
            callback_url=callback,
        )
        try:
            await deps.submit(wire, data, names.results_subject(ResultKind.ASYNC, request_id))
        except ApiError as exc:
            if exc.status in _REFUSED:
                await ar.delete(pool, request_id)
                raise
            log.warning("async request %s left queued: %s", request_id, exc.message)
        else:
            await ar.mark_dispatched(pool, request_id)
        row = await ar.get(pool, request_id, tenant)
        assert row is not None
        return Response(_encode(async_object(deps, row)), status_code=202, media_type=JSON)

    @post("/v1/async/chat/completions", status_code=202, summary="Submit a chat completion")
    async def chat(request: Request[Any, Any, Any]) -> Response[Any]:
        return await submit(request, "/v1/chat/completions")

    @post("/v1/async/completions", status_code=202, summary="Submit a text completion")
    async def completions(request: Request[Any, Any, Any]) -> Response[Any]:
        return await submit(request, "/v1/completions")

    @post("/v1/async/embeddings", status_code=202, summary="Submit an embeddings request")
    async def embeddings(request: Request[Any, Any, Any]) -> Response[Any]:
        return await submit(request, "/v1/embeddings")

    @post("/v1/async/v2/models/{name:str}/infer", status_code=202, summary="Submit a V2 inference")
    async def v2_infer(request: Request[Any, Any, Any], name: str) -> Response[Any]:
        endpoint = f"/v2/models/{name}/infer"
        if not deps.codec.accepts(endpoint):  # a name no model can have
            raise ApiError(404, f"The model `{name[:100]}` does not exist.", code="model_not_found")
        return await submit(request, endpoint)

    @post("/v1/async/models/{target:str}", status_code=202, summary="Submit a KServe V1 predict")
    async def v1_predict(request: Request[Any, Any, Any], target: str) -> Response[Any]:
        endpoint = f"/v1/models/{target}"
        if not deps.codec.accepts(endpoint):  # not `{name}:predict`, or a name no model can have
            raise ApiError(404, f"Unknown route: POST /v1/async/models/{target[:100]}")
        return await submit(request, endpoint)

    @get("/v1/async/requests/{request_id:str}", summary="Status and result of an async request")
    async def retrieve(request: Request[Any, Any, Any], request_id: str) -> Response[Any]:
        tenant = await deps.authenticate(request.headers)
        row = require_found(
            await ar.get(await deps.pool(), request_id, tenant), "request", request_id, "request_id"
        )
        return Response(_encode(async_object(deps, row)), media_type=JSON)

    return [chat, completions, embeddings, v2_infer, v1_predict, retrieve]


def async_object(deps: Deps, row: AsyncRow) -> AsyncRequestObject:
    if row.reply is None:
        return async_request_object(row)
    result = decode_reply(row.reply)
    if isinstance(result, StreamChunk):  # never stored: only final replies are
        return async_request_object(row)
    if not deps.codec.accepts(row.endpoint):  # over NATS: the wire reply
        if isinstance(result, ErrorResult):
            return async_request_object(row, error=result)
        body, status = row.reply, 200
    else:
        created = int((row.completed_at or row.created_at).timestamp())
        metadata = decode_request(row.request).metadata
        reply = Reply(row.id, result, created, metadata)
        status, body = deps.codec.response(row.endpoint, reply)
    return async_request_object(row, ResponseObject(status, row.id, msgspec.Raw(body)))

"""Webhook endpoints of the caller's tenant.

    POST   /v1/webhooks          {url, events?: [...], secret?: "whsec_..."}  -> the endpoint,
                                 with its secret (shown only here)
    GET    /v1/webhooks          the tenant's endpoints (without secrets)
    DELETE /v1/webhooks/{id}

Events: batch.completed, batch.failed, batch.expired, batch.cancelled, request.completed,
request.failed (default: all). The URL is refused when it resolves to a loopback, private or
link-local address, unless JETSERVE_WEBHOOKS_ALLOW_PRIVATE=true; it is stored normalised (as
the HTTP client sends it: a tab or newline is refused, not dropped).
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.types import ControllerRouterHandler
from msgspec import Meta

from scheduler.api.deps import JSON, Deps
from scheduler.api.objects import WebhookEndpointList, deleted, endpoint_object
from scheduler.store import webhooks as wh
from scheduler.urlguard import UrlRefused, check_url, normalise
from schemas.openai_errors import BODY_ERRORS, from_decode_error, invalid

_encode = msgspec.json.encode


class EndpointCreate(msgspec.Struct, frozen=True):
    url: Annotated[str, Meta(min_length=1, max_length=2048)]
    events: list[str] | None = None
    secret: str | None = None


_decode_create = msgspec.json.Decoder(EndpointCreate).decode


def _check_secret(secret: str) -> None:
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not secret.startswith("whsec_") or not 24 <= len(key) <= 64:
        raise invalid("secret must be 'whsec_' + base64 of 24 to 64 random bytes.", "secret")


def webhook_routes(deps: Deps) -> list[ControllerRouterHandler]:
    @post("/v1/webhooks", status_code=200, summary="Register a webhook endpoint")
    async def create(request: Request[Any, Any, Any]) -> Response[Any]:
        tenant = await deps.authenticate(request.headers)
        try:
            body = _decode_create(await deps.read_body(request.receive, deps.max_body_bytes))
        except BODY_ERRORS as exc:
            raise from_decode_error(exc) from None
        events = body.events if body.events is not None else list(wh.ALL_EVENTS)
        unknown = sorted(set(events) - set(wh.ALL_EVENTS))
        if unknown or not events:
            raise invalid(f"events must be among {[str(e) for e in wh.ALL_EVENTS]}.", "events")
        if body.secret is not None:
            _check_secret(body.secret)
        try:
            # Stored as the HTTP client will send it: what is checked is what is delivered to.
            url = normalise(body.url)
            await check_url(url, allow_private=deps.allow_private_webhooks)
        except UrlRefused as exc:
            raise invalid(f"The webhook URL is refused: {exc}.", "url", "invalid_url") from None
        endpoint = await wh.create_endpoint(
            await deps.pool(), tenant, url, sorted(set(events)), body.secret
        )
        return Response(_encode(endpoint_object(endpoint, with_secret=True)), media_type=JSON)

    @get("/v1/webhooks", summary="List webhook endpoints")
    async def list_endpoints(request: Request[Any, Any, Any]) -> Response[Any]:
        tenant = await deps.authenticate(request.headers)
        rows = await wh.list_endpoints(await deps.pool(), tenant)
        return Response(
            _encode(WebhookEndpointList([endpoint_object(e) for e in rows])), media_type=JSON
        )

    @delete("/v1/webhooks/{endpoint_id:str}", status_code=200, summary="Delete an endpoint")
    async def remove(request: Request[Any, Any, Any], endpoint_id: str) -> Response[Any]:
        tenant = await deps.authenticate(request.headers)
        found = await wh.delete_endpoint(await deps.pool(), tenant, endpoint_id)
        body = deleted(found, "webhook_endpoint", endpoint_id, "endpoint_id")
        return Response(_encode(body), media_type=JSON)

    return [create, list_endpoints, remove]

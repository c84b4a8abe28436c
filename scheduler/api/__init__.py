"""HTTP routes for batch work, served by the bridge process next to the OpenAI routes:
Files, Batches, async requests and webhook endpoints. Built from injected `Deps`
(`jetserve/bridge.py` composes them); errors are `schemas.openai_errors.ApiError`."""

from __future__ import annotations

from litestar.types import ControllerRouterHandler

from scheduler.api.async_requests import async_routes
from scheduler.api.batches import batch_routes
from scheduler.api.deps import Deps
from scheduler.api.files import file_routes
from scheduler.api.webhooks import webhook_routes


def routes(deps: Deps) -> list[ControllerRouterHandler]:
    return [
        *file_routes(deps),
        *batch_routes(deps),
        *async_routes(deps),
        *webhook_routes(deps),
    ]

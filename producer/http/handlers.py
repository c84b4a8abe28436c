"""The bridge's endpoints, independent of the web framework: bytes and headers in, a
`Reply` (status, body or SSE stream, headers) out.

    POST /v1/chat/completions, /v1/completions, /v1/embeddings -> one InferenceRequest each
    GET  /v1/models                                              -> models that have a stream

Logs carry request ids and sizes, never prompt text or keys.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import msgspec

from natsio.directory import ModelDirectory
from natsio.objects import ImageObjects
from producer.client import Client
from producer.http import convert
from producer.http import openai_types as oa
from producer.http.auth import Authenticator, Principal, require_principal
from producer.http.calls import Call, Calls, ClientGone, Watch
from producer.http.config import BridgeConfig
from producer.http.endpoints import (
    CHAT,
    Endpoint,
    chat_chunk,
    response,
    text_chunk,
    usage_chunk,
)
from producer.http.errors import ApiError, from_decode_error, invalid
from producer.http.idempotency import Idempotency, StoredCall, token
from producer.http.images import (
    Fetch,
    ReadFile,
    check_body_size,
    has_images,
    prepare_chat_images,
)
from producer.http.sse import DONE, event
from producer.limits import NO_LIMITS, Admission, TenantGate, estimate_tokens
from schemas import names
from schemas.messages import FinalResult, InferenceRequest, StreamChunk
from schemas.names import Priority
from schemas.tiers import reported_tier, tier_queue

log = logging.getLogger(__name__)

TIMEOUT_HEADER = names.HTTP_TIMEOUT
IDEMPOTENCY_HEADER = names.HTTP_IDEMPOTENCY_KEY
AUTHORIZATION_HEADER = names.HTTP_AUTHORIZATION
ROUTE_KEY_HEADER = names.HTTP_ROUTE_KEY
OWNER, MODEL = "jetserve", "model"
_IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,256}$")
_encoder = msgspec.json.Encoder()


class Reply(msgspec.Struct):
    """What an endpoint answers (a Struct: built for every request, cheaper than a
    dataclass)."""

    status: int = 200
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    #: More headers, already encoded (the `x-ratelimit-*` ones of a JSON answer).
    raw_headers: tuple[tuple[bytes, bytes], ...] = ()


class Bridge:
    """Owns the NATS client and everything that serves requests with it."""

    def __init__(
        self,
        config: BridgeConfig,
        authenticator: Authenticator,
        client: Client,
        calls: Calls,
        idempotency: Idempotency,
        gate: TenantGate | None = None,
    ) -> None:
        self.config = config
        self.auth = authenticator
        #: The NATS client the requests are published with.
        self.client = client
        self.calls = calls
        self.idempotency = idempotency
        #: Tenant limits (None: none are enforced).
        self.gate = gate
        self._directory = ModelDirectory(client.nc, ttl_s=2.0)
        self._ids: Iterator[str] = iter(())
        #: Fetches http(s) image URLs (set by the composition root; None: refused).
        self.image_fetch: Fetch | None = None
        #: The tenant's uploaded files as images (`input_image` by `file_id`); None: none.
        self.image_files: Callable[[str], ReadFile] | None = None
        self._images: ImageObjects | None = None

    async def with_images(self, request: InferenceRequest) -> InferenceRequest:
        """`request` with every image fetched and decoded before anything is queued (a
        corrupt one is a 400 naming its part, never a worker's error): small images ride in
        it as data URLs, larger ones in the images bucket, named by it. Not for a model whose
        workers say they take no images: its worker refuses the part, naming it."""
        inputs = await self.calls.presence.inputs(request.model)
        if inputs is not None and "image" not in inputs:
            return request
        read_file = None if self.image_files is None else self.image_files(request.tenant)
        messages = await prepare_chat_images(
            request.payload.messages, self.image_fetch, self.image_store, read_file
        )
        if messages is None:
            return request
        payload = msgspec.structs.replace(request.payload, messages=messages)
        return msgspec.structs.replace(request, payload=payload)

    async def image_store(self) -> ImageObjects:
        """The images bucket (made on first need)."""
        if self._images is None:
            self._images = await ImageObjects.open(self.client.js)
        return self._images

    def new_id(self) -> str:
        """128 random bits from the OS CSPRNG: ids are in every response and are the NATS
        de-duplication id, so one tenant must not be able to predict another's."""
        try:
            return next(self._ids)
        except StopIteration:
            self._ids = _random_ids()
            return next(self._ids)

    def with_calls(self, calls: Calls) -> Bridge:
        """The same bridge, its calls opened by `calls` (the benchmark's in-process one)."""
        bridge = Bridge(self.config, self.auth, self.client, calls, self.idempotency, self.gate)
        bridge.image_fetch = self.image_fetch
        return bridge

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        return await require_principal(self.auth, headers.get(AUTHORIZATION_HEADER))

    async def admit(
        self, tenant: str, model: str, body_bytes: int, max_tokens: int | None
    ) -> Admission:
        """The tenant's limits checked (a 429 `ApiError` when over one) for a request of
        `body_bytes` asking for up to `max_tokens`; `Admission.finish` when it ends."""
        if self.gate is None:
            return NO_LIMITS
        tokens = estimate_tokens(body_bytes, max_tokens, self.gate.default_max_tokens)
        return await self.gate.admit(tenant, model, tokens)

    def admit_leased(
        self, tenant: str, model: str, body_bytes: int, max_tokens: int | None
    ) -> Admission | None:
        """`admit` without awaiting, when the tenant's cached limits and this replica's
        leases decide it (the common case); None: `admit`."""
        gate = self.gate
        if gate is None:
            return NO_LIMITS
        tokens = estimate_tokens(body_bytes, max_tokens, gate.default_max_tokens)
        return gate.admit_leased(tenant, model, tokens)

    def timeout_s(self, headers: Mapping[str, str], queue: Priority = Priority.ONLINE) -> float:
        """The header's timeout, else the default; both capped at the default. A `flex`
        request (the batch queue) has its own, longer default."""
        limit = self.config.flex_timeout_s if queue is Priority.BATCH else self.config.timeout_s
        raw = headers.get(TIMEOUT_HEADER)
        if raw is None:
            return limit
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not value > 0:  # also NaN
            raise invalid(
                f"{TIMEOUT_HEADER} must be a positive number of seconds.", "X-Jetserve-Timeout-S"
            )
        return min(value, limit)

    async def post(
        self,
        endpoint: Endpoint,
        read_body: Callable[[], Awaitable[bytes]],
        headers: Mapping[str, str],
        on_gone: Watch,
    ) -> Reply:
        """Serve one POST. The body is read only once the caller is authenticated.
        `on_gone(gone)` starts watching for a disconnect (`gone()` is called on one) and
        returns the function that stops watching."""
        principal = await self.authenticate(headers)
        body = await read_body()
        try:
            parsed = endpoint.decoder.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise from_decode_error(exc) from None
        queue = tier_queue(getattr(parsed, "service_tier", None))
        timeout_s = self.timeout_s(headers, queue)
        key = headers.get(IDEMPOTENCY_HEADER)
        if key is not None and not _IDEMPOTENCY_KEY_RE.fullmatch(key):
            raise invalid(
                "Idempotency-Key must be 1-256 printable ASCII characters.", "Idempotency-Key"
            )
        now_ms = int(time.time() * 1000)
        request = endpoint.to_request(
            parsed,
            id=token(principal.tenant, key) if key else self.new_id(),
            tenant=principal.tenant,
            created_ms=now_ms,
            deadline_ms=now_ms + int(timeout_s * 1000),
            idempotency_key=key,
            priority=queue,
        )
        if endpoint is CHAT:
            check_body_size(len(body), parsed.messages, self.config.max_body_bytes)
        asked = request.model  # tenant limits count the name the client asked for
        routes = self.client.routes
        if routes is not None and routes.plan(request.model) is not None:  # a served name
            sticky = (
                getattr(parsed, "prompt_cache_key", None)
                or parsed.safety_identifier
                or parsed.user
                or headers.get(ROUTE_KEY_HEADER)
            )
            request = self.client.route(request, sticky)
        if endpoint is CHAT and has_images(parsed.messages):
            request = await self.with_images(request)
        streaming = request.stream
        max_tokens = request.parameters.max_tokens
        admission = self.admit_leased(
            principal.tenant, asked, len(body), max_tokens
        ) or await self.admit(principal.tenant, asked, len(body), max_tokens)
        call: Call | StoredCall
        try:
            if key:
                call = await self.idempotency.open(
                    request, streaming=streaming, timeout_s=timeout_s
                )
            else:
                call = await self.calls.open(
                    request, streaming=streaming, timeout_s=timeout_s, watch=on_gone
                )
        except ClientGone:  # while its request waited for a slot: nothing was published
            admission.finish()
            return Reply(status=499)
        except BaseException:
            admission.finish()
            raise
        stop_watch = on_gone(call.client_gone) if isinstance(call, Call) else _nothing
        # Opening the call and waiting for its first reply are written out here and in the
        # Responses route (responses_api.py) alike, on purpose: this is the per-request path,
        # and a shared helper would add a coroutine to every request.
        try:
            first = await call.next()
        except ClientGone:
            stop_watch()
            call.abandon()
            admission.finish()
            return Reply(status=499)
        except BaseException:
            stop_watch()
            await call.close()
            admission.finish()
            raise
        stop_watch()
        # An idempotent retry answers with the first attempt's `created`: identical bodies.
        created = getattr(call, "created_s", None) or now_ms // 1000
        response_id = endpoint.id_prefix + request.id
        tier = reported_tier(queue)
        if streaming:
            include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
            stream = self._sse(
                endpoint, call, first, response_id, created, include_usage, tier, admission
            )
            return Reply(stream=stream, headers=admission.headers)
        try:
            result = first if isinstance(first, FinalResult) else await call.result()
        except BaseException:
            admission.finish()
            raise
        finally:
            await call.close()
        admission.finish(result.usage.total_tokens)
        body = response(endpoint, parsed, result, response_id, created, tier)
        return Reply(body=_encoder.encode(body), raw_headers=admission.raw_headers)

    async def predict(
        self, principal: Principal, model: str, payload: Any, headers: Mapping[str, str]
    ) -> FinalResult:
        """One `predict` request (KServe V1 / V2 inference) through the queue: its result,
        or an `ApiError` (a worker's `invalid_request` is a 400)."""
        timeout_s = self.timeout_s(headers)
        now_ms = int(time.time() * 1000)
        try:
            names.validate_model_name(model)
        except names.InvalidName:
            raise ApiError(404, f"The model `{model[:100]}` does not exist.") from None
        admission = await self.admit(principal.tenant, model, 0, 0)  # counted as requests only
        request = InferenceRequest(
            id=self.new_id(),
            model=model,
            kind="predict",
            payload=payload,
            tenant=principal.tenant,
            created_ms=now_ms,
            deadline_ms=now_ms + int(timeout_s * 1000),
        )
        request = self.client.route(request, headers.get(ROUTE_KEY_HEADER))
        try:
            call = await self.calls.open(request, streaming=False, timeout_s=timeout_s)
            try:
                return await call.result()
            finally:
                await call.close()
        finally:
            admission.finish()

    async def _sse(
        self,
        endpoint: Endpoint,
        call: Call | StoredCall,
        first: StreamChunk | FinalResult,
        response_id: str,
        created: int,
        include_usage: bool,
        tier: str,
        admission: Admission = NO_LIMITS,
    ) -> AsyncIterator[bytes]:
        chat = endpoint is CHAT
        model = call.request.model
        frame = chat_chunk if chat else text_chunk
        streamed = False
        try:
            if chat:
                role = oa.Delta(role="assistant", content="")
                yield event(chat_chunk(response_id, created, model, role, None, tier))
            item = first
            calls_streamed = False
            while isinstance(item, StreamChunk):
                if item.delta:
                    streamed = True
                    yield event(frame(response_id, created, model, item.delta, None, tier))
                if chat and item.tool_calls:
                    calls_streamed = True
                    delta = oa.Delta(tool_calls=convert.tool_call_deltas(item.tool_calls))
                    yield event(chat_chunk(response_id, created, model, delta, None, tier))
                item = await call.next()
            text, _, tool_calls = convert.text_of(item)
            if text and not streamed:  # not relayed in chunks (an idempotent retry)
                yield event(frame(response_id, created, model, text, None, tier))
            if chat and tool_calls and not calls_streamed:
                delta = oa.Delta(tool_calls=convert.tool_call_deltas(tool_calls))
                yield event(chat_chunk(response_id, created, model, delta, None, tier))
            admission.finish(item.usage.total_tokens)
            reason = convert.finish_reason(item.finish_reason)
            yield event(frame(response_id, created, model, None, reason, tier))
            if include_usage:
                yield event(usage_chunk(chat, response_id, created, model, item, tier))
        except ApiError as exc:
            log.info("stream %s ended with %d %s", response_id, exc.status, exc.code)
            yield b"data: " + exc.body() + b"\n\n"
        finally:
            admission.finish()  # (a no-op once settled with the usage above)
            # Also runs when the client disconnects mid-stream (the response is cancelled).
            if call.finished:
                self.calls.spawn(call.close())
            else:
                call.abandon()
        yield DONE

    async def limits_of(self, tenant: str, model: str) -> bytes:
        """`GET /v1/limits`: the limits that apply to `tenant` (for `model`, `*`: any) and
        what is left of each as this bridge last saw it."""
        body: dict[str, Any] = {"object": "limits", "tenant": tenant, "model": model}
        if self.gate is None:
            body.update(enforced=False, limits={}, usage={})
        else:
            limits, usage = await self.gate.usage(tenant, model)
            body.update(enforced=True, limits=msgspec.to_builtins(limits), usage=usage)
        return _encoder.encode(body)

    async def models(self) -> list[str]:
        """Models with a request stream (JetStream's stream names API), cached 2 s."""
        return await self._directory.models()

    async def has_model(self, model: str) -> bool:
        """Whether `model` has a request stream (asked again on a miss: one provisioned a
        moment ago is found)."""
        return await self._directory.has(model)

    def served_names(self) -> dict[str, list[str]]:
        """Served name -> its versions (weight 0 included), from the live route table."""
        table = self.client.routes
        if table is None:
            return {}
        return {n: [t.model for t in r.targets] for n, r in table.routes().items()}

    async def model_list(self) -> bytes:
        """The served names (each with its versions, a jetserve extension), then every model
        with a request stream: versions stay callable by their own names."""
        created = int(time.time())
        cards = [
            oa.ModelCard(id=name, created=created, owned_by=OWNER, object=MODEL, versions=versions)
            for name, versions in sorted(self.served_names().items())
        ]
        cards += [
            oa.ModelCard(id=m, created=created, owned_by=OWNER, object=MODEL)
            for m in await self.models()
        ]
        return _encoder.encode(oa.ModelList(cards))

    async def readiness(self) -> tuple[bool, bytes]:
        """Ready when NATS is connected. Workers are reported, not required: a model scaled to
        zero still accepts requests (they queue until a worker starts)."""
        connected = self.client.is_connected
        workers: dict[str, bool] = {}
        if connected:
            models = await self.models()
            answers = await asyncio.gather(*[self.calls.any_worker(m) for m in models])
            workers = dict(zip(models, answers, strict=True))
        body = {"nats_connected": connected, "workers": workers}
        return connected, _encoder.encode(body)


def _nothing() -> None:
    return None


def _random_ids(count: int = 256) -> Iterator[str]:
    """`count` ids of 32 hex digits from one `os.urandom` call: 137 ns an id measured, as
    cheap as the prefix-and-counter ids this replaced (143 ns); `secrets.token_hex(16)` per
    id costs 512 ns."""
    text = os.urandom(16 * count).hex()
    return iter([text[i : i + 32] for i in range(0, len(text), 32)])

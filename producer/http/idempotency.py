"""`Idempotency-Key`: a retried POST runs once and still gets the answer.

The request id and the reply subject are derived from (tenant, key) alone, so every attempt
(on any bridge replica) publishes the same JetStream de-duplication id and listens on the
same subject. An attempt whose publish is acknowledged as a duplicate:

1. returns the stored terminal reply, if the first attempt already finished (replies are
   kept in the KV bucket `names.IDEMPOTENCY_BUCKET` for the duplicate window);
2. else, if the first attempt's message is still in the stream (queued or running), waits on
   the shared reply subject for its reply;
3. else the first attempt was abandoned (cancelled for its deadline or for lack of workers,
   and deleted): after a short grace for a result on its way to the bucket, it publishes a
   new generation, whose de-duplication id derives from the abandoned message's sequence, so
   concurrent retries still agree on one run.

An idempotent request is not cancelled when its client disconnects: it runs on, and its
result is stored for the retry that is likely to follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from natsio import kv as natsio_kv
from producer.http.calls import Call, Calls
from producer.http.errors import ApiError, from_error_result
from producer.pending import Pending
from schemas import names
from schemas.codec import encode
from schemas.errors import ErrorCode
from schemas.messages import ErrorResult, FinalResult, InferenceRequest

log = logging.getLogger(__name__)

#: Generations tried before waiting on whatever the last one is doing.
_MAX_GENERATIONS = 3
#: How long a duplicate waits for a finished first attempt's reply to reach the bucket.
_STORE_GRACE_S = 0.5
#: Terminal replies not worth keeping: the work was abandoned, a retry should run it.
_NOT_STORED = {ErrorCode.CANCELLED, ErrorCode.DEADLINE_EXCEEDED, ErrorCode.NO_WORKERS}


def token(tenant: str, key: str) -> str:
    """The request id / KV key / reply subject token of (tenant, key)."""
    return "idem-" + hashlib.sha256(f"{tenant}\x00{key}".encode()).hexdigest()[:40]


async def open_bucket(js: JetStreamContext, ttl_s: float) -> KeyValue:
    description = "terminal replies of requests sent with an Idempotency-Key"
    # An existing bucket is used as it is (maybe with another TTL).
    return await natsio_kv.open_bucket(js, names.IDEMPOTENCY_BUCKET, description, ttl_s=ttl_s)


class Stored(msgspec.Struct, frozen=True):
    """A bucket entry: the terminal reply, and the `created` time of the response every
    attempt returns (the first attempt's, so that retries get identical bodies)."""

    created_s: int
    reply: FinalResult | ErrorResult


_stored = msgspec.json.Decoder(Stored)


class StoredCall:
    """A call whose terminal reply was found in the bucket."""

    finished = True

    def __init__(self, request: InferenceRequest, stored: Stored) -> None:
        self.request = request
        self._reply = stored.reply
        self.created_s: int | None = stored.created_s

    async def next(self) -> FinalResult:
        if isinstance(self._reply, ErrorResult):
            raise from_error_result(self._reply)
        return self._reply

    async def result(self) -> FinalResult:
        return await self.next()

    async def close(self) -> None:
        return None

    def abandon(self) -> None:
        return None


class IdempotentCall(Call):
    """Stores its terminal reply; on disconnect, waits for it in the background instead of
    cancelling. Chunks are not relayed: a retry may join mid-stream, so the text comes
    whole, with the final result."""

    def __init__(
        self, idem: Idempotency, key: str, pending: Pending, deadline: float, created_s: int
    ) -> None:
        super().__init__(idem.calls, pending, deadline, on_final=self._store_error)
        self._idem = idem
        self._key = key
        self.created_s: int | None = created_s

    def _store_error(self, reply: FinalResult | ErrorResult) -> None:
        if isinstance(reply, ErrorResult) and reply.code not in _NOT_STORED:
            stored = Stored(self.created_s or 0, reply)
            self._d.spawn(self._idem.put(self._key, stored))

    async def next(self) -> FinalResult:
        while True:
            item = await super().next()
            if isinstance(item, FinalResult):
                stored = await self._idem.put(self._key, Stored(self.created_s or 0, item))
                self.created_s = stored.created_s
                return item

    def abandon(self) -> None:
        if self.finished:
            return
        self._d.spawn(self._finish_detached())

    async def _finish_detached(self) -> None:
        with contextlib.suppress(ApiError):
            await self.result()  # stored by on_final; on deadline/no workers, cancelled
        await self.close()


class Idempotency:
    def __init__(self, calls: Calls, kv: KeyValue, js: JetStreamContext) -> None:
        self.calls = calls
        self._kv = kv
        self._js = js

    async def get(self, key: str) -> Stored | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        with contextlib.suppress(msgspec.DecodeError):
            return _stored.decode(entry.value)
        return None

    async def put(self, key: str, stored: Stored) -> Stored:
        """Store unless an entry exists; return the entry that is kept (the first one)."""
        try:
            await self._kv.create(key, encode(stored))
            return stored
        except KeyWrongLastSequenceError:
            return await self.get(key) or stored
        except Exception as exc:
            log.warning("could not store the idempotent result of %s: %s", key, exc)
            return stored

    async def _in_stream(self, model: str, seq: int) -> bool:
        try:
            await self._js.get_msg(names.stream_name(model), seq)
        except NotFoundError:
            return False
        return True

    async def open(
        self, request: InferenceRequest, *, streaming: bool, timeout_s: float
    ) -> Call | StoredCall:
        """`request.id` must be `token(tenant, idempotency_key)`."""
        base = request.id
        created_s = (request.created_ms or 0) // 1000
        stored = await self.get(base)
        if stored is not None:
            return StoredCall(request, stored)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        reply_to = names.idempotent_reply_subject(base)
        for _ in range(_MAX_GENERATIONS):
            pending = await self.calls.start(request, streaming=False, reply_to=reply_to)
            accepted = pending.accepted
            assert accepted is not None
            call = IdempotentCall(self, base, pending, deadline, created_s)
            if not accepted.duplicate or await self._in_stream(request.model, accepted.seq):
                return call
            await asyncio.sleep(_STORE_GRACE_S)
            stored = await self.get(base)
            if stored is not None:
                await self.calls.finish(pending, cancel=False)
                return StoredCall(request, stored)
            if pending.done.done():  # the reply itself arrived meanwhile
                return call
            # Abandoned: run it again under a de-duplication id of the next generation.
            await self.calls.finish(pending, cancel=False)
            generation = f"{base}-{accepted.seq}"
            request = msgspec.structs.replace(request, id=generation, idempotency_key=generation)
        return call

"""Dead letters: list, show, replay and purge the requests in `jetserve-dlq`.

A dead letter is the request's message as it was published (body, `Jetserve-Reply-To`,
encoding) plus the error headers the worker added (`Jetserve-Error-Code`,
`Jetserve-Error-Message`, `Jetserve-Deliveries`, `Jetserve-Original-Subject`). Its id here is
its sequence in the dead-letter stream.

A replay publishes the request again on its original subject, with a new message id (the
duplicate window would drop the old one) and a fresh deadline (the original's span from its
creation, counted from now; none if it had none), keeping its request id and reply subject;
once the server has stored it, the dead letter is deleted. So batch items and async requests
are stored as usual, a NATS caller still listening on the reply subject gets the answer; a
synchronous HTTP caller has long been answered (`dead_lettered`), and nobody listens on its
reply subject any more: its result is dropped.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import msgspec
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from schemas import names
from schemas.codec import decode_request, encode, encoding_of
from schemas.names import Header

_ERROR_HEADERS = {
    Header.ERROR_CODE.value,
    Header.ERROR_MESSAGE.value,
    Header.DELIVERIES.value,
    Header.ORIGINAL_SUBJECT.value,
}


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    model: str
    request_id: str
    subject: str
    headers: dict[str, str]
    data: bytes
    #: Unix seconds when it was dead-lettered.
    time_s: float

    @property
    def error(self) -> str:
        h = self.headers
        return f"{h.get(Header.ERROR_CODE.value, '?')}: {h.get(Header.ERROR_MESSAGE.value, '')}"

    @property
    def attempts(self) -> str:
        return self.headers.get(Header.DELIVERIES.value, "?")


class DeadLetters:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def list(self, model: str | None = None, limit: int = 1000) -> list[DeadLetter]:
        subject = names.dlq_subject(model) if model else names.DLQ_SUBJECTS
        found: list[DeadLetter] = []
        seq = 1
        while len(found) < limit:
            try:
                raw = await self._js.get_msg(names.DLQ_STREAM, seq=seq, subject=subject, next=True)
            except NotFoundError:
                break
            letter = _letter(raw)
            found.append(letter)
            seq = letter.seq + 1
        return found

    async def get(self, seq: int) -> DeadLetter:
        return _letter(await self._js.get_msg(names.DLQ_STREAM, seq=seq))

    async def replay(self, seq: int) -> str:
        """Publish dead letter `seq` again (see the module docstring); its new message id."""
        letter = await self.get(seq)
        encoding = encoding_of(letter.headers)
        request = decode_request(letter.data, encoding)
        now_ms = int(time.time() * 1000)
        deadline_ms = None
        if request.deadline_ms is not None:
            span_ms = request.deadline_ms - (request.created_ms or request.deadline_ms)
            deadline_ms = now_ms + max(span_ms, 60_000)
        body = encode(
            msgspec.structs.replace(request, deadline_ms=deadline_ms, created_ms=now_ms), encoding
        )
        headers = {k: v for k, v in letter.headers.items() if k not in _ERROR_HEADERS}
        msg_id = f"{request.id}-replay-{uuid.uuid4().hex[:12]}"
        headers[Header.MSG_ID.value] = msg_id
        await self._js.publish(letter.subject, body, headers=headers)
        await self._js.delete_msg(names.DLQ_STREAM, seq)
        return msg_id

    async def purge(self, model: str | None = None) -> int:
        """Delete the dead letters (of one model); how many there were."""
        subject = names.dlq_subject(model) if model else None
        before = (await self._js.stream_info(names.DLQ_STREAM)).state.messages
        await self._js.purge_stream(names.DLQ_STREAM, subject=subject)
        after = (await self._js.stream_info(names.DLQ_STREAM)).state.messages
        return int(before - after)


def _letter(raw: RawStreamMsg) -> DeadLetter:
    headers = {str(k): str(v) for k, v in (raw.headers or {}).items()}
    data = raw.data or b""
    subject = raw.subject or ""
    model = subject.rsplit(".", 1)[-1]
    original = headers.get(Header.ORIGINAL_SUBJECT.value) or names.request_subject(
        model, names.Priority.ONLINE
    )
    try:
        request_id = decode_request(data, encoding_of(headers)).id
    except Exception:
        request_id = "?"
    stamp = raw.time
    return DeadLetter(
        seq=int(raw.seq or 0),
        model=model,
        request_id=request_id,
        subject=original,
        headers=headers,
        data=data,
        time_s=stamp.timestamp() if stamp is not None else 0.0,
    )

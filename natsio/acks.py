"""What JetStream answered to a publish: one classification, used by every publisher.

A JetStream publish is answered on its reply subject by a PubAck (`{"stream", "seq",
"duplicate"}` or `{"error": {"code", "err_code", "description"}}`), or, when no stream takes
the subject, by a status-only message `503` (no responders). `classify` maps that answer to
an `Outcome`; each side decides what an outcome means for it (an HTTP status, an error
result, a retry), never the codes themselves.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec
from nats.aio.msg import Msg

from schemas.names import NO_RESPONDERS_STATUS, STATUS_HEADER

#: JetStream API error codes (nats-server's errors.json).
#: The stream is at its `max_msgs` / `max_bytes` bound (discard policy `new`).
STREAM_FULL_CODES = frozenset({10077, 10078})
#: The message is larger than the stream's `max_msg_size`.
MSG_TOO_BIG_CODE = 10054
#: The `code` (HTTP-like) of an error that means JetStream is unavailable for now.
UNAVAILABLE_CODE = 503


class Outcome(StrEnum):
    """What became of one publish."""

    #: Stored (or already stored under the same `Nats-Msg-Id`: `PubAck.duplicate`).
    STORED = "stored"
    #: No stream takes the subject (e.g. a model never provisioned or removed).
    NO_STREAM = "no_stream"
    #: The stream is at its bound: nothing stored; try again later.
    FULL = "full"
    #: Larger than the stream accepts: refused for good.
    TOO_LARGE = "too_large"
    #: It may not have been stored (no PubAck in time, JetStream unavailable, an answer that
    #: is not a PubAck): publish again with the same `Nats-Msg-Id`.
    RETRY = "retry"
    #: Refused for good, for another reason (`PubAck.error` says which).
    REFUSED = "refused"

    @property
    def later(self) -> bool:
        """Nothing is wrong with the message: publishing it again may store it."""
        return self in _LATER


_LATER = frozenset({Outcome.RETRY, Outcome.FULL})


class ApiError(msgspec.Struct, frozen=True):
    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAck(msgspec.Struct, frozen=True):
    stream: str = ""
    seq: int = 0
    #: True when a message with the same `Nats-Msg-Id` was already stored.
    duplicate: bool = False
    error: ApiError | None = None


_decode = msgspec.json.Decoder(PubAck).decode


def classify(msg: Msg, *, connected: bool = True) -> tuple[Outcome, PubAck | None]:
    """The outcome of the publish `msg` answers, and the PubAck when there is one.
    `connected`: whether the connection was up; a 503 "no responders" that comes while
    it was not (a reconnect under way) says nothing about the stream, so publish again.
    (A caller on the hot path may classify with the default and check the connection only
    when the outcome is `NO_STREAM`: the same answer.)"""
    if not msg.data:
        if (msg.headers or {}).get(STATUS_HEADER) == NO_RESPONDERS_STATUS and connected:
            return Outcome.NO_STREAM, None
        return Outcome.RETRY, None
    try:
        ack = _decode(msg.data)
    except msgspec.DecodeError:
        return Outcome.RETRY, None
    error = ack.error
    if error is None:
        return Outcome.STORED, ack
    if error.err_code in STREAM_FULL_CODES:
        return Outcome.FULL, ack
    if error.err_code == MSG_TOO_BIG_CODE:
        return Outcome.TOO_LARGE, ack
    if error.code == UNAVAILABLE_CODE:
        return Outcome.RETRY, ack
    return Outcome.REFUSED, ack


def describe(outcome: Outcome, ack: PubAck | None) -> str:
    """For logs and error messages: the outcome, with JetStream's own words if any."""
    if ack is not None and ack.error is not None:
        return f"{outcome.value} (JetStream error {ack.error.err_code}: {ack.error.description})"
    return outcome.value

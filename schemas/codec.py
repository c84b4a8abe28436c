"""Encoding and decoding of wire messages: JSON by default, msgpack when the header asks.

Encoders and decoders are built once and reused (they are the hot path).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from schemas.messages import CancelRequest, InferenceRequest, Reply, WorkerInfo
from schemas.names import Encoding, Header

_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()

_request_json = msgspec.json.Decoder(InferenceRequest)
_request_msgpack = msgspec.msgpack.Decoder(InferenceRequest)
_reply_json: msgspec.json.Decoder[Reply] = msgspec.json.Decoder(Reply)
_reply_msgpack: msgspec.msgpack.Decoder[Reply] = msgspec.msgpack.Decoder(Reply)
_cancel_json = msgspec.json.Decoder(CancelRequest)
_worker_json = msgspec.json.Decoder(WorkerInfo)

_ENCODING_HEADER = Header.ENCODING.value  # a plain str key: cheaper than the enum member

DecodeError = msgspec.DecodeError  # includes msgspec.ValidationError


def encoding_of(headers: Mapping[str, str] | None) -> Encoding:
    """The body encoding named by the headers; JSON when absent. Unknown values raise."""
    value = (headers or {}).get(_ENCODING_HEADER)
    if value is None or value == "":
        return Encoding.JSON
    try:
        return Encoding(value.lower())
    except ValueError:
        raise msgspec.ValidationError(
            f"unsupported {Header.ENCODING} {value!r}: use json or msgpack"
        ) from None


def encode(obj: Any, encoding: Encoding = Encoding.JSON) -> bytes:
    if encoding is Encoding.MSGPACK:
        return _msgpack_encoder.encode(obj)
    return _json_encoder.encode(obj)


def decode_request(data: bytes, encoding: Encoding = Encoding.JSON) -> InferenceRequest:
    """Raises DecodeError for anything that is not a valid request (invalid UTF-8 too)."""
    try:
        if encoding is Encoding.MSGPACK:
            return _request_msgpack.decode(data)
        return _request_json.decode(data)
    except UnicodeDecodeError as exc:  # msgspec raises this for strings, not a DecodeError
        raise msgspec.DecodeError(f"invalid UTF-8 in a string: {exc.reason}") from None


def decode_reply(data: bytes, encoding: Encoding = Encoding.JSON) -> Reply:
    try:
        if encoding is Encoding.MSGPACK:
            return _reply_msgpack.decode(data)
        return _reply_json.decode(data)
    except UnicodeDecodeError as exc:
        raise msgspec.DecodeError(f"invalid UTF-8 in a string: {exc.reason}") from None


def decode_cancel(data: bytes) -> CancelRequest:
    return _cancel_json.decode(data)


def decode_worker_info(data: bytes) -> WorkerInfo:
    return _worker_json.decode(data)

"""KServe's bodies at the bridge: an Open Inference Protocol request (JSON, or JSON plus the
binary tensor extension) or a KServe V1 request to the `predict` payload put on the queue,
and a worker's `InferResponse` back to JSON or binary outputs. The scheduler's batch lines
and async requests use the same functions (`jetserve/kserve_codec.py`).

A JSON-only request goes on the queue as it came (`msgspec.Raw`, not parsed twice); the
worker checks its tensors. A binary request's tensors are decoded here into `data` lists.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from producer.http.errors import ApiError
from schemas.v2 import (
    BINARY_DATA,
    BINARY_DATA_OUTPUT,
    BINARY_DATA_SIZE,
    ELEMENT_BYTES,
    V1Request,
)

#: Little-endian numpy dtypes of the binary extension (BYTES handled apart).
_DTYPES: dict[str, str] = {
    "BOOL": "?",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


class _WantedOutput(msgspec.Struct):
    name: str
    parameters: dict[str, Any] | None = None


class _Peek(msgspec.Struct):
    """What the bridge reads of a JSON request (inputs are skipped, not built)."""

    parameters: dict[str, Any] | None = None
    outputs: list[_WantedOutput] | None = None


_peek = msgspec.json.Decoder(_Peek)
_v1 = msgspec.json.Decoder(V1Request)
_encoder = msgspec.json.Encoder()


def bad(message: str) -> ApiError:
    return ApiError(400, message, code="invalid_request")


def v1_payload(body: bytes) -> dict[str, Any]:
    """A KServe V1 `:predict` body to the queue's payload, `{"instances": rows}`."""
    try:
        parsed = _v1.decode(body)
    except msgspec.DecodeError as exc:
        raise bad(f"invalid predict request: {exc}") from None
    rows = parsed.instances if parsed.instances is not None else parsed.inputs
    if rows is None:
        raise ApiError(400, "A predict request needs `instances` (or `inputs`).", param="instances")
    return {"instances": rows}


@dataclass(frozen=True)
class Decoded:
    #: The queue payload: the request's JSON as it came, or the request with tensors decoded.
    payload: Any
    #: Outputs to answer in binary; `all_binary`: every output.
    binary_outputs: frozenset[str]
    all_binary: bool


def decode_request(body: bytes, header_length: str | None) -> Decoded:
    if header_length is None:
        try:
            peek = _peek.decode(body)
        except msgspec.DecodeError as exc:
            raise bad(f"invalid inference request: {exc}") from None
        return _decoded(msgspec.Raw(body), peek.parameters, peek.outputs)
    try:
        size = int(header_length)
    except ValueError:
        size = -1
    if not 0 <= size <= len(body):
        raise bad(f"Inference-Header-Content-Length {header_length!r} is not within the body")
    try:
        request = msgspec.json.decode(body[:size])
        peek = msgspec.convert(request, _Peek)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise bad(f"invalid inference request: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise bad("invalid inference request: `inputs` must be a list of tensors")
    view = memoryview(body)[size:]
    offset = 0
    for tensor in request["inputs"]:
        params = tensor.get("parameters") if isinstance(tensor, dict) else None
        if not isinstance(params, dict) or BINARY_DATA_SIZE not in params:
            continue
        length = params.pop(BINARY_DATA_SIZE)
        if not isinstance(length, int) or length < 0 or offset + length > len(view):
            raise bad(f"input `{tensor.get('name')}`: binary_data_size is past the body's end")
        tensor["data"] = _from_binary(tensor, view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise bad(f"{len(view) - offset} bytes of binary data belong to no input")
    return _decoded(request, peek.parameters, peek.outputs)


def _decoded(
    payload: Any, parameters: dict[str, Any] | None, outputs: list[_WantedOutput] | None
) -> Decoded:
    all_binary = bool(parameters and parameters.get(BINARY_DATA_OUTPUT))
    binary = frozenset(o.name for o in outputs or () if (o.parameters or {}).get(BINARY_DATA))
    return Decoded(payload, binary, all_binary)


def _from_binary(tensor: dict[str, Any], data: memoryview) -> list[Any]:
    name = tensor.get("name")
    datatype = tensor.get("datatype")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise bad(f"input `{name}`: shape must be a list of non-negative integers")
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_elements(name, data, count)
    if datatype not in _DTYPES:
        raise bad(f"input `{name}`: unknown datatype {datatype!r}")
    if len(data) != count * ELEMENT_BYTES[datatype]:
        raise bad(f"input `{name}`: {len(data)} bytes of {datatype} do not fill shape {shape}")
    values: list[Any] = np.frombuffer(data, dtype=_DTYPES[datatype]).tolist()
    return values


def _bytes_elements(name: Any, data: memoryview, count: int) -> list[str]:
    """Each element: a 4-byte little-endian length, then its bytes (UTF-8 here: the queue's
    payload is JSON)."""
    out: list[str] = []
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise bad(f"input `{name}`: BYTES element {len(out)} is cut short")
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + length > len(data):
            raise bad(f"input `{name}`: BYTES element {len(out)} is cut short")
        try:
            out.append(str(data[offset : offset + length], "utf-8"))
        except UnicodeDecodeError:
            raise bad(f"input `{name}`: BYTES element {len(out)} is not valid UTF-8") from None
        offset += length
    if len(out) != count:
        raise bad(f"input `{name}`: {len(out)} BYTES elements do not fill its shape")
    return out


def encode_response(response: Any, decoded: Decoded) -> tuple[bytes, dict[str, str]]:
    """The body and headers: JSON, or JSON then binary outputs (with the header length)."""
    outputs = response.get("outputs") if isinstance(response, dict) else None
    if not outputs or not (decoded.all_binary or decoded.binary_outputs):
        return _encoder.encode(response), {}
    chunks: list[bytes] = []
    for out in outputs:
        if not (decoded.all_binary or out.get("name") in decoded.binary_outputs):
            continue
        raw = _to_binary(out.get("datatype"), out.pop("data", None) or [])
        out["parameters"] = {**(out.get("parameters") or {}), BINARY_DATA_SIZE: len(raw)}
        chunks.append(raw)
    header = _encoder.encode(response)
    headers = {"Inference-Header-Content-Length": str(len(header))}
    return header + b"".join(chunks), headers


def _to_binary(datatype: str, data: list[Any]) -> bytes:
    if datatype == "BYTES":
        parts = [str(v).encode() for v in data]
        return b"".join(struct.pack("<I", len(p)) + p for p in parts)
    return np.asarray(data, dtype=_DTYPES[datatype]).tobytes()

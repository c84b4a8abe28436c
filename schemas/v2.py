"""The Open Inference Protocol (KServe V2, Triton's HTTP/REST protocol): its JSON shapes.

A V2 inference request travels the queue as a `predict` request whose payload is an
`InferRequest` (binary tensors already decoded by the bridge into `data` lists); the worker
answers with an `InferResponse`. A KServe V1 request travels as `{"instances": [...]}` and is
answered with `{"predictions": [...]}`.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Datatype = Literal[
    "BOOL",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]

#: Bytes per element in the binary tensor extension (BYTES: length-prefixed, variable).
ELEMENT_BYTES: dict[str, int] = {
    "BOOL": 1,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
}

#: The binary tensor extension's header: the JSON part's length, the rest is tensor bytes.
HEADER_LENGTH = "Inference-Header-Content-Length"
#: Per-tensor parameter: bytes of this tensor in the binary part.
BINARY_DATA_SIZE = "binary_data_size"
#: Per-output parameter (or request parameter `binary_data_output`): answer in binary.
BINARY_DATA = "binary_data"
BINARY_DATA_OUTPUT = "binary_data_output"


class TensorMetadata(msgspec.Struct, frozen=True):
    name: str
    datatype: Datatype
    #: -1 for a variable dimension (the first one is the batch).
    shape: list[int]


class ModelMetadata(msgspec.Struct, frozen=True):
    """`GET /v2/models/{name}`: declared by the model's runtime, sent by its workers."""

    name: str
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    versions: list[str] = msgspec.field(default_factory=list)


class Tensor(msgspec.Struct, frozen=True, omit_defaults=True):
    """A tensor on the wire: the protocol's request input and response output are this same
    object."""

    name: str
    shape: list[int]
    datatype: Datatype
    #: Row-major values, flat or nested; absent when the tensor is in the binary part.
    data: Any = None
    parameters: dict[str, Any] | None = None


class RequestInput(Tensor, frozen=True, omit_defaults=True):
    """One of `InferRequest.inputs`."""


class RequestOutput(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    inputs: list[RequestInput]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    #: Outputs wanted (all when absent).
    outputs: list[RequestOutput] | None = None


class ResponseOutput(Tensor, frozen=True, omit_defaults=True):
    """One of `InferResponse.outputs`."""


class InferResponse(msgspec.Struct, frozen=True, omit_defaults=True):
    model_name: str
    outputs: list[ResponseOutput]
    id: str | None = None
    model_version: str | None = None
    parameters: dict[str, Any] | None = None


class V1Request(msgspec.Struct, frozen=True, omit_defaults=True):
    """KServe V1 `:predict`: rows in `instances` (or, equally, `inputs`)."""

    instances: list[Any] | None = None
    inputs: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class V1Response(msgspec.Struct, frozen=True):
    predictions: list[Any]

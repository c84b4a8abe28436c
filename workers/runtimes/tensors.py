"""V2 tensors to numpy arrays and back, with the protocol's checks. Every error is a
`PermanentError` naming the tensor (the request is bad; the model keeps serving)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from schemas.v2 import Datatype, RequestInput, ResponseOutput, TensorMetadata
from workers.errors import PermanentError

NUMPY_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}

_KINDS: dict[str, str] = {"b": "BOOL", "f": "FP", "i": "INT", "u": "UINT"}


def datatype_of(dtype: np.dtype[Any]) -> Datatype:
    if dtype.kind in "OSU":
        return "BYTES"
    if dtype.kind == "b":
        return "BOOL"
    name = f"{_KINDS[dtype.kind]}{dtype.itemsize * 8}"
    return name  # type: ignore[return-value]


def _compatible(got: str, want: str) -> bool:
    """Any width within a family (INT32 rows for an INT64 input, FP64 for FP32), and integers
    for a float input: the runtime casts to what its library takes."""
    if got == want:
        return True
    for family in ("FP", "INT", "UINT"):
        if got.startswith(family) and want.startswith(family):
            return True
    return got.startswith(("INT", "UINT")) and want.startswith("FP")


def to_array(
    tensor: RequestInput, declared: TensorMetadata | None, *, max_elements: int
) -> np.ndarray[Any, Any]:
    name = tensor.name
    shape = tensor.shape
    if any(d < 0 for d in shape):
        raise PermanentError(f"input `{name}`: shape {shape} has a negative dimension")
    count = math.prod(shape)
    if count > max_elements:
        raise PermanentError(
            f"input `{name}`: {count} elements is over the limit of {max_elements}"
        )
    if declared is not None:
        if not _compatible(tensor.datatype, declared.datatype):
            raise PermanentError(
                f"input `{name}`: datatype {tensor.datatype}, the model wants {declared.datatype}"
            )
        if len(shape) != len(declared.shape) or any(
            w not in (-1, g) for g, w in zip(shape, declared.shape, strict=False)
        ):
            raise PermanentError(f"input `{name}`: shape {shape}, the model wants {declared.shape}")
    if tensor.data is None:
        raise PermanentError(f"input `{name}`: no data")
    if tensor.datatype == "BYTES":
        flat = _flatten(tensor.data)
        if not all(isinstance(v, str) for v in flat):
            raise PermanentError(f"input `{name}`: BYTES elements must be strings")
        if len(flat) != count:
            raise _length_error(name, len(flat), shape)
        array: np.ndarray[Any, Any] = np.empty(count, dtype=np.object_)
        array[:] = flat
        return array.reshape(shape)
    dtype = NUMPY_DTYPES[tensor.datatype]
    try:
        array = np.asarray(tensor.data)
    except ValueError:
        raise PermanentError(f"input `{name}`: data is not a rectangular array") from None
    if array.dtype.kind not in "biuf":
        raise PermanentError(f"input `{name}`: data is not {tensor.datatype} values")
    if array.dtype.kind == "f" and tensor.datatype.startswith(("INT", "UINT", "BOOL")):
        raise PermanentError(f"input `{name}`: data is not {tensor.datatype} values")
    if array.size != count:
        raise _length_error(name, array.size, shape)
    try:
        with np.errstate(over="raise"):
            cast = array.astype(dtype, casting="unsafe")
    except FloatingPointError:
        raise PermanentError(f"input `{name}`: values out of range for {tensor.datatype}") from None
    if array.dtype.kind in "iu" and not np.array_equal(cast, array):
        raise PermanentError(f"input `{name}`: values out of range for {tensor.datatype}")
    return cast.reshape(shape)


def _length_error(name: str, got: int, shape: list[int]) -> PermanentError:
    return PermanentError(f"input `{name}`: {got} values do not fill shape {shape}")


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    for item in data:
        out.extend(_flatten(item) if isinstance(item, list) else [item])
    return out


def to_output(name: str, array: np.ndarray[Any, Any]) -> ResponseOutput:
    datatype = datatype_of(array.dtype)
    if datatype == "BYTES":
        data = [v.decode() if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
    else:
        data = array.reshape(-1).tolist()
    return ResponseOutput(name=name, shape=list(array.shape), datatype=datatype, data=data)

"""V2 tensors to arrays: every datatype, and each bad tensor named in its error."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from schemas.v2 import RequestInput, TensorMetadata
from workers.errors import PermanentError
from workers.runtimes.tensors import NUMPY_DTYPES, to_array, to_output

LIMIT = 1000


def _tensor(datatype: Any, data: Any, shape: list[int]) -> RequestInput:
    return RequestInput("x", shape, datatype, data)


@pytest.mark.parametrize("datatype", [d for d in NUMPY_DTYPES if d not in ("BYTES", "BOOL")])
def test_numeric_round_trip(datatype: str) -> None:
    array = to_array(_tensor(datatype, [[1, 2], [3, 4]], [2, 2]), None, max_elements=LIMIT)
    assert array.dtype == NUMPY_DTYPES[datatype]
    assert array.tolist() == [[1, 2], [3, 4]]
    out = to_output("y", array)
    assert (out.datatype, out.shape, out.data) == (datatype, [2, 2], [1, 2, 3, 4])


def test_bool_and_bytes() -> None:
    flags = to_array(_tensor("BOOL", [True, False], [2]), None, max_elements=LIMIT)
    assert to_output("f", flags).data == [True, False]
    words = to_array(_tensor("BYTES", ["a", "é"], [1, 2]), None, max_elements=LIMIT)
    assert to_output("w", words).data == ["a", "é"]


@pytest.mark.parametrize(
    ("tensor", "declared", "message"),
    [
        (_tensor("FP32", [1, 2, 3], [2, 2]), None, "3 values do not fill shape"),
        (_tensor("INT8", [1, 300], [2]), None, "out of range for INT8"),
        (_tensor("INT32", [1.5, 2], [2]), None, "not INT32 values"),
        (_tensor("FP32", ["a", "b"], [2]), None, "not FP32 values"),
        (_tensor("BYTES", [1, 2], [2]), None, "BYTES elements must be strings"),
        (_tensor("FP32", [0.0] * 1001, [1001]), None, "over the limit of 1000"),
        (_tensor("FP32", [[1, 2], [3]], [2, 2]), None, "rectangular"),
        (_tensor("BYTES", ["a"], [1, 1]), TensorMetadata("x", "FP32", [-1, 1]), "wants FP32"),
        (_tensor("FP32", [1, 2], [1, 2]), TensorMetadata("x", "FP32", [-1, 4]), "wants [-1, 4]"),
        (_tensor("FP64", [1, 2], [2]), TensorMetadata("x", "INT64", [-1]), "wants INT64"),
    ],
)
def test_bad_tensors_name_the_input(
    tensor: RequestInput, declared: TensorMetadata | None, message: str
) -> None:
    with pytest.raises(PermanentError, match="input `x`") as caught:
        to_array(tensor, declared, max_elements=LIMIT)
    assert message in caught.value.message


def test_widening_is_accepted() -> None:
    declared = TensorMetadata("x", "FP64", [-1, 2])
    array = to_array(_tensor("INT32", [[1, 2]], [1, 2]), declared, max_elements=LIMIT)
    assert array.dtype == np.int32  # the runtime casts to what its library wants

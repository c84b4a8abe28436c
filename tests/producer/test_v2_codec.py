"""The binary tensor extension at the bridge: requests decoded, responses encoded."""

from __future__ import annotations

import struct

import msgspec
import numpy as np
import pytest

from producer.http.errors import ApiError
from producer.http.v2 import decode_request, encode_response


def _binary(inputs: list[tuple[str, str, list[int], bytes]], **extra: object) -> tuple[bytes, str]:
    header = msgspec.json.encode(
        {
            "inputs": [
                {"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(b)}}
                for n, d, s, b in inputs
            ],
            **extra,
        }
    )
    return header + b"".join(b for *_, b in inputs), str(len(header))


def test_binary_inputs_become_data_lists() -> None:
    fp = np.arange(6, dtype="<f4").reshape(2, 3)
    words = b"".join(struct.pack("<I", len(w)) + w for w in (b"hi", "é".encode()))
    body, length = _binary(
        [("a", "FP32", [2, 3], fp.tobytes()), ("w", "BYTES", [2], words)],
        outputs=[{"name": "y", "parameters": {"binary_data": True}}],
    )
    decoded = decode_request(body, length)
    a, w = decoded.payload["inputs"]
    assert a["data"] == fp.reshape(-1).tolist()
    assert "binary_data_size" not in a["parameters"]
    assert w["data"] == ["hi", "é"]
    assert decoded.binary_outputs == {"y"}


def test_json_request_goes_on_as_it_came() -> None:
    body = b'{"inputs":[],"parameters":{"binary_data_output":true}}'
    decoded = decode_request(body, None)
    assert msgspec.json.encode(decoded.payload) == body
    assert decoded.all_binary


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([("a", "FP32", [2], b"\0" * 4)], "4 bytes of FP32 do not fill shape [2]"),
        ([("a", "BYTES", [1], struct.pack("<I", 2) + b"\xff\xfe")], "not valid UTF-8"),
        ([("a", "BYTES", [1], struct.pack("<I", 9) + b"ab")], "cut short"),
        ([("a", "FP99", [1], b"\0")], "unknown datatype"),
    ],
)
def test_bad_binary_tensors_name_the_input(
    inputs: list[tuple[str, str, list[int], bytes]], message: str
) -> None:
    body, length = _binary(inputs)
    with pytest.raises(ApiError) as caught:
        decode_request(body, length)
    assert caught.value.status == 400
    assert "input `a`" in caught.value.message
    assert message in caught.value.message


def test_header_length_outside_the_body() -> None:
    with pytest.raises(ApiError, match="not within the body"):
        decode_request(b"{}", "10")


def test_binary_outputs_encoded_after_the_json() -> None:
    decoded = decode_request(b'{"inputs":[],"parameters":{"binary_data_output":true}}', None)
    response = {
        "model_name": "m",
        "outputs": [{"name": "y", "datatype": "FP64", "shape": [2], "data": [1.5, 2.5]}],
    }
    body, headers = encode_response(response, decoded)
    size = int(headers["Inference-Header-Content-Length"])
    header = msgspec.json.decode(body[:size])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 16}
    assert "data" not in header["outputs"][0]
    assert np.frombuffer(body[size:], "<f8").tolist() == [1.5, 2.5]

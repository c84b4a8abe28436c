"""`engine = "onnx"`: an ONNX graph run by onnxruntime (CPU). Inputs and outputs, their
names, datatypes and shapes, come from the graph (a symbolic dimension is -1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from schemas.v2 import Datatype, TensorMetadata
from workers.runtimes.base import Arrays, TensorModel

#: onnxruntime's type names -> V2 datatypes.
ORT_TYPES: dict[str, Datatype] = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _metadata(arg: Any) -> TensorMetadata:
    if arg.type not in ORT_TYPES:
        raise ValueError(f"ONNX tensor {arg.name}: type {arg.type} is not supported")
    shape = [d if isinstance(d, int) else -1 for d in arg.shape]
    return TensorMetadata(arg.name, ORT_TYPES[arg.type], shape)


class OnnxModel(TensorModel):
    platform: ClassVar[str] = "onnxruntime_onnx"

    def load_file(self, path: Path) -> tuple[list[TensorMetadata], list[TensorMetadata]]:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        threads = self.options.get("threads")
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        inputs = [_metadata(a) for a in self._session.get_inputs()]
        outputs = [_metadata(a) for a in self._session.get_outputs()]
        self._types = {t.name: t.datatype for t in inputs}
        return inputs, outputs

    def run(self, inputs: Arrays) -> Arrays:
        from workers.runtimes.tensors import NUMPY_DTYPES

        feed = {
            name: array.astype(NUMPY_DTYPES[self._types[name]], copy=False)
            for name, array in inputs.items()
        }
        names = [o.name for o in self._session.get_outputs()]
        results = self._session.run(names, feed)
        return {name: np.asarray(r) for name, r in zip(names, results, strict=True)}

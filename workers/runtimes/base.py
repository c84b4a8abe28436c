"""`TensorModel`: what every ready-made runtime shares. A subclass loads its file and runs a
dict of input arrays to a dict of output arrays; this class parses V2 and V1 payloads,
checks them against the declared metadata, joins a batch's rows into one model call and
splits the outputs back to their requests.

Options (the models file's `[models.options]`): `max_batch_size` (rows' requests per model
call, 32), `max_batch_wait_ms` (2), `max_tensor_elements` (per input tensor, 1,000,000),
`threads` (the library's intra-op threads, where it has the setting), `inline_below_ms`
(a call predicted shorter runs on the event loop, not the model's thread: `placement.py`;
1 ms, or 0 = never for a library with OpenMP teams unless `threads = 1`).
"""

from __future__ import annotations

import asyncio
import time
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import numpy as np

from schemas.v2 import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    RequestInput,
    TensorMetadata,
    V1Response,
)
from workers.errors import PermanentError
from workers.runtimes.placement import Placement
from workers.runtimes.tensors import NUMPY_DTYPES, to_array, to_output
from workers.sdk import Model, ModelInput
from workers.threads import single_thread_executor

Arrays = dict[str, np.ndarray[Any, Any]]


@dataclass
class Parsed:
    """One request's inputs, checked."""

    arrays: Arrays
    rows: int
    #: None: a V1 request (answered with `predictions`).
    v2: InferRequest | None
    wanted: list[str]


class TensorModel(Model):
    kinds: ClassVar[frozenset[str]] = frozenset({"predict"})
    #: V2 metadata `platform`.
    platform: ClassVar[str] = ""
    #: The library runs OpenMP teams: each thread that calls it keeps a team of its own, so
    #: calls on the event loop beside the model's thread would double them (unless one thread).
    openmp: ClassVar[bool] = False

    def __init__(self, name: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(name, options)
        opts = self.options
        # Per model, from the models file (the SDK's class attributes are the defaults).
        self.max_batch_size = int(opts.get("max_batch_size", 32))  # type: ignore[misc]
        self.max_batch_wait_ms = float(opts.get("max_batch_wait_ms", 2.0))  # type: ignore[misc]
        self.max_tensor_elements = int(opts.get("max_tensor_elements", 1_000_000))
        one_thread = int(opts.get("threads", 0) or 0) == 1
        inline_ms = float(opts.get("inline_below_ms", 1.0 if one_thread or not self.openmp else 0))
        self._placement = Placement(inline_ms)
        #: Model calls made (each runs one joined batch).
        self.calls = 0
        self._inputs: list[TensorMetadata] = []
        self._outputs: list[TensorMetadata] = []

    def load(self) -> None:
        path = self.options.get("path")
        if not path:
            raise ValueError(f"model {self.name}: the runtime needs `path` (the model file)")
        self._thread = single_thread_executor(self.name)
        self._inputs, self._outputs = self.load_file(Path(str(path)))

    @abstractmethod
    def load_file(self, path: Path) -> tuple[list[TensorMetadata], list[TensorMetadata]]:
        """Load the model; its declared (inputs, outputs). Runs once, in a thread."""

    @abstractmethod
    def run(self, inputs: Arrays) -> Arrays:
        """All outputs for a batch of rows (first dimension). Blocking: runs on the model's
        own thread."""

    def metadata(self) -> ModelMetadata:
        return ModelMetadata(self.name, self.platform, self._inputs, self._outputs)

    async def predict(self, batch: Sequence[ModelInput]) -> Sequence[Any]:
        parsed: list[Parsed | PermanentError] = []
        for item in batch:
            try:
                parsed.append(self._parse(item.payload))
            except PermanentError as exc:
                parsed.append(exc)
        good = [p for p in parsed if isinstance(p, Parsed)]
        results: dict[int, Arrays] = {}
        if good:
            rows = sum(p.rows for p in good)
            if self._placement.inline(rows):
                outputs = self._run_timed(good, rows)
            else:
                loop = asyncio.get_running_loop()
                outputs = await loop.run_in_executor(self._thread, self._run_timed, good, rows)
            results = {id(p): out for p, out in zip(good, outputs, strict=True)}
        return [
            p if isinstance(p, PermanentError) else self._answer(p, results[id(p)]) for p in parsed
        ]

    def _run_timed(self, parts: list[Parsed], rows: int) -> list[Arrays]:
        start = time.perf_counter()
        try:
            return self._run_joined(parts)
        finally:
            self._placement.observe(time.perf_counter() - start, rows)

    def _run_joined(self, parts: list[Parsed]) -> list[Arrays]:
        """One model call for all rows; the outputs split back by rows."""
        if len(parts) == 1:
            return [self._run_one(parts[0].arrays)]
        try:
            joined = {
                name: np.concatenate([p.arrays[name] for p in parts]) for name in parts[0].arrays
            }
        except ValueError:  # rows of different widths (dynamic dimensions): one by one
            return [self._run_one(p.arrays) for p in parts]
        out = self._run_one(joined)
        bounds = np.cumsum([p.rows for p in parts])[:-1]
        split = {name: np.split(array, bounds) for name, array in out.items()}
        return [{name: split[name][i] for name in out} for i in range(len(parts))]

    def _run_one(self, inputs: Arrays) -> Arrays:
        self.calls += 1
        return self.run(inputs)

    def _parse(self, payload: Any) -> Parsed:
        if not isinstance(payload, dict):
            raise PermanentError("the payload must be a V2 inference request or V1 instances")
        raw_inputs = payload.get("inputs")
        if "instances" in payload or (
            isinstance(raw_inputs, list) and not all(isinstance(i, dict) for i in raw_inputs)
        ):
            return self._parse_v1(payload)
        if not isinstance(raw_inputs, list):
            raise PermanentError("`inputs` must be a list of tensors")
        for raw in raw_inputs:
            name = raw.get("name")
            datatype = raw.get("datatype")
            if datatype not in NUMPY_DTYPES:
                raise PermanentError(f"input `{name}`: unknown datatype {datatype!r}")
        try:
            request = msgspec.convert(payload, InferRequest)
        except msgspec.ValidationError as exc:
            raise PermanentError(f"invalid inference request: {exc}") from None
        return self._parse_v2(request)

    def _parse_v2(self, request: InferRequest) -> Parsed:
        declared = {t.name: t for t in self._inputs}
        given: dict[str, RequestInput] = {}
        for tensor in request.inputs:
            if tensor.name not in declared:
                raise PermanentError(
                    f"input `{tensor.name}` is not an input of model {self.name} "
                    f"(inputs: {', '.join(declared)})"
                )
            if tensor.name in given:
                raise PermanentError(f"input `{tensor.name}` is given twice")
            given[tensor.name] = tensor
        missing = [n for n in declared if n not in given]
        if missing:
            raise PermanentError(f"input `{missing[0]}` is missing")
        arrays = {
            n: to_array(t, declared[n], max_elements=self.max_tensor_elements)
            for n, t in given.items()
        }
        outputs = [t.name for t in self._outputs]
        wanted = outputs
        if request.outputs:
            wanted = [o.name for o in request.outputs]
            for name in wanted:
                if name not in outputs:
                    raise PermanentError(f"output `{name}` is not an output of model {self.name}")
        return Parsed(arrays, _rows(arrays), request, wanted)

    def _parse_v1(self, payload: dict[str, Any]) -> Parsed:
        rows = payload.get("instances", payload.get("inputs"))
        if len(self._inputs) != 1:
            raise PermanentError(f"model {self.name} has several inputs: use V2 named tensors")
        spec = self._inputs[0]
        if not isinstance(rows, list) or not rows:
            raise PermanentError("`instances` must be a non-empty list of rows")
        try:
            data = np.asarray(rows)
        except ValueError:
            raise PermanentError("`instances`: rows of different lengths") from None
        tensor = RequestInput(spec.name, list(data.shape), _v1_datatype(data, spec), rows)
        array = to_array(tensor, spec, max_elements=self.max_tensor_elements)
        return Parsed({spec.name: array}, array.shape[0], None, [self._outputs[0].name])

    def _answer(self, part: Parsed, out: Arrays) -> Any:
        if part.v2 is None:
            return V1Response(out[part.wanted[0]].tolist())
        return InferResponse(
            model_name=self.name,
            id=part.v2.id,
            outputs=[to_output(name, out[name]) for name in part.wanted],
        )


def _rows(arrays: Arrays) -> int:
    counts = {a.shape[0] if a.ndim else 1 for a in arrays.values()}
    if len(counts) != 1:
        raise PermanentError("inputs differ in their first (batch) dimension")
    return counts.pop()


def _v1_datatype(data: np.ndarray[Any, Any], spec: TensorMetadata) -> Any:
    if data.dtype.kind in "OSU":
        return "BYTES"
    return spec.datatype if data.dtype.kind in "biuf" else "BYTES"

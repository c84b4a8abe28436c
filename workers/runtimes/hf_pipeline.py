"""`engine = "hf-pipeline"`: a transformers pipeline from a local model folder (`path`),
no hub access. Option `task`:

- `text-classification`: input `text` (BYTES [-1]); outputs `label` (BYTES [-1]) and
  `score` (FP32 [-1]), the pipeline's top label per text;
- `token-classification`: output `entities` (BYTES [-1]): per text, the pipeline's list of
  entities as a JSON string (their number varies per text);
- `feature-extraction`: output `embedding` (FP32 [-1, hidden]): the pipeline's token vectors
  averaged over the text's tokens.

torch and transformers are imported in `load()`, never at module import.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from schemas.v2 import TensorMetadata
from workers.runtimes.base import Arrays, TensorModel

TASKS = ("text-classification", "token-classification", "feature-extraction")


class HFPipelineModel(TensorModel):
    platform: ClassVar[str] = "hf-pipeline"
    openmp: ClassVar[bool] = True

    def load_file(self, path: Path) -> tuple[list[TensorMetadata], list[TensorMetadata]]:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import pipeline

        self._task = str(self.options.get("task", "text-classification"))
        if self._task not in TASKS:
            raise ValueError(f"model {self.name}: option `task` must be one of {TASKS}")
        threads = self.options.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        self._pipe: Any = pipeline(self._task, model=str(path), device="cpu")
        inputs = [TensorMetadata("text", "BYTES", [-1])]
        if self._task == "text-classification":
            outputs = [
                TensorMetadata("label", "BYTES", [-1]),
                TensorMetadata("score", "FP32", [-1]),
            ]
        elif self._task == "token-classification":
            outputs = [TensorMetadata("entities", "BYTES", [-1])]
        else:
            hidden = int(self._pipe.model.config.hidden_size)
            outputs = [TensorMetadata("embedding", "FP32", [-1, hidden])]
        return inputs, outputs

    def run(self, inputs: Arrays) -> Arrays:
        texts = [str(t) for t in inputs["text"].reshape(-1)]
        found = self._pipe(texts)
        if self._task == "text-classification":
            return {
                "label": np.array([r["label"] for r in found], dtype=np.object_),
                "score": np.array([r["score"] for r in found], dtype=np.float32),
            }
        if self._task == "token-classification":
            rows = [json.dumps(_plain(r)) for r in found]
            return {"entities": np.array(rows, dtype=np.object_)}
        vectors = [np.asarray(r[0], dtype=np.float32).mean(axis=0) for r in found]
        return {"embedding": np.stack(vectors)}


def _plain(value: Any) -> Any:
    """numpy scalars in the pipeline's answer as Python numbers (JSON-able)."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value

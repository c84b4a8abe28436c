"""The hf-pipeline runtime against transformers' own pipeline on the same folder: text
classification and token classification (heads on the bundled MiniLM, saved locally),
feature extraction (MiniLM itself)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from schemas.params import SamplingParams
from workers.models.minilm import bundled_model_path
from workers.runtimes.hf_pipeline import HFPipelineModel
from workers.sdk import ModelInput

pytestmark = pytest.mark.model

TEXTS = ["hello world", "jetserve serves models from a queue", "one"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    base = bundled_model_path()
    torch.manual_seed(0)
    out = {"feature-extraction": base}
    for task, cls in (
        ("text-classification", AutoModelForSequenceClassification),
        ("token-classification", AutoModelForTokenClassification),
    ):
        folder = tmp_path_factory.mktemp(task)
        cls.from_pretrained(base, num_labels=3).save_pretrained(folder)
        AutoTokenizer.from_pretrained(base).save_pretrained(folder)
        out[task] = folder
    return out


def _request(texts: list[str]) -> ModelInput:
    tensor = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}
    return ModelInput("r", "predict", {"inputs": [tensor]}, SamplingParams())


@pytest.mark.parametrize(
    "task", ["text-classification", "token-classification", "feature-extraction"]
)
async def test_pipeline_answers_as_transformers_does(task: str, folders: dict[str, Path]) -> None:
    from transformers import pipeline

    model = HFPipelineModel("hf", {"path": str(folders[task]), "task": task})
    model.load()
    # Two requests, one model call: rows routed back to their request.
    first, second = await model.predict([_request(TEXTS[:2]), _request(TEXTS[2:])])
    assert model.calls == 1
    own: Any = pipeline(task, model=str(folders[task]), device="cpu")(TEXTS)
    got = {o.name: o.data for o in first.outputs}
    rest = {o.name: o.data for o in second.outputs}
    if task == "text-classification":
        assert got["label"] + rest["label"] == [r["label"] for r in own]
        scores = np.array(got["score"] + rest["score"])
        np.testing.assert_allclose(scores, [r["score"] for r in own], rtol=1e-5)
    elif task == "token-classification":
        entities = [json.loads(e) for e in got["entities"] + rest["entities"]]
        assert [[e["word"] for e in row] for row in entities] == [
            [e["word"] for e in row] for row in own
        ]
    else:
        want = np.stack([np.asarray(r[0]).mean(axis=0) for r in own])
        got_vectors = np.array(got["embedding"] + rest["embedding"]).reshape(want.shape)
        np.testing.assert_allclose(got_vectors, want, rtol=1e-4, atol=1e-5)

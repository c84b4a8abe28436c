"""Vision-language models on the engine: loading one, and its model runner.

Families: Idefics3 (SmolVLM, and the tiny model of `tiny_vision`), loaded with
`AutoModelForImageTextToText.from_pretrained(path)` and `AutoProcessor.from_pretrained(path)`;
any model whose `get_image_features(**pixel inputs)` returns one embedding per image token of
its prompt (`config.image_token_id`), in order, takes the same path (LLaVA's does; not tested
here).

Only the language model runs on the engine's paged attention; the vision tower and its
connector keep the implementation they were loaded with. In a step, the runner embeds the
step's token ids, and for every prompt chunk that holds image tokens puts the image
embeddings at those positions (`VisionModelRunner.inputs`); the language model then runs on
`inputs_embeds` exactly as a text model on `input_ids`, so text and image requests share one
continuous batch and decoding is unchanged. A sequence's images are encoded once, in the
step that first reaches one of its image tokens; the embeddings are kept on the sequence
(`Sequence.image_embeds`) while later chunks of its prompt still need them.

Embeddings are also kept by the images' key (their sha256s and the processor's settings),
most recently used first, within `image_cache_mib` (vLLM's encoder cache): a prefix-cache hit
ends at a block boundary, and the block holding an image's last tokens usually holds the
question too, so the same image asked again needs some of its embeddings again.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workers.engine.attention import IMPLEMENTATION
from workers.engine.model_runner import ModelRunner
from workers.engine.scheduler import SchedulerOutput
from workers.engine.sequence import Sequence


@dataclass
class ImageInputs:
    """A prompt's images, as the model's processor made them."""

    #: The processor's image tensors, as `get_image_features` takes them (`pixel_values`,
    #: `pixel_attention_mask`, ...), on the CPU.
    pixels: dict[str, torch.Tensor]
    #: Prompt positions of the image tokens, ascending: the image embeddings fill them in
    #: order.
    positions: list[int]


def is_vision_model(path: Path) -> bool:
    """Whether the Hugging Face folder holds a vision-language model."""
    config = json.loads((path / "config.json").read_text())
    return isinstance(config.get("vision_config"), dict)


def load_vision_model(path: Path, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """(model, processor) from a local folder, with the normal `from_pretrained` path."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from workers.engine.loader import pretrained, require_fast

    processor = AutoProcessor.from_pretrained(path)
    require_fast(processor.tokenizer, path)
    return pretrained(AutoModelForImageTextToText, path, device, dtype), processor


def image_token_id(config: Any) -> int:
    value = getattr(config, "image_token_id", None)
    if value is None:
        value = getattr(config, "image_token_index", None)
    if value is None:
        raise ValueError(f"{type(config).__name__} names no image token (image_token_id)")
    return int(value)


class VisionModelRunner(ModelRunner):
    def __init__(
        self, model: Any, *, num_blocks: int, block_size: int, image_cache_mib: float = 0
    ) -> None:
        super().__init__(model, num_blocks=num_blocks, block_size=block_size)
        self.image_token_id = image_token_id(model.config)
        self._embed = model.get_input_embeddings()
        #: Image sets encoded by the vision tower (not found in the cache).
        self.images_encoded = 0
        #: images' key -> their embeddings, least recently used first.
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = int(image_cache_mib * 2**20)

    def attention(self, model: Any) -> str | dict[str, str]:
        # The language model only: the vision tower keeps its own attention.
        return {"text_config": IMPLEMENTATION}

    def inputs(self, out: SchedulerOutput, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        embeds = self._embed(input_ids)
        first = 0  # the scheduled sequences' tokens follow each other in the step's row
        for s in out.scheduled:
            if s.seq.request.images is not None:
                self._place(embeds, s.seq, first, s.start, s.num_tokens)
            first += s.num_tokens
        return {"inputs_embeds": embeds[None]}

    def _place(self, embeds: torch.Tensor, seq: Sequence, first: int, start: int, n: int) -> None:
        """Put the embeddings of the image tokens among positions [start, start + n) of `seq`
        (its tokens at `first` in the step) in `embeds`."""
        images: ImageInputs = seq.request.images
        positions = images.positions
        lo, hi = bisect_left(positions, start), bisect_left(positions, start + n)
        if lo == hi:
            return
        if seq.image_embeds is None:
            seq.image_embeds = self._embeddings(images, seq.request.cache_key)
        rows = torch.tensor([first + p - start for p in positions[lo:hi]], device=self.device)
        embeds[rows] = seq.image_embeds[lo:hi].to(embeds.dtype)
        if hi == len(positions):
            seq.image_embeds = None

    def _embeddings(self, images: ImageInputs, cache_key: tuple[int, str] | None) -> torch.Tensor:
        key = cache_key[1] if cache_key is not None else None
        found = self._cache.get(key) if key is not None else None
        if found is not None:
            assert key is not None
            self._cache.move_to_end(key)
            return found
        features = self.encode(images)
        size = features.numel() * features.element_size()
        if key is not None and size <= self._cache_limit:
            self._cache[key] = features
            self._cache_bytes += size
            while self._cache_bytes > self._cache_limit:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.numel() * old.element_size()
        return features

    def encode(self, images: ImageInputs) -> torch.Tensor:
        """The images' embeddings, one row per image token [N, hidden]: the vision tower and
        the connector, on the model's own attention."""
        self.images_encoded += 1
        pixels = {k: v.to(self.device) for k, v in images.pixels.items()}
        found = self.model.get_image_features(**pixels)
        features = getattr(found, "pooler_output", found)
        if isinstance(features, list | tuple):
            features = torch.cat([f.reshape(-1, f.shape[-1]) for f in features])
        features = features.reshape(-1, features.shape[-1])
        if features.shape[0] != len(images.positions):
            raise RuntimeError(
                f"{features.shape[0]} image embeddings for {len(images.positions)} image tokens"
            )
        return features

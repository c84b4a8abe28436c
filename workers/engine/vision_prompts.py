"""A vision-language model's prompts: chat messages and their images through the model's own
processor (chat template, image resizing and tiling, `<image>` token expansion), on the
worker, off the event loop.

`detail` maps to the processor's resizing where the processor has a knob for it: Idefics3's
(SmolVLM's) `do_image_splitting`: `low` is the global view only (one tile's tokens), `high`,
`auto` and `original` add the tiles. One setting serves a whole prompt (the processor takes
one): `low` when every image asks for it. The setting is part of the images' prefix-cache
key, with each image's sha256, so the same bytes at another resolution never share KV.
Several images share one key, mixed in from the first image token on (a conservative
naming: a prompt whose second image differs reuses nothing from its first image on).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from schemas.errors import ErrorCode
from workers.engine.prompts import Prompt
from workers.engine.vision import ImageInputs
from workers.errors import PermanentError


@dataclass(frozen=True)
class ImageBytes:
    """One image of a request, its bytes already fetched."""

    data: bytes
    #: OpenAI's `detail`: low, high, auto, original.
    detail: str
    #: The content part it came from (`messages[0].content[1]`), for errors.
    param: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class VisionPrompter:
    def __init__(self, processor: Any, image_token_id: int) -> None:
        self.processor = processor
        self.image_token_id = image_token_id
        self._splits = hasattr(processor.image_processor, "do_image_splitting")

    def settings(self, images: Sequence[ImageBytes]) -> dict[str, Any]:
        """The processor's keyword arguments for these images' `detail`."""
        if self._splits:
            return {"do_image_splitting": not all(i.detail == "low" for i in images)}
        return {}

    def prompt(self, messages: list[dict[str, Any]], images: Sequence[ImageBytes]) -> Prompt:
        """`messages` rendered with `{"type": "image"}` parts, one per image, in order."""
        try:
            text = self.processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # a template that rejects the conversation (roles, ...)
            raise PermanentError(f"chat template failed: {exc}", param="messages") from None
        if not images:
            ids = self.processor.tokenizer(text)["input_ids"]
            return Prompt([int(i) for i in ids])
        settings = self.settings(images)
        pictures = [_open(i) for i in images]
        try:
            made = self.processor(text=[text], images=[pictures], return_tensors="pt", **settings)
        except Exception as exc:  # images the template did not place, sizes it refuses ...
            raise PermanentError(
                f"the model's processor refused the images: {exc}",
                ErrorCode.INVALID_REQUEST,
                param=images[0].param,
            ) from None
        ids = [int(i) for i in made["input_ids"][0]]
        positions = [p for p, t in enumerate(ids) if t == self.image_token_id]
        if not positions:
            raise PermanentError(
                "the model's chat template placed none of the images",
                ErrorCode.INVALID_REQUEST,
                param=images[0].param,
            )
        pixels = {k: v for k, v in made.items() if k not in ("input_ids", "attention_mask")}
        named = ",".join(f"{k}={v}" for k, v in sorted(settings.items()))
        key = "|".join([named, *(i.digest for i in images)])
        return Prompt(ids, ImageInputs(pixels, positions), (positions[0], key))


def _open(image: ImageBytes) -> Any:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(image.data)) as opened:
            return opened.convert("RGB")
    except Exception:  # Pillow raises many types for bad data
        raise PermanentError(
            "The image could not be decoded (corrupt or truncated).",
            ErrorCode.INVALID_REQUEST,
            param=image.param,
        ) from None

"""Writes a small random-init vision-language model and its processor to a folder, offline, in
seconds: `jetserve make-tiny-model DIR --vision`. Idefics3-style, the architecture of SmolVLM
(`Idefics3ForConditionalGeneration`: a SigLIP-style vision tower, a pixel-shuffle connector,
a Llama language model), with `Idefics3Processor` (its image processor splits an image into
tiles plus a global view; each becomes `IMAGE_SEQ_LEN` `<image>` tokens between
`<fake_token_around_image>` markers). Loaded like any Hugging Face model folder:
`AutoProcessor.from_pretrained(path)`, `AutoModelForImageTextToText.from_pretrained(path)`.
Weights come from a fixed seed, so the same command writes the same model.

`tiny` (~0.9 M parameters, 32-pixel tiles of 4 tokens, at most 2 x 2 tiles) is for tests;
`bench` (`--size bench`, ~40 M: the text model of `tiny`'s `bench` size, 64-pixel tiles of 16
tokens, at most 4 x 4 tiles: an image costs up to 272 image tokens) for benchmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from workers.engine.tiny import SIZES as TEXT_SIZES
from workers.engine.tiny import TextShape, llama_config, seeded_model, train_tokenizer

#: Pixels a side of one tile the vision tower sees, and of its patches.
TILE_PX = 32
PATCH_PX = 8
#: The connector merges SCALE_FACTOR x SCALE_FACTOR patches into one token.
SCALE_FACTOR = 2
#: `<image>` tokens per tile: (32 / 8)^2 / 2^2.
IMAGE_SEQ_LEN = (TILE_PX // PATCH_PX) ** 2 // SCALE_FACTOR**2
#: Images are resized to at most this many pixels a side, then cut into tiles (at most 2 x 2).
LONGEST_EDGE_PX = 2 * TILE_PX

#: The tokens Idefics3Processor looks up: image markers and the tile grid's row/column tags.
IMAGE_TOKENS = [
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
]

#: ChatML, as the text model's, with OpenAI-style content lists: `{"type": "image"}` parts
#: become `<image>` (which the processor expands into the tiles' tokens).
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for part in m['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}<image>{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Size(NamedTuple):
    tile_px: int
    #: Images are resized to at most this many tiles a side.
    tiles: int
    #: The language model: that of the text-only model's size of the same name.
    text: TextShape
    #: The vision tower: hidden, layers, heads, intermediate.
    vision: tuple[int, int, int, int]


SIZES = {
    "tiny": Size(TILE_PX, LONGEST_EDGE_PX // TILE_PX, TEXT_SIZES["tiny"].text, (64, 2, 2, 128)),
    "bench": Size(64, 4, TEXT_SIZES["bench"].text, (256, 6, 4, 1024)),
}


def make_tiny_vision_model(path: Path, seed: int = 0, size: str = "tiny") -> Path:
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        Idefics3VisionConfig,
    )

    tile, tiles, text_shape, vision_shape = SIZES[size]
    v_hidden, v_layers, v_heads, v_inter = vision_shape
    tokenizer = train_tokenizer(1024, _CHAT_TEMPLATE, IMAGE_TOKENS)
    text = llama_config(tokenizer, text_shape, 0.08)
    vision = Idefics3VisionConfig(
        hidden_size=v_hidden,
        intermediate_size=v_inter,
        num_hidden_layers=v_layers,
        num_attention_heads=v_heads,
        image_size=tile,
        patch_size=PATCH_PX,
        initializer_range=0.08,
    )
    config = Idefics3Config(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        scale_factor=SCALE_FACTOR,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = seeded_model(Idefics3ForConditionalGeneration, config, tokenizer, seed)
    images = Idefics3ImageProcessorPil(
        size={"longest_edge": tiles * tile},
        max_image_size={"longest_edge": tile},
        do_image_splitting=True,
    )
    processor = Idefics3Processor(
        image_processor=images,
        tokenizer=tokenizer,
        image_seq_len=(tile // PATCH_PX) ** 2 // SCALE_FACTOR**2,
        chat_template=_CHAT_TEMPLATE,
    )
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path

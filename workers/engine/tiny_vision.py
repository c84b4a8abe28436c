"""Writes a small random-init vision-language model and its processor to a folder, offline, in
seconds: `jetserve make-tiny-model DIR --vision`. Idefics3-style, the architecture of SmolVLM
(`Idefics3ForConditionalGeneration`: a SigLIP-style vision tower, a pixel-shuffle connector,
a Llama language model), with `Idefics3Processor` (its image processor splits an image into
tiles plus a global view; each becomes `IMAGE_SEQ_LEN` `<image>` tokens between
`<fake_token_around_image>` markers). Loaded like any Hugging Face model folder:
`AutoProcessor.from_pretrained(path)`, `AutoModelForImageTextToText.from_pretrained(path)`.
Weights come from a fixed seed, so the same command writes the same model.
"""

from __future__ import annotations

from pathlib import Path

from workers.engine.tiny import train_tokenizer

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


def make_tiny_vision_model(path: Path, seed: int = 0) -> Path:
    import torch
    from transformers import (
        GenerationConfig,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
    )

    tokenizer = train_tokenizer(1024, _CHAT_TEMPLATE, IMAGE_TOKENS)
    eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|eos|>", "<|im_end|>")]
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=0.08,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    vision = Idefics3VisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=TILE_PX,
        patch_size=PATCH_PX,
        initializer_range=0.08,
    )
    config = Idefics3Config(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        scale_factor=SCALE_FACTOR,
        image_token_id=image_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id
    )
    images = Idefics3ImageProcessorPil(
        size={"longest_edge": LONGEST_EDGE_PX},
        max_image_size={"longest_edge": TILE_PX},
        do_image_splitting=True,
    )
    processor = Idefics3Processor(
        image_processor=images,
        tokenizer=tokenizer,
        image_seq_len=IMAGE_SEQ_LEN,
        chat_template=_CHAT_TEMPLATE,
    )
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path

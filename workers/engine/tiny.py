"""Writes a small random-init Llama model and a byte-level BPE tokenizer to a folder, offline,
in seconds: `jetserve make-tiny-model DIR [--size tiny|bench]`. Loaded like any Hugging Face
model folder (`from_pretrained(path)`).

`tiny` (~1 M parameters) is for tests; `bench` (~35 M) for benchmarks. Weights come from a
fixed seed, so the same command writes the same model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A serving system takes requests from a queue,
runs them through a model, and sends the results back. Workers pull work at the rate they can
serve it; the backlog stays in the stream where the autoscaler can see it. Continuous batching
admits new sequences into a running batch at every step, so the accelerator stays busy.
Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy.
The weather today is sunny with a light breeze; tomorrow it may rain in the afternoon.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000. JSON looks like {"name": "value", "list": [1, 2]}.
Unicode text: café, naïve, résumé, Straße, 東京, 你好, こんにちは, emoji 🙂 and 🚀 appear too.
def add(a, b):
    return a + b
Once upon a time there was a small model that learned to speak by reading this very paragraph
many times over, and although it never understood a word, it produced tokens all the same.
"""

_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class TextShape(NamedTuple):
    """The dimensions of a Llama text model."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int


class Size(NamedTuple):
    text: TextShape
    #: The tokenizer's vocabulary size target.
    vocab: int


SIZES = {
    "tiny": Size(TextShape(128, 4, 4, 2, 256), vocab=1024),
    "bench": Size(TextShape(512, 11, 8, 4, 1536), vocab=4096),
}


SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>"]


def train_tokenizer(
    vocab_target: int, chat_template: str = _CHAT_TEMPLATE, extra_specials: Sequence[str] = ()
) -> Any:
    """A byte-level BPE tokenizer trained on a fixed corpus (the same every time), with
    `SPECIAL_TOKENS` and `extra_specials` as single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [*SPECIAL_TOKENS, *extra_specials]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_target,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        chat_template=chat_template,
    )


def eos_ids(tokenizer: Any) -> list[int]:
    """The ids that end a generation: `<|eos|>` and ChatML's `<|im_end|>`."""
    return [tokenizer.convert_tokens_to_ids(t) for t in ("<|eos|>", "<|im_end|>")]


def llama_config(tokenizer: Any, shape: TextShape, initializer_range: float) -> Any:
    """The Llama text model of `shape` over `tokenizer`'s vocabulary and special tokens."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=4096,
        initializer_range=initializer_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def seeded_model(model_class: Any, config: Any, tokenizer: Any, seed: int) -> Any:
    """`model_class(config)` with weights drawn from `seed`, and a generation config that
    names `tokenizer`'s special tokens."""
    import torch
    from transformers import GenerationConfig

    torch.manual_seed(seed)
    model = model_class(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def make_tiny_model(path: Path, size: str = "tiny", seed: int = 0) -> Path:
    from transformers import LlamaForCausalLM

    text, vocab = SIZES[size]
    tokenizer = train_tokenizer(vocab)
    config = llama_config(tokenizer, text, 0.08 if size == "tiny" else 0.02)
    model = seeded_model(LlamaForCausalLM, config, tokenizer, seed)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

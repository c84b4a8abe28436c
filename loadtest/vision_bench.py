"""Benchmark: a vision-language model on the engine, in one process, alternating rounds.

    python -m loadtest.vision_bench [--size bench|tiny] [--model DIR] [--rounds 7]

The model is a random one of `jetserve make-tiny-model --vision --size SIZE` (Idefics3 /
SmolVLM-style; `bench` ~40 M parameters, a 200 x 160 image is 17 tiles, 272 image tokens;
`tiny` ~0.9 M, 5 tiles, 20 image tokens), written to a temporary folder unless `--model`
names one. Greedy, end-of-sequence ignored; prompts go
through the model's processor as a worker's do.

- mixed: 32 requests with one image each (distinct images, distinct questions) and 32
  text-only ones, 128 new tokens each (a short answer), all submitted at once: the images
  alone, the texts alone, and both together, in a rotating order each round. Target: mixed
  wall time <= 0.8x (images alone + texts alone): images batch with text, do not stall it.
  A control in the same rounds: 64 text-only requests at once against two runs of 32, the
  gain batching gives on this machine whatever the requests carry.
- same image: one image asked 16 questions one after another (each waits for the previous
  answer), prefix caching (and the image embedding cache) on and off, alternating; answers of
  1 token (the time to first token) and of 8. Target: on >= 3x faster.
"""

from __future__ import annotations

import argparse
import functools
import io
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from loadtest.prefix_bench import cpu_model
from loadtest.rounds import spread
from schemas.params import SamplingParams
from workers.engine.engine import Engine, EngineConfig
from workers.engine.prompts import Prompt
from workers.engine.sequence import EngineRequest
from workers.engine.vision import (
    VisionModelRunner,
    image_token_id,
    load_vision_model,
)
from workers.engine.vision_prompts import ImageBytes, VisionPrompter

GREEDY = SamplingParams(temperature=0.0, ignore_eos=True)
#: New tokens of each request of the mixed scenario.
NEW_TOKENS = 128
QUESTIONS = [
    "What is in this picture?",
    "Which colours do you see?",
    "Describe the picture in one sentence.",
    "Is there a person in it?",
    "What is in the top left corner?",
    "Is it day or night?",
    "How many objects are there?",
    "What is the main shape?",
]


def noise_png(seed: int, size: tuple[int, int] = (200, 160)) -> bytes:
    from PIL import Image

    rng = random.Random(seed)
    picture = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    out = io.BytesIO()
    picture.save(out, "PNG")
    return out.getvalue()


class Bench:
    def __init__(self, path: Path, dtype: torch.dtype) -> None:
        self.model, processor = load_vision_model(path, torch.device("cpu"), dtype)
        self.tokenizer = processor.tokenizer.backend_tokenizer
        self.prompter = VisionPrompter(processor, image_token_id(self.model.config))

    def engine(self, caching: bool) -> Engine:
        config = EngineConfig(
            max_num_seqs=64,
            max_num_batched_tokens=1024,
            kv_cache_tokens=48 * 1024,
            enable_prefix_caching=caching,
            max_model_len=2048,
        )
        runner = VisionModelRunner(
            self.model,
            num_blocks=config.num_kv_blocks,
            block_size=config.block_size,
            image_cache_mib=64 if caching else 0,
        )
        return Engine(runner, self.tokenizer, config)

    def prompt(self, question: str, image: bytes | None) -> Prompt:
        content: list[dict[str, Any]] = [{"type": "text", "text": question}]
        images = []
        if image is not None:
            content.insert(0, {"type": "image"})
            images = [ImageBytes(image, "auto", "messages[0].content[0]")]
        return self.prompter.prompt([{"role": "user", "content": content}], images)


def request(rid: str, prompt: Prompt, n: int) -> EngineRequest:
    return EngineRequest(
        id=rid,
        prompt_token_ids=prompt.token_ids,
        params=GREEDY,
        max_tokens=n,
        images=prompt.images,
        cache_key=prompt.cache_key,
    )


def drain(engine: Engine) -> int:
    tokens = 0
    while engine.has_work():
        tokens += sum(len(o.token_ids) for o in engine.step())
    return tokens


def at_once(bench: Bench, prompts: list[tuple[str, Prompt]], n: int) -> float:
    """Wall seconds for all `prompts` submitted together (prompt processing excluded: it is
    the same work on every side, done before)."""
    engine = bench.engine(caching=True)
    start = time.perf_counter()
    for rid, prompt in prompts:
        engine.add(request(rid, prompt, n))
    made = drain(engine)
    assert made == n * len(prompts)
    return time.perf_counter() - start


def sequential(bench: Bench, prompts: list[Prompt], n: int, caching: bool) -> float:
    engine = bench.engine(caching)
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        engine.add(request(f"q{i}", prompt, n))
        drain(engine)
    return time.perf_counter() - start


def rotate(rounds: int, sides: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    names = list(sides)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        if r % 2:
            order.reverse()
        for name in order:
            out[name].append(sides[name]())
        line = ", ".join(f"{name} {out[name][-1]:.2f} s" for name in names)
        print(f"  round {r + 1}: {line}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["bench", "tiny"], default="bench")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model
        if path is None:
            from workers.engine.tiny_vision import make_tiny_vision_model

            path = make_tiny_vision_model(Path(tmp) / "vlm", size=args.size)
        bench = Bench(path, dtype)
    print(
        f"machine: {cpu_model()}, {torch.get_num_threads()} torch threads, dtype {args.dtype}; "
        f"model: random Idefics3 {args.size if args.model is None else args.model} "
        f"({sum(p.numel() for p in bench.model.parameters()) / 1e6:.0f} M parameters)"
    )
    images = [
        (f"i{i}", bench.prompt(QUESTIONS[i % len(QUESTIONS)], noise_png(i))) for i in range(32)
    ]
    texts = [(f"t{i}", bench.prompt(f"{QUESTIONS[i % 8]} Answer #{i}.", None)) for i in range(64)]
    print(
        f"  prompt tokens: image request {len(images[0][1].token_ids)} "
        f"({len(images[0][1].images.positions)} image tokens), text request "
        f"{len(texts[0][1].token_ids)}"
    )
    at_once(bench, images[:4] + texts[:4], 4)  # warm-up
    print(f"mixed: 32 image + 32 text requests at once, {NEW_TOKENS} new tokens each")
    mixed = rotate(
        args.rounds,
        {
            "images": lambda: at_once(bench, images, NEW_TOKENS),
            "texts": lambda: at_once(bench, texts[:32], NEW_TOKENS),
            "mixed": lambda: at_once(bench, images + texts[:32], NEW_TOKENS),
            "64 texts": lambda: at_once(bench, texts, NEW_TOKENS),
        },
    )
    share = [
        m / (i + t) for m, i, t in zip(mixed["mixed"], mixed["images"], mixed["texts"], strict=True)
    ]
    print(f"  mixed / (images + texts): {spread(share)} (target <= 0.8)")
    control = [t64 / (2 * t) for t64, t in zip(mixed["64 texts"], mixed["texts"], strict=True)]
    print(f"  control, 64 texts / (2 x 32 texts): {spread(control)}")

    picture = noise_png(1000)
    questions = [bench.prompt(f"{QUESTIONS[i % 8]} ({i})", picture) for i in range(16)]
    same: dict[str, list[float]] = {}
    for n in (1, 8):
        print(f"same image: 16 questions one after another, {n} new token(s) each")
        same |= {
            f"{side} {n}": values
            for side, values in rotate(
                args.rounds,
                {
                    "cache on": functools.partial(sequential, bench, questions, n, True),
                    "cache off": functools.partial(sequential, bench, questions, n, False),
                },
            ).items()
        }
        speedup = [
            off / on for on, off in zip(same[f"cache on {n}"], same[f"cache off {n}"], strict=True)
        ]
        print(f"  cache off / on: {spread(speedup)} (target >= 3)")
    print(
        f"  medians: images {statistics.median(mixed['images']):.2f} s, texts "
        f"{statistics.median(mixed['texts']):.2f} s, mixed {statistics.median(mixed['mixed']):.2f}"
        f" s, 64 texts {statistics.median(mixed['64 texts']):.2f} s; same image (8 tokens) on "
        f"{statistics.median(same['cache on 8']):.2f} s, off "
        f"{statistics.median(same['cache off 8']):.2f} s"
    )


if __name__ == "__main__":
    main()

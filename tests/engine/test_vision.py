"""The tiny random Idefics3 (SmolVLM-style) model on the engine: images are encoded in the
prefill step and placed at their tokens, in the same continuous batch as text; the prefix
cache names image blocks by the image, not only by token ids."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from schemas.params import SamplingParams
from workers.engine.engine import Engine, EngineConfig
from workers.engine.prompts import Prompt
from workers.engine.sequence import EngineRequest
from workers.engine.vision import VisionModelRunner, image_token_id, load_vision_model
from workers.engine.vision_prompts import ImageBytes, VisionPrompter

from .conftest import run_to_end

GREEDY = SamplingParams(temperature=0.0, ignore_eos=True)
N = 6


def png(color: tuple[int, int, int], size: tuple[int, int] = (50, 40)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    picture = Image.new("RGB", size, color)
    picture.putpixel((3, 3), (color[2], color[0], color[1]))
    picture.save(out, "PNG")
    return out.getvalue()


RED, BLUE, GREEN = png((230, 20, 20)), png((20, 20, 230)), png((20, 200, 40))


@pytest.fixture(scope="module")
def vlm(tiny_vlm_dir: Path) -> tuple[Any, Any]:
    return load_vision_model(tiny_vlm_dir, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def prompter(vlm: tuple[Any, Any]) -> VisionPrompter:
    model, processor = vlm
    return VisionPrompter(processor, image_token_id(model.config))


@pytest.fixture
def make_engine(vlm: tuple[Any, Any]) -> Iterator[Callable[..., Engine]]:
    model, processor = vlm

    def make(image_cache_mib: float = 0, **config: Any) -> Engine:
        config.setdefault("kv_cache_tokens", 4096)
        config.setdefault("max_model_len", 1024)
        config.setdefault("block_size", 16)
        cfg = EngineConfig(**config)
        runner = VisionModelRunner(
            model,
            num_blocks=cfg.num_kv_blocks,
            block_size=cfg.block_size,
            image_cache_mib=image_cache_mib,
        )
        return Engine(runner, processor.tokenizer.backend_tokenizer, cfg)

    yield make
    model.set_attn_implementation("sdpa")


def ask(prompter: VisionPrompter, question: str, image: bytes | None) -> Prompt:
    content: list[dict[str, Any]] = [{"type": "text", "text": question}]
    if image is not None:
        content.insert(0, {"type": "image"})
    images = [ImageBytes(image, "auto", "messages[0].content[0]")] if image else []
    return prompter.prompt([{"role": "user", "content": content}], images)


def request(rid: str, prompt: Prompt, n: int = N) -> EngineRequest:
    return EngineRequest(
        id=rid,
        prompt_token_ids=prompt.token_ids,
        params=GREEDY,
        max_tokens=n,
        images=prompt.images,
        cache_key=prompt.cache_key,
    )


def run(engine: Engine, *reqs: EngineRequest) -> dict[str, tuple[list[int], int]]:
    """Token ids and cached prompt tokens per request, all submitted at once."""
    for r in reqs:
        engine.add(r)
    return {
        rid: ([t for o in outs for t in o.token_ids], outs[-1].num_cached_tokens)
        for rid, outs in run_to_end(engine).items()
    }


def test_greedy_output_is_transformers_generate(
    vlm: tuple[Any, Any], prompter: VisionPrompter, make_engine: Callable[..., Engine]
) -> None:
    prompt = ask(prompter, "What is it?", RED)
    got = run(make_engine(), request("a", prompt))["a"][0]
    model, _ = vlm
    model.set_attn_implementation("sdpa")
    inputs = {k: v for k, v in prompt.images.pixels.items()}
    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([prompt.token_ids]),
            **inputs,
            max_new_tokens=N,
            min_new_tokens=N,
            do_sample=False,
        )
    assert got == out[0, len(prompt.token_ids) :].tolist()


def test_alone_equals_batched_with_text_and_other_images(
    prompter: VisionPrompter, make_engine: Callable[..., Engine]
) -> None:
    prompts = {
        "red": ask(prompter, "What is it?", RED),
        "blue": ask(prompter, "Describe the picture.", BLUE),
        "green": ask(prompter, "What colour?", GREEN),
        "text1": ask(prompter, "Tell me a story about a fox.", None),
        "text2": ask(prompter, "Hi", None),
    }
    alone = {rid: run(make_engine(), request(rid, p))[rid][0] for rid, p in prompts.items()}
    together = run(make_engine(), *(request(rid, p) for rid, p in prompts.items()))
    assert {rid: out[0] for rid, out in together.items()} == alone
    # Two images, the same question: the image reaches the language model.
    blue = run(make_engine(), request("b", ask(prompter, "What is it?", BLUE)))["b"][0]
    assert blue != alone["red"]


def test_same_image_and_prompt_same_output_across_runs(
    prompter: VisionPrompter, make_engine: Callable[..., Engine]
) -> None:
    first = run(make_engine(), request("a", ask(prompter, "What is it?", GREEN)))
    again = run(make_engine(), request("a", ask(prompter, "What is it?", GREEN)))
    assert first == again


def test_same_image_another_question_reuses_its_kv(
    prompter: VisionPrompter, make_engine: Callable[..., Engine]
) -> None:
    def sequentially(caching: bool) -> dict[str, tuple[list[int], int]]:
        engine = make_engine(enable_prefix_caching=caching)
        out = run(engine, request("q1", ask(prompter, "What is it?", RED)))
        out |= run(engine, request("q2", ask(prompter, "Which colour is it?", RED)))
        # The same tokens with another image: nothing from the image on is reused.
        out |= run(engine, request("q3", ask(prompter, "Which colour is it?", BLUE)))
        return out

    cached, plain = sequentially(True), sequentially(False)
    assert {k: v[0] for k, v in cached.items()} == {k: v[0] for k, v in plain.items()}
    assert cached["q2"][1] >= 32  # the blocks holding the image
    assert cached["q3"][1] == 0  # its first image token is in block 0
    assert all(v[1] == 0 for v in plain.values())


def test_the_image_cache_encodes_the_same_image_once(
    prompter: VisionPrompter, make_engine: Callable[..., Engine]
) -> None:
    questions = ["What is it?", "Which colour is it?", "Is it round?"]

    def sequentially(engine: Engine) -> list[list[int]]:
        return [
            run(engine, request(f"q{i}", ask(prompter, q, GREEN)))[f"q{i}"][0]
            for i, q in enumerate(questions)
        ]

    cached = make_engine(image_cache_mib=1)
    assert sequentially(cached) == sequentially(make_engine(enable_prefix_caching=False))
    runner = cached.runner
    assert isinstance(runner, VisionModelRunner)
    assert runner.images_encoded == 1
    run(cached, request("other", ask(prompter, "What is it?", RED)))
    assert runner.images_encoded == 2


def test_a_prefill_split_across_the_image_encodes_it_once(
    prompter: VisionPrompter, make_engine: Callable[..., Engine]
) -> None:
    prompt = ask(prompter, "What is it?", BLUE)
    positions = prompt.images.positions
    whole = run(make_engine(), request("a", prompt))
    # 12 tokens a step: the image's tokens (positions 6 to 36) span three steps.
    engine = make_engine(max_num_batched_tokens=12)
    split = run(engine, request("a", prompt), request("t", ask(prompter, "Hi", None)))
    assert positions[0] < 12 < 24 < positions[-1]
    assert split["a"] == whole["a"]
    runner = engine.runner
    assert isinstance(runner, VisionModelRunner)
    assert runner.images_encoded == 1


def test_detail_low_is_one_tile_and_another_cache_key(prompter: VisionPrompter) -> None:
    content = [{"type": "image"}, {"type": "text", "text": "What is it?"}]
    messages = [{"role": "user", "content": content}]
    high = prompter.prompt(messages, [ImageBytes(RED, "high", "p")])
    low = prompter.prompt(messages, [ImageBytes(RED, "low", "p")])
    assert len(low.images.positions) * 5 == len(high.images.positions)
    assert low.cache_key is not None
    assert high.cache_key is not None
    assert low.cache_key[1] != high.cache_key[1]


def test_build_loads_a_vision_model_and_refuses_images_for_a_text_one(
    tiny_vlm_dir: Path, tiny_model_dir: Path
) -> None:
    from workers.config import ModelSpec
    from workers.engine.build import build_engine_adapter

    def spec(path: Path) -> ModelSpec:
        options = {"kv_cache_mib": 2}
        return ModelSpec(
            name="m",
            engine="llm",
            path=str(path),
            dtype="float32",
            inputs=["text", "image"],
            options=options,
        )

    adapter = build_engine_adapter(spec(tiny_vlm_dir))
    assert adapter.vision is not None
    assert isinstance(adapter.engine.runner, VisionModelRunner)
    with pytest.raises(ValueError, match="not a vision-language model"):
        build_engine_adapter(spec(tiny_model_dir))

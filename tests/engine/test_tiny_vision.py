"""`jetserve make-tiny-model DIR --vision`: a random-init Idefics3 (SmolVLM-style) model and
processor, written offline, loaded with `from_pretrained` like any model folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from workers.engine.tiny_vision import IMAGE_SEQ_LEN, make_tiny_vision_model

from ..conftest import REPO, child_env


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vlm") / "tiny-vlm"
    done = subprocess.run(
        [sys.executable, "-m", "jetserve", "make-tiny-model", str(folder), "--vision"],
        env=child_env("nats://127.0.0.1:1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(str(folder))
    return folder


def _image(color: tuple[int, int, int]) -> Any:
    from PIL import Image

    return Image.new("RGB", (50, 40), color)


def test_it_loads_with_from_pretrained_and_reads_images(vlm_dir: Path) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(vlm_dir)
    model = AutoModelForImageTextToText.from_pretrained(vlm_dir)
    assert type(model).__name__ == "Idefics3ForConditionalGeneration"
    assert type(processor).__name__ == "Idefics3Processor"
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>user\n<image>What is it?<|im_end|>")

    def run(color: tuple[int, int, int]) -> tuple[torch.Tensor, list[int]]:
        inputs = processor(text=[prompt], images=[[_image(color)]], return_tensors="pt")
        image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
        # A 50x40 image: 2 x 2 tiles and the global view, IMAGE_SEQ_LEN tokens each.
        assert image_tokens == 5 * IMAGE_SEQ_LEN
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
            out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        return logits, out[0, inputs["input_ids"].shape[1] :].tolist()

    red, blue, red_again = run((255, 0, 0)), run((0, 0, 255)), run((255, 0, 0))
    assert torch.equal(red[0], red_again[0])
    assert red[1] == red_again[1]
    # The image reaches the language model: another image, other logits.
    assert not torch.allclose(red[0], blue[0])


def test_the_same_seed_writes_the_same_weights(vlm_dir: Path, tmp_path: Path) -> None:
    again = make_tiny_vision_model(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "processor_config.json"):
        assert (again / name).read_bytes() == (vlm_dir / name).read_bytes(), name

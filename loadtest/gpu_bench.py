"""GPU figures, one part per process (`loadtest/gpu_figures.sh` runs them all):

    python3 -m loadtest.gpu_bench --part unique|shared [--device cuda] [--small] [--rounds 3]

A random-initialised ~1B Llama (hidden 2,048, 16 layers, 32 heads, 8 KV heads, intermediate
8,192, vocabulary 32,000; weights do not matter for speed), built in memory on the device, with
a word-level tokenizer of as many tokens (no hub, no files). `--small` builds a toy config of
the same shape family instead (to check the script on a CPU).

- unique: engine_bench's workload (prompts of 16-128 tokens, 16-128 new tokens, all submitted
  at once), `--requests` of them: the engine against transformers' continuous batching
  (`init_continuous_batching`, block sharing as its default), rounds alternating.
- shared: 64 requests, one 1,024-token system prompt, distinct 32-token user turns, 64 new
  tokens: the engine with the prefix cache on / off, rounds alternating, then transformers'
  CB on the same requests.

Greedy, end-of-sequence ignored, token-id prompts drawn by a seed. Needs torch, transformers
and tokenizers only: the engine's one wire-side import (`schemas.params`, a msgspec Struct)
gets a plain stand-in when msgspec is not installed (`_msgspec_standin`; printed).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import random
import statistics
import sys
import time
import types
from collections.abc import Callable
from typing import Any

from loadtest.rounds import alternate, spread


def _msgspec_standin() -> None:
    """A `msgspec` module with just what `schemas.params` uses at import: `Struct` (keyword
    construction, defaults, `field(default_factory=...)`), `Meta` and `field`. No validation:
    the benchmark builds its own, valid parameters. Only used when msgspec is missing."""
    mod = types.ModuleType("msgspec")

    class _Field:
        def __init__(self, default: Any = None, default_factory: Any = None) -> None:
            self.default, self.default_factory = default, default_factory

    class Struct:
        __struct_fields__: tuple[str, ...] = ()

        def __init_subclass__(cls, **options: Any) -> None:
            cls.__struct_fields__ = tuple(inspect.get_annotations(cls))

        def __init__(self, **values: Any) -> None:
            for name in self.__struct_fields__:
                if name in values:
                    value = values.pop(name)
                else:
                    value = getattr(type(self), name)
                    if isinstance(value, _Field):
                        factory = value.default_factory
                        value = factory() if factory is not None else value.default
                object.__setattr__(self, name, value)
            if values:
                raise TypeError(f"unknown fields {sorted(values)}")

    mod.Struct = Struct  # type: ignore[attr-defined]
    mod.Meta = lambda **kw: None  # type: ignore[attr-defined]
    mod.field = _Field  # type: ignore[attr-defined]
    sys.modules["msgspec"] = mod


def ensure_msgspec() -> str:
    if importlib.util.find_spec("msgspec") is not None:
        return "msgspec installed"
    _msgspec_standin()
    return "msgspec missing: schemas.params imported with a plain stand-in (no validation)"


LLAMA_1B = {
    "hidden_size": 2048,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 8192,
    "vocab_size": 32000,
}
SMALL = {
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 256,
    "vocab_size": 1000,
}


class Tokenizer:
    """What the engine and the driver read of a Hugging Face tokenizer: `backend_tokenizer`."""

    def __init__(self, vocab: int) -> None:
        from tokenizers import Tokenizer as Backend
        from tokenizers import models, pre_tokenizers

        backend = Backend(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        self.backend_tokenizer = backend


def build_model(device: str, dtype: Any, small: bool) -> tuple[Any, dict[str, int]]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = SMALL if small else LLAMA_1B
    config = LlamaConfig(**shape, max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    return model, shape


def describe(name: str, r: dict[str, Any]) -> str:
    ttft = r["ttft_median_s"]
    return f"{name} {r['tok_s']:.1f} tok/s (TTFT median " + (
        "not recorded)" if ttft != ttft else f"{ttft:.3f} s)"
    )


def ratio(a: list[dict[str, Any]], b: list[dict[str, Any]], key: str) -> list[float]:
    return [x[key] / y[key] for x, y in zip(a, b, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["unique", "shared"], required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-num-seqs", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(ensure_msgspec(), flush=True)
    import torch
    import transformers

    from loadtest.engine_driver import run_engine, run_hf_cb

    dtype = getattr(torch, args.dtype)
    device = args.device
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    start = time.perf_counter()
    model, shape = build_model(device, dtype, args.small)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"device {name}, {dtype}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, {torch.get_num_threads()} CPU threads; random Llama "
        f"{params / 1e9:.2f} B parameters {shape}; built in {time.perf_counter() - start:.1f} s",
        flush=True,
    )
    tokenizer = Tokenizer(shape["vocab_size"])
    rng = random.Random(args.seed)
    usable = list(range(1, shape["vocab_size"]))

    def ids(n: int) -> list[int]:
        return [rng.choice(usable) for _ in range(n)]

    warmup = [[ids(48), 8] for _ in range(8)]
    if args.part == "unique":
        seqs = args.max_num_seqs
        lengths = [(rng.randint(16, 128), rng.randint(16, 128)) for _ in range(args.requests)]
        requests = [[ids(p), n] for p, n in lengths]
        fields = {
            "max_num_seqs": seqs,
            "max_num_batched_tokens": 4096,
            "kv_cache_tokens": seqs * 512,
            "max_model_len": 512,
        }
        hf_job = {"engine": {**fields, "max_num_seqs": seqs}, "requests": requests}
        print(
            f"unique: {len(requests)} requests, prompts 16-128, new 16-128 "
            f"({sum(n for _, n in lengths)} tokens), max_num_seqs {seqs}, 4,096 tokens a step",
            flush=True,
        )
        res = alternate(
            args.rounds,
            {
                "engine": lambda: run_engine(
                    model, tokenizer, {"engine": fields, "requests": requests, "warmup": warmup}
                ),
                "transformers CB": lambda: run_hf_cb(model, hf_job),
            },
            describe,
            warm_up=True,
        )
        cb = res["transformers CB"]
        print(f"  engine / transformers CB: {spread(ratio(res['engine'], cb, 'tok_s'))}")
        print(f"  transformers CB prefix sharing on: {cb[0]['prefix_sharing']}")
    else:
        system = ids(1024)
        requests = [[system + ids(32), 64] for _ in range(64)]
        fields = {
            "max_num_seqs": 64,
            "max_num_batched_tokens": 1024,
            "kv_cache_tokens": 64 * 1152,
            "max_model_len": 2048,
        }
        print("shared: 64 requests, 1,024-token system prompt + 32, 64 new tokens", flush=True)

        def side(caching: bool) -> Callable[[], dict[str, Any]]:
            job = {"engine": {**fields, "enable_prefix_caching": caching}}
            return lambda: run_engine(
                model, tokenizer, {**job, "requests": requests, "warmup": warmup}
            )

        sides = {"cache on": side(True), "cache off": side(False)}
        res = alternate(args.rounds, sides, describe, warm_up=True)
        on, off = res["cache on"], res["cache off"]
        print(f"  throughput on / off: {spread(ratio(on, off, 'tok_s'))}")
        print(f"  median TTFT off / on: {spread(ratio(off, on, 'ttft_median_s'))}")
        print(f"  cached tokens: {on[0]['cached_tokens']} of {on[0]['prompt_tokens']}", flush=True)
        hf = run_hf_cb(model, {"engine": fields, "requests": requests})
        engine = statistics.median(r["tok_s"] for r in on)
        print(
            f"  transformers CB (prefix sharing on: {hf['prefix_sharing']}) {describe('', hf)}; "
            f"engine cache on (median) / CB {engine / hf['tok_s']:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

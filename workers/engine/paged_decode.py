"""The CPU paged decode-attention kernel (`paged_decode.c`): built once per machine with its C
compiler, loaded with ctypes, called by `attention.ragged_attention` for the decoding rows.

Why a kernel of our own: decoding attends each row's query to the KV blocks of its block table.
In torch that is hundreds of tiny products a layer (one per block and KV head), which run well
under memory speed, and a segmented softmax in several passes; the kernel reads each block once,
where it lies, with the softmax online. No package on PyPI offers a CPU paged attention for the
torch in use (vLLM's CPU backend is not a separate wheel; Intel's extension is built for its own
torch releases), so this small C file is compiled here, as Triton and torch's inductor compile
kernels on the machine that runs them.

The library goes to `JETSERVE_KERNEL_CACHE` (default: `kernels` beside `JETSERVE_MODEL_CACHE`
when that is set, else `~/.cache/jetserve/kernels`), named by a hash of the source, the compiler
flags and the CPU's model and flags, so a machine never loads a build made for another. With no
C compiler (the Docker image has none), a failed build or `JETSERVE_PAGED_DECODE=0`, the engine
keeps its torch path (the same results within rounding).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("paged_decode.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-fno-math-errno"]


def _cpu_identity() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return os.uname().machine
    keep = [line for line in info.splitlines() if line.startswith(("model name", "flags"))]
    return os.uname().machine + "\n" + "\n".join(sorted(set(keep)))


def _cache_dir() -> Path:
    value = os.environ.get("JETSERVE_KERNEL_CACHE")
    if value:
        return Path(value)
    models = os.environ.get("JETSERVE_MODEL_CACHE")  # beside the converted models, if set
    if models:
        return Path(models).parent / "kernels"
    return Path.home() / ".cache" / "jetserve" / "kernels"


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", tmp],
            check=True,
            capture_output=True,
            timeout=120,
        )
        os.replace(tmp, target)  # atomic: concurrent builders each write a whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@cache
def library() -> ctypes.CDLL | None:
    """The built kernel, or None where it cannot be had (then the torch path runs)."""
    if os.environ.get("JETSERVE_PAGED_DECODE", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        log.info("paged decode kernel: no C compiler; using the torch path")
        return None
    key = hashlib.sha256(
        SOURCE.read_bytes() + " ".join(FLAGS).encode() + _cpu_identity().encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"paged_decode-{key}.so"
    try:
        if not target.exists():
            _build(compiler, target)
        # torch is imported first, so the kernel's libgomp.so.1 is torch's own (one pool).
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        log.warning(
            "paged decode kernel unavailable (%s %s); using the torch path",
            exc,
            detail.decode(errors="replace")[-500:],
        )
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for name in ("jetserve_paged_decode_f32", "jetserve_paged_decode_bf16"):
        fn = getattr(lib, name)
        fn.argtypes = [ptr] * 7 + [i64] * 5 + [ctypes.c_int]
        fn.restype = None
    return lib


def usable(device: torch.device, dtype: torch.dtype, group: int, dim: int, block: int) -> bool:
    """Whether the kernel takes a model's decoding: CPU, float32 or bfloat16, shapes within
    its limits (head dim and block size multiples of 8), and built here."""
    if device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16):
        return False
    if group > 16 or dim > 256 or block > 256 or dim % 8 or block % 8:
        return False
    return library() is not None


def decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    ptr: torch.Tensor,
    slots: torch.Tensor,
    lengths: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention of q [rows, H, D] (one query per row) over each row's blocks (row r: slots
    ptr[r]..ptr[r+1], its first lengths[r] positions): [rows, H, D] in q's dtype."""
    lib = library()
    assert lib is not None
    rows, heads, dim = q.shape
    _, kv_heads, _, block = k_cache.shape
    group = heads // kv_heads
    qf = (q.float() * scale).contiguous()
    out = torch.empty(rows, heads, dim, dtype=torch.float32)
    fn = (
        lib.jetserve_paged_decode_bf16
        if k_cache.dtype == torch.bfloat16
        else lib.jetserve_paged_decode_f32
    )
    assert k_cache.is_contiguous()
    assert v_cache.is_contiguous()
    fn(
        qf.data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        ptr.data_ptr(),
        slots.data_ptr(),
        lengths.data_ptr(),
        out.data_ptr(),
        rows,
        kv_heads,
        group,
        dim,
        block,
        torch.get_num_threads(),
    )
    return out.to(q.dtype)

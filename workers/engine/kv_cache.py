"""The KV cache the engine owns: per layer, `num_blocks` blocks of `block_size` positions for
keys and for values, allocated once (memory does not grow with traffic).

Values are [blocks, kv_heads, block_size, head_dim]; keys are stored transposed per block,
[blocks, kv_heads, head_dim, block_size], so that decoding's `q @ K` multiplies without a
transpose. Which sequence holds which block is the block manager's business; here blocks are
physical slots, and the scheduler's slot swaps are applied before each step (`swap`).
"""

from __future__ import annotations

from typing import Any

import torch


class KVCache:
    def __init__(
        self,
        *,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.num_blocks = num_blocks
        self.block_size = block_size
        shape_k = (num_blocks, kv_heads, head_dim, block_size)
        shape_v = (num_blocks, kv_heads, block_size, head_dim)
        self._k = [torch.zeros(shape_k, dtype=dtype, device=device) for _ in range(num_layers)]
        self._v = [torch.zeros(shape_v, dtype=dtype, device=device) for _ in range(num_layers)]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._k + self._v)

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys [blocks, kv_heads, head_dim, block_size] and values [blocks, kv_heads,
        block_size, head_dim] of one layer."""
        return self._k[index], self._v[index]

    def swap(self, swaps: list[tuple[int, int]]) -> None:
        """Exchange the contents of slots a and b, for each swap in order (composed into one
        permutation of the slots touched, applied with one copy per tensor)."""
        if not swaps:
            return
        origin: dict[int, int] = {}
        for a, b in swaps:
            oa, ob = origin.get(a, a), origin.get(b, b)
            origin[a], origin[b] = ob, oa
        moved = [(dst, src) for dst, src in origin.items() if dst != src]
        if not moved:
            return
        device = self._k[0].device
        dst = torch.tensor([m[0] for m in moved], dtype=torch.long, device=device)
        src = torch.tensor([m[1] for m in moved], dtype=torch.long, device=device)
        for t in self._k + self._v:
            t[dst] = t[src]

    def describe(self) -> dict[str, Any]:
        return {"blocks": self.num_blocks, "block_size": self.block_size, "bytes": self.nbytes}

"""Ragged attention over the engine's KV cache, plugged into transformers' attention interface.

The model runs one forward pass per engine step over all scheduled tokens of all sequences,
flattened into a single row ([1, T]): new sequences join and finished ones leave at any step,
without padding. transformers calls `ragged_attention` in every attention layer (it is
registered as an attention implementation); the step's layout arrives as the keyword argument
`jetserve_step` (a `StepBatch`), which transformers passes through to attention functions.

In each layer: the new keys/values are written to their (row, position) in the cache; rows
with a single query token (decoding) attend together in one batched, masked product over the
cache rectangle; rows with several tokens (a prompt chunk) attend one by one, causally.
Grouped-query attention is done by grouping query heads, never by copying keys/values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from workers.engine.kv_cache import KVCache

IMPLEMENTATION = "jetserve_ragged"


@dataclass
class Prefill:
    row: int
    #: Index of its first token in the flattened step.
    token_start: int
    num_tokens: int
    #: Position of its first token in the sequence.
    pos_start: int


@dataclass
class StepBatch:
    cache: KVCache
    #: KV row and position of every token of the step, [T].
    token_rows: torch.Tensor
    token_positions: torch.Tensor
    #: Decoding rows span [0, decode_span): `decode_rows` [Rd] have one query each, at token
    #: indices `decode_tokens` [Rd]; the other rows in the span are padding.
    decode_span: int
    decode_rows: torch.Tensor | None
    decode_tokens: torch.Tensor | None
    #: [decode_span, L] True where a decoding row may attend.
    decode_mask: torch.Tensor | None
    #: True when decode_rows == decode_tokens == arange(decode_span).
    decode_dense: bool
    prefills: list[Prefill]


def ragged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    step: StepBatch = kwargs["jetserve_step"]
    k_cache, v_cache = step.cache.layer(int(module.layer_idx))
    # query [1, H, T, D]; key/value [1, KVH, T, D]
    # keys are cached transposed: [rows, KVH, D, cols]
    k_cache[step.token_rows, :, :, step.token_positions] = key[0].transpose(0, 1)
    v_cache[step.token_rows, :, step.token_positions] = value[0].transpose(0, 1)
    heads, dim = query.shape[1], query.shape[3]
    kv_heads = key.shape[1]
    scale = scaling if scaling is not None else dim**-0.5
    q = query[0].transpose(0, 1)  # [T, H, D]
    out = torch.empty_like(q)

    if step.decode_span:
        assert step.decode_mask is not None
        span, length = step.decode_mask.shape
        if step.decode_dense:
            q_dec = q[:span]
        else:
            assert step.decode_rows is not None
            assert step.decode_tokens is not None
            q_dec = q.new_zeros(span, heads, dim)
            q_dec[step.decode_rows] = q[step.decode_tokens]
        # [span, KVH, G, D] x [span, KVH, D, L] -> [span, KVH, G, L]
        qg = q_dec.view(span, kv_heads, heads // kv_heads, dim)
        k_t = k_cache[:span, :, :, :length]
        v = v_cache[:span, :, :length]
        scores = torch.matmul(qg, k_t).float() * scale
        scores.masked_fill_(~step.decode_mask[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        dec = torch.matmul(probs, v).view(span, heads, dim)
        if step.decode_dense:
            out[:span] = dec
        else:
            assert step.decode_rows is not None
            assert step.decode_tokens is not None
            out[step.decode_tokens] = dec[step.decode_rows]

    gqa = heads != kv_heads
    for p in step.prefills:
        t0, t1 = p.token_start, p.token_start + p.num_tokens
        qp = query[:, :, t0:t1]  # [1, H, n, D]
        if p.pos_start == 0:
            # A prompt's first chunk attends only to itself: use the fresh keys/values
            # directly (contiguous per head; the transposed cached keys would push SDPA off
            # its flash kernel, 2x slower).
            o = F.scaled_dot_product_attention(
                qp,
                key[:, :, t0:t1],
                value[:, :, t0:t1],
                is_causal=True,
                scale=scale,
                enable_gqa=gqa,
            )
        else:
            end = p.pos_start + p.num_tokens
            kp = k_cache[p.row : p.row + 1, :, :, :end].transpose(-1, -2).contiguous()
            vp = v_cache[p.row : p.row + 1, :, :end]
            rows = torch.arange(p.pos_start, end, device=q.device)[:, None]
            mask = torch.arange(end, device=q.device)[None, :] <= rows
            o = F.scaled_dot_product_attention(
                qp, kp, vp, attn_mask=mask, scale=scale, enable_gqa=gqa
            )
        out[t0:t1] = o[0].transpose(0, 1)
    return out.unsqueeze(0), None


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None


def register() -> None:
    """Make `IMPLEMENTATION` available to transformers models (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(IMPLEMENTATION, ragged_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, _no_mask)

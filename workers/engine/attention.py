"""Ragged attention over the engine's KV cache, plugged into transformers' attention interface.

The model runs one forward pass per engine step over all scheduled tokens of all sequences,
flattened into a single row ([1, T]): new sequences join and finished ones leave at any step,
without padding. transformers calls `ragged_attention` in every attention layer (it is
registered as an attention implementation); the step's layout arrives as the keyword argument
`jetserve_step` (a `StepBatch`), which transformers passes through to attention functions.

In each layer: the new keys/values are written to their (block slot, offset) in the cache;
sequences with a single query token (decoding) attend together, batched (`_decode`: one
product over every block in use, in place, and one over the blocks shared by several
sequences; never a per-step copy of the sequences' KV); sequences with several tokens (prompt
chunks) attend in groups (`_prefill`): each group's chunks padded to one rectangle, their
blocks gathered, one masked attention call for the group (a lone first chunk attends to its
own fresh keys, causally, with no gather and no mask).
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
    """Prompt chunks attended in one call: chunk b's queries are row b of a [B, Lq]
    rectangle (padding repeats the row's last query, and is dropped), its keys the first
    positions of its blocks, gathered into row b of a [B, nb * block_size] rectangle."""

    #: Token index in the step of each query, [B, Lq].
    tokens: torch.Tensor
    #: [B, Lq] True for the real (not padding) queries.
    real: torch.Tensor
    #: Token index of each real query, in `real`'s order.
    real_tokens: torch.Tensor
    #: Slots of each chunk's blocks, [B, nb] (padding: slot 0, masked); None for one chunk
    #: that starts at position 0, which attends to its fresh keys with a causal mask.
    slots: torch.Tensor | None
    #: [B, 1, Lq, nb * block_size] True where a query attends to a key (its own sequence's
    #: positions up to its own); None with `slots`.
    mask: torch.Tensor | None
    #: The lone chunk's tokens in the step, when `slots` is None.
    span: slice | None = None


@dataclass
class Decode:
    """The step's one-token sequences (rows 0..count-1), attending over the KV blocks.

    Blocks a row holds alone are multiplied in place: slots [0, num_live) hold every block in
    use, so one product covers them all with no copy; `owner` names the row of each slot (count:
    none, or shared, or a prefilling sequence's) and `valid` how many of its positions count.
    Blocks held by several sequences (a shared prefix) are multiplied once by every row."""

    count: int
    #: Token index of each row's query, [count]; None when it is arange(count).
    tokens: torch.Tensor | None
    num_live: int
    owner: torch.Tensor
    #: [num_live, block_size] True at the positions a row attends to.
    valid: torch.Tensor
    #: Slots of the shared blocks [S], and [count, S * block_size] True where a row does not
    #: hold them; None when no row holds a shared block.
    shared: torch.Tensor | None
    not_held: torch.Tensor | None


@dataclass
class StepBatch:
    cache: KVCache
    #: Slot and offset in it of every token of the step, [T].
    token_slots: torch.Tensor
    token_offsets: torch.Tensor
    decode: Decode | None
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
    k_cache[step.token_slots, :, :, step.token_offsets] = key[0].transpose(0, 1)
    v_cache[step.token_slots, :, step.token_offsets] = value[0].transpose(0, 1)
    dim = query.shape[3]
    scale = scaling if scaling is not None else dim**-0.5
    q = query[0].transpose(0, 1)  # [T, H, D]
    out = torch.empty_like(q)
    if step.decode is not None:
        d = step.decode
        q_dec = q[: d.count] if d.tokens is None else q[d.tokens]
        dec = _decode(q_dec, k_cache, v_cache, d, scale)
        if d.tokens is None:
            out[: d.count] = dec
        else:
            out[d.tokens] = dec
    gqa = query.shape[1] != key.shape[1]
    for p in step.prefills:
        o = _prefill(query, key, value, k_cache, v_cache, p, scale, gqa)
        if p.span is not None:
            out[p.span] = o
        else:
            out[p.real_tokens] = o
    return out.unsqueeze(0), None


def _prefill(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    p: Prefill,
    scale: float,
    gqa: bool,
) -> torch.Tensor:
    """Attention of one group's real queries: [real queries, H, D]."""
    if p.slots is None:
        assert p.span is not None
        # One chunk from position 0: its fresh keys/values (contiguous per head; SDPA stays
        # on its causal flash kernel).
        t = p.span
        o = F.scaled_dot_product_attention(
            query[:, :, t],
            key[:, :, t],
            value[:, :, t],
            is_causal=True,
            scale=scale,
            enable_gqa=gqa,
        )
        return o[0].transpose(0, 1)
    qp = query[0][:, p.tokens].transpose(0, 1)  # [B, H, Lq, D]
    b, nb = p.slots.shape
    kvh, dim, bs = k_cache.shape[1:]
    # [B, nb, KVH, D, bs] -> [B, KVH, nb * bs, D]
    kp = k_cache[p.slots].permute(0, 2, 1, 4, 3).reshape(b, kvh, nb * bs, dim)
    vp = v_cache[p.slots].transpose(1, 2).reshape(b, kvh, nb * bs, dim)
    o = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=p.mask, scale=scale, enable_gqa=gqa)
    return o.transpose(1, 2)[p.real]


def _flatten(blocks: torch.Tensor) -> torch.Tensor:
    """[blocks, KVH, block_size, D] -> [KVH, blocks * block_size, D]."""
    n, kvh, bs, dim = blocks.shape
    return blocks.transpose(0, 1).reshape(kvh, n * bs, dim)


#: Stands for minus infinity in scores: exp() of it minus any real score is 0, and a row with
#: no score at all (a padding row) stays finite.
_NEG = -1e30


def _decode(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, d: Decode, scale: float
) -> torch.Tensor:
    """Attention of `q` [rows, H, D] (one query per row) over the rows' blocks: [rows, H, D].

    Every operation runs over the positions held (slots x block_size), never over a rectangle
    as wide as the longest row: the softmax is normalised per row with a segmented max and
    sum over the slots each row owns."""
    rows, heads, dim = q.shape
    kv_heads = k_cache.shape[1]
    group = heads // kv_heads
    n = d.num_live
    qg = (q * scale).view(rows, kv_heads, group, dim)
    # Blocks held alone, in place: [n, KVH, G, D] x [n, KVH, D, bs] -> [n, KVH, G, bs].
    q_slot = torch.cat([qg, qg.new_zeros(1, kv_heads, group, dim)])[d.owner]
    own = torch.matmul(q_slot, k_cache[:n]).float()
    own.masked_fill_(~d.valid[:, None, None, :], _NEG)
    peak = own.new_full((rows + 1, kv_heads, group), _NEG)
    slot_peak = own.amax(dim=-1)
    peak.scatter_reduce_(0, d.owner[:, None, None].expand_as(slot_peak), slot_peak, "amax")
    sh = None
    if d.shared is not None:
        assert d.not_held is not None
        k_sh = _flatten(k_cache[d.shared].transpose(-1, -2))  # [KVH, S*bs, D]
        q_kv = qg.permute(1, 0, 2, 3).reshape(kv_heads, rows * group, dim)
        sh = torch.matmul(q_kv, k_sh.transpose(1, 2)).float()
        sh = sh.view(kv_heads, rows, group, -1).permute(1, 0, 2, 3)
        sh = sh.masked_fill(d.not_held[:, None, None, :], _NEG)  # [rows, KVH, G, S*bs]
        peak[:rows] = torch.maximum(peak[:rows], sh.amax(dim=-1))
    weights = torch.exp(own - peak[d.owner][..., None])
    total = peak.new_zeros(rows + 1, kv_heads, group).index_add_(0, d.owner, weights.sum(-1))
    part = torch.matmul(weights.to(v_cache.dtype), v_cache[:n]).float()  # [n, KVH, G, D]
    acc = part.new_zeros(rows + 1, kv_heads, group, dim).index_add_(0, d.owner, part)
    acc, total = acc[:rows], total[:rows]
    if sh is not None:
        w_sh = torch.exp(sh - peak[:rows][..., None])
        total = total + w_sh.sum(-1)
        v_sh = _flatten(v_cache[d.shared])  # [KVH, S*bs, D]
        p_sh = w_sh.to(v_cache.dtype).permute(1, 0, 2, 3).reshape(kv_heads, rows * group, -1)
        o_sh = torch.matmul(p_sh, v_sh).float().view(kv_heads, rows, group, dim)
        acc = acc + o_sh.permute(1, 0, 2, 3)
    return (acc / total[..., None]).to(q.dtype).view(rows, heads, dim)


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None


def register() -> None:
    """Make `IMPLEMENTATION` available to transformers models (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(IMPLEMENTATION, ragged_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, _no_mask)

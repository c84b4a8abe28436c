"""Ragged attention over the engine's KV cache, plugged into transformers' attention interface.

The model runs one forward pass per engine step over all scheduled tokens of all sequences,
flattened into a single row ([1, T]): new sequences join and finished ones leave at any step,
without padding. transformers calls `ragged_attention` in every attention layer (it is
registered as an attention implementation); the step's layout arrives as the keyword argument
`jetserve_step` (a `StepBatch`), which transformers passes through to attention functions.

In each layer: the new keys/values are written to their (block slot, offset) in the cache;
sequences with a single query token (decoding) attend together, batched: on the CPU with the
paged kernel (`paged_decode`: each row's blocks read where they lie, one call a layer), else
`_decode` (one product over every block in use, in place, and one over the blocks shared by
several sequences; never a per-step copy of the sequences' KV); sequences with several tokens
(prompt chunks) attend in groups, in two parts merged by log-sum-exp (see `chunks`): causally over
their own fresh keys (`_causal`: no gather, no mask), and over the positions before them in
the cache (`_prefix`: no mask but key padding; a prefix shared by several chunks is read
once).
Grouped-query attention is done by grouping query heads, never by copying cached keys/values
(a chunk's own fresh keys are repeated per query head: a small copy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from workers.engine import paged_decode
from workers.engine.kv_cache import KVCache

IMPLEMENTATION = "jetserve_ragged"


@dataclass
class Causal:
    """Prompt chunks attending causally to their own tokens of this step (fresh keys, no read
    of the cache): chunk b is row b of a [B, Lq] rectangle of token indices, padded at the end
    by repeating its last token (the causal mask keeps real queries off the padding, whose
    own outputs are dropped)."""

    #: Token index in the step of each query and key, [B, Lq].
    tokens: torch.Tensor
    #: [B, Lq] True for the real (not padding) queries.
    real: torch.Tensor
    #: Token index of each real query, in `real`'s order.
    real_tokens: torch.Tensor
    #: One chunk alone: its tokens in the step (contiguous: no gather, no padding).
    span: slice | None = None


@dataclass
class Prefix:
    """Queries attending to the positions before their chunk, read from the KV cache: row b's
    queries (one or more chunks with the same prefix) are row b of a [B, Lq] rectangle
    (padding repeats a query, and is dropped), its keys the first positions of its blocks,
    [B, nb * block_size]. Every query of a row sees every key of its prefix."""

    tokens: torch.Tensor
    real: torch.Tensor
    real_tokens: torch.Tensor
    #: Slots of each row's prefix blocks, [B, nb] (padding: slot 0, masked by `bias`).
    slots: torch.Tensor
    #: [B, 1, 1, nb * block_size] 0 at the row's prefix positions, -inf past them (the
    #: queries' dtype); None when every row's prefix fills its nb blocks.
    bias: torch.Tensor | None


@dataclass
class Decode:
    """The step's one-token sequences (rows 0..count-1), attending over the KV blocks.

    Blocks a row holds alone are multiplied in place: slots [0, num_live) hold every block in
    use, so one product covers them all with no copy; `owner` names the row of each slot (count:
    none, or shared, or a prefilling sequence's) and `hidden` which of its positions do not count.
    Blocks held by several sequences (a shared prefix) are multiplied once by every row."""

    count: int
    #: Token index of each row's query, [count]; None when it is arange(count).
    tokens: torch.Tensor | None
    num_live: int
    owner: torch.Tensor
    #: [num_live, 1, 1, block_size] True at the positions no row attends to (made once per
    #: step, shaped to mask the scores of every layer as they are).
    hidden: torch.Tensor
    #: Slots of the shared blocks [S], and [count, S * block_size] True where a row does not
    #: hold them; None when no row holds a shared block.
    shared: torch.Tensor | None
    not_held: torch.Tensor | None
    #: For the CPU kernel (`paged_decode`), None where it is not used: each row's blocks in
    #: order, slots[ptr[r]:ptr[r + 1]] (shared ones included), and its positions, [count].
    paged: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


@dataclass
class StepBatch:
    cache: KVCache
    #: Slot and offset in it of every token of the step, [T].
    token_slots: torch.Tensor
    token_offsets: torch.Tensor
    decode: Decode | None
    #: Every prompt chunk is in one `Causal` group; those with positions before them (start >
    #: 0) are also in one `Prefix` group, and the two results are merged per query.
    causal: list[Causal]
    prefix: list[Prefix]


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
        if d.paged is not None:
            dec = paged_decode.decode(q_dec, k_cache, v_cache, *d.paged, scale)
        else:
            dec = _decode(q_dec, k_cache, v_cache, d, scale)
        if d.tokens is None:
            out[: d.count] = dec
        else:
            out[d.tokens] = dec
    # Log-sum-exp of each query's scores over its own chunk, to merge in its prefix's.
    lse = q.new_empty(q.shape[:2], dtype=torch.float32) if step.prefix else None
    for c in step.causal:
        o, c_lse = _causal(query, key, value, c, scale)
        rows = c.span if c.span is not None else c.real_tokens
        out[rows] = o
        if lse is not None:
            lse[rows] = c_lse
    for p in step.prefix:
        assert lse is not None
        o, p_lse = _prefix(query, k_cache, v_cache, p, scale)
        t = p.real_tokens
        own = out[t].float()
        # Softmax over the union of both key sets: own * (1 - s) + prefix * s, with s the
        # prefix's share of the total weight, sigmoid(lse_prefix - lse_own).
        share = torch.sigmoid(p_lse - lse[t])[..., None]
        out[t] = (own + (o.float() - own) * share).to(out.dtype)
    return out.unsqueeze(0), None


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    bias: torch.Tensor | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention and the log-sum-exp of each query's scores: q [B, H, Lq, D], k and v [B, H,
    Lk, D] (as many heads) -> [B, H, Lq, D], [B, H, Lq] (float32). torch's kernels that
    return both: flash on CPU, memory-efficient on CUDA; elsewhere plain products."""
    # The kernels read the last dimension as contiguous, whatever its stride says (a one-block
    # prefix gathered from the transposed keys is a view with stride block_size there).
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    if q.device.type == "cpu":
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, causal, attn_mask=bias, scale=scale
        )[:2]
        return o, lse
    if q.device.type == "cuda":
        b, heads, lq, _ = q.shape
        full = None if bias is None else bias.expand(b, heads, lq, k.shape[2])
        o, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, full, True, 0.0, causal, scale=scale
        )[:2]
        return o, lse[..., :lq]  # its log-sum-exp is padded to a multiple of 32 queries
    return _attend_plain(q, k, v, causal, bias, scale)


# `_attend`'s signature on purpose: the fallback it returns, and the reference its kernels are
# tested against (tests/engine/test_attention.py).
def _attend_plain(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    bias: torch.Tensor | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_attend` as plain products (any device)."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    if bias is not None:
        scores = scores + bias
    if causal:
        lq, lk = scores.shape[-2:]
        above = torch.ones(lq, lk, dtype=torch.bool, device=q.device).triu(lk - lq + 1)
        scores = scores.masked_fill(above, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    weights = torch.exp(scores - lse[..., None]).to(v.dtype)
    return torch.matmul(weights, v), lse


def _causal(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, c: Causal, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A group's chunks over their own keys: [real queries, H, D], and the log-sum-exp [real
    queries, H]."""
    if c.span is not None:
        q, k, v = query[:, :, c.span], key[:, :, c.span], value[:, :, c.span]
    else:  # [B, heads, Lq, D]
        q = query[0][:, c.tokens].transpose(0, 1)
        k = key[0][:, c.tokens].transpose(0, 1)
        v = value[0][:, c.tokens].transpose(0, 1)
    group = q.shape[1] // k.shape[1]
    if group > 1:  # the chunk's own keys only: a small copy
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    o, lse = _attend(q, k, v, True, None, scale)
    o, lse = o.transpose(1, 2), lse.transpose(1, 2)  # [B, Lq, H, ...]
    if c.span is not None:
        return o[0], lse[0]
    return o[c.real], lse[c.real]


def _prefix(
    query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, p: Prefix, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A group's queries over their prefixes in the cache: [real queries, H, D], and the
    log-sum-exp [real queries, H]."""
    qp = query[0][:, p.tokens].transpose(0, 1)  # [B, H, Lq, D]
    b, heads, lq, dim = qp.shape
    nb = p.slots.shape[1]
    kv_heads, _, bs = k_cache.shape[1:]
    # Grouped-query attention: a KV head's query heads are folded into the query length
    # (every query sees the whole prefix, so their order does not matter).
    qf = qp.reshape(b, kv_heads, heads // kv_heads * lq, dim)
    # [B, nb, KVH, D, bs] -> [B, KVH, nb * bs, D]
    kp = k_cache[p.slots].permute(0, 2, 1, 4, 3).reshape(b, kv_heads, nb * bs, dim)
    vp = v_cache[p.slots].transpose(1, 2).reshape(b, kv_heads, nb * bs, dim)
    o, lse = _attend(qf, kp, vp, False, p.bias, scale)
    o = o.reshape(b, heads, lq, dim).transpose(1, 2)
    return o[p.real], lse.reshape(b, heads, lq).transpose(1, 2)[p.real]


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
    own.masked_fill_(d.hidden, _NEG)
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
    weights = own.sub_(peak[d.owner][..., None]).exp_()  # in place: no new [n, ..., bs]
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

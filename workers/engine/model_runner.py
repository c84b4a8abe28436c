"""One forward pass of a Hugging Face causal LM over a scheduler step.

Applies the scheduler's KV slot swaps, builds the flattened token row, the positions and the
`StepBatch` layout for the ragged attention, runs the model with `logits_to_keep` so only
sampling positions reach the LM head, and returns those logits.
"""

from __future__ import annotations

from typing import Any

import torch

from workers.engine import paged_decode
from workers.engine.attention import IMPLEMENTATION, Causal, Decode, Prefix, StepBatch, register
from workers.engine.chunks import Chunk, PrefixRow, causal_groups, prefix_groups, prefix_rows
from workers.engine.kv_cache import KVCache
from workers.engine.scheduler import SchedulerOutput

_EMPTY = torch.empty(0)


def text_config(config: Any) -> Any:
    """The language model's config (a vision-language model's `text_config`)."""
    get = getattr(config, "get_text_config", None)
    return get() if get is not None else config


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token position takes across all layers."""
    config = text_config(config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return int(config.num_hidden_layers * 2 * kv_heads * head_dim * dtype.itemsize)


class ModelRunner:
    def __init__(self, model: Any, *, num_blocks: int, block_size: int) -> None:
        register()
        model.set_attn_implementation(self.attention(model))
        self.model = model
        config = text_config(model.config)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        self.block_size = block_size
        self.cache = KVCache(
            num_layers=config.num_hidden_layers,
            kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            head_dim=head_dim,
            num_blocks=num_blocks,
            block_size=block_size,
            dtype=self.dtype,
            device=self.device,
        )
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self.paged = paged_decode.usable(
            self.device, self.dtype, config.num_attention_heads // kv_heads, head_dim, block_size
        )

    def run(self, out: SchedulerOutput) -> torch.Tensor:
        """Logits [number of sampling sequences, vocab] (float32), in scheduled order."""
        with torch.inference_mode():
            self.cache.swap(out.swaps)
            batch, input_ids, positions, sample_index = self._layout(out)
            result = self.model(
                **self.inputs(out, input_ids),
                position_ids=positions[None],
                use_cache=False,
                logits_to_keep=sample_index,
                jetserve_step=batch,
            )
            return result.logits[0].float()

    def attention(self, model: Any) -> str | dict[str, str]:
        """The attention implementation to set (`set_attn_implementation`)."""
        return IMPLEMENTATION

    def inputs(self, out: SchedulerOutput, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's token inputs for the step's flattened `input_ids` [T]."""
        return {"input_ids": input_ids[None]}

    def _tensor(self, values: list[int] | list[list[int]]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def _layout(
        self, out: SchedulerOutput
    ) -> tuple[StepBatch, torch.Tensor, torch.Tensor, torch.Tensor]:
        bs = self.block_size
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        dec_tokens: list[int] = []
        dec_lengths: list[int] = []
        dec_tables: list[list[int]] = []
        chunks: list[Chunk] = []
        samples: list[int] = []
        for s, table in zip(out.scheduled, out.tables, strict=True):
            seq, n, start = s.seq, s.num_tokens, s.start
            t0 = len(ids)
            end = start + n
            ids.extend(seq.token_ids[start:end])
            pos.extend(range(start, end))
            slots.extend(table[p // bs] for p in range(start, end))
            if n == 1:
                dec_tokens.append(t0)
                dec_lengths.append(end)
                dec_tables.append(table[: -(-end // bs)])
            else:
                chunks.append(Chunk(t0, n, start, table[: -(-end // bs)]))
            if s.samples:
                samples.append(t0 + n - 1)
        positions = self._tensor(pos)
        batch = StepBatch(
            cache=self.cache,
            token_slots=self._tensor(slots),
            token_offsets=positions % bs,
            decode=self._decode(out, dec_tokens, dec_lengths, dec_tables) if dec_tokens else None,
            causal=[self._causal(g) for g in causal_groups(chunks)],
            prefix=[self._prefix(g) for g in prefix_groups(prefix_rows(chunks, bs))],
        )
        return batch, self._tensor(ids), positions, self._tensor(samples)

    def _padded(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token indices [B, width] (each row padded by repeating its last), True where real
        [B, width], and the real ones in that order."""
        width = max(len(r) for r in rows)
        tokens = self._tensor([r + [r[-1]] * (width - len(r)) for r in rows])
        real = torch.tensor(
            [[True] * len(r) + [False] * (width - len(r)) for r in rows], device=self.device
        )
        return tokens, real, tokens[real]

    def _causal(self, chunks: list[Chunk]) -> Causal:
        if len(chunks) == 1:
            c = chunks[0]
            empty = self._tensor([])
            return Causal(empty, empty, empty, slice(c.token_start, c.token_start + c.num_tokens))
        return Causal(*self._padded([c.tokens for c in chunks]))

    def _prefix(self, rows: list[PrefixRow]) -> Prefix:
        bs = self.block_size
        nb = max(len(r.slots) for r in rows)
        slots = self._tensor([r.slots + [0] * (nb - len(r.slots)) for r in rows])
        bias = None
        if any(r.length != nb * bs for r in rows):
            lengths = self._tensor([r.length for r in rows])
            past = torch.arange(nb * bs, device=self.device) >= lengths[:, None]
            bias = torch.zeros(past.shape, dtype=self.dtype, device=self.device)
            bias.masked_fill_(past, float("-inf"))
            bias = bias[:, None, None]
        return Prefix(*self._padded([r.tokens for r in rows]), slots, bias)

    def _decode(
        self,
        out: SchedulerOutput,
        tokens: list[int],
        lengths: list[int],
        tables: list[list[int]],
    ) -> Decode:
        bs = self.block_size
        rows = len(tokens)
        dense = tokens == list(range(rows))
        if self.paged:
            ptr = [0]
            for table in tables:
                ptr.append(ptr[-1] + len(table))
            flat = [slot for table in tables for slot in table]
            return Decode(
                count=rows,
                tokens=None if dense else self._tensor(tokens),
                num_live=out.num_live,
                owner=_EMPTY,
                hidden=_EMPTY,
                shared=None,
                not_held=None,
                paged=(self._tensor(ptr), self._tensor(flat), self._tensor(lengths)),
            )
        shared = {slot: i for i, slot in enumerate(out.shared)}
        own_slots: list[int] = []
        own_rows: list[int] = []
        own_valid: list[int] = []
        held_rows: list[int] = []
        held_cols: list[int] = []
        for row, (table, length) in enumerate(zip(tables, lengths, strict=True)):
            for j, slot in enumerate(table):
                col = shared.get(slot)
                if col is None:
                    own_slots.append(slot)
                    own_rows.append(row)
                    own_valid.append(min(bs, length - j * bs))
                else:
                    held_rows.append(row)
                    held_cols.append(col)
        n = out.num_live
        owner = torch.full((n,), rows, dtype=torch.long, device=self.device)
        valid_len = torch.zeros(n, dtype=torch.long, device=self.device)
        own = self._tensor(own_slots)
        owner[own] = self._tensor(own_rows)
        valid_len[own] = self._tensor(own_valid)
        hidden = torch.arange(bs, device=self.device)[None, :] >= valid_len[:, None]
        shared_t = not_held = None
        if shared:
            held = torch.zeros(rows, len(shared), dtype=torch.bool, device=self.device)
            held[self._tensor(held_rows), self._tensor(held_cols)] = True
            not_held = ~held.repeat_interleave(bs, dim=1)
            shared_t = self._tensor(out.shared)
        return Decode(
            count=rows,
            tokens=None if dense else self._tensor(tokens),
            num_live=n,
            owner=owner,
            hidden=hidden[:, None, None, :],
            shared=shared_t,
            not_held=not_held,
        )

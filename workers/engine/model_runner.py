"""One forward pass of a Hugging Face causal LM over a scheduler step.

Builds the flattened token row, the positions and the `StepBatch` layout for the ragged
attention, applies the scheduler's KV moves and re-layout, runs the model with
`logits_to_keep` so only sampling positions reach the LM head, and returns those logits.
"""

from __future__ import annotations

from typing import Any

import torch

from workers.engine.attention import IMPLEMENTATION, Prefill, StepBatch, register
from workers.engine.kv_cache import KVCache
from workers.engine.scheduler import SchedulerOutput


class ModelRunner:
    def __init__(self, model: Any, *, kv_budget_tokens: int) -> None:
        register()
        model.set_attn_implementation(IMPLEMENTATION)
        self.model = model
        config = model.config
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        self.cache = KVCache(
            num_layers=config.num_hidden_layers,
            kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            head_dim=head_dim,
            budget_tokens=kv_budget_tokens,
            dtype=self.dtype,
            device=self.device,
        )

    def run(self, out: SchedulerOutput) -> torch.Tensor:
        """Logits [number of sampling sequences, vocab] (float32), in scheduled order."""
        with torch.inference_mode():
            return self._run(out)

    def _run(self, out: SchedulerOutput) -> torch.Tensor:
        rows, cols = out.kv_shape
        self.cache.move_rows(out.moves)
        self.cache.set_cols(cols, rows)
        batch, input_ids, positions, sample_index = self._layout(out)
        result = self.model(
            input_ids=input_ids[None],
            position_ids=positions[None],
            use_cache=False,
            logits_to_keep=sample_index,
            jetserve_step=batch,
        )
        return result.logits[0].float()

    def _layout(
        self, out: SchedulerOutput
    ) -> tuple[StepBatch, torch.Tensor, torch.Tensor, torch.Tensor]:
        ids: list[int] = []
        pos: list[int] = []
        tok_rows: list[int] = []
        dec_rows: list[int] = []
        dec_tokens: list[int] = []
        dec_lengths: list[int] = []
        prefills: list[Prefill] = []
        samples: list[int] = []
        for s in out.scheduled:
            seq, n, start = s.seq, s.num_tokens, s.start
            t0 = len(ids)
            ids.extend(seq.token_ids[start : start + n])
            pos.extend(range(start, start + n))
            tok_rows.extend([seq.slot] * n)
            if n == 1:
                dec_rows.append(seq.slot)
                dec_tokens.append(t0)
                dec_lengths.append(start + 1)
            else:
                prefills.append(Prefill(seq.slot, t0, n, start))
            if s.samples:
                samples.append(t0 + n - 1)
        dev = self.device

        def tensor(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=dev)

        span = max(dec_rows) + 1 if dec_rows else 0
        dense = dec_rows == list(range(span)) and dec_tokens == dec_rows
        mask = None
        if span:
            lengths = [1] * span  # padding rows see position 0 only (no all-masked rows)
            for row, length in zip(dec_rows, dec_lengths, strict=True):
                lengths[row] = length
            length_t = tensor(lengths)
            mask = torch.arange(max(lengths), device=dev)[None, :] < length_t[:, None]
        batch = StepBatch(
            cache=self.cache,
            token_rows=tensor(tok_rows),
            token_positions=tensor(pos),
            decode_span=span,
            decode_rows=None if dense else tensor(dec_rows),
            decode_tokens=None if dense else tensor(dec_tokens),
            decode_mask=mask,
            decode_dense=dense,
            prefills=prefills,
        )
        return batch, tensor(ids), tensor(pos), tensor(samples)

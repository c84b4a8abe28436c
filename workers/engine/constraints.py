"""Constrained decoding: a grammar per sequence, a token mask per step.

Built on llguidance (chosen over xgrammar: a single abi3 wheel with no other requirements that
runs on any CPU — xgrammar's wheel requires triton — computes a mask for a 49k-token
vocabulary in about 70 us, compiles a JSON-schema grammar in about 2 ms, and covers JSON
Schema faithfully). A compiled grammar is cached per grammar text; each sequence gets a
cheap copy of the cached matcher.

Per engine step the masks of all constrained sequences are computed together, on a helper
thread while the model's forward pass runs (both release the GIL), so constraints do not
stall the unconstrained sequences of the batch.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence as Seq
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from schemas.errors import ErrorCode
from workers.errors import PermanentError


class Constraint:
    """One sequence's grammar state. Owned by the engine thread once submitted."""

    def __init__(self, matcher: Any, description: str) -> None:
        self.matcher = matcher
        self.description = description

    def consume(self, token_id: int) -> bool:
        """Advance past a sampled token; False if the grammar rejects it (a bug)."""
        return bool(self.matcher.consume_token(token_id))

    @property
    def finished(self) -> bool:
        """The grammar admits no further token: the output is complete."""
        return bool(self.matcher.is_stopped())

    def error(self) -> str:
        return str(self.matcher.get_error())


class Grammars:
    """Compiles grammars for one tokenizer, with an LRU cache of compiled matchers."""

    def __init__(
        self, hf_tokenizer: Any, vocab_size: int, eos_token_ids: Seq[int], cache_size: int = 256
    ) -> None:
        import llguidance.hf

        self.vocab_size = vocab_size
        self._tokenizer = llguidance.hf.from_tokenizer(
            hf_tokenizer, n_vocab=vocab_size, eos_token=list(eos_token_ids) or None
        )
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.compiles = 0

    def constraint(self, grammar: str, description: str) -> Constraint:
        """A fresh constraint for `grammar` (llguidance grammar text). PermanentError if the
        grammar is invalid, naming the problem; `description` is the request field it came
        from (`response_format.json_schema.schema`, `tools`), named as the error's param."""
        from llguidance import LLMatcher

        with self._lock:
            template = self._cache.get(grammar)
            if template is not None:
                self._cache.move_to_end(grammar)
        if template is None:
            error = LLMatcher.validate_grammar(grammar, self._tokenizer)
            if error:
                raise PermanentError(
                    f"invalid {description}: {error.strip()}",
                    ErrorCode.INVALID_REQUEST,
                    param=description or None,
                )
            template = LLMatcher(self._tokenizer, grammar, log_level=0)
            if template.is_error():
                raise PermanentError(
                    f"invalid {description}: {template.get_error()}",
                    ErrorCode.INVALID_REQUEST,
                    param=description or None,
                )
            with self._lock:
                self.compiles += 1
                self._cache[grammar] = template
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return Constraint(template.deep_copy(), description)


class MaskComputer:
    """Fills the token bitmasks of a step's constrained sequences on a helper thread."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self._words = (vocab_size + 31) // 32
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="masks")
        self._shifts = torch.arange(32, dtype=torch.int32)

    def start(self, constraints: Seq[Constraint]) -> Future[torch.Tensor]:
        return self._pool.submit(self._fill, list(constraints))

    def _fill(self, constraints: list[Constraint]) -> torch.Tensor:
        # What llguidance.torch.fill_next_token_bitmask does (that module compiles a kernel
        # with torch.compile at import, which this path does not need).
        # numpy, not torch.full: a parallel torch fill would make this thread a second
        # OpenMP master beside the engine's (see workers/threads.py).
        bitmask = torch.from_numpy(np.full((len(constraints), self._words), -1, dtype=np.int32))
        row_bytes = self._words * 4
        for i, c in enumerate(constraints):
            c.matcher.unsafe_compute_mask_ptr(bitmask[i].data_ptr(), row_bytes)
        return bitmask

    def allowed(self, bitmask: torch.Tensor, logits_width: int) -> torch.Tensor:
        """Bool [N, logits_width]: which tokens each row may take."""
        bits = (bitmask[:, :, None] >> self._shifts) & 1
        allowed = bits.view(bitmask.shape[0], -1).bool()
        if allowed.shape[1] >= logits_width:
            return allowed[:, :logits_width]
        pad = torch.zeros(allowed.shape[0], logits_width - allowed.shape[1], dtype=torch.bool)
        return torch.cat([allowed, pad], dim=1)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

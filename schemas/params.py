"""Per-request generation parameters (OpenAI's names and ranges, plus vLLM's extras)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

#: The most tokens any request may ask for; a model's context limit applies on top.
MAX_TOKENS_LIMIT = 1_000_000
MAX_STOP_SEQUENCES = 16
MAX_TOP_LOGPROBS = 20

Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]


class SamplingParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """How to sample and when to stop. `temperature == 0` means greedy."""

    max_tokens: Annotated[int, Meta(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    temperature: Temperature = 1.0
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] = 1.0
    #: 0 disables top-k.
    top_k: Annotated[int, Meta(ge=0)] = 0
    #: Fixes the random stream of this request: same seed, same output.
    seed: int | None = None
    stop: Annotated[
        list[Annotated[str, Meta(min_length=1)]], Meta(max_length=MAX_STOP_SEQUENCES)
    ] = msgspec.field(default_factory=list)
    stop_token_ids: list[int] = msgspec.field(default_factory=list)
    #: Multiplicative (CTRL-style, > 1 discourages repeats); 1 disables.
    repetition_penalty: Annotated[float, Meta(gt=0.0, le=10.0)] = 1.0
    frequency_penalty: Penalty = 0.0
    presence_penalty: Penalty = 0.0
    #: Return the log-probability of each chosen token.
    logprobs: bool = False
    #: Also return this many most likely alternatives per position.
    top_logprobs: Annotated[int, Meta(ge=0, le=MAX_TOP_LOGPROBS)] = 0
    #: Keep generating past the end-of-sequence token (benchmarks).
    ignore_eos: bool = False

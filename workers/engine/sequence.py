"""Engine state of one request. Made from the wire request by one constructor
(`backend.engine_request`); the engine never touches wire objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from schemas.names import Priority
from schemas.params import SamplingParams

if TYPE_CHECKING:
    from schemas.messages import FinishReason


class Status(IntEnum):
    """Ordered: everything above PREEMPTED is finished."""

    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOP = 3
    FINISHED_LENGTH = 4
    FINISHED_CANCELLED = 5
    FINISHED_DEADLINE = 6

    @property
    def is_finished(self) -> bool:
        return self > Status.PREEMPTED


FINISH_REASONS: dict[Status, FinishReason] = {
    Status.FINISHED_STOP: "stop",
    Status.FINISHED_LENGTH: "length",
    Status.FINISHED_CANCELLED: "cancelled",
    Status.FINISHED_DEADLINE: "deadline",
}


@dataclass
class EngineRequest:
    """What the engine needs to know about a request, immutable once submitted."""

    id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    #: Tokens to generate at most (already clipped to the model's context).
    max_tokens: int
    #: The queue it came from: admitted in `Priority` order (priority, online, batch) and
    #: preempted in the reverse order.
    priority: Priority = Priority.ONLINE
    #: Monotonic deadline (time.monotonic()), or None.
    deadline: float | None = None
    #: End-of-sequence token ids of the model (ignored with `params.ignore_eos`).
    eos_token_ids: frozenset[int] = frozenset()
    #: Grammar state for structured output (`constraints.Constraint`); None: free text.
    constraint: Any = None
    #: The prompt's images, for the model runner (`vision.ImageInputs`); None: text only.
    images: Any = None
    #: (prompt position, key): the block holding that position, and through the hash chain
    #: every later one, is named with `key` mixed in (the images' sha256s and processor
    #: settings: their keys/values are not named by token ids alone); None: token ids only.
    cache_key: tuple[int, str] | None = None


@dataclass(eq=False)
class Sequence:
    request: EngineRequest
    #: Monotonic arrival order, for FIFO admission and newest-first preemption.
    arrival: int
    #: Prompt followed by every generated token.
    token_ids: list[int] = field(default_factory=list)
    #: Tokens whose keys/values are in the KV cache.
    num_computed: int = 0
    status: Status = Status.WAITING
    #: KV blocks held while RUNNING (logical ids, in position order); empty otherwise.
    block_table: list[int] = field(default_factory=list)
    #: Chain hashes of its full blocks, as far as computed (tokens only grow: kept across
    #: preemptions).
    block_hashes: list[int] = field(default_factory=list)
    #: Leading blocks of `block_table` registered in the prefix cache.
    num_registered: int = 0
    #: Prompt tokens found in the prefix cache when first admitted (whole blocks).
    num_cached_tokens: int = 0
    #: Times this sequence lost its KV cache to make room.
    preemptions: int = 0
    #: Its images' embeddings, computed once in the step that first reaches an image token
    #: and dropped after the last one is placed (a prompt split into chunks needs them over
    #: several steps); None otherwise.
    image_embeds: Any = None

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.request.prompt_token_ids)

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed(self) -> int:
        """Tokens to feed the model before the next token can be sampled."""
        return len(self.token_ids) - self.num_computed

    def block_extras(self, block_size: int) -> dict[int, str] | None:
        """The keys mixed into its blocks' names (`block_manager.Extras`)."""
        key = self.request.cache_key
        return None if key is None else {key[0] // block_size: key[1]}

    @property
    def max_len(self) -> int:
        """The most tokens this sequence can ever hold in the KV cache."""
        return self.num_prompt_tokens + self.request.max_tokens

"""The layout of a step's prompt chunks for the attention (`attention.Causal`, `attention.Prefix`).

A chunk attends to two disjoint sets of keys, computed apart and merged by their log-sum-exp
(as FlashAttention's split-KV and vLLM's `merge_attn_states` do):
- its own tokens of this step, causally: the fresh keys, with no read of the cache and no
  mask (chunks are padded at the end into rectangles, which a causal mask leaves exact);
- the positions before it (a cached prefix, its earlier chunks), read from the KV cache, every
  query seeing every one of them: no mask either, but a key-padding bias where rows differ in
  length. Chunks with the same prefix (the same blocks, the same length: requests sharing a
  system prompt) share one row, so that prefix is read and multiplied once.
Plain code over lists: the runner turns the result into tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar


@dataclass
class Chunk:
    """A prompt chunk of the step: its tokens [token_start, + num_tokens) in the step, at
    positions [start, + num_tokens), and the slots of its blocks up to its last position."""

    token_start: int
    num_tokens: int
    start: int
    slots: list[int]

    @property
    def tokens(self) -> list[int]:
        return list(range(self.token_start, self.token_start + self.num_tokens))


@dataclass
class PrefixRow:
    """Queries that attend to the same prefix: positions [0, length) in `slots`."""

    length: int
    slots: list[int]
    #: Token indices in the step of the queries, in order.
    tokens: list[int] = field(default_factory=list)


#: A group is padded to its largest member on both sides (queries, and keys or queries
#: again); a member joins the group only while the padded rectangle stays within this factor
#: of the members' own areas (so a long member does not pad many short ones to its size).
MAX_PADDING = 2.0

T = TypeVar("T")


def group(items: Sequence[T], size: Callable[[T], tuple[int, int]]) -> list[list[T]]:
    """`items` in groups, largest first, each padded to at most MAX_PADDING times its area."""
    groups: list[list[T]] = []
    area = a = b = 0
    for item in sorted(items, key=size, reverse=True):
        x, y = size(item)
        if groups:
            new_a, new_b = max(a, x), max(b, y)
            if (len(groups[-1]) + 1) * new_a * new_b <= MAX_PADDING * (area + x * y):
                groups[-1].append(item)
                area, a, b = area + x * y, new_a, new_b
                continue
        groups.append([item])
        area, a, b = x * y, x, y
    return groups


def causal_groups(chunks: list[Chunk]) -> list[list[Chunk]]:
    """Chunks attended to their own keys together (their causal area ~ length squared)."""
    return group(chunks, lambda c: (c.num_tokens, c.num_tokens))


def prefix_rows(chunks: list[Chunk], block_size: int) -> list[PrefixRow]:
    """One row per distinct prefix among the chunks that follow one (start > 0)."""
    rows: dict[tuple[int, tuple[int, ...]], PrefixRow] = {}
    for c in chunks:
        if c.start == 0:
            continue
        slots = c.slots[: -(-c.start // block_size)]
        key = (c.start, tuple(slots))
        row = rows.get(key)
        if row is None:
            row = rows[key] = PrefixRow(c.start, slots)
        row.tokens.extend(c.tokens)
    return list(rows.values())


def prefix_groups(rows: list[PrefixRow]) -> list[list[PrefixRow]]:
    return group(rows, lambda r: (len(r.tokens), len(r.slots)))

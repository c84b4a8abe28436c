"""KV blocks: who holds which, which full blocks are cached, and where each lives in memory.
Plain code: no torch, no I/O.

The KV cache is `num_blocks` blocks of `block_size` token positions. A sequence holds a block
table (logical block ids, in position order); memory grows with the tokens held, a block at
a time.

Prefix caching (as vLLM's automatic prefix caching): a full block is named by a hash chain
over its token ids, `hash((hash of the previous block, its token ids))`, so equal names mean
equal prefixes from position 0 and so equal keys/values (this engine's KV depends only on the
model, the token ids and their positions; no adapters). Token ids do not name an image's
keys/values (every image of a size expands to the same `<image>` ids), so a request with
images names its blocks with a key mixed in (`Extras`: the image's sha256 and the processor
settings) from the block holding its first image token on; the chain carries it to every
later block, and a different image never shares a block the image's tokens touch. A block
is registered under its name in the step that computes its last position (the step writes
every new key and value before any attention reads, so a sequence admitted later in the
same step may already share it). A new sequence takes the longest chain of registered blocks
that matches its tokens (ids and extra keys are compared too, so a hash collision cannot give
wrong KV). Blocks whose last holder left stay registered, evictable, and are reused least
recently used first, only when no never-cached free block is left.

Physical slots. The decoding attention multiplies all blocks in use in one product, as one
slice of memory with no copy, so blocks held by a sequence occupy physical slots
[0, num_live); a block's slot changes when it is taken or dropped (a swap with the slot at
the live boundary). The swaps are reported (`take_swaps`) and applied to the KV memory before
the step runs: each block moves a bounded number of times in its life, never every step.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

#: The hash of "no previous block".
ROOT_HASH = 0

#: Block index -> a key mixed into that block's name (images: see the module docstring).
Extras = Mapping[int, str]


def chain_hash(previous: int, token_ids: tuple[int, ...], extra: str | None = None) -> int:
    if extra is None:
        return hash((previous, token_ids))
    return hash((previous, token_ids, extra))


@dataclass
class Block:
    id: int
    ref_count: int = 0
    #: Chain hash once registered in the prefix cache, else None.
    hash: int | None = None
    #: The token ids the hash names, and its extra key (checked on every hit).
    token_ids: tuple[int, ...] = ()
    extra: str | None = None


@dataclass
class BlockStats:
    #: Prompt tokens looked up in the prefix cache, and found (vLLM's queries / hits).
    queries_tokens: int = 0
    hits_tokens: int = 0
    #: Blocks evicted from the prefix cache to make room.
    evictions: int = 0


@dataclass
class _Slots:
    """Logical block -> physical slot, keeping the blocks in use in [0, live)."""

    slot_of: list[int]
    block_at: list[int]
    live: int = 0
    swaps: list[tuple[int, int]] = field(default_factory=list)

    def _swap(self, a: int, b: int) -> None:
        if a == b:
            return
        x, y = self.block_at[a], self.block_at[b]
        self.block_at[a], self.block_at[b] = y, x
        self.slot_of[x], self.slot_of[y] = b, a
        self.swaps.append((a, b))

    def take(self, block: int) -> None:
        self._swap(self.slot_of[block], self.live)
        self.live += 1

    def drop(self, block: int) -> None:
        self.live -= 1
        self._swap(self.slot_of[block], self.live)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        #: Free blocks holding nothing cached (taken first).
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        #: Free blocks still registered, least recently used first.
        self._evictable: OrderedDict[int, None] = OrderedDict()
        #: Chain hash -> registered block (held or evictable).
        self._cached: dict[int, int] = {}
        self._slots = _Slots(list(range(num_blocks)), list(range(num_blocks)))
        self.stats = BlockStats()

    # -- counts ------------------------------------------------------------------------------

    @property
    def num_free(self) -> int:
        """Blocks that can be given out (never-cached ones and evictable ones)."""
        return len(self._free) + len(self._evictable)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def num_live(self) -> int:
        """Physical slots [0, num_live) hold every block in use."""
        return self._slots.live

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def slot(self, block: int) -> int:
        return self._slots.slot_of[block]

    def take_swaps(self) -> list[tuple[int, int]]:
        """Slot swaps since the last call, in order (apply them to the KV memory in order)."""
        swaps, self._slots.swaps = self._slots.swaps, []
        return swaps

    # -- prefix cache ------------------------------------------------------------------------

    def hashes(
        self, token_ids: list[int], known: list[int], num_full: int, extras: Extras | None = None
    ) -> list[int]:
        """Chain hashes of the first `num_full` full blocks of `token_ids`, extending the
        `known` ones (a sequence's tokens only grow, so its hashes are computed once)."""
        bs = self.block_size
        out = list(known[:num_full])
        previous = out[-1] if out else ROOT_HASH
        for i in range(len(out), num_full):
            extra = extras.get(i) if extras else None
            previous = chain_hash(previous, tuple(token_ids[i * bs : (i + 1) * bs]), extra)
            out.append(previous)
        return out

    def lookup(
        self, token_ids: list[int], hashes: list[int], extras: Extras | None = None
    ) -> list[int]:
        """The blocks of the longest registered prefix of `token_ids`, given its full blocks'
        chain `hashes` (held or evictable; nothing is taken)."""
        if not self.enable_caching:
            return []
        found = []
        bs = self.block_size
        for i, h in enumerate(hashes):
            block = self._cached.get(h)
            if block is None:
                break
            b = self.blocks[block]
            extra = extras.get(i) if extras else None
            if b.token_ids != tuple(token_ids[i * bs : (i + 1) * bs]) or b.extra != extra:
                break
            found.append(block)
        return found

    def count_query(self, num_tokens: int, num_hit: int) -> None:
        self.stats.queries_tokens += num_tokens
        self.stats.hits_tokens += num_hit

    def register(
        self, block: int, h: int, token_ids: tuple[int, ...], extra: str | None = None
    ) -> None:
        """Name a held, full, computed (or computed in this step) block. A block with the same
        name already registered keeps it; this one stays private."""
        if not self.enable_caching or h in self._cached:
            return
        b = self.blocks[block]
        if b.hash is not None:
            return
        b.hash, b.token_ids, b.extra = h, token_ids, extra
        self._cached[h] = block

    # -- holding -----------------------------------------------------------------------------

    def can_take(self, new_blocks: int, hits: list[int]) -> bool:
        """Whether `new_blocks` fresh blocks can be given out after the `hits` are held."""
        reviving = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        return self.num_free - reviving >= new_blocks

    def hold(self, blocks: list[int]) -> None:
        """Hold cached blocks (a prefix hit)."""
        for block in blocks:
            b = self.blocks[block]
            if b.ref_count == 0:
                self._evictable.pop(block, None)
                self._slots.take(block)
            b.ref_count += 1

    def allocate(self) -> int:
        """A fresh block, held once. Never-cached blocks first, then the least recently used
        evictable one (which leaves the cache)."""
        if self._free:
            block = self._free.pop()
        elif self._evictable:
            block, _ = self._evictable.popitem(last=False)
            b = self.blocks[block]
            assert b.hash is not None
            del self._cached[b.hash]
            b.hash, b.token_ids, b.extra = None, (), None
            self.stats.evictions += 1
        else:
            raise RuntimeError("no free KV block")
        self.blocks[block].ref_count = 1
        self._slots.take(block)
        return block

    def release(self, table: list[int]) -> None:
        """Drop one hold on each block of `table`. The last blocks of a sequence are the least
        likely to be shared, so they are queued for eviction first."""
        for block in reversed(table):
            b = self.blocks[block]
            b.ref_count -= 1
            if b.ref_count:
                continue
            self._slots.drop(block)
            if b.hash is not None:
                self._evictable[block] = None
            else:
                self._free.append(block)

    def touch(self, blocks: list[int]) -> None:
        """Mark evictable blocks as just used (a lookup that will be taken soon)."""
        for block in blocks:
            if block in self._evictable:
                self._evictable.move_to_end(block)

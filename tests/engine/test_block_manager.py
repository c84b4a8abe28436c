"""The block manager alone: holding, the prefix cache's names and LRU eviction, and the
physical slots (blocks in use stay in the first slots; the swaps keep every block's contents)."""

from __future__ import annotations

import random

import pytest

from workers.engine.block_manager import BlockManager


def test_blocks_are_counted_and_given_back() -> None:
    bm = BlockManager(4, 16)
    a = [bm.allocate(), bm.allocate()]
    assert (bm.num_used, bm.num_free, bm.num_live) == (2, 2, 2)
    bm.release(a)
    assert (bm.num_used, bm.num_free, bm.num_live) == (0, 4, 0)
    taken = [bm.allocate() for _ in range(4)]
    assert sorted(taken) == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="no free KV block"):
        bm.allocate()


def test_registered_blocks_are_found_by_their_chain_and_ids() -> None:
    bm = BlockManager(8, 4)
    tokens = list(range(10))
    hashes = bm.hashes(tokens, [], 2)
    table = [bm.allocate() for _ in range(3)]
    for j in range(2):
        bm.register(table[j], hashes[j], tuple(tokens[j * 4 : (j + 1) * 4]))
    assert bm.lookup(tokens, hashes) == table[:2]
    # The same second block after a different first one is another name: no hit past it.
    other = [99, 1, 2, 3, *tokens[4:]]
    assert bm.lookup(other, bm.hashes(other, [], 2)) == []
    assert bm.lookup(tokens[:6], bm.hashes(tokens, [], 1)) == table[:1]
    assert BlockManager(8, 4, enable_caching=False).lookup(tokens, hashes) == []


def test_freed_blocks_stay_cached_and_the_least_recently_used_is_evicted_first() -> None:
    bm = BlockManager(3, 2)
    seqs = [[1, 2], [3, 4]]
    tables = []
    for ids in seqs:
        block = bm.allocate()
        bm.register(block, bm.hashes(ids, [], 1)[0], tuple(ids))
        tables.append([block])
    bm.release(tables[0])
    bm.release(tables[1])
    assert bm.num_free == 3
    # Never-cached blocks go first, then the least recently released.
    bm.allocate()
    assert bm.lookup(seqs[0], bm.hashes(seqs[0], [], 1)) == tables[0]
    bm.allocate()
    assert bm.stats.evictions == 1
    assert bm.lookup(seqs[0], bm.hashes(seqs[0], [], 1)) == []
    assert bm.lookup(seqs[1], bm.hashes(seqs[1], [], 1)) == tables[1]


def test_slots_keep_blocks_in_use_first_and_swaps_keep_contents() -> None:
    """Random holds and releases; a simulated memory where slot s holds the id of the block
    whose keys/values it stores, with the reported swaps applied."""
    rng = random.Random(7)
    bm = BlockManager(32, 2)
    memory = list(range(32))  # slot -> block whose contents it holds
    tables: list[list[int]] = []
    for step in range(400):
        if tables and (rng.random() < 0.4 or bm.num_free < 4):
            table = tables.pop(rng.randrange(len(tables)))
            bm.release(table)
        else:
            table = [bm.allocate() for _ in range(rng.randint(1, 3))]
            if step % 3 == 0:
                ids = (step, 1)
                h = bm.hashes(list(ids), [], 1)[0]
                bm.register(table[0], h, ids)
            tables.append(table)
            hit = bm.lookup([6, 1], bm.hashes([6, 1], [], 1))
            if hit:
                bm.hold(hit)
                tables.append(hit)
        for a, b in bm.take_swaps():
            memory[a], memory[b] = memory[b], memory[a]
        held = {b for t in tables for b in t}
        assert bm.num_live == len(held)
        assert all(bm.slot(b) < bm.num_live for b in held)
        assert all(memory[bm.slot(b)] == b for b in range(32))

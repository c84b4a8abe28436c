"""Paired benchmark rounds: each side once per round, the order flipped every round, so that
drift in the machine (heat, other load) falls on both sides alike. Standard library only:
`gpu_bench` runs where only torch and transformers are installed."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

Side = Callable[[], dict[str, Any]]


def alternate(
    rounds: int,
    sides: dict[str, Side],
    describe: Callable[[str, dict[str, Any]], str],
    *,
    warm_up: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """Each side's results, round by round (printed as they come, with `describe`). `warm_up`:
    one untimed run of each side first (kernels, the allocator, cuBLAS heuristics)."""
    names = list(sides)
    if warm_up:
        warm = ", ".join(describe(n, sides[n]()) for n in names)
        print(f"  warm-up (not counted): {warm}", flush=True)
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            results[name].append(sides[name]())
        line = ", ".join(describe(n, results[n][-1]) for n in names)
        print(f"  round {r + 1}: {line}", flush=True)
    return results


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f}, range {min(values):.2f}-{max(values):.2f}"

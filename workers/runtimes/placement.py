"""Where a runtime's model call runs: on the worker's event loop, or on the model's own thread.

A call handed to the model's thread costs two thread switches and a wake-up of the event loop
(tens of microseconds of CPU, more in latency when the GIL is contended), which is more than
a small scikit-learn model's whole call. KServe runs every synchronous `predict` on its event
loop; a call that long blocks nothing else for long. So a call whose predicted duration is
under `inline_below_ms` runs on the loop, and any other on the thread. The prediction is the
recent cost per row (an exponential average over calls, both places measured) times the
call's rows: conservative for large batches, whose per-row cost is lower than a single row's.
The first call always goes to the thread (nothing measured yet).
"""

from __future__ import annotations

#: Weight of the newest call in the average cost per row.
_NEW_WEIGHT = 0.2


class Placement:
    def __init__(self, inline_below_ms: float) -> None:
        self._limit_s = inline_below_ms / 1000.0
        #: Recent seconds per row; None until a call was measured.
        self._s_per_row: float | None = None

    def inline(self, rows: int) -> bool:
        """Whether a call of `rows` rows should run on the event loop."""
        per_row = self._s_per_row
        return per_row is not None and per_row * max(rows, 1) < self._limit_s

    def observe(self, seconds: float, rows: int) -> None:
        """A call of `rows` rows took `seconds`."""
        per_row = seconds / max(rows, 1)
        old = self._s_per_row
        self._s_per_row = per_row if old is None else old + _NEW_WEIGHT * (per_row - old)

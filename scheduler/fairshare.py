"""Splitting a model's free dispatch window between tenants: max-min fair (water-filling).

Each free slot goes to the tenant with the fewest items in flight (counting what this split
already gave it) that still has items to send; ties go to the tenant listed first (the one
whose oldest batch is oldest). So a tenant that arrives while another holds the whole window
gets every slot that frees until the two hold equal shares, and a tenant that wants less than
its share leaves the rest to the others. Pure.
"""

from __future__ import annotations

import heapq


def fair_split(free: int, in_flight: dict[str, int], wants: dict[str, int]) -> dict[str, int]:
    """How many of `free` slots each tenant of `wants` (in priority order: `tenant -> items
    left to send`) gets, given `in_flight` (tenant -> items published and unanswered)."""
    heap = [
        (in_flight.get(tenant, 0), order, tenant)
        for order, (tenant, want) in enumerate(wants.items())
        if want > 0
    ]
    heapq.heapify(heap)
    given = dict.fromkeys(wants, 0)
    while free > 0 and heap:
        held, order, tenant = heapq.heappop(heap)
        # Up to the next tenant's level in one step (not one slot at a time).
        ceiling = heap[0][0] if heap else held + free
        step = max(1, min(free, wants[tenant] - given[tenant], ceiling - held))
        given[tenant] += step
        free -= step
        if given[tenant] < wants[tenant]:
            heapq.heappush(heap, (held + step, order, tenant))
    return given

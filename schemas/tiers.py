"""OpenAI's `service_tier` -> the queue a request waits in, and the tier it reports. One place.

    asked                     queue (`Priority`)   reported
    absent, null, `auto`      online               `default`
    `default`                 online               `default`
    `flex`                    batch                `flex`      (a longer default timeout)
    `priority`                priority             `priority`
    `scale`                   online               `default`   (an OpenAI tier jetserve lacks)
    anything else             refused: 400 naming `service_tier`

The reported tier is what served the request, so it follows from the queue alone
(`reported_tier`): a NATS request published on `.priority` reports `priority` too.
"""

from __future__ import annotations

from typing import Final, Literal, NamedTuple

from schemas.names import Priority
from schemas.openai_errors import ApiError, invalid

#: The tiers a response can report.
ServedTier = Literal["default", "flex", "priority"]

_REPORTED: Final[dict[Priority, ServedTier]] = {
    Priority.PRIORITY: "priority",
    Priority.ONLINE: "default",
    Priority.BATCH: "flex",
}
_QUEUE: Final[dict[object, Priority]] = {
    None: Priority.ONLINE,
    "auto": Priority.ONLINE,
    "default": Priority.ONLINE,
    "flex": Priority.BATCH,
    "priority": Priority.PRIORITY,
    # OpenAI's SDK can send it; jetserve has no such tier: served (and reported) as default.
    "scale": Priority.ONLINE,
}


class Tier(NamedTuple):
    #: The queue the request waits in (its subject and `InferenceRequest.priority`).
    queue: Priority
    #: The `service_tier` its response reports.
    reported: ServedTier


def resolve_tier(service_tier: object) -> Tier:
    """Both at once, for an endpoint that takes `service_tier` (chat, completions, responses);
    `ApiError` (400, param `service_tier`) for a value OpenAI's API does not have."""
    queue = tier_queue(service_tier)
    return Tier(queue, _REPORTED[queue])


def tier_queue(service_tier: object) -> Priority:
    """The queue a request asking for `service_tier` waits in; `ApiError` (400, param
    `service_tier`) for a value OpenAI's API does not have."""
    try:
        return _QUEUE[service_tier]
    except (KeyError, TypeError):  # TypeError: an unhashable value (a list, an object)
        raise _bad_tier() from None


def reported_tier(queue: Priority) -> ServedTier:
    """The `service_tier` a response reports: the tier of the queue that served it."""
    return _REPORTED[queue]


def _bad_tier() -> ApiError:
    return invalid(
        "service_tier must be one of 'auto', 'default', 'flex', 'priority' (or 'scale', "
        "served as 'default').",
        "service_tier",
    )

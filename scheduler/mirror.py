"""Shadow traffic from the scheduler: the mirrors of routed batch items and async requests
(the bridge mirrors its own requests, producer/client.py). A mirror is published with no reply
subject, so the worker discards its result; at the batch priority, so it never slows the
primary; under its own derived id, so a republished item is mirrored once. Its publish is
counted by outcome, never retried and never raised: a lost mirror costs only a sample."""

from __future__ import annotations

import logging

from natsio.acks import Outcome
from natsio.inbox import AckInbox, Message
from natsio.routes import RouteTable
from schemas import names
from schemas.codec import encode
from schemas.messages import InferenceRequest
from schemas.names import Header

log = logging.getLogger(__name__)

#: (the served name asked for, the mirror request)
Mirror = tuple[str, InferenceRequest]


async def publish_mirrors(publisher: AckInbox, routes: RouteTable, mirrors: list[Mirror]) -> None:
    if not mirrors:
        return
    messages = [
        Message(
            names.request_subject(m.model, m.priority),
            encode(m),
            {Header.MSG_ID.value: m.id},
        )
        for _, m in mirrors
    ]
    try:
        results = await publisher.publish_many(messages)
    except Exception:  # counted as refused, like a refused publish
        log.warning("publishing %d shadow requests failed", len(mirrors), exc_info=True)
        results = [(Outcome.RETRY, None)] * len(mirrors)
    for (served, mirror), (outcome, _ack) in zip(mirrors, results, strict=True):
        label = "stored" if outcome is Outcome.STORED else "refused"
        routes.metrics.shadowed.labels(served, mirror.model, label).inc()

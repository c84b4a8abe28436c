"""The JetStream streams and consumers the scheduler owns. Idempotent; run when it becomes
active.

    jetserve-results   jetserve.results.>       durable replies of batch items and async
                                                requests; work queue, consumer `scheduler`
    jetserve-async     jetserve.async.submit    async requests submitted over NATS; work
                                                queue, consumer `scheduler`
    jetserve-response-events  jetserve.revents.>  background responses' chunks and results;
                                                kept `events_keep_s` (replayed by bridges),
                                                consumer `scheduler` (stores the results)

Each consumer is claimed for one installation (`owner`, its database's id, in the consumer's
metadata). Two installations (two databases) cannot share a NATS server's scheduler
consumers: both schedulers would pull from the same durable consumer, and each would ack
away the results it has no record of, so about half of every installation's results would
be lost. The second one to start refuses (`ConsumerClaimed`) and stands by instead.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy
from nats.js.errors import NotFoundError

from natsio.streams import durable_consumer, ensure_stream, work_queue_stream
from scheduler.config import DEFAULT_ACK_WAIT_S
from schemas import names

#: How long a background response's events are kept by default.
DEFAULT_EVENTS_KEEP_S = 86400.0

#: stream, its subjects, its consumer, description, other stream settings
_QUEUES: list[tuple[str, list[str], str, str, dict[str, object]]] = [
    (
        names.RESULTS_STREAM,
        [names.RESULTS_SUBJECTS],
        names.RESULTS_CONSUMER,
        "jetserve results of batch items and async requests",
        {},
    ),
    (
        names.ASYNC_STREAM,
        names.ASYNC_SUBMIT_SUBJECTS,
        names.ASYNC_CONSUMER,
        "jetserve async requests submitted over NATS",
        {"max_msg_size": 1024 * 1024},
    ),
    (
        names.EVENTS_STREAM,
        [names.EVENTS_SUBJECTS],
        names.EVENTS_CONSUMER,
        "jetserve background responses' events (replayed by the bridges)",
        # Kept until max_age, acked or not: the consumer only stores the results.
        {"retention": RetentionPolicy.LIMITS},
    ),
]


class ConsumerClaimed(Exception):
    """A scheduler consumer on this NATS server feeds another installation's database."""


async def provision(
    js: JetStreamContext,
    *,
    duplicate_window_s: float,
    replicas: int = 1,
    owner: str | None = None,
    events_keep_s: float = DEFAULT_EVENTS_KEEP_S,
    ack_wait_s: float = DEFAULT_ACK_WAIT_S,
) -> None:
    """Create the streams and consumers; with `owner`, claim the consumers for it (raises
    `ConsumerClaimed`, changing nothing, when one is claimed for another installation; a
    consumer made before claims existed is claimed)."""
    if owner is not None:
        for stream, _, consumer, _, _ in _QUEUES:
            await _check_claim(js, stream, consumer, owner)
    metadata = None if owner is None else {names.CONSUMER_OWNER_METADATA: owner}
    for stream, subjects, consumer, description, settings in _QUEUES:
        window_s = duplicate_window_s
        if stream == names.EVENTS_STREAM:
            settings = {**settings, "max_age": events_keep_s}
            window_s = min(duplicate_window_s, events_keep_s)
        config = work_queue_stream(
            stream,
            subjects,
            description,
            duplicate_window_s=window_s,
            replicas=replicas,
            **settings,
        )
        await ensure_stream(js, config)
        await js.add_consumer(
            stream,
            durable_consumer(
                consumer, subjects, ack_wait_s=ack_wait_s, max_deliver=-1, metadata=metadata
            ),
        )


async def _check_claim(js: JetStreamContext, stream: str, consumer: str, owner: str) -> None:
    try:
        info = await js.consumer_info(stream, consumer)
    except NotFoundError:
        return
    claimed = (info.config.metadata or {}).get(names.CONSUMER_OWNER_METADATA)
    if claimed is not None and claimed != owner:
        raise ConsumerClaimed(
            f"the consumer {consumer!r} of stream {stream!r} feeds another jetserve "
            f"installation (database id {claimed}); this scheduler's database is {owner}. "
            "Give each installation its own NATS server (or account), or delete that "
            "consumer if the other installation is gone."
        )

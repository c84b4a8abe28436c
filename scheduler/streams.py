"""The JetStream streams and consumers the scheduler owns. Idempotent; run when it becomes
active.

    jetserve-results   jetserve.results.>       durable replies of batch items and async
                                                requests; work queue, consumer `scheduler`
    jetserve-async     jetserve.async.submit    async requests submitted over NATS; work
                                                queue, consumer `scheduler`
"""

from __future__ import annotations

from nats.js import JetStreamContext

from natsio.streams import durable_consumer, ensure_stream, work_queue_stream
from schemas import names

#: Acknowledgement wait of the scheduler's consumers; they redeliver without end (a result
#: must reach the database).
_ACK_WAIT_S = 30.0

#: stream, its subject, its consumer, description, other stream settings
_QUEUES: list[tuple[str, str, str, str, dict[str, int]]] = [
    (
        names.RESULTS_STREAM,
        names.RESULTS_SUBJECTS,
        names.RESULTS_CONSUMER,
        "jetserve results of batch items and async requests",
        {},
    ),
    (
        names.ASYNC_STREAM,
        names.ASYNC_SUBMIT_SUBJECT,
        names.ASYNC_CONSUMER,
        "jetserve async requests submitted over NATS",
        {"max_msg_size": 1024 * 1024},
    ),
]


async def provision(js: JetStreamContext, *, duplicate_window_s: float, replicas: int = 1) -> None:
    for stream, subject, consumer, description, settings in _QUEUES:
        config = work_queue_stream(
            stream,
            [subject],
            description,
            duplicate_window_s=duplicate_window_s,
            replicas=replicas,
            **settings,
        )
        await ensure_stream(js, config)
        await js.add_consumer(
            stream, durable_consumer(consumer, subject, ack_wait_s=_ACK_WAIT_S, max_deliver=-1)
        )

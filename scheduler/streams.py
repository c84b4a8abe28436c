"""The JetStream streams and consumers the scheduler owns. Idempotent; run when it becomes
active.

    jetserve-results   jetserve.results.>       durable replies of batch items and async
                                                requests; work queue, consumer `scheduler`
    jetserve-async     jetserve.async.submit    async requests submitted over NATS; work
                                                queue, consumer `scheduler`
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from natsio.streams import durable_consumer, ensure_stream
from schemas import names

#: Acknowledgement wait of the scheduler's consumers; they redeliver without end (a result
#: must reach the database).
_ACK_WAIT_S = 30.0


async def provision(js: JetStreamContext, *, duplicate_window_s: float, replicas: int = 1) -> None:
    await ensure_stream(
        js,
        StreamConfig(
            name=names.RESULTS_STREAM,
            description="jetserve results of batch items and async requests",
            subjects=[names.RESULTS_SUBJECTS],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=duplicate_window_s,
            num_replicas=replicas,
        ),
    )
    await js.add_consumer(
        names.RESULTS_STREAM,
        durable_consumer(
            names.RESULTS_CONSUMER, names.RESULTS_SUBJECTS, ack_wait_s=_ACK_WAIT_S, max_deliver=-1
        ),
    )
    await ensure_stream(
        js,
        StreamConfig(
            name=names.ASYNC_STREAM,
            description="jetserve async requests submitted over NATS",
            subjects=[names.ASYNC_SUBMIT_SUBJECT],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=duplicate_window_s,
            max_msg_size=1024 * 1024,
            num_replicas=replicas,
        ),
    )
    await js.add_consumer(
        names.ASYNC_STREAM,
        durable_consumer(
            names.ASYNC_CONSUMER, names.ASYNC_SUBMIT_SUBJECT, ack_wait_s=_ACK_WAIT_S, max_deliver=-1
        ),
    )

"""The JetStream streams and consumers the scheduler owns. Idempotent; run when it becomes
active.

    jetserve-results   jetserve.results.>       durable replies of batch items and async
                                                requests; work queue, consumer `scheduler`
    jetserve-async     jetserve.async.submit    async requests submitted over NATS; work
                                                queue, consumer `scheduler`
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from schemas import names


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except BadRequestError as exc:  # created concurrently
            if exc.err_code != 10058:
                raise
    await js.update_stream(config)


def _consumer(name: str, subject: str, ack_wait_s: float) -> ConsumerConfig:
    return ConsumerConfig(
        name=name,
        durable_name=name,
        filter_subject=subject,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        max_deliver=-1,
        max_ack_pending=-1,
    )


async def provision(js: JetStreamContext, *, duplicate_window_s: float, replicas: int = 1) -> None:
    await _ensure_stream(
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
        names.RESULTS_STREAM, _consumer(names.RESULTS_CONSUMER, names.RESULTS_SUBJECTS, 30.0)
    )
    await _ensure_stream(
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
        names.ASYNC_STREAM, _consumer(names.ASYNC_CONSUMER, names.ASYNC_SUBMIT_SUBJECT, 30.0)
    )

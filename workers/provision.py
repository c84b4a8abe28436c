"""Create (or update) the JetStream streams and consumers a model needs. Idempotent.

Run by every worker on start, and by `jetserve provision` before KEDA may scale a model from
zero (KEDA's scaler errors, and falls back to scaling to the maximum, when the consumer it
watches does not exist).
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, NotFoundError

from natsio.streams import STREAM_NAME_IN_USE_CODE, ensure_stream, work_queue_stream
from schemas import names
from schemas.names import Priority
from workers.config import QueueSettings
from workers.handbacks import MAX_CRASH_DELIVERIES, MAX_HANDBACKS
from workers.handbacks import TTL_S as HANDBACK_TTL_S


def max_deliveries(max_attempts: int) -> int:
    """The consumers' `max_deliver`: the attempts, the dead-lettering delivery, hand-backs and
    crashes that did not count (workers/handbacks.py)."""
    return max_attempts + 1 + MAX_HANDBACKS + MAX_CRASH_DELIVERIES


def model_stream_config(model: str, s: QueueSettings) -> StreamConfig:
    return work_queue_stream(
        names.stream_name(model),
        names.request_subjects(model),
        f"jetserve requests for model {model}",
        duplicate_window_s=s.duplicate_window_s,
        replicas=s.replicas,
        max_msgs=s.max_backlog,
        max_bytes=s.max_bytes,
        # A full backlog refuses new publishes (the client sees a 429), never drops old ones.
        discard=DiscardPolicy.NEW,
        max_msg_size=s.max_msg_bytes,
    )


def consumer_config(model: str, priority: Priority, s: QueueSettings) -> ConsumerConfig:
    name = names.consumer_name(priority)
    return ConsumerConfig(
        name=name,
        durable_name=name,
        description=f"jetserve {priority} workers of {model}",
        # The service's subject and every tenant's (`names.request_filters`).
        filter_subjects=names.request_filters(model, priority),
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=s.ack_wait_s,
        max_deliver=max_deliveries(s.max_attempts),
        # Workers bound what they hold themselves; the server must not cap the sum of replicas.
        max_ack_pending=-1,
        max_waiting=512,
        num_replicas=s.replicas,
    )


#: JetStream API error code: the server cannot reserve the storage a stream asks for.
INSUFFICIENT_RESOURCES_CODE = 10047


class StorageRefused(RuntimeError):
    """nats-server refused to reserve a model stream's `max_bytes`."""


async def provision_model(js: JetStreamContext, model: str, settings: QueueSettings) -> None:
    try:
        await ensure_stream(js, model_stream_config(model, settings))
    except APIError as exc:
        if exc.err_code != INSUFFICIENT_RESOURCES_CODE:
            raise
        # JetStream reserves every stream's max_bytes (times its replicas) up front, against
        # the server's max_file_store (by default 75% of the disk free when it started).
        mib = settings.max_bytes // (1024 * 1024)
        raise StorageRefused(
            f"nats-server cannot reserve {mib} MiB x {settings.replicas} replica(s) for model "
            f"{model!r}'s stream ({exc.description}): lower the model's max_stream_mib in the "
            "models file, or give nats-server more storage (jetstream max_file_store)"
        ) from exc
    for priority in Priority:
        await js.add_consumer(names.stream_name(model), consumer_config(model, priority, settings))
    await provision_dead_letters(js, settings.replicas)
    await provision_handbacks(js, settings.replicas)


async def provision_handbacks(js: JetStreamContext, replicas: int = 1) -> None:
    try:
        await js.key_value(names.HANDBACK_BUCKET)
    except NotFoundError:
        config = KeyValueConfig(
            bucket=names.HANDBACK_BUCKET,
            description="jetserve: deliveries handed back unrun, per request message",
            ttl=HANDBACK_TTL_S,
            storage=StorageType.FILE,
            replicas=replicas,
        )
        try:
            await js.create_key_value(config)
        except BadRequestError as exc:  # created concurrently by another replica
            if exc.err_code != STREAM_NAME_IN_USE_CODE:
                raise


async def provision_dead_letters(js: JetStreamContext, replicas: int = 1) -> None:
    await ensure_stream(
        js,
        StreamConfig(
            name=names.DLQ_STREAM,
            description="jetserve requests that failed on every delivery",
            subjects=[names.DLQ_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=14 * 24 * 3600.0,
            num_replicas=replicas,
        ),
    )

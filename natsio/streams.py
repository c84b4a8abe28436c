"""Creating JetStream streams and consumers: idempotent, and safe when replicas race."""

from __future__ import annotations

from typing import Any

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

#: JetStream API error code: a stream of that name exists (created concurrently).
STREAM_NAME_IN_USE_CODE = 10058


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or update it to `config` if it exists."""
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except BadRequestError as exc:  # created concurrently by another replica
            if exc.err_code != STREAM_NAME_IN_USE_CODE:
                raise
    await js.update_stream(config)


def work_queue_stream(
    name: str,
    subjects: list[str],
    description: str,
    *,
    duplicate_window_s: float,
    replicas: int,
    **config: Any,
) -> StreamConfig:
    """A file-backed work-queue stream (a message is gone once acked); `config` adds or
    overrides fields."""
    fields: dict[str, Any] = {
        "name": name,
        "description": description,
        "subjects": subjects,
        "retention": RetentionPolicy.WORK_QUEUE,
        "storage": StorageType.FILE,
        "duplicate_window": duplicate_window_s,
        "num_replicas": replicas,
        **config,
    }
    return StreamConfig(**fields)


def durable_consumer(
    name: str, subjects: list[str], *, ack_wait_s: float, **config: object
) -> ConsumerConfig:
    """A durable pull consumer of `subjects`, every message acked explicitly; `config` adds
    or overrides fields."""
    filters: dict[str, object] = (
        {"filter_subject": subjects[0]} if len(subjects) == 1 else {"filter_subjects": subjects}
    )
    fields: dict[str, object] = {
        "name": name,
        "durable_name": name,
        **filters,
        "deliver_policy": DeliverPolicy.ALL,
        "ack_policy": AckPolicy.EXPLICIT,
        "ack_wait": ack_wait_s,
        "max_ack_pending": -1,
        **config,
    }
    return ConsumerConfig(**fields)  # type: ignore[arg-type]

"""Scheduler settings: one `SchedulerConfig` per process, built from an injected environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from schemas import settings
from schemas.limits import LimitSettings
from schemas.settings import (
    DEFAULT_DUPLICATE_WINDOW_S,
    DEFAULT_NATS_URL,
    get_bool,
    get_float,
    get_int,
)

WEBHOOKS_ALLOW_PRIVATE = "JETSERVE_WEBHOOKS_ALLOW_PRIVATE"


#: Acknowledgement wait of the scheduler's consumers (`JETSERVE_SCHEDULER_ACK_WAIT_S`); they
#: redeliver without end (a result must reach the database). A scheduler that stops or cannot
#: store hands back what it holds at once; only what a killed one held waits this long. Storing
#: is idempotent (`ON CONFLICT DO NOTHING`), so a redelivery while a slow store still runs is
#: harmless.
DEFAULT_ACK_WAIT_S = 10.0


@dataclass(frozen=True)
class SchedulerConfig:
    database_url: str
    nats_url: str = DEFAULT_NATS_URL
    #: `/metrics`, `/healthz`, `/readyz` on this port; negative: no endpoint.
    metrics_port: int = -1
    #: Batch items published and not yet answered, per model, at most.
    batch_in_flight: int = 1024
    #: How often the loops look for work when nothing woke them.
    poll_s: float = 0.5
    #: A cancelled batch waits this long for its in-flight items before it is written out.
    cancel_grace_s: float = 30.0
    #: Results of async requests are kept this long after they finish.
    async_keep_s: float = 24 * 3600.0
    #: An async request still `queued` this long (its publisher died) is published again.
    async_requeue_s: float = 30.0
    #: Webhook deliveries are retried for this long, then marked dead.
    webhook_retry_period_s: float = 72 * 3600.0
    #: Backoff between attempts: base * 2^(attempt-1), at most max, with jitter.
    webhook_backoff_base_s: float = 1.0
    webhook_backoff_max_s: float = 3600.0
    webhook_timeout_s: float = 10.0
    #: Allow webhook targets on loopback/private/link-local addresses (local development).
    webhooks_allow_private: bool = False
    #: The results stream's de-duplication window (a redelivered item's second result).
    duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S
    #: A standby tries to take the scheduler lock this often.
    lock_retry_s: float = 2.0
    #: The scheduler's consumers' ack_wait: what a scheduler killed mid-work had been sent and
    #: not stored comes back to the next one after this long.
    ack_wait_s: float = DEFAULT_ACK_WAIT_S
    #: A background response's events are kept this long for replay (its stored response,
    #: `JETSERVE_RESPONSES_KEEP_S`, much longer).
    response_events_keep_s: float = 86400.0
    #: Tenants' limits on async requests they submit on their own subjects.
    limits: LimitSettings = field(default_factory=LimitSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SchedulerConfig:
        return cls(
            database_url=settings.required_database_url(env, "the scheduler keeps its state there"),
            nats_url=settings.nats_url(env),
            metrics_port=get_int(env, "JETSERVE_SCHEDULER_METRICS_PORT", -1),
            batch_in_flight=get_int(env, "JETSERVE_BATCH_IN_FLIGHT", 1024, minimum=1),
            poll_s=get_float(env, "JETSERVE_SCHEDULER_POLL_S", 0.5, minimum=0.01),
            cancel_grace_s=get_float(env, "JETSERVE_BATCH_CANCEL_GRACE_S", 30.0, minimum=0.0),
            async_keep_s=get_float(env, "JETSERVE_ASYNC_RESULT_KEEP_S", 86400.0, minimum=1.0),
            async_requeue_s=get_float(env, "JETSERVE_ASYNC_REQUEUE_S", 30.0, minimum=1.0),
            webhook_retry_period_s=get_float(
                env, "JETSERVE_WEBHOOK_RETRY_PERIOD_S", 72 * 3600.0, minimum=0.0
            ),
            webhook_backoff_base_s=get_float(
                env, "JETSERVE_WEBHOOK_BACKOFF_BASE_S", 1.0, minimum=0.01
            ),
            webhook_backoff_max_s=get_float(
                env, "JETSERVE_WEBHOOK_BACKOFF_MAX_S", 3600.0, minimum=0.01
            ),
            webhook_timeout_s=get_float(env, "JETSERVE_WEBHOOK_TIMEOUT_S", 10.0, minimum=0.1),
            webhooks_allow_private=get_bool(env, WEBHOOKS_ALLOW_PRIVATE, False),
            duplicate_window_s=settings.duplicate_window_s(env),
            lock_retry_s=get_float(env, "JETSERVE_SCHEDULER_LOCK_RETRY_S", 2.0, minimum=0.05),
            ack_wait_s=get_float(
                env, "JETSERVE_SCHEDULER_ACK_WAIT_S", DEFAULT_ACK_WAIT_S, minimum=1.0
            ),
            response_events_keep_s=get_float(
                env, "JETSERVE_RESPONSE_EVENTS_KEEP_S", 86400.0, minimum=1.0
            ),
            limits=LimitSettings.from_env(env),
        )

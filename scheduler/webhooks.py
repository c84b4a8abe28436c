"""Delivering webhooks from the outbox, signed per the Standard Webhooks spec.

Each delivery is a POST of the event's JSON with the headers `webhook-id` (the delivery's id,
the same on every retry, for the receiver to de-duplicate), `webhook-timestamp` and
`webhook-signature` (`v1,<base64 HMAC-SHA256>` made by the `standardwebhooks` library with the
endpoint's `whsec_` secret). Any 2xx acknowledges. Anything else (another status, a timeout, a
refused address) is retried with exponential backoff and jitter until `retry_period_s` after
the event, then the delivery is marked dead.

Nothing a receiver does can stop the deliverer: see `scheduler/webhook_post.py` (a pinned
connection, one deadline per attempt, the response body never read), and every error of an
attempt is recorded on that delivery alone.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import asyncpg
import httpcore
import httpx
from standardwebhooks.webhooks import Webhook

from scheduler.metrics import SchedulerMetrics
from scheduler.store.webhooks import Delivery, DeliveryState, claim_due, record_attempt
from scheduler.urlguard import UrlRefused, resolve
from scheduler.webhook_post import PostTimeout, post_status

log = logging.getLogger(__name__)

#: A claimed delivery is taken again after its attempt's timeout plus this, should the
#: process die during the attempt.
LEASE_MARGIN_S = 30.0


@dataclass(frozen=True)
class RetryPolicy:
    period_s: float
    base_s: float
    max_s: float

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Wait after failed attempt number `attempt` (1, 2, ...): base * 2^(attempt-1),
        capped, times a random factor in [0.5, 1) so that receivers coming back are not hit by
        every retry at once."""
        ceiling = min(self.max_s, self.base_s * 2 ** min(attempt - 1, 40))
        jitter: float = (rng or random).random()
        return float(ceiling * (0.5 + 0.5 * jitter))


@dataclass(frozen=True)
class DeliverySettings:
    """How the deliverer makes its attempts (fixed for the process's life)."""

    retry: RetryPolicy
    #: One attempt's limit: lookup, connect, send and answer.
    timeout_s: float = 10.0
    #: Targets on loopback/private/link-local addresses are allowed (local development).
    allow_private: bool = False
    #: Attempts in flight at once.
    concurrency: int = 16


def sign(secret: str, msg_id: str, timestamp: datetime, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one delivery."""
    signature = Webhook(secret).sign(msg_id, timestamp, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": "jetserve-webhooks/1",
    }


class WebhookDeliverer:
    """Delivers the outbox. Each attempt is claimed, made and recorded on its own, as a task
    of its own (up to `settings.concurrency` at once): whatever a receiver (or a stored URL)
    does, its delivery ends recorded as delivered, failed (retried) or dead within the
    attempt's timeout, and no other delivery waits for it beyond the slot it takes."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        metrics: SchedulerMetrics,
        settings: DeliverySettings,
        *,
        on_slot_free: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._settings = settings
        self._ssl = httpx.create_ssl_context()
        self._on_slot_free = on_slot_free
        self._in_flight: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Stop the attempts in flight (their leases bring them back later)."""
        for task in self._in_flight:
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def run_once(self) -> int:
        """Start an attempt for due deliveries, as many as there are free slots; returns how
        many were started."""
        free = self._settings.concurrency - len(self._in_flight)
        if free <= 0:
            return 0
        # An attempt lasts at most timeout_s (plus the DNS lookup): the lease outlives it.
        due = await claim_due(self._pool, free, self._settings.timeout_s + LEASE_MARGIN_S)
        for d in due:
            task = asyncio.create_task(self._deliver(d), name=f"webhook-{d.id}")
            self._in_flight.add(task)
            task.add_done_callback(self._finished)
        return len(due)

    async def idle(self) -> None:
        """Wait for the attempts in flight to be recorded."""
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Recording failed (the database): the lease brings the delivery back.
            log.warning("webhook attempt not recorded: %s", type(task.exception()).__name__)
        if self._on_slot_free is not None:
            self._on_slot_free()

    async def _deliver(self, d: Delivery) -> None:
        try:
            status, error = await self._attempt(d)
        except Exception as exc:  # unforeseen (a name idna refuses, a bug): still recorded
            status, error = None, _describe(exc)
        await self._record(d, status, error)

    async def _attempt(self, d: Delivery) -> tuple[int | None, str | None]:
        """(HTTP status or None, error or None): a delivery that cannot be made is a failed
        attempt, recorded like any other."""
        try:
            async with asyncio.timeout(self._settings.timeout_s + LEASE_MARGIN_S / 2):
                _, _, addresses = await resolve(d.url, allow_private=self._settings.allow_private)
        except UrlRefused as exc:
            self._metrics.webhook_deliveries.labels("refused").inc()
            return None, f"refused: {exc}"
        except TimeoutError:
            return None, "refused: the host did not resolve in time"
        headers = sign(d.secret, d.id, datetime.now(UTC), d.payload)
        try:
            status = await post_status(
                d.url,
                addresses,
                headers,
                d.payload,
                timeout_s=self._settings.timeout_s,
                ssl_context=self._ssl,
            )
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.TimeoutException) as exc:
            return None, _describe(exc)
        except (PostTimeout, httpcore.UnsupportedProtocol) as exc:
            return None, _describe(exc)
        if 200 <= status < 300:
            return status, None
        return status, f"HTTP {status}"

    async def _record(self, d: Delivery, status: int | None, error: str | None) -> None:
        if error is None:
            self._metrics.webhook_deliveries.labels("delivered").inc()
            await record_attempt(
                self._pool,
                d.id,
                state=DeliveryState.DELIVERED,
                status=status,
                error=None,
                retry_in_s=0,
            )
            return
        now = datetime.now(UTC)
        age_s = (now - d.created_at).total_seconds()
        left_s = self._settings.retry.period_s - age_s
        if left_s <= 0:
            self._metrics.webhook_deliveries.labels("dead").inc()
            # The host only: a webhook URL's path or query often carries a token.
            host = urlsplit(d.url).hostname
            log.warning("webhook %s to %s dead after %d attempts", d.id, host, d.attempts)
            await record_attempt(
                self._pool, d.id, state=DeliveryState.DEAD, status=status, error=error, retry_in_s=0
            )
            return
        self._metrics.webhook_deliveries.labels("failed").inc()
        # The last retry happens at the end of the period, not after it.
        delay = min(self._settings.retry.delay_s(d.attempts), left_s)
        await record_attempt(
            self._pool,
            d.id,
            state=DeliveryState.PENDING,
            status=status,
            error=error,
            retry_in_s=delay,
        )


def _describe(exc: BaseException) -> str:
    """What a tenant is told about a failed attempt: the kind of failure, not our internals."""
    if isinstance(exc, PostTimeout):
        return str(exc)
    if isinstance(exc, httpcore.UnsupportedProtocol | httpcore.LocalProtocolError):
        return "the URL cannot be delivered to"
    if isinstance(exc, httpcore.ConnectError | httpcore.ConnectTimeout):
        return "could not connect"
    if isinstance(exc, httpcore.RemoteProtocolError):
        return "the receiver's response is not valid HTTP"
    if isinstance(exc, httpcore.NetworkError | httpcore.TimeoutException):
        return "the connection failed"
    log.warning("webhook attempt failed: %s", type(exc).__name__)
    return "the delivery failed"

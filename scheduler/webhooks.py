"""Delivering webhooks from the outbox, signed per the Standard Webhooks spec.

Each delivery is a POST of the event's JSON with the headers `webhook-id` (the delivery's id,
the same on every retry, for the receiver to de-duplicate), `webhook-timestamp` and
`webhook-signature` (`v1,<base64 HMAC-SHA256>` made by the `standardwebhooks` library with the
endpoint's `whsec_` secret). Any 2xx acknowledges. Anything else (another status, a timeout, a
refused address) is retried with exponential backoff and jitter until `retry_period_s` after
the event, then the delivery is marked dead.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import asyncpg
import httpx
from standardwebhooks.webhooks import Webhook

from scheduler.metrics import SchedulerMetrics
from scheduler.store.webhooks import Delivery, DeliveryState, record_attempt, take_due
from scheduler.urlguard import UrlRefused, check_url

log = logging.getLogger(__name__)


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
    def __init__(
        self,
        pool: asyncpg.Pool,
        metrics: SchedulerMetrics,
        *,
        policy: RetryPolicy,
        timeout_s: float,
        allow_private: bool,
        concurrency: int = 16,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._policy = policy
        self._allow_private = allow_private
        self._concurrency = concurrency
        self._http = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    async def close(self) -> None:
        await self._http.aclose()

    async def run_once(self) -> int:
        """Attempt every due delivery (up to `concurrency` at once); returns how many."""
        async with self._pool.acquire() as conn, conn.transaction():
            due = await take_due(conn, self._concurrency)
            if not due:
                return 0
            outcomes = await asyncio.gather(*[self._attempt(d) for d in due])
            for delivery, (status, error) in zip(due, outcomes, strict=True):
                await self._record(conn, delivery, status, error)
        return len(due)

    async def _attempt(self, d: Delivery) -> tuple[int | None, str | None]:
        """(HTTP status or None, error or None)."""
        try:
            await check_url(d.url, allow_private=self._allow_private)
        except UrlRefused as exc:
            self._metrics.webhook_deliveries.labels("refused").inc()
            return None, f"refused: {exc}"
        headers = sign(d.secret, d.id, datetime.now(UTC), d.payload)
        try:
            response = await self._http.post(d.url, content=d.payload, headers=headers)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return response.status_code, None
        return response.status_code, f"HTTP {response.status_code}"

    async def _record(
        self, conn: asyncpg.Connection, d: Delivery, status: int | None, error: str | None
    ) -> None:
        if error is None:
            self._metrics.webhook_deliveries.labels("delivered").inc()
            await record_attempt(
                conn, d.id, state=DeliveryState.DELIVERED, status=status, error=None, retry_in_s=0
            )
            return
        now = datetime.now(UTC)
        age_s = (now - d.created_at).total_seconds()
        left_s = self._policy.period_s - age_s
        if left_s <= 0:
            self._metrics.webhook_deliveries.labels("dead").inc()
            # The host only: a webhook URL's path or query often carries a token.
            host = urlsplit(d.url).hostname
            log.warning("webhook %s to %s dead after %d attempts", d.id, host, d.attempts + 1)
            await record_attempt(
                conn, d.id, state=DeliveryState.DEAD, status=status, error=error, retry_in_s=0
            )
            return
        self._metrics.webhook_deliveries.labels("failed").inc()
        # The last retry happens at the end of the period, not after it.
        delay = min(self._policy.delay_s(d.attempts + 1), left_s)
        await record_attempt(
            conn, d.id, state=DeliveryState.PENDING, status=status, error=error, retry_in_s=delay
        )

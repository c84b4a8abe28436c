"""`jetserve scheduler`: one active instance, any number of standbys, all state in Postgres.

The active instance holds a session advisory lock on a dedicated connection
(`pg_try_advisory_lock`); standbys retry every `lock_retry_s`. If that connection fails, the
instance stops acting at once (its loops are cancelled) and competes for the lock again; the
lock is released by the server when the session ends, so a standby takes over. Nothing lives
only in memory: a new active instance finds batches by status, resumes dispatching at each
batch's cursor, re-collects results still in the results stream, and re-writes batches it
finds sealed.

Loops of the active instance, each woken by work or every `poll_s`:

    validate    new batches: input file -> items (or failed, with line errors)
    dispatch    items -> model streams, at batch priority, bounded in-flight window per model
    collect     results stream -> Postgres (idempotent), then ack; the same for the results
                in background responses' event logs (collect-events)
    intake      async requests over NATS -> Postgres -> model streams
    finalize    finished / cancelled / expired batches -> output and error files -> end status
    webhooks    the outbox -> signed POSTs, with backoff; dead after the retry period
    housekeep   re-publish stranded async requests, delete expired results and stale uploads,
                refresh the gauges
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from natsio.connection import connect
from natsio.directory import ModelDirectory
from natsio.inbox import AckInbox
from natsio.pull import fetch, undelivered
from natsio.routes import RouteMetrics, RouteTable
from producer.direct_limits import open_direct_limits
from scheduler.async_intake import AsyncIntake
from scheduler.codec import Codec
from scheduler.collector import ResultCollector
from scheduler.config import SchedulerConfig
from scheduler.dispatch import BatchDispatcher
from scheduler.finalize import Finalizer
from scheduler.metrics import SchedulerMetrics
from scheduler.store import async_requests as ar
from scheduler.store import batches as bs
from scheduler.store import responses as stored_responses
from scheduler.store import webhooks as wh
from scheduler.store.files import delete_stale_uploads
from scheduler.store.installation import installation_id
from scheduler.store.migrate import migrate_dsn
from scheduler.store.pool import NOTIFY_CHANNEL, create_pool
from scheduler.streams import ConsumerClaimed, provision
from scheduler.validate import fail_unvalidated, validate
from scheduler.webhooks import DeliverySettings, RetryPolicy, WebhookDeliverer
from schemas import names

log = logging.getLogger(__name__)

#: The scheduler's advisory lock key ("jetsched"); the migrator uses another.
LOCK_KEY = 0x6A65747363686564
HOUSEKEEPING_S = 5.0
#: Results that could not be stored come back after this long (not after ack_wait).
RESULTS_RETRY_S = 1.0
#: A scheduler whose consumers feed another installation looks again this often.
CLAIMED_RETRY_S = 30.0


class LockLost(Exception):
    """The connection holding the scheduler lock failed: stop acting."""


class BatchScheduler:
    def __init__(
        self, config: SchedulerConfig, codec: Codec, metrics: SchedulerMetrics | None = None
    ) -> None:
        self.config = config
        self.codec = codec
        self.metrics = metrics or SchedulerMetrics()
        self.nc: NATS | None = None
        self.active = False
        self._wake: dict[str, asyncio.Event] = {}
        #: The live route table (served names -> versions), made once connected.
        self._routes: RouteTable | None = None

    def ready(self) -> bool:
        """Connected (active or standby): standbys are ready too, so rollouts do not stall."""
        return self.nc is not None and self.nc.is_connected

    async def run(self, stop: asyncio.Event) -> None:
        c = self.config
        await migrate_dsn(c.database_url)
        self.nc = await connect(c.nats_url, name="jetserve-scheduler")
        pool = await create_pool(c.database_url, min_size=2, max_size=8, reset=False)
        try:
            while not stop.is_set():
                lock = await self._take_lock(stop)
                if lock is None:
                    break
                try:
                    await self._act(pool, lock, stop)
                except LockLost:
                    log.error("lost the scheduler lock's connection: standing by")
                except ConsumerClaimed as exc:
                    log.error("not acting, standing by: %s", exc)
                    await _sleep(stop, max(c.lock_retry_s, CLAIMED_RETRY_S))
                except Exception:
                    log.exception("the active scheduler failed: standing by")
                    await _sleep(stop, c.lock_retry_s)
                finally:
                    self.active = False
                    self.metrics.active.set(0)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(lock.close(), 5)
        finally:
            await pool.close()
            if self._routes is not None:
                await self._routes.close()
            with contextlib.suppress(Exception):
                await self.nc.drain()

    async def _take_lock(self, stop: asyncio.Event) -> asyncpg.Connection | None:
        waiting_logged = False
        while not stop.is_set():
            try:
                conn = await asyncpg.connect(self.config.database_url)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("cannot reach Postgres for the scheduler lock: %s", exc)
                await _sleep(stop, self.config.lock_retry_s)
                continue
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
                log.info("holding the scheduler lock: active")
                return conn
            await conn.close()
            if not waiting_logged:
                log.info("another scheduler is active: standing by")
                waiting_logged = True
            await _sleep(stop, self.config.lock_retry_s)
        return None

    def wake(self, *loops: str) -> None:
        for name in loops or tuple(self._wake):
            event = self._wake.get(name)
            if event is not None:
                event.set()

    async def _act(self, pool: asyncpg.Pool, lock: asyncpg.Connection, stop: asyncio.Event) -> None:
        c = self.config
        assert self.nc is not None
        nc = self.nc
        js = nc.jetstream()
        owner = await installation_id(pool)
        await provision(
            js,
            duplicate_window_s=c.duplicate_window_s,
            owner=owner,
            events_keep_s=c.response_events_keep_s,
            ack_wait_s=c.ack_wait_s,
        )
        publisher = AckInbox(nc, names.SCHEDULER_INBOX)
        await publisher.start()
        directory = ModelDirectory(nc)
        if self._routes is None:
            self._routes = await RouteTable.watch(js, RouteMetrics(self.metrics.registry))
        routes = self._routes

        async def known_models(fresh: bool = False) -> list[str]:
            """Models with a stream, and the served names (a batch may name either)."""
            return [*await directory.models(fresh=fresh), *routes.routes()]

        dispatcher = BatchDispatcher(
            pool, publisher, self.metrics, in_flight=c.batch_in_flight, routes=routes
        )
        collector = ResultCollector(
            pool,
            self.metrics,
            async_keep_s=c.async_keep_s,
            on_batch_results=lambda: self.wake("dispatch", "finalize"),
        )
        limits = await open_direct_limits(js, c.limits, pool=pool)
        intake = AsyncIntake(pool, publisher, keep_s=c.async_keep_s, routes=routes, limits=limits)
        finalizer = Finalizer(pool, nc, self.codec, cancel_grace_s=c.cancel_grace_s, routes=routes)
        deliverer = WebhookDeliverer(
            pool,
            self.metrics,
            DeliverySettings(
                RetryPolicy(
                    c.webhook_retry_period_s, c.webhook_backoff_base_s, c.webhook_backoff_max_s
                ),
                timeout_s=c.webhook_timeout_s,
                allow_private=c.webhooks_allow_private,
            ),
            on_slot_free=lambda: self.wake("webhooks"),
        )
        self._wake = {n: asyncio.Event() for n in ("validate", "dispatch", "finalize", "webhooks")}
        await lock.add_listener(NOTIFY_CHANNEL, lambda *_: self.wake())
        results = await js.pull_subscribe_bind(
            durable=names.RESULTS_CONSUMER, stream=names.RESULTS_STREAM
        )
        submitted = await js.pull_subscribe_bind(
            durable=names.ASYNC_CONSUMER, stream=names.ASYNC_STREAM
        )
        events = await js.pull_subscribe_bind(
            durable=names.EVENTS_CONSUMER, stream=names.EVENTS_STREAM
        )

        async def validate_pass() -> bool:
            found = await bs.to_validate(pool)
            for batch in found:
                try:
                    started = await validate(pool, batch, self.codec, known_models)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    raise  # the database: the loop retries
                except Exception:
                    log.exception("batch %s could not be validated: failing it", batch.id)
                    await fail_unvalidated(pool, batch)
                    started = False
                if started:
                    self.wake("dispatch")
                else:
                    self.wake("finalize", "webhooks")
            return bool(found)

        async def dispatch_pass() -> bool:
            return await dispatcher.run_once() > 0

        async def finalize_pass() -> bool:
            ended = await finalizer.run_once()
            if ended:
                self.wake("webhooks")
            return False

        async def collect_pass(sub: JetStreamContext.PullSubscription = results) -> bool:
            msgs = await fetch(sub, 512, c.poll_s)
            if msgs:
                try:
                    await collector.store(msgs)
                except BaseException:
                    # Not stored (the database is down, or this instance is stopping): hand
                    # them back now, so they are not held until the consumer's ack_wait.
                    await _nak_all(msgs, RESULTS_RETRY_S)
                    raise
                for msg in msgs:
                    await msg.ack()
                self.wake("webhooks")
            return bool(msgs)

        async def intake_pass() -> bool:
            msgs = await fetch(submitted, 64, max(c.poll_s, 1.0))
            if msgs:
                await intake.take(msgs)
            return bool(msgs)

        async def webhooks_pass() -> bool:
            return await deliverer.run_once() > 0

        async def housekeeping_pass() -> bool:
            await intake.requeue(c.async_requeue_s)
            await ar.delete_expired(pool)
            await stored_responses.delete_expired(pool)
            await delete_stale_uploads(pool, 3600.0)
            for batch_id in await bs.ended_with_rows(pool):
                await bs.delete_ended_rows(pool, batch_id)
            await self._refresh_gauges(pool)
            await _sleep(stop, HOUSEKEEPING_S)
            return False

        self.active = True
        self.metrics.active.set(1)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._watch_lock(lock, stop))
                for name, work in (
                    ("validate", validate_pass),
                    ("dispatch", dispatch_pass),
                    ("finalize", finalize_pass),
                    ("webhooks", webhooks_pass),
                    ("collect", collect_pass),
                    ("collect-events", lambda: collect_pass(events)),
                    ("intake", intake_pass),
                    ("housekeep", housekeeping_pass),
                ):
                    group.create_task(self._loop(name, work, stop), name=f"scheduler-{name}")
        finally:
            await deliverer.close()
            if limits is not None:
                with contextlib.suppress(Exception):
                    await limits.close()
            # The last fetch's pull request outlives the fetch by up to its timeout: what the
            # server delivers meanwhile (or what a cancelled fetch left) waits in the
            # subscription. Hand it back now, or it is held until the consumer's ack_wait.
            await asyncio.sleep(max(c.poll_s, 1.0) + 0.1)
            for sub in (results, submitted, events):
                await _hand_back_undelivered(sub, RESULTS_RETRY_S)
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _loop(
        self, name: str, work: Callable[[], Awaitable[bool]], stop: asyncio.Event
    ) -> None:
        """Run `work` until stopped: again at once while it finds work, else when woken or
        after `poll_s`. An error is logged and retried after a pause."""
        timer = self.metrics.loop_duration.labels(name)
        event = self._wake.get(name)
        while not stop.is_set():
            started = time.perf_counter()
            try:
                busy = await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler loop %s failed; retrying", name)
                await _sleep(stop, max(1.0, self.config.poll_s))
                continue
            timer.observe(time.perf_counter() - started)
            if busy:
                await asyncio.sleep(0)
                continue
            if event is not None:
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that
                # arrives as the event is set, and the loop would outlive its task group.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.poll_s):
                        await event.wait()
                event.clear()

    async def _watch_lock(self, lock: asyncpg.Connection, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _sleep(stop, 1.0)
            try:
                await asyncio.wait_for(lock.fetchval("SELECT 1"), 5.0)
            except (Exception, TimeoutError) as exc:
                raise LockLost(str(exc)) from None

    async def _refresh_gauges(self, pool: asyncpg.Pool) -> None:
        m = self.metrics
        for status, n in (await bs.counts_by_status(pool)).items():
            m.batches.labels(status).set(n)
        for state, n in (await bs.counts_by_state(pool)).items():
            m.batch_items.labels(state).set(n)
        for status, n in (await ar.counts_by_status(pool)).items():
            m.async_requests.labels(status).set(n)
        for state, n in (await wh.counts_by_state(pool)).items():
            m.webhook_outbox.labels(state).set(n)


async def _hand_back_undelivered(sub: JetStreamContext.PullSubscription, delay_s: float) -> None:
    """Nak the messages waiting in a pull subscription that no fetch will take."""
    msgs = undelivered(sub)
    await _nak_all(msgs, delay_s)
    if msgs:
        log.info("handed back %d undelivered messages", len(msgs))


async def _nak_all(msgs: list[Msg], delay_s: float) -> None:
    for msg in msgs:
        with contextlib.suppress(Exception):
            await msg.nak(delay=delay_s)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()

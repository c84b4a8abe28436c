"""The worker process: one model, pulled from its stream, served by a backend.

Lifecycle: load the model -> connect -> provision stream/consumers -> pull and serve ->
on SIGTERM/SIGINT drain: stop pulling, let in-flight requests finish within
`drain_timeout_s`, hand back (nak) whatever is left, exit 0. If the engine dies: hand back
everything, exit 1 (the supervisor or Kubernetes restarts the process).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from natsio.connection import connect
from natsio.objects import ImageObjects
from producer.direct_limits import open_direct_limits
from schemas import names
from schemas.codec import decode_cancel, encode
from schemas.messages import WorkerInfo
from schemas.names import Encoding, Priority
from workers.backend import Backend, SdkBackend
from workers.cancels import CancelRegistry
from workers.config import ModelSpec, QueueSettings, WorkerConfig
from workers.handbacks import HandBacks
from workers.handler import Handler
from workers.intake import Intake, IntakeSettings
from workers.loading import Loading
from workers.metrics import WorkerMetrics
from workers.probes import ProbeServer, Readiness
from workers.provision import max_deliveries, provision_model
from workers.puller import PullConsumer
from workers.replies import DurablePublisher, ReplySink
from workers.runtimes import RUNTIMES
from workers.sdk import resolve_model_class
from workers.threads import in_own_thread

log = logging.getLogger(__name__)


class NatsPublisher:
    def __init__(self, nc: NATS, js: JetStreamContext) -> None:
        self._nc = nc
        self._js = js
        self._durable = DurablePublisher(nc)

    def sink(
        self, subject: str | None, encoding: Encoding, request_id: str, attempt: int
    ) -> ReplySink:
        return ReplySink(self._nc, subject, encoding, request_id, attempt, self._durable)

    async def dead_letter(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        await self._js.publish(subject, data, headers=headers)


def build_backend(spec: ModelSpec) -> Backend:
    """Instantiate and load the model (blocking: call from a thread)."""
    if spec.engine == "llm":
        from workers.engine.build import build_engine_adapter  # torch: only when needed

        return build_engine_adapter(spec)
    if spec.engine in RUNTIMES:
        # A ready-made runtime: the model file is `path`.
        options = {**spec.options, "path": spec.path}
        model = resolve_model_class(RUNTIMES[spec.engine])(spec.name, options)
    else:
        model = resolve_model_class(spec.model_class)(spec.name, spec.options)
    model.load()
    return SdkBackend(model, spec.capacity)


def queue_settings(config: WorkerConfig, spec: ModelSpec | None = None) -> QueueSettings:
    """The process's queue settings, with the model's own stream bound (models file)."""
    if spec is None:
        return config.queue
    return dataclasses.replace(config.queue, max_bytes=spec.max_stream_mib * 1024 * 1024)


def drain_timeout_s(spec: ModelSpec, config: WorkerConfig) -> float:
    """The model's own drain timeout (models file), else the process-wide setting."""
    return config.drain_timeout_s if spec.drain_timeout_s is None else spec.drain_timeout_s


class Worker:
    def __init__(
        self,
        spec: ModelSpec,
        config: WorkerConfig,
        backend: Backend,
        metrics: WorkerMetrics | None = None,
        on_serving: Callable[[], None] | None = None,
    ) -> None:
        """`on_serving()` runs once the model is loaded and the worker pulls requests."""
        self.spec = spec
        self._on_serving = on_serving
        self.config = config
        self.backend = backend
        self.metrics = metrics or WorkerMetrics()
        self.worker_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.cancels = CancelRegistry()
        self._stop = asyncio.Event()
        self._exit_code = 0
        self._draining = False
        self._nc: NATS | None = None
        self._intake: Intake | None = None

    def request_stop(self) -> None:
        self._stop.set()

    def readiness(self) -> Readiness:
        """Ready: model loaded (a Worker exists only after that), pulling, NATS connected."""
        if self._stop.is_set() or self._draining:
            return Readiness(False, "draining")
        if self._intake is None or self._nc is None:
            return Readiness(False, "starting")
        if not self._nc.is_connected:
            return Readiness(False, "NATS disconnected")
        return Readiness(True, "ready")

    def _engine_dead(self, exc: BaseException) -> None:
        self._exit_code = 1
        self._stop.set()

    async def run(self) -> int:
        model = self.spec.name
        nc = await connect(
            self.config.nats_url,
            name=f"jetserve-worker-{model}",
            reconnected_cb=self._reconnected,
            disconnected_cb=self._disconnected,
            error_cb=self._nats_error,
        )
        self._nc = nc
        js = nc.jetstream()
        await provision_model(js, model, queue_settings(self.config, self.spec))
        handbacks = HandBacks(await js.key_value(names.HANDBACK_BUCKET))
        attach_images = getattr(self.backend, "attach_images", None)
        if attach_images is not None and "image" in self.spec.inputs:
            attach_images(await ImageObjects.open(js))
        await self.backend.start()
        limits = await open_direct_limits(
            js, self.config.limits, database_url=self.config.database_url
        )
        handler = Handler(
            model=model,
            backend=self.backend,
            publisher=NatsPublisher(nc, js),
            cancels=self.cancels,
            metrics=self.metrics,
            max_attempts=self.config.queue.max_attempts,
            on_engine_dead=self._engine_dead,
            handbacks=handbacks,
            max_deliveries=max_deliveries(self.config.queue.max_attempts),
            inputs=self.spec.inputs,
            limits=limits,
        )
        stream = names.stream_name(model)

        def consumer(priority: Priority):  # type: ignore[no-untyped-def]
            return lambda on_msg, on_end: PullConsumer(
                nc, stream, names.consumer_name(priority), on_msg, on_end
            )

        intake = Intake(
            priority=consumer(Priority.PRIORITY),
            online=consumer(Priority.ONLINE),
            batch=consumer(Priority.BATCH),
            capacity=self.backend.capacity,
            handle=handler,
            settings=IntakeSettings(
                in_progress_every_s=max(0.2, self.config.queue.ack_wait_s / 3),
                online_reserve=self.config.online_reserve,
                priority_reserve=self.config.priority_reserve,
            ),
            handbacks=handbacks,
        )
        self._intake = intake
        await nc.subscribe(names.cancel_subscription(model), cb=self._on_cancel)
        await nc.subscribe(names.ping_subject(model), cb=self._on_ping)
        await intake.start()
        self.metrics.capacity.labels(model).set(self.backend.capacity())
        log.info(
            "worker %s serving %s (capacity %d)", self.worker_id, model, self.backend.capacity()
        )
        if self._on_serving is not None:
            self._on_serving()
        gauge = asyncio.create_task(self._gauge_loop(js))
        await self._stop.wait()
        gauge.cancel()
        await self._drain(intake)
        if limits is not None:
            with contextlib.suppress(Exception):
                await limits.close()
        await self.backend.stop()
        with contextlib.suppress(Exception):
            await nc.drain()
        return self._exit_code

    async def _drain(self, intake: Intake) -> None:
        self._draining = True
        # Leaving the delivery inbox ends our outstanding pull requests: the server drops pull
        # requests nobody listens to, so nothing more is delivered to this replica.
        await intake.close()
        await intake.unsubscribe()
        timeout = drain_timeout_s(self.spec, self.config) if self._exit_code == 0 else 0.0
        log.info("draining: %d in flight, up to %.1fs", intake.in_flight, timeout)
        if not await intake.wait_idle(timeout):
            # Cancelling a handler hands its message back (nak) for another replica.
            tasks = intake.tasks
            log.warning("drain timeout: handing back %d requests", len(tasks))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        # Kept alive until now: past `ack_wait` a request still running here would be
        # delivered to another worker too.
        await intake.finish()

    async def _gauge_loop(self, js: JetStreamContext) -> None:
        model = self.spec.name
        stream = names.stream_name(model)
        in_flight = self.metrics.in_flight.labels(model)
        queues = {
            consumer: (
                self.metrics.queue_pending.labels(model, consumer),
                self.metrics.queue_ack_pending.labels(model, consumer),
            )
            for consumer in (names.consumer_name(p) for p in Priority)
        }
        next_poll = 0.0
        loop = asyncio.get_running_loop()
        engine_gauges = (
            self.metrics.num_running.labels(model),
            self.metrics.num_waiting.labels(model),
            self.metrics.kv_cache_usage.labels(model),
            self.metrics.kv_blocks_used.labels(model),
            self.metrics.kv_blocks_total.labels(model),
        )
        cache_counters = (
            self.metrics.prefix_cache_queries.labels(model),
            self.metrics.prefix_cache_hits.labels(model),
        )
        counted = [0, 0]
        while True:
            if self._intake is not None:
                in_flight.set(self._intake.in_flight)
            stats = self.backend.stats()
            if stats is not None:
                values = (
                    stats.running,
                    stats.waiting,
                    stats.kv_cache_usage,
                    stats.kv_blocks_used,
                    stats.kv_blocks_total,
                )
                for gauge, value in zip(engine_gauges, values, strict=True):
                    gauge.set(value)
                totals = (stats.prefix_cache_queries_tokens, stats.prefix_cache_hits_tokens)
                for i, (counter, total) in enumerate(zip(cache_counters, totals, strict=True)):
                    if total > counted[i]:
                        counter.inc(total - counted[i])
                        counted[i] = total
            if loop.time() >= next_poll:
                next_poll = loop.time() + self.config.queue_poll_s
                for consumer, (pending, ack_pending) in queues.items():
                    try:
                        info = await js.consumer_info(stream, consumer, timeout=2.0)
                    except Exception as exc:  # disconnected, or the server is busy: next time
                        log.debug("consumer info %s/%s: %s", stream, consumer, exc)
                        continue
                    pending.set(info.num_pending or 0)
                    ack_pending.set(info.num_ack_pending or 0)
            await asyncio.sleep(1.0)

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            cancel = decode_cancel(msg.data)
        except Exception:
            return
        if self.cancels.cancel(cancel.id):
            log.info("cancelled running request %s", cancel.id)

    async def _on_ping(self, msg: Msg) -> None:
        if not msg.reply:
            return
        info = WorkerInfo(
            worker_id=self.worker_id,
            model=self.spec.name,
            capacity=self.backend.capacity(),
            in_flight=self._intake.in_flight if self._intake else 0,
            kinds=sorted(self.backend.kinds),
            draining=self._draining,
            state="draining" if self._draining else "serving",
            metadata=self.backend.metadata(),
            inputs=list(self.spec.inputs),
        )
        await msg.respond(encode(info))

    async def _reconnected(self) -> None:
        log.warning("reconnected to NATS")
        if self._intake is not None:
            self._intake.on_reconnect()

    async def _disconnected(self) -> None:
        log.warning("disconnected from NATS")

    async def _nats_error(self, exc: Exception) -> None:
        log.warning("NATS error: %s", exc)


async def serve(
    spec: ModelSpec, config: WorkerConfig, on_serving: Callable[[], None] | None = None
) -> int:
    """Load the model, then serve until told to stop. The probe endpoint is up from the start,
    so Kubernetes sees a live-but-unready pod while a large model loads."""
    imports_s = process_age_s()  # interpreter start and imports, up to here
    metrics = WorkerMetrics()
    stop = asyncio.Event()
    workers: list[Worker] = []  # the one Worker, once the model is loaded

    def request_stop() -> None:
        stop.set()
        for w in workers:
            w.request_stop()

    def readiness() -> Readiness:
        if workers:
            return workers[0].readiness()
        return Readiness(False, "draining" if stop.is_set() else "loading model")

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    servers: list[ProbeServer] = []
    if config.metrics_port >= 0:
        probes = ProbeServer(metrics.registry, readiness)
        await probes.start("0.0.0.0", config.metrics_port)
        servers.append(probes)
        log.info("metrics and probes on :%d", probes.port)
    if config.drain_port >= 0:
        # /drain only on the pod's loopback: another pod cannot drain this worker.
        local = ProbeServer(metrics.registry, readiness, on_drain=request_stop)
        await local.start("127.0.0.1", config.drain_port)
        servers.append(local)
        log.info("drain endpoint on 127.0.0.1:%d", local.port)
    try:
        # Streams and consumers exist, and pings are answered (`loading`), while it loads.
        async with Loading(spec, config, queue_settings(config, spec)) as loading:
            started = time.monotonic()
            backend = await in_own_thread(build_backend, spec)
            load_s = time.monotonic() - started
            if stop.is_set():  # stopped while loading: nothing pulled, nothing to drain
                return 0

            def serving() -> None:
                loading.close_soon()  # the worker answers the pings from now on
                log.info(
                    "startup: %.2f s to serving (imports %.2f s, load %.2f s)",
                    process_age_s(),
                    imports_s,
                    load_s,
                )
                if on_serving is not None:
                    on_serving()

            worker = Worker(spec, config, backend, metrics, serving)
            workers.append(worker)
            return await worker.run()
    finally:
        for server in servers:
            await server.close()


def process_age_s() -> float:
    """Seconds since this process started (Linux /proc; 0.0 elsewhere)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime_s - start_ticks / os.sysconf("SC_CLK_TCK"))


def main(
    spec: ModelSpec, env: Mapping[str, str], on_serving: Callable[[], None] | None = None
) -> int:
    import uvloop  # a faster event loop for the per-message path, as in the bridge

    config = WorkerConfig.from_env(env)
    return uvloop.run(serve(spec, config, on_serving))

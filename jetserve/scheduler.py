"""`jetserve scheduler`: the batch scheduler process. Composes the scheduler service with the
bridge's OpenAI conversion and the probe endpoint (`/metrics`, `/healthz`, `/readyz`)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Mapping

from scheduler.config import SchedulerConfig

log = logging.getLogger("jetserve.scheduler")


async def serve(config: SchedulerConfig) -> int:
    from jetserve.openai_codec import OpenAICodec
    from scheduler.service import BatchScheduler
    from workers.probes import ProbeServer, Readiness

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    scheduler = BatchScheduler(config, OpenAICodec())

    def readiness() -> Readiness:
        if stop.is_set():
            return Readiness(False, "stopping")
        if not scheduler.ready():
            return Readiness(False, "not connected to NATS")
        return Readiness(True, "active" if scheduler.active else "standby")

    probes: ProbeServer | None = None
    if config.metrics_port >= 0:
        probes = ProbeServer(scheduler.metrics.registry, readiness)
        await probes.start("0.0.0.0", config.metrics_port)
        log.info("metrics and probes on :%d", probes.port)
    try:
        await scheduler.run(stop)
    finally:
        if probes is not None:
            await probes.close()
    return 0


def main(env: Mapping[str, str]) -> int:
    import uvloop

    config = SchedulerConfig.from_env(env)
    # One line per webhook POST is noise; deliveries are counted in the metrics and the outbox.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return uvloop.run(serve(config))

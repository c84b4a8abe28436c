"""A worker while its model loads: the model's streams and consumers exist, and the worker
answers presence pings with state `loading`.

So a request published for a model that is coming up waits in its queue (it is not refused
for want of a stream), and the HTTP bridge's no-worker rule (503 when no worker answers for
`JETSERVE_NO_WORKER_TIMEOUT_S`) does not refuse it either. The connection is closed once the
serving worker answers the pings itself (`close_soon`), not before: a ping in between would
find nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from types import TracebackType

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from natsio.connection import connect
from schemas import names
from schemas.codec import encode
from schemas.messages import WorkerInfo
from workers.config import ModelSpec, QueueSettings, WorkerConfig
from workers.provision import provision_model

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0


class Loading:
    """`async with Loading(spec, config, settings):` around the model's load."""

    def __init__(self, spec: ModelSpec, config: WorkerConfig, settings: QueueSettings) -> None:
        self._spec = spec
        self._config = config
        self._settings = settings
        self._nc: NATS | None = None
        self._closing: asyncio.Task[None] | None = None
        self._info = encode(
            WorkerInfo(
                worker_id=f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}",
                model=spec.name,
                capacity=0,
                in_flight=0,
                kinds=[],
                state="loading",
                inputs=list(spec.inputs),
            )
        )

    async def __aenter__(self) -> Loading:
        try:
            # Bounded: with NATS away the model loads all the same (the serving worker
            # connects again, and waits for it there).
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                nc = await connect(
                    self._config.nats_url, name=f"jetserve-loading-{self._spec.name}"
                )
        except Exception as exc:
            log.warning("cannot reach NATS while loading: %s", exc)
            return self
        self._nc = nc
        try:
            await provision_model(nc.jetstream(), self._spec.name, self._settings)
            await nc.subscribe(names.ping_subject(self._spec.name), cb=self._on_ping)
        except Exception as exc:
            log.warning("provisioning before the load failed: %s", exc)
        return self

    async def _on_ping(self, msg: Msg) -> None:
        if msg.reply:
            await msg.respond(self._info)

    def close_soon(self) -> None:
        """Stop answering, once the serving worker answers the pings itself: until then both
        answer, so a ping in the hand-over never finds nobody (a bridge would take that for a
        model with no worker and refuse its waiting requests)."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close())

    async def _close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close_soon()
        assert self._closing is not None
        await self._closing

"""The live route table (schemas/routes.py), kept in the NATS KV bucket `ROUTES_BUCKET`.

`RouteTable.watch(js)` loads every route and keeps watching the bucket: a change made by any
process (`jetserve routes set`, `promote`, `rollback`, provisioning) reaches every bridge
replica, the batch scheduler and each Python client as soon as JetStream delivers it (a push;
milliseconds on a local server). Resolving is a dict lookup and, for a served name, one hash;
nothing is asked of NATS per request, so a change of weights fails no request in flight.

Writes (`RouteStore`) check the route against the models that have a request stream and the
other routes first (`check_route`), and go through the bucket's history for `rollback`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    BucketNotFoundError,
    KeyDeletedError,
    KeyNotFoundError,
    NotFoundError,
)
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from natsio.directory import list_models
from natsio.kv import history, keys
from schemas import names
from schemas.messages import InferenceRequest
from schemas.names import Priority
from schemas.routes import (
    InvalidRoute,
    Plan,
    Route,
    Shadow,
    Target,
    check_route,
    decode_route,
    encode_route,
)

log = logging.getLogger(__name__)


async def open_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """The routes bucket, made if missing (by whichever process comes first)."""
    try:
        return await js.key_value(names.ROUTES_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        pass
    config = KeyValueConfig(
        bucket=names.ROUTES_BUCKET,
        description="jetserve: served names -> weighted model versions",
        history=names.ROUTES_HISTORY,
        storage=StorageType.FILE,
        replicas=replicas,
    )
    try:
        return await js.create_key_value(config)
    except Exception:  # made concurrently by another process
        return await js.key_value(names.ROUTES_BUCKET)


class RouteMetrics:
    """Routing counters (per served name and the version that served), defined once; each
    process that resolves registers them in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.registry = r
        #: (served name, version) -> [requests routed there]: plain counts exported when
        #: scraped (`_RoutedCollector`): a Prometheus counter's lock costs a third of the whole
        #: choice of a version, on every request for a served name.
        self.routed: dict[tuple[str, str], list[int]] = {}
        r.register(_RoutedCollector(self.routed))
        self.shadowed = Counter(
            "jetserve_shadow_requests",
            "Requests mirrored to a shadow model (results discarded), by outcome of the publish",
            ["served_name", "model", "outcome"],
            registry=r,
        )


class _RoutedCollector(Collector):
    def __init__(self, counts: dict[tuple[str, str], list[int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "jetserve_routed_requests",
            "Requests for a served name, by the version chosen",
            labels=["served_name", "model"],
        )
        for (served, model), count in list(self._counts.items()):
            family.add_metric([served, model], count[0])
        yield family


class RouteTable:
    """Every route, as plans ready for choosing; kept current by a watch on the bucket."""

    def __init__(self, metrics: RouteMetrics | None = None) -> None:
        #: served name -> its plan
        self._plans: dict[str, Plan] = {}
        #: served name -> the bucket revision applied last (a watch entry may come after a
        #: direct read of a later one)
        self._revisions: dict[str, int] = {}
        self.metrics = metrics or RouteMetrics()
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def watch(cls, js: JetStreamContext, metrics: RouteMetrics | None = None) -> RouteTable:
        """Load the table (every current route), then follow changes in the background."""
        table = cls(metrics)
        kv = await open_bucket(js)
        table._watcher = watcher = await kv.watchall()
        while (entry := await watcher.updates(timeout=10.0)) is not None:  # type: ignore[no-untyped-call]
            table._apply(entry)
        # The watch's "that was all" marker can come before the entries (nats-py asks for the
        # consumer's pending count while they are on the wire): read the routes directly too.
        for name in await keys(js, names.ROUTES_BUCKET):
            with contextlib.suppress(KeyNotFoundError, KeyDeletedError):
                table._apply(await kv.get(name))
        table._task = asyncio.get_running_loop().create_task(table._follow(watcher))
        return table

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()  # type: ignore[no-untyped-call]

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is not None:
                self._apply(entry)

    def _apply(self, entry: KeyValue.Entry) -> None:
        revision = entry.revision or 0
        if revision <= self._revisions.get(entry.key, 0):
            return
        self._revisions[entry.key] = revision
        if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
            self._plans.pop(entry.key, None)
        else:
            try:
                route = decode_route(entry.value)
                self._plans[route.name] = Plan(route)
            except (msgspec.DecodeError, InvalidRoute) as exc:
                log.error("route %r ignored (revision %s): %s", entry.key, entry.revision, exc)

    def routes(self) -> dict[str, Route]:
        return {name: plan.route for name, plan in self._plans.items()}

    def plan(self, name: str) -> Plan | None:
        return self._plans.get(name)

    def versions(self, name: str) -> list[str]:
        """The models a request for `name` may have gone to: a served name's targets (weight
        0 too: it may have had traffic before), else `name` itself."""
        plan = self._plans.get(name)
        return [name] if plan is None else [t.model for t in plan.route.targets]

    def resolve(
        self, request: InferenceRequest, sticky: str | None = None
    ) -> tuple[InferenceRequest, str | None]:
        """`request` for its version if its model is a served name (else unchanged), and the
        shadow model when this request is mirrored. The key: `sticky`, else the tenant's
        idempotency key, else the request id (so a retry lands on the same version)."""
        plan = self._plans.get(request.model)
        if plan is None:
            return request, None
        if sticky:
            key = sticky
        elif request.idempotency_key:
            key = f"{request.tenant}:{request.idempotency_key}"
        else:
            key = request.id
        model = plan.choose(key)
        count = self.metrics.routed.get((request.model, model))
        if count is None:
            count = self.metrics.routed[request.model, model] = [0]
        count[0] += 1
        return msgspec.structs.replace(request, model=model), plan.shadow(key)


def shadow_request(request: InferenceRequest, model: str) -> InferenceRequest:
    """The mirror of a routed request: its own id (derived, so a retried request is mirrored
    once), `model`, the batch queue, no stream, no idempotency key, no metadata (no webhook)."""
    return msgspec.structs.replace(
        request,
        id=f"shadow-{request.id}"[:128],
        model=model,
        priority=Priority.BATCH,
        stream=False,
        idempotency_key=None,
        metadata={},
    )


class RouteStore:
    """Reads and checked writes of the routes bucket (the CLI, provisioning)."""

    def __init__(self, nc: NATS, kv: KeyValue) -> None:
        self._nc = nc
        self._kv = kv

    @classmethod
    async def open(cls, nc: NATS, replicas: int = 1) -> RouteStore:
        return cls(nc, await open_bucket(nc.jetstream(), replicas))

    async def all(self) -> dict[str, Route]:
        found = {}
        for key in await keys(self._nc.jetstream(), names.ROUTES_BUCKET):
            route = await self.get(key)
            if route is not None:
                found[key] = route
        return found

    async def get(self, name: str) -> Route | None:
        try:
            entry = await self._kv.get(name)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        return decode_route(entry.value) if entry.value else None

    async def put(self, route: Route, others: dict[str, Route] | None = None) -> int:
        """Check, then store; returns the revision. `others`: the routes to check against
        (default: the bucket's)."""
        models = await list_models(self._nc)
        table = await self.all() if others is None else others
        table.pop(route.name, None)
        check_route(route, models, table)
        return await self._kv.put(route.name, encode_route(route))

    async def set(self, name: str, targets: list[Target], shadow: Shadow | None = None) -> Route:
        route = Route(name, targets, shadow)
        await self.put(route)
        return route

    async def promote(self, name: str, model: str) -> Route:
        """All of `name`'s traffic to `model` (one of its targets); the others stay listed at
        weight 0, so their queues drain and their workers scale to zero. A shadow of `model`
        itself ends."""
        current = await self._current(name)
        if model not in [t.model for t in current.targets]:
            raise InvalidRoute(f"model: {model!r} is not a target of {name!r}")
        targets = [Target(t.model, 100 if t.model == model else 0) for t in current.targets]
        shadow = None if current.shadow and current.shadow.model == model else current.shadow
        route = Route(name, targets, shadow)
        await self.put(route)
        return route

    async def rollback(self, name: str) -> Route:
        """Back to the route before its last change (the bucket's history); requests already
        queued for a version stay there and are served by it."""
        stored = await history(self._nc.jetstream(), names.ROUTES_BUCKET, name)
        if not stored:
            raise InvalidRoute(f"name: no route {name!r}")
        values = [value for value in stored if value]
        if len(values) < 2:
            raise InvalidRoute(f"name: {name!r} has no earlier version to roll back to")
        route = decode_route(values[-2])
        await self.put(route)
        return route

    async def delete(self, name: str) -> None:
        await self._current(name)
        await self._kv.delete(name)

    async def _current(self, name: str) -> Route:
        route = await self.get(name)
        if route is None:
            raise InvalidRoute(f"name: no route {name!r}")
        return route


async def provision_routes(nc: NATS, routes: list[Route], replicas: int = 1) -> list[Route]:
    """Store the models file's routes that differ from the bucket's (each checked); returns
    those stored. Routes set only with the CLI are left as they are."""
    store = await RouteStore.open(nc, replicas)
    current = await store.all()
    table = {**current, **{r.name: r for r in routes}}
    changed = []
    for route in routes:
        if current.get(route.name) != route:
            await store.put(route, dict(table))
            changed.append(route)
    return changed

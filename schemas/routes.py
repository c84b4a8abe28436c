"""Routes: a served name (the `model` a client sends) -> weighted concrete models (versions).

    chat -> smollm2 90, smollm2-ft 10, shadow smollm2-next 5%

The table lives in the NATS KV bucket `names.ROUTES_BUCKET`, one key per served name, its
value a `Route` (JSON). Every producer (the HTTP bridge, the batch scheduler, the Python
client) watches it (`natsio/routes.py`) and resolves a served name before it publishes: the
request goes to the chosen version's stream with `model` = that version, so workers, queues and
KEDA see only concrete models.

A version is chosen by a hash of the request's routing key (`routing_key`), mapped to a point
in [0, 1) and looked up in the cumulative weights: the same key gets the same version while
the weights stay the same, and a change of weights moves only the keys whose point changes
side (90/10 -> 80/20 moves one key in ten). The shadow decision hashes the same key with
another salt, so whether a request is mirrored does not depend on which version serves it.

This module is pure: the checks take the models and routes that exist as arguments.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Collection, Mapping
from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.names import MODEL_NAME_PATTERN, InvalidName, validate_model_name

ModelName = Annotated[str, Meta(pattern=MODEL_NAME_PATTERN)]
#: One target's share; the shares of a route are relative (90/10 is 9/1).
Weight = Annotated[int, Meta(ge=0, le=1_000_000)]

_2_64 = float(1 << 64)


class InvalidRoute(ValueError):
    """A route that cannot be stored; the message names the problem and the field."""


class Target(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: ModelName
    weight: Weight


class Shadow(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Mirror `percent` of the route's requests to `model` at batch priority; the mirrored
    result is discarded."""

    model: ModelName
    percent: Annotated[float, Meta(gt=0, le=100)]


class Route(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="route.v1", tag_field="type"
):
    #: The served name clients send as `model`.
    name: ModelName
    targets: list[Target]
    shadow: Shadow | None = None


_decoder = msgspec.json.Decoder(Route)
_encoder = msgspec.json.Encoder()


def decode_route(data: bytes) -> Route:
    return _decoder.decode(data)


def encode_route(route: Route) -> bytes:
    return _encoder.encode(route)


def parse_targets(specs: Collection[str]) -> list[Target]:
    """`["smollm2=90", "smollm2-ft=10"]` -> targets; raises `InvalidRoute` naming the bad one."""
    targets = []
    for spec in specs:
        model, sep, raw = spec.partition("=")
        try:
            weight = int(raw) if sep else -1
        except ValueError:
            weight = -1
        if weight < 0:
            raise InvalidRoute(f"target {spec!r}: write MODEL=WEIGHT, WEIGHT a whole number >= 0")
        targets.append(Target(model, weight))
    return targets


def check_route(route: Route, models: Collection[str], routes: Mapping[str, Route]) -> Route:
    """Return `route` if it may be stored beside `routes` (the other served names), given
    the `models` that have a request stream; else raise `InvalidRoute` naming the problem."""
    try:
        validate_model_name(route.name)
    except InvalidName as exc:
        raise InvalidRoute(f"name: {exc}") from None
    if route.name in models:
        raise InvalidRoute(
            f"name: {route.name!r} is a model's name; a served name must differ from every "
            "model name (versions stay callable by their own names)"
        )
    if not route.targets:
        raise InvalidRoute(f"targets: route {route.name!r} has no targets")
    seen: set[str] = set()
    table = {**routes, route.name: route}
    for target in route.targets:
        if target.model in seen:
            raise InvalidRoute(f"targets: {target.model!r} is listed twice")
        seen.add(target.model)
        cycle = _cycle(route.name, target.model, table)
        if cycle:
            raise InvalidRoute(f"targets: a cycle of routes: {' -> '.join(cycle)}")
        if target.model in table:
            raise InvalidRoute(
                f"targets: {target.model!r} is a served name; routes point at models"
            )
        if target.model not in models:
            raise InvalidRoute(f"targets: model {target.model!r} has no request stream")
    if sum(t.weight for t in route.targets) <= 0:
        raise InvalidRoute(f"targets: the weights of {route.name!r} must sum to more than 0")
    if route.shadow is not None and route.shadow.model not in models:
        raise InvalidRoute(f"shadow: model {route.shadow.model!r} has no request stream")
    return route


def _cycle(start: str, first: str, table: Mapping[str, Route]) -> list[str]:
    """The path start -> first -> ... back to start, if following routes loops; else []."""
    path, frontier = [start, first], first
    visited = {start}
    while frontier in table and frontier not in visited:
        visited.add(frontier)
        targets = table[frontier].targets
        nxt = next((t.model for t in targets if t.model in table or t.model == start), None)
        if nxt is None:
            return []
        path.append(nxt)
        frontier = nxt
    return path if frontier == start else []


def point(key: str, salt: bytes = b"") -> float:
    """`key` hashed to [0, 1): blake2b, 64 bits (uniform; not for secrets)."""
    if salt:
        digest = hashlib.blake2b(key.encode(), digest_size=8, salt=salt).digest()
    else:
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _2_64


class Plan:
    """A route made ready for choosing: cumulative fractions of its weights."""

    __slots__ = ("bounds", "models", "route", "shadow_fraction")

    route: Route
    #: The targets with weight > 0, and the upper end of each one's slice of [0, 1).
    models: list[str]
    bounds: list[float]
    shadow_fraction: float

    def __init__(self, route: Route) -> None:
        self.route = route
        live = [t for t in route.targets if t.weight > 0]
        total = sum(t.weight for t in live)
        if total <= 0:
            raise InvalidRoute(f"targets: the weights of {route.name!r} must sum to more than 0")
        self.models = [t.model for t in live]
        self.bounds = []
        running = 0
        for t in live:
            running += t.weight
            self.bounds.append(running / total)
        self.bounds[-1] = 1.0
        self.shadow_fraction = route.shadow.percent / 100 if route.shadow else 0.0

    def choose(self, key: str) -> str:
        if len(self.models) == 1:
            return self.models[0]
        # The first slice whose upper end is above the key's point, in [0, 1): bounds[-1]
        # is 1.0, so there is one.
        return self.models[bisect.bisect_right(self.bounds, point(key))]

    def shadow(self, key: str) -> str | None:
        """The shadow model if this key's request is mirrored."""
        if self.route.shadow is None or point(key, b"shadow") >= self.shadow_fraction:
            return None
        return self.route.shadow.model


def routing_key(*candidates: str | None) -> str:
    """The first non-empty candidate: callers list them in order, the sticky keys first
    (prompt_cache_key, safety_identifier, user, the routing header, the conversation), then
    the idempotency key, then the request id (always present)."""
    for value in candidates:
        if value:
            return value
    raise ValueError("no routing key")


class StickyFields(msgspec.Struct, frozen=True):
    """The sticky keys an OpenAI body may carry, in the order they are used."""

    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    user: str | None = None


_sticky = msgspec.json.Decoder(StickyFields)


def sticky_of_body(body: bytes) -> str | None:
    """The sticky key of a JSON request body (a body that does not decode has none: it is
    refused elsewhere, with its own error)."""
    try:
        fields = _sticky.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return fields.prompt_cache_key or fields.safety_identifier or fields.user

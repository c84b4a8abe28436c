"""Who is calling: bearer keys -> a tenant.

The bridge depends only on the `Authenticator` protocol; the composition root
(`jetserve/bridge.py`) injects the Postgres-backed one, so `producer` never imports the
store. `CachedAuthenticator` keeps verified (and refused) keys in memory for `ttl_s`, so the
database is not asked on every request: a revoked key stops working within `ttl_s`. Refused
keys are kept apart from verified ones, each set bounded: a flood of unknown keys is answered
from memory when repeated and can never push a tenant's verified key out.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from schemas.openai_errors import ApiError


@dataclass(frozen=True)
class Principal:
    tenant: str
    #: The key's id (safe to log), None when auth is off.
    key_id: str | None = None


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> Principal | None:
        """The principal a bearer token belongs to, or None when it is unknown or revoked.
        Called with the token as sent (without `Bearer `)."""
        ...


class OpenAuth:
    """Auth switched off: every request runs as one tenant."""

    def __init__(self, tenant: str = "default") -> None:
        self._principal = Principal(tenant)

    async def authenticate(self, token: str) -> Principal | None:
        return self._principal


Lookup = Callable[[str], Awaitable[Principal | None]]


class CachedAuthenticator:
    """Remembers lookups for `ttl_s`, keyed by the token's SHA-256 (no plaintext kept): at
    most `max_entries` verified keys and, apart, at most `max_entries` refused ones (least
    recently used dropped first within each)."""

    def __init__(
        self,
        lookup: Lookup,
        ttl_s: float,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._known: OrderedDict[bytes, tuple[float, Principal | None]] = OrderedDict()
        self._refused: OrderedDict[bytes, tuple[float, Principal | None]] = OrderedDict()

    async def authenticate(self, token: str) -> Principal | None:
        digest = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        for cache in (self._known, self._refused):
            hit = cache.get(digest)
            if hit is not None and hit[0] > now:
                cache.move_to_end(digest)
                return hit[1]
        principal = await self._lookup(token)
        cache = self._refused if principal is None else self._known
        (self._known if principal is None else self._refused).pop(digest, None)
        cache[digest] = (now + self._ttl_s, principal)
        cache.move_to_end(digest)
        while len(cache) > self._max:
            cache.popitem(last=False)
        return principal


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def require_principal(auth: Authenticator, authorization: str | None) -> Principal:
    """The caller of a request with this `Authorization` header, or a 401 `ApiError`."""
    secret = bearer_token(authorization)
    principal = await auth.authenticate(secret or "")
    if principal is None:
        message = (
            "Missing API key: send `Authorization: Bearer <key>`."
            if secret is None
            else "Invalid API key."
        )
        raise ApiError(401, message, code="invalid_api_key")
    return principal

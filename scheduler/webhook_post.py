"""One webhook POST, made so that no receiver can hurt the process that sends it.

- The connection goes to the addresses the URL guard checked, not to a second resolution of
  the host name (no DNS-rebinding window); TLS still verifies the certificate for the URL's
  host name, which is also the SNI and `Host` header.
- One overall deadline covers the whole attempt (connect, send, the status line and headers):
  a receiver that trickles a byte at a time cannot hold it past `timeout_s`.
- Only the status line and headers are read (h11 bounds them at 16 KiB); the body is never
  read, so neither its size nor its encoding (a gzip bomb) matters, and nothing is
  decompressed. The connection is closed after each attempt.

httpcore (httpx's own transport) is used directly: httpx's client reads and decodes bodies
and resolves the host itself.
"""

from __future__ import annotations

import asyncio
import ssl
import typing

import httpcore

#: httpcore's own per-operation timeouts; the overall deadline is what bounds an attempt.
_HEADERS_TIMEOUT_NAMES = ("connect", "read", "write", "pool")


class PostTimeout(Exception):
    """The attempt did not get a status within its deadline."""


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects to the given addresses (in order) whatever host the request names."""

    def __init__(self, addresses: list[str]) -> None:
        self._addresses = addresses
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        error: Exception = httpcore.ConnectError("no address to connect to")
        for address in self._addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are never sent over a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


async def post_status(
    url: str,
    addresses: list[str],
    headers: dict[str, str],
    body: bytes,
    *,
    timeout_s: float,
    ssl_context: ssl.SSLContext,
) -> int:
    """POST `body` to `url` over a connection to one of `addresses`; the response's status.
    Raises PostTimeout past `timeout_s` in all, or an httpcore error."""
    sent = {**headers, "accept-encoding": "identity", "connection": "close"}
    backend = PinnedBackend(addresses)
    async with httpcore.AsyncConnectionPool(
        ssl_context=ssl_context, max_connections=1, network_backend=backend
    ) as pool:
        try:
            async with asyncio.timeout(timeout_s):
                async with pool.stream(
                    "POST",
                    url,
                    headers=list(sent.items()),
                    content=body,
                    extensions={"timeout": dict.fromkeys(_HEADERS_TIMEOUT_NAMES, timeout_s)},
                ) as response:
                    # Leaving the block closes the connection without reading the body.
                    return int(response.status)
        except TimeoutError:
            raise PostTimeout(f"no response within {timeout_s:g} s") from None

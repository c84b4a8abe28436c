"""The bridge's image fetcher (`producer/http/images.Fetch`), made of the webhook sender's
guard: the URL is normalised and its host resolved once, every address checked (private ones
refused unless allowed), and the connection made to those very addresses (no DNS-rebinding
window). One deadline bounds the whole fetch; the body is read up to the byte limit and no
further; redirects are not followed (a redirect could lead inside the network); the body is
not decompressed (`accept-encoding: identity`). Composed here because `producer` must not
import `scheduler`."""

from __future__ import annotations

import asyncio
import ssl

import httpcore
import httpx

from producer.http.images import Fetch, Fetched, FetchError
from scheduler.urlguard import UrlRefused, resolve
from scheduler.webhook_post import PinnedBackend

_TIMEOUT_NAMES = ("connect", "read", "write", "pool")


def image_fetcher(*, allow_private: bool, timeout_s: float) -> Fetch:
    ssl_context = httpx.create_ssl_context()

    async def fetch(url: str, max_bytes: int) -> Fetched:
        try:
            async with asyncio.timeout(timeout_s):
                try:
                    _host, _port, addresses = await resolve(url, allow_private=allow_private)
                except UrlRefused as exc:
                    raise FetchError(str(exc)) from None
                return await _get(url, addresses, max_bytes, timeout_s, ssl_context)
        except TimeoutError:
            raise FetchError(f"no complete answer within {timeout_s:g} s") from None
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.TimeoutException) as exc:
            raise FetchError(f"the request failed ({type(exc).__name__})") from None

    return fetch


async def _get(
    url: str, addresses: list[str], max_bytes: int, timeout_s: float, ssl_context: ssl.SSLContext
) -> Fetched:
    headers = [("accept", "image/*"), ("accept-encoding", "identity"), ("connection", "close")]
    pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context,
        max_connections=1,
        network_backend=PinnedBackend(addresses),
    )
    timeouts = dict.fromkeys(_TIMEOUT_NAMES, timeout_s)
    async with (
        pool,
        pool.stream("GET", url, headers=headers, extensions={"timeout": timeouts}) as response,
    ):
        if response.status != 200:
            raise FetchError(f"the server answered {response.status}")
        found = dict((k.lower(), v) for k, v in response.headers)
        kind = found.get(b"content-type", b"").split(b";")[0].strip().lower()
        body = bytearray()
        async for chunk in response.aiter_stream():
            body += chunk
            if len(body) > max_bytes:
                raise FetchError(f"the image is larger than {max_bytes // (1024 * 1024)} MB")
        return Fetched(bytes(body), kind.decode("latin-1"))

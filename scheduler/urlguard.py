"""Webhook target URLs: http(s) only, and never an address inside the network (loopback,
private, link-local, shared, reserved, multicast) unless the setting allows it (local use).

Every address the host name resolves to is checked, at registration and again before each
delivery (a name may be re-pointed after it was registered).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit


class UrlRefused(ValueError):
    """The URL cannot be a webhook target; the message says why."""


def parse(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL; raises UrlRefused for anything else."""
    if len(url) > 2048:
        raise UrlRefused("the URL is longer than 2048 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UrlRefused("the URL must start with http:// or https://")
    if not parts.hostname:
        raise UrlRefused("the URL has no host")
    if parts.username or parts.password:
        raise UrlRefused("the URL must not carry credentials")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def is_internal(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


async def check_url(url: str, *, allow_private: bool) -> None:
    """Raise UrlRefused unless `url` may receive webhooks."""
    host, port = parse(url)
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UrlRefused(f"the host {host!r} does not resolve: {exc}") from None
    addresses = {str(info[4][0]) for info in infos}
    if not addresses:
        raise UrlRefused(f"the host {host!r} does not resolve")
    internal = sorted(a for a in addresses if is_internal(a))
    if internal:
        raise UrlRefused(
            f"the host {host!r} resolves to an internal address ({internal[0]}); set "
            "JETSERVE_WEBHOOKS_ALLOW_PRIVATE=true to allow this (local use only)"
        )

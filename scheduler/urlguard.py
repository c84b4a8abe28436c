"""Webhook target URLs: http(s) only, and never an address inside the network (loopback,
private, link-local, shared, reserved, multicast, or an IPv6 form that embeds one of those
IPv4 addresses) unless the setting allows it (local use).

A URL is normalised once, at registration, to what the HTTP client will connect to
(`normalise`): what is stored, checked and delivered to are the same string. Before each
delivery the host is resolved once (`resolve`), every address checked, and the connection is
made to one of those very addresses (`scheduler/webhooks.py`), so a name re-pointed between
the check and the connection (DNS rebinding) reaches nothing it was not checked for.

Refusal messages are generic: they never name the address a host resolved to (that would
make the API a DNS oracle for the inside of the network).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpx

MAX_URL_CHARS = 2048

#: IPv6 prefixes whose low 32 bits are an IPv4 address the packet is translated to.
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
#: The deprecated IPv4-compatible form `::a.b.c.d`.
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class UrlRefused(ValueError):
    """The URL cannot be a webhook target; the message says why."""


def normalise(url: str) -> str:
    """The URL as the HTTP client will send it (scheme and host lower-cased, the host
    IDNA-encoded, the path percent-encoded); raises UrlRefused for anything that is not a
    plain http(s) URL. Whitespace and control characters are refused, not dropped: Python's
    `urlsplit` silently removes tabs and newlines that the HTTP client refuses."""
    if len(url) > MAX_URL_CHARS:
        raise UrlRefused(f"the URL is longer than {MAX_URL_CHARS} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise UrlRefused("the URL must not contain whitespace or control characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise UrlRefused(f"not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise UrlRefused("the URL must start with http:// or https://")
    if not parsed.host:
        raise UrlRefused("the URL has no host")
    if parsed.userinfo:
        raise UrlRefused("the URL must not carry credentials")
    text = str(parsed)
    if len(text) > MAX_URL_CHARS:
        raise UrlRefused(f"the URL is longer than {MAX_URL_CHARS} characters")
    return text


def registered_form(url: str) -> str:
    """A callback URL as webhook endpoints are stored (normalised), to look one up; a URL
    that cannot be normalised comes back as it is (and matches no endpoint)."""
    try:
        return normalise(url)
    except UrlRefused:
        return url


def parse(url: str) -> tuple[str, int]:
    """(host, port) that a POST to `url` connects to; raises UrlRefused for a URL that is
    not a plain http(s) URL."""
    parsed = httpx.URL(normalise(url))
    host = parsed.raw_host.decode("ascii")
    return host, parsed.port or (443 if parsed.scheme == "https" else 80)


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and is routed to, if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if any(ip in net for net in _NAT64) or (ip in _V4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_internal(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_v4(ip)
        if embedded is not None and is_internal(str(embedded)):
            return True
        if ip in _NAT64[1]:  # local-use NAT64: a translator inside the network
            return True
    return not ip.is_global or ip.is_multicast


async def resolve(url: str, *, allow_private: bool) -> tuple[str, int, list[str]]:
    """(host, port, addresses): every address the host resolves to, each checked; raises
    UrlRefused unless `url` may receive webhooks. Connect only to these addresses."""
    host, port = parse(url)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise UrlRefused("the host does not resolve") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise UrlRefused("the host does not resolve")
    if not allow_private and any(is_internal(a) for a in addresses):
        raise UrlRefused(
            "the host resolves to an internal address; set "
            "JETSERVE_WEBHOOKS_ALLOW_PRIVATE=true to allow this (local use only)"
        )
    return host, port, addresses


async def check_url(url: str, *, allow_private: bool) -> None:
    """Raise UrlRefused unless `url` may receive webhooks (with `allow_private`, any
    well-formed URL: the host need not resolve yet)."""
    if allow_private:
        parse(url)
        return
    await resolve(url, allow_private=False)

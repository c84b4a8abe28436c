"""Many JSON POSTs to one HTTP/1.1 server over a few keep-alive connections, for tests that
send thousands of requests through a bridge: an HTTP client library's own work per request
(several milliseconds of CPU in httpx) would be most of such a test's time on two cores.
Only what the bridge answers is understood: a status line, headers, a `Content-Length` body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit


async def post_many(
    url: str,
    bodies: Sequence[Any],
    headers: Sequence[Mapping[str, str]] | None = None,
    connections: int = 16,
) -> list[tuple[int, Any]]:
    """POST each JSON body to `url` (with the headers at the same index): (status, decoded
    JSON body) per request, in order."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    answers: list[tuple[int, Any]] = [(0, None)] * len(bodies)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while not queue.empty():
                i = queue.get_nowait()
                data = json.dumps(bodies[i]).encode()
                extra = "".join(f"{k}: {v}\r\n" for k, v in (headers[i] if headers else {}).items())
                head = (
                    f"POST {parts.path} HTTP/1.1\r\nHost: {host}\r\n"
                    f"Content-Type: application/json\r\n{extra}Content-Length: {len(data)}\r\n\r\n"
                )
                writer.write(head.encode() + data)
                answers[i] = await _response(reader)
        finally:
            writer.close()
            await writer.wait_closed()

    await asyncio.gather(*(connection() for _ in range(min(connections, len(bodies)))))
    return answers


async def _response(reader: asyncio.StreamReader) -> tuple[int, Any]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    content = await reader.readexactly(int(fields["content-length"]))
    return status, json.loads(content) if content else None

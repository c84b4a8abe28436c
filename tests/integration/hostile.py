"""Hostile HTTP receivers on 127.0.0.1, each a raw TCP server in a thread: what a tenant's own
webhook endpoint may do to the process that delivers to it."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Callable


class RawReceiver:
    """Accepts connections on (host, port); for each, reads the request head (and a body of
    the given content-length), counts it, then calls `answer(conn)` in its own thread."""

    def __init__(self, answer: Callable[[socket.socket], None], host: str = "127.0.0.1") -> None:
        self.answer = answer
        self.requests = 0
        self.closed = threading.Event()
        self.sock = socket.create_server((host, 0))
        self.sock.settimeout(0.2)
        self.host = host
        self.port = int(self.sock.getsockname()[1])
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook", host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    piece = conn.recv(65536)
                    if not piece:
                        return
                    data += piece
                head, _, body = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(body) < length:
                    piece = conn.recv(65536)
                    if not piece:
                        return
                    body += piece
                self.requests += 1
                self.answer(conn)
            except OSError:
                return

    def close(self) -> None:
        self.closed.set()
        self.sock.close()


def trickle(interval_s: float, for_s: float) -> Callable[[socket.socket], None]:
    """Answers a status line and headers one byte every `interval_s`, for up to `for_s`."""

    def answer(conn: socket.socket) -> None:
        end = time.monotonic() + for_s
        head = b"HTTP/1.1 200 OK\r\n" + b"x-padding: " + b"a" * 4000 + b"\r\n\r\n"
        for byte in head:
            if time.monotonic() > end:
                return
            conn.sendall(bytes([byte]))
            time.sleep(interval_s)

    return answer


def gzip_bomb(expanded_bytes: int) -> Callable[[socket.socket], None]:
    """A 200 whose gzip body expands to `expanded_bytes` of zeros."""
    body = gzip.compress(b"\0" * expanded_bytes, compresslevel=9)

    def answer(conn: socket.socket) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
        )
        conn.sendall(body)

    return answer


def status(code: int) -> Callable[[socket.socket], None]:
    def answer(conn: socket.socket) -> None:
        conn.sendall(f"HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n".encode())

    return answer

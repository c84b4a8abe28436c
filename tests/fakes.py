"""Test doubles that record what the code under test did to them."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.messages import ErrorResult, FinalResult, InferenceRequest, TokenLogprobs
from schemas.names import Encoding
from workers.backend import ChunkSink, Completion


@dataclass
class FakeMeta:
    num_delivered: int = 1
    num_pending: int = 0
    timestamp: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


class FakeMsg:
    """A JetStream message that records ack / nak / term / in_progress calls."""

    def __init__(
        self,
        data: bytes,
        headers: Mapping[str, str] | None = None,
        subject: str = "jetserve.req.m.online",
        delivered: int = 1,
    ) -> None:
        self.data = data
        self._headers = dict(headers or {})
        self.subject = subject
        self._meta = FakeMeta(num_delivered=delivered)
        self.calls: list[tuple[str, Any]] = []

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    @property
    def metadata(self) -> FakeMeta:
        return self._meta

    @property
    def actions(self) -> list[str]:
        return [name for name, _ in self.calls]

    async def ack(self) -> None:
        self.calls.append(("ack", None))

    async def nak(self, delay: float | None = None) -> None:
        self.calls.append(("nak", delay))

    async def term(self) -> None:
        self.calls.append(("term", None))

    async def in_progress(self) -> None:
        self.calls.append(("in_progress", None))


class FakeSink:
    def __init__(self, subject: str | None, request_id: str) -> None:
        self.subject = subject
        self.request_id = request_id
        self.chunks: list[str] = []
        self.results: list[FinalResult | ErrorResult] = []

    async def chunk(
        self,
        delta: str,
        token_ids: list[int] | None = None,
        logprobs: list[TokenLogprobs] | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> None:
        self.chunks.append(delta)

    async def final(self, result: FinalResult | ErrorResult) -> None:
        self.results.append(result)


class FakePublisher:
    def __init__(self) -> None:
        self.sinks: list[FakeSink] = []
        self.dead: list[tuple[str, bytes, dict[str, str]]] = []

    def sink(
        self, subject: str | None, encoding: Encoding, request_id: str, attempt: int
    ) -> FakeSink:
        s = FakeSink(subject, request_id)
        self.sinks.append(s)
        return s

    async def dead_letter(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        self.dead.append((subject, data, headers))

    @property
    def results(self) -> list[FinalResult | ErrorResult]:
        return [r for s in self.sinks for r in s.results]


class FakeBackend:
    """Runs `behaviour(request, emit)`; default: echo the payload."""

    def __init__(
        self,
        behaviour: Callable[..., Any] | None = None,
        kinds: frozenset[str] = frozenset({"predict", "chat"}),
    ) -> None:
        self.kinds = kinds
        self.behaviour = behaviour
        self.started: list[str] = []

    def capacity(self) -> int:
        return 4

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def metadata(self) -> None:
        return None

    def stats(self) -> None:
        return None

    async def run(self, request: InferenceRequest, emit: ChunkSink) -> Completion:
        self.started.append(request.id)
        if self.behaviour is not None:
            result = self.behaviour(request, emit)
            if asyncio.iscoroutine(result):
                result = await result
            if isinstance(result, Completion):
                return result
        return Completion(request.payload, "stop", _usage())


def _usage() -> Any:
    from schemas.messages import Usage

    return Usage(1, 1, 2)

"""Background responses as the official SDK uses them, against the real stack: streamed
(`background` + `stream`) and resumed after a dropped connection from their event log,
`in_progress` while a worker streams, cancelled with the output sent so far, and OpenAI's
`response.*` webhooks, Standard Webhooks signed."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import nats
import pytest
from standardwebhooks.webhooks import Webhook

from schemas import names
from schemas.messages import FinalResult
from schemas.names import Encoding
from workers.config import QueueSettings
from workers.provision import provision_model
from workers.replies import DurablePublisher, ReplySink

from .batches.conftest import ECHO, LLM, BatchStack, Receiver
from .batches.test_webhooks import register, unregister, wait_for

pytestmark = pytest.mark.integration

STORY = "tell me a long story about the sea"


def _deltas(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def test_background_stream_resumes_after_a_dropped_connection(batch_stack: BatchStack) -> None:
    """Greedy: the text joined from the first connection and the resumed one is that of an
    uninterrupted (foreground) run, and the numbers go on without a gap or a repeat."""
    client: Any = batch_stack.sdk()
    params: dict[str, Any] = {"model": LLM, "input": STORY, "temperature": 0}
    plain = client.responses.create(**params, max_output_tokens=40)
    assert plain.status == "incomplete"
    first: list[Any] = []
    stream = client.responses.create(**params, max_output_tokens=40, background=True, stream=True)
    for event in stream:
        first.append(event)
        if sum(e.type == "response.output_text.delta" for e in first) == 3:
            break
    stream.close()  # the connection drops
    assert [e.type for e in first[:3]] == [
        "response.created",
        "response.queued",
        "response.in_progress",
    ]
    assert first[0].response.status == "queued"
    assert first[0].response.background is True
    response_id = first[0].response.id
    last = first[-1].sequence_number
    rest = list(client.responses.retrieve(response_id, stream=True, starting_after=last))
    numbers = [e.sequence_number for e in first + rest]
    assert numbers == list(range(len(numbers)))
    assert rest[-1].type == "response.incomplete"
    assert _deltas(first + rest) == plain.output_text == rest[-1].response.output_text
    # Replayed again from the start (any bridge, any time within the log's keeping time):
    # the same events.
    again = list(client.responses.retrieve(response_id, stream=True))
    assert [e.to_dict() for e in again] == [e.to_dict() for e in first + rest]
    with pytest.raises(Exception, match="starting_after"):
        client.responses.retrieve(response_id, stream=True, starting_after=-5).close()


def test_sdk_stream_helper_resumes_a_background_response(batch_stack: BatchStack) -> None:
    client: Any = batch_stack.sdk()
    created = client.responses.create(model=ECHO, input="resume me", background=True)
    with client.responses.stream(response_id=created.id, starting_after=2) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert events[0].sequence_number == 3
    assert final.status == "completed"
    assert final.output_text == "resume me" == _deltas(events)
    # A foreground response has no event log: it cannot be streamed again.
    plain = client.responses.create(model=ECHO, input="not again")
    with pytest.raises(Exception, match="background"):
        client.responses.retrieve(plain.id, stream=True).close()


def _provisioned(nats_url: str, model: str) -> None:
    async def run() -> None:
        nc = await nats.connect(nats_url)
        try:
            await provision_model(nc.jetstream(), model, QueueSettings())
        finally:
            await nc.close()

    asyncio.run(run())


class _Worker:
    """Sends replies as a worker does (its own reply publisher), on a thread of its own."""

    def __init__(self, nats_url: str, request_id: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.nc, self.sink = self._run(self._connect(nats_url, request_id))

    @staticmethod
    async def _connect(nats_url: str, request_id: str) -> tuple[Any, ReplySink]:
        nc = await nats.connect(nats_url)
        subject = names.response_events_subject(request_id)
        return nc, ReplySink(nc, subject, Encoding.JSON, request_id, 1, DurablePublisher(nc))

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def chunk(self, text: str) -> None:
        self._run(self.sink.chunk(text))

    def final(self, result: FinalResult) -> None:
        self._run(self.sink.final(result))

    def close(self) -> None:
        self._run(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def test_in_progress_cancel_keeps_partial_output_and_webhooks(batch_stack: BatchStack) -> None:
    model = f"r-bg-{uuid.uuid4().hex[:6]}"
    _provisioned(batch_stack.nats_url, model)  # no worker: the request waits in its stream
    receiver = Receiver()
    events = ["response.completed", "response.cancelled"]
    endpoint = register(batch_stack, receiver.url, tenant="beta", events=events)
    client: Any = batch_stack.sdk("beta")
    try:
        created = client.responses.create(model=model, input="go", background=True)
        assert client.responses.retrieve(created.id).status == "queued"
        request_id = created.id.removeprefix("resp_")
        worker = _Worker(batch_stack.nats_url, request_id)
        try:
            worker.chunk("partial ")
            worker.chunk("output")
            assert client.responses.retrieve(created.id).status == "in_progress"
            seen: list[Any] = []

            def watch() -> None:
                for event in client.responses.retrieve(created.id, stream=True):
                    seen.append(event)

            watcher = threading.Thread(target=watch)
            watcher.start()
            wait_for(lambda: _deltas(seen) == "partial output")
            cancelled = client.responses.cancel(created.id)
            assert cancelled.status == "cancelled"
            assert cancelled.output_text == "partial output"
            watcher.join(20)
            assert not watcher.is_alive()
            assert seen[-1].type == "response.incomplete"
            assert seen[-1].response.status == "cancelled"
            assert seen[-1].response.output_text == "partial output"
            # The worker stops late: what it sends after the cancel is no part of it.
            worker.chunk(" late")
            worker.final(FinalResult(request_id, model, {"text": "partial output late"}, "stop"))
        finally:
            worker.close()
        again = client.responses.retrieve(created.id)
        assert (again.status, again.output_text) == ("cancelled", "partial output")
        replayed = list(client.responses.retrieve(created.id, stream=True))
        assert [e.to_dict() for e in replayed] == [e.to_dict() for e in seen]

        done = client.responses.create(model=ECHO, input="hooked", background=True)
        wait_for(lambda: len(receiver.posts) >= 2, timeout_s=30)
        got = {}
        for headers, payload, _ in receiver.posts:
            event = Webhook(endpoint["secret"]).verify(payload, headers)
            got[event["type"]] = event["data"]["id"]
        assert got == {"response.cancelled": created.id, "response.completed": done.id}
        assert client.responses.retrieve(done.id).status == "completed"
    finally:
        unregister(batch_stack, endpoint["id"], tenant="beta")
        receiver.close()

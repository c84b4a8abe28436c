"""A background response's events, made from its event log (no server): numbered alike by
every replay, resumable after any `sequence_number`, a restarted attempt never sending a
number twice with other content, and the SDK's own accumulator satisfied throughout."""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec
from openai import omit
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from producer.http import responses_convert as rc
from producer.http import responses_types as rt
from producer.http.responses_replay import Replay, frames_after, queued_view
from schemas.errors import ErrorCode
from schemas.messages import ErrorResult, FinalResult, Reply, StreamChunk, Usage

RID = "abc"


def _queued() -> rt.Response:
    body = rt.ResponsesRequest(model="m", input="hi", background=True)
    base = rc.base_response(body, rc.ID_PREFIX + RID, 1, stored=True)
    return queued_view(base)


def _chunk(seq: int, delta: str, attempt: int = 1) -> StreamChunk:
    return StreamChunk(id=RID, seq=seq, delta=delta, attempt=attempt)


def _final(text: str, reason: str = "stop") -> FinalResult:
    return FinalResult(RID, "m", {"text": text}, reason, Usage(1, 2, 3))  # type: ignore[arg-type]


def _replay(log: list[Reply], final: rt.Response, after: int = -1) -> list[dict[str, Any]]:
    replay = Replay(_queued())
    frames = frames_after(replay.start(), replay.writer.seq, after)
    for reply in log:
        frames += frames_after(replay.add(reply), replay.writer.seq, after)
    frames += frames_after(replay.finish(final), replay.writer.seq, after)
    return [_event(f) for f in frames]


def _event(frame: bytes) -> dict[str, Any]:
    kind, data = frame.decode().strip().split("\n")
    event = json.loads(data.removeprefix("data: "))
    assert kind == f"event: {event['type']}"
    return dict(event)


def _accumulate(events: list[dict[str, Any]]) -> Any:
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    for event in events:
        state.handle_event(construct_type(type_=ResponseStreamEvent, value=event))  # type: ignore[arg-type]
    return state


def _deltas(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


def test_lifecycle_and_numbering() -> None:
    result = _final("Hello world")
    final = rc.finished_response(_queued(), result, int(time.time()))
    log: list[Reply] = [_chunk(0, "Hello"), _chunk(1, " world"), result]
    events = _replay(log, final)
    kinds = [e["type"] for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.queued",
        "response.in_progress",
        "response.output_item.added",
    ]
    assert kinds[-1] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "queued"
    assert events[2]["response"]["status"] == "in_progress"
    assert _deltas(events) == "Hello world"
    state = _accumulate(events)
    assert state._completed_response.output_text == "Hello world"
    # Resumed after any number: exactly the rest, with the same numbers and contents.
    for after in range(len(events)):
        assert _replay(log, final, after) == events[after + 1 :]


def test_a_restarted_attempt_that_repeats_sends_only_what_is_new() -> None:
    """Greedy: the second attempt repeats the first's output; the joined deltas are those of
    an uninterrupted run, and no number is sent twice."""
    result = _final("Hello world, again")
    final = rc.finished_response(_queued(), result, int(time.time()))
    log: list[Reply] = [
        _chunk(0, "Hel"),
        _chunk(1, "lo w"),  # the worker died here
        _chunk(0, "Hello", attempt=2),
        _chunk(1, " world", attempt=2),
        _chunk(2, ", again", attempt=2),
        result,
    ]
    events = _replay(log, final)
    assert _deltas(events) == "Hello world, again"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert _accumulate(events)._completed_response.output_text == "Hello world, again"


def test_a_restarted_attempt_that_differs_sends_no_more_deltas() -> None:
    """Sampling: the second attempt writes something else. What was sent stays; no delta is
    withdrawn; the done event and the final response carry the finished attempt's text."""
    result = _final("Goodbye")
    final = rc.finished_response(_queued(), result, int(time.time()))
    log: list[Reply] = [_chunk(0, "Hel"), _chunk(0, "Good", attempt=2), _chunk(1, "bye", 2)]
    events = _replay([*log, result], final)
    assert _deltas(events) == "Hel"
    (done,) = [e for e in events if e["type"] == "response.output_text.done"]
    assert done["text"] == "Goodbye"
    assert _accumulate(events)._completed_response.output_text == "Goodbye"


def test_cancelled_while_running_keeps_what_was_sent() -> None:
    cancelled = ErrorResult(RID, ErrorCode.CANCELLED, "cancelled")
    log: list[Reply] = [_chunk(0, "partial "), _chunk(1, "output"), cancelled, _chunk(2, "late")]
    replay = Replay(_queued())
    for reply in log:
        replay.add(reply)
    assert replay.terminal == cancelled  # nothing after the log's result counts
    output = replay.partial_output()
    final = msgspec.structs.replace(_queued(), status="cancelled", output=output)
    events = _replay(log, final)
    assert _deltas(events) == "partial output"
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["status"] == "cancelled"
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "partial output"
    _accumulate(events)  # every item added is done


def test_cancelled_while_queued_and_a_result_without_chunks() -> None:
    cancelled = ErrorResult(RID, ErrorCode.CANCELLED, "cancelled")
    final = msgspec.structs.replace(_queued(), status="cancelled")
    events = _replay([cancelled], final)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.queued",
        "response.incomplete",
    ]
    # A result with no chunk before it (or a log past its keeping time): the text is sent.
    result = _final("all at once")
    done = rc.finished_response(_queued(), result, int(time.time()))
    events = _replay([result], done)
    assert _deltas(events) == "all at once"
    assert "response.in_progress" in [e["type"] for e in events]
    assert _accumulate(events)._completed_response.output_text == "all at once"
    assert _replay([], done) == events  # the log expired: the same events

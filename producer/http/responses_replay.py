"""A background response's event stream, made from its event log. Pure: no I/O.

The log (`jetserve.revents.<request id>`) holds, in order, what came back for the request:
the worker's chunks (each attempt numbering its own from 0) and one result (the worker's, or
a bridge's `cancelled`). The events are a function of that log and of the response's stored
end: `response.created` and `response.queued` (the queued response), `response.in_progress`
before the first output, the output events, then the terminal event with the stored
response. So every bridge, and every resumption (`starting_after`), numbers the same events
alike, and a client never sees one `sequence_number` with two contents.

A second attempt (the first one's worker died) produces its output again from the start.
While it repeats what was sent, nothing is sent again; once it goes further, the rest is
sent: with greedy decoding the joined deltas are those of an uninterrupted run. If it
differs from what was sent (sampling), no more deltas are sent for that message (a delta
is never withdrawn): its `response.output_text.done` and the final response carry the text
of the attempt that finished. Tool calls sent by an earlier attempt are not sent again.
"""

from __future__ import annotations

from typing import Any

import msgspec

from producer.http import responses_convert as rc
from producer.http import responses_types as rt
from producer.http.responses_stream import EventWriter
from schemas.messages import ErrorResult, FinalResult, Reply, StreamChunk

LIVE = ("queued", "in_progress")


def queued_view(response: rt.Response) -> rt.Response:
    """The response as it was when queued (what `response.created` carries), from any later
    state of it."""
    return msgspec.structs.replace(
        response,
        status="queued",
        output=[],
        usage=None,
        error=None,
        incomplete_details=None,
        completed_at=None,
    )


class Replay:
    def __init__(self, stored: rt.Response) -> None:
        self.queued = queued_view(stored)
        self.writer = EventWriter(self.queued)
        #: The log's result, once read (nothing after it is part of the response).
        self.terminal: FinalResult | ErrorResult | None = None
        self._started = False
        self._attempt = 0
        self._attempt_text = ""  # the current attempt's text so far
        self._sent = ""  # the text sent as deltas
        self._diverged = False
        self._attempt_calls = 0
        self._calls: list[dict[str, Any]] = []  # the tool calls sent

    def start(self) -> list[bytes]:
        return [
            self.writer.lifecycle("response.created", self.queued),
            self.writer.lifecycle("response.queued", self.queued),
        ]

    def add(self, reply: Reply) -> list[bytes]:
        """The events of the log's next message (none once its result was read)."""
        if self.terminal is not None:
            return []
        if not isinstance(reply, StreamChunk):
            self.terminal = reply
            return []
        out = self._in_progress()
        if reply.attempt != self._attempt:
            self._attempt = reply.attempt
            self._attempt_text = ""
            self._attempt_calls = 0
        if reply.delta:
            out += self._text(reply.delta)
        for call in reply.tool_calls or ():
            self._attempt_calls += 1
            if self._attempt_calls > len(self._calls):
                self._calls.append(call)
                out += self.writer.calls([call])
        return out

    def _in_progress(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        running = msgspec.structs.replace(self.queued, status="in_progress")
        return [self.writer.lifecycle("response.in_progress", running)]

    def _text(self, delta: str) -> list[bytes]:
        start = len(self._attempt_text)
        self._attempt_text += delta
        if self._diverged:
            return []
        sent = len(self._sent)
        overlap = self._sent[start:sent]  # what this delta must repeat
        if not delta.startswith(overlap) and not overlap.startswith(delta):
            self._diverged = True
            return []
        new = delta[len(overlap) :]
        if not new:
            return []
        self._sent += new
        return self.writer.text(new)

    def partial_output(self) -> list[rt.OutputItem]:
        """What was sent, as output items (a response cancelled while it ran keeps them)."""
        base_id = self.queued.id
        items: list[rt.OutputItem] = []
        if self._sent:
            text = rt.OutputText(self._sent)
            items.append(rt.OutputMessage(rc.message_id(base_id), "incomplete", [text]))
        items.extend(rc.function_call(base_id, i, c) for i, c in enumerate(self._calls))
        return items

    def finish(self, final: rt.Response) -> list[bytes]:
        """The end, with the stored response: output it has that was never sent as events
        (a result without chunks, or a log past its keeping time) first, then the open
        items done and the terminal event."""
        out: list[bytes] = []
        texts = [p.text for o in final.output if isinstance(o, rt.OutputMessage) for p in o.content]
        calls = [o for o in final.output if isinstance(o, rt.FunctionCall)]
        text = "".join(texts)
        if final.output and not self._started:
            out += self._in_progress()
        if text and not self._sent and not self._diverged:
            self._sent = text
            out += self.writer.text(text)
        if calls and not self._calls:
            out += self.writer.calls(
                [
                    {"id": c.call_id, "function": {"name": c.name, "arguments": c.arguments}}
                    for c in calls
                ]
            )
        return out + self.writer.finish(final)


def frames_after(frames: list[bytes], next_seq: int, starting_after: int) -> list[bytes]:
    """The frames whose `sequence_number` is above `starting_after` (`next_seq`: the number
    after the last frame's)."""
    first = next_seq - len(frames)
    return frames[max(0, starting_after + 1 - first) :]

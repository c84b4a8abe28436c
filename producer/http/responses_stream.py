"""The Responses API's stream: the event sequence, each event numbered (`sequence_number`).

    response.created, response.in_progress,
    for text:  response.output_item.added (message), response.content_part.added,
               response.output_text.delta ..., response.output_text.done,
               response.content_part.done, response.output_item.done
    per call:  response.output_item.added (function_call),
               response.function_call_arguments.delta, ...arguments.done,
               response.output_item.done
    then       response.completed | response.incomplete | response.failed

The item ids match those of the final response object (the SDK's accumulator checks this,
and raises when an item added is never done). Pure: events out, no I/O.
"""

from __future__ import annotations

from typing import Any

import msgspec

from producer.http import responses_convert as rc
from producer.http import responses_types as rt

_encoder = msgspec.json.Encoder()


class EventWriter:
    def __init__(self, base: rt.Response) -> None:
        self.base = base
        self.seq = 0
        self._index = 0  # the next output_index
        self._calls = 0
        self._message_index: int | None = None
        self._text: list[str] = []

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + _encoder.encode(data) + b"\n\n"

    def _part_event(self, kind: str, item_id: str, index: int, **fields: Any) -> bytes:
        """An event of the message's one text part (per message, not per delta: the delta's
        event is written out in `text`, the per-token path)."""
        return self._event(kind, item_id=item_id, output_index=index, content_index=0, **fields)

    def start(self) -> list[bytes]:
        return [
            self._event("response.created", response=self.base),
            self._event("response.in_progress", response=self.base),
        ]

    def lifecycle(self, kind: str, response: rt.Response) -> bytes:
        """`response.created` / `.queued` / `.in_progress` with that response object."""
        return self._event(kind, response=response)

    def text(self, delta: str) -> list[bytes]:
        out = []
        item_id = rc.message_id(self.base.id)
        if self._message_index is None:
            self._message_index = self._index
            self._index += 1
            item = rt.OutputMessage(item_id, "in_progress", [])
            out.append(
                self._event(
                    "response.output_item.added", output_index=self._message_index, item=item
                )
            )
            out.append(
                self._part_event(
                    "response.content_part.added",
                    item_id,
                    self._message_index,
                    part=rt.OutputText(""),
                )
            )
        self._text.append(delta)
        out.append(
            self._event(
                "response.output_text.delta",
                item_id=item_id,
                output_index=self._message_index,
                content_index=0,
                delta=delta,
                logprobs=[],
            )
        )
        return out

    def _close_message(self, status: str, text: str | None = None) -> list[bytes]:
        """`text`: the message's final text, when it is not the text streamed (a restarted
        attempt's output differed from what was sent before it)."""
        index = self._message_index
        if index is None:
            return []
        item_id = rc.message_id(self.base.id)
        if text is None:
            text = "".join(self._text)
        part = rt.OutputText(text)
        return [
            self._part_event("response.output_text.done", item_id, index, text=text, logprobs=[]),
            self._part_event("response.content_part.done", item_id, index, part=part),
            self._event(
                "response.output_item.done",
                output_index=index,
                item=rt.OutputMessage(item_id, status, [part]),
            ),
        ]

    def calls(self, calls: list[dict[str, Any]]) -> list[bytes]:
        out = self._close_message("completed")
        self._message_index = None
        for call in calls:
            done = rc.function_call(self.base.id, self._calls, call)
            self._calls += 1
            index = self._index
            self._index += 1
            added = msgspec.structs.replace(done, arguments="", status="in_progress")
            ids = {"item_id": done.id, "output_index": index}
            arguments = done.arguments
            out += [
                self._event("response.output_item.added", output_index=index, item=added),
                self._event("response.function_call_arguments.delta", **ids, delta=arguments),
                self._event(
                    "response.function_call_arguments.done",
                    **ids,
                    arguments=arguments,
                    name=done.name,
                ),
                self._event("response.output_item.done", output_index=index, item=done),
            ]
        return out

    def finish(self, final: rt.Response) -> list[bytes]:
        """The end: open items done, then the terminal event with the whole response."""
        item_status = "incomplete" if final.status in ("incomplete", "cancelled") else "completed"
        texts = [p.text for o in final.output if isinstance(o, rt.OutputMessage) for p in o.content]
        out = self._close_message(item_status, "".join(texts) if texts else None)
        self._message_index = None
        kind = {
            "completed": "response.completed",
            "incomplete": "response.incomplete",
            "cancelled": "response.incomplete",
        }.get(final.status, "response.failed")
        out.append(self._event(kind, response=final))
        return out

    @property
    def streamed_text(self) -> str:
        return "".join(self._text)

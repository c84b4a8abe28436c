"""`POST /v1/files`: a multipart/form-data body parsed while it streams in.

The ASGI body arrives in pieces; each piece goes through `python-multipart`'s incremental
parser, and the `file` part's bytes go straight to a `FileWriter` (Postgres, ~1 MiB chunks).
Nothing holds the file whole; the size, line count and line length limits apply while it
arrives. The only other field is `purpose` (kept in memory, at most 1 KiB); any other field,
a field sent twice, or more than `MAX_FORM_BYTES` of part headers and field values in all is
refused as soon as it is seen, so a body of many small fields cannot fill the memory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

from scheduler.store.files import FileTooLarge, FileWriter, LineTooLong, TooManyLines
from schemas.openai_errors import ApiError, invalid

MAX_FIELD_BYTES = 1024
#: Part headers and field values (all but the file's content) of one upload, in all.
MAX_FORM_BYTES = 16 * 1024
#: The form fields of an upload: the file, and the text fields besides it.
FILE_FIELD = "file"
TEXT_FIELDS = ("purpose",)
Receive = Callable[[], Awaitable[Any]]


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    writer: FileWriter | None = None
    filename: str | None = None


def boundary_of(content_type: str | None) -> bytes:
    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise invalid("Send the file as multipart/form-data (fields `file` and `purpose`).", None)
    return bytes(boundary)


class _Events:
    """Collects the parser's callbacks (sync) to be acted on (async) after each write."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []
        self._name = b""
        self._value = b""
        #: Bytes of part headers and field values so far (bounded by MAX_FORM_BYTES).
        self.form_bytes = 0

    def count(self, n: int) -> None:
        self.form_bytes += n
        if self.form_bytes > MAX_FORM_BYTES:
            raise invalid(
                f"The form (besides the file) is longer than {MAX_FORM_BYTES} bytes.", None
            )

    def callbacks(self) -> dict[str, Any]:
        def header_field(data: bytes, start: int, end: int) -> None:
            self.count(end - start)
            self._name += data[start:end]

        def header_value(data: bytes, start: int, end: int) -> None:
            self.count(end - start)
            self._value += data[start:end]

        def header_end() -> None:
            self.items.append(("header", self._name.lower() + b":" + self._value))
            self._name = self._value = b""

        def part_data(data: bytes, start: int, end: int) -> None:
            self.items.append(("data", bytes(data[start:end])))

        return {
            "on_part_begin": lambda: self.items.append(("begin", b"")),
            "on_header_field": header_field,
            "on_header_value": header_value,
            "on_header_end": header_end,
            "on_headers_finished": lambda: self.items.append(("body", b"")),
            "on_part_data": part_data,
            "on_part_end": lambda: self.items.append(("end", b"")),
        }


async def receive_upload(
    receive: Receive,
    content_type: str | None,
    open_file: Callable[[str], Awaitable[FileWriter]],
    check_field: Callable[[str, str], None],
) -> Upload:
    """Parse the body; the `file` part is written to `open_file(filename)`'s writer. On any
    failure the writer (if opened) is aborted and the error raised. `check_field(name, value)`
    may refuse a field as soon as it is complete."""
    events = _Events()
    parser = MultipartParser(boundary_of(content_type), events.callbacks())
    upload = Upload()
    part: dict[str, Any] = {}
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ApiError(
                    400, "The client disconnected while sending the file.", code="incomplete_body"
                )
            chunk = message.get("body", b"")
            if chunk:
                parser.write(chunk)
                await _act(events, part, upload, open_file, check_field)
            if not message.get("more_body", False):
                parser.finalize()
                await _act(events, part, upload, open_file, check_field)
                return upload
    except FileTooLarge as exc:
        await _abort(upload)
        raise ApiError(
            413,
            f"The file is larger than {exc.limit_bytes} bytes.",
            code="file_too_large",
            param="file",
        ) from None
    except TooManyLines as exc:
        await _abort(upload)
        raise invalid(
            f"The file has more than {exc.limit_lines} lines.", "file", "too_many_lines"
        ) from None
    except LineTooLong as exc:
        await _abort(upload)
        raise invalid(
            f"Line {exc.line} of the file is longer than {exc.limit_bytes} bytes.",
            "file",
            "line_too_long",
        ) from None
    except ApiError:
        await _abort(upload)
        raise
    except Exception as exc:
        await _abort(upload)
        if type(exc).__module__.startswith("python_multipart"):
            raise invalid(f"Malformed multipart body: {exc}", None) from None
        raise


async def _abort(upload: Upload) -> None:
    if upload.writer is not None:
        await upload.writer.abort()


async def _act(
    events: _Events,
    part: dict[str, Any],
    upload: Upload,
    open_file: Callable[[str], Awaitable[FileWriter]],
    check_field: Callable[[str, str], None],
) -> None:
    items, events.items = events.items, []
    for kind, data in items:
        if kind == "begin":
            part.clear()
        elif kind == "header" and data.startswith(b"content-disposition:"):
            _, options = parse_options_header(data.split(b":", 1)[1])
            part["name"] = options.get(b"name", b"").decode("utf-8", "replace")
            filename = options.get(b"filename")
            part["filename"] = None if filename is None else filename.decode("utf-8", "replace")
        elif kind == "body":
            name = part.get("name")
            if name not in (FILE_FIELD, *TEXT_FIELDS):
                raise invalid(
                    f"Unknown form field `{str(name)[:50]}`: send only `file` and `purpose`.",
                    None,
                )
            if name in upload.fields:
                raise invalid(f"The form field `{name}` is sent more than once.", name)
            if name == FILE_FIELD:
                if upload.writer is not None:
                    raise invalid("Send one file per upload.", "file")
                upload.filename = (part.get("filename") or "upload.jsonl")[-255:]
                upload.writer = await open_file(upload.filename)
            part["value"] = bytearray()
        elif kind == "data":
            if part.get("name") == "file":
                assert upload.writer is not None
                await upload.writer.write(data)
            else:
                value = part.setdefault("value", bytearray())
                value += data
                if len(value) > MAX_FIELD_BYTES:
                    raise invalid(f"The form field `{part.get('name')}` is too long.", None)
                events.count(len(data))
        elif kind == "end" and part.get("name") not in (None, "file"):
            name = str(part["name"])
            text = bytes(part.get("value", b"")).decode("utf-8", "replace")
            check_field(name, text)
            upload.fields[name] = text

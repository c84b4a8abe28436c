"""Validating a batch: its input file, line by line, into items.

The file is streamed (one ~1 MiB chunk at a time) and items are written by COPY in slices, so
memory stays flat whatever the file's size; only the set of `custom_id`s is kept, to find
duplicates. Errors are collected per line, as OpenAI reports them (`code`, `message`, `param`,
`line`, 1-based); a batch with any error fails and runs nothing. Blank lines are skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import asyncpg
import msgspec

from scheduler.codec import Codec, Envelope
from scheduler.store import batches as bs
from scheduler.store.batches import BatchRow
from scheduler.store.files import MAX_LINE_BYTES, get_file, iter_lines
from scheduler.store.webhooks import EventType, enqueue
from schemas import names
from schemas.codec import encode
from schemas.names import Priority
from schemas.openai_errors import ApiError, decode_error_param
from schemas.routes import sticky_of_body

log = logging.getLogger(__name__)

#: Errors kept on a failed batch (all are counted; the first ones are listed).
MAX_LISTED_ERRORS = 1000
#: Items written per COPY.
COPY_ROWS = 2000
MAX_CUSTOM_ID_CHARS = 512
#: Validation attempts of one batch (each counted before it starts): past this, the batch is
#: failed, so a file whose validation kills the process cannot do it after every restart.
MAX_VALIDATION_ATTEMPTS = 3


class _Line(msgspec.Struct):
    custom_id: str
    method: str
    url: str
    body: msgspec.Raw


_decode_line = msgspec.json.Decoder(_Line).decode


class LineErrors:
    def __init__(self) -> None:
        self.listed: list[dict[str, Any]] = []
        self.count = 0

    def add(self, line: int | None, code: str, message: str, param: str | None = None) -> None:
        self.count += 1
        if len(self.listed) < MAX_LISTED_ERRORS:
            self.listed.append({"code": code, "message": message, "param": param, "line": line})


async def validate(
    pool: asyncpg.Pool,
    batch: BatchRow,
    codec: Codec,
    models: Callable[[bool], Awaitable[Collection[str]]],
) -> bool:
    """Validate and store the items of a `validating` batch; True when it went in progress.
    `models(fresh)`: the models a line may name (`fresh`: asked again, not cached)."""
    errors = LineErrors()
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM batch_items WHERE batch_id = $1", batch.id)
        if batch.status is not bs.BatchStatus.VALIDATING:  # cancelled before it was validated
            await bs.start_batch(conn, batch.id, None, 0)
            return False
        attempts = await bs.count_validation_attempt(conn, batch.id)
        if attempts > MAX_VALIDATION_ATTEMPTS:
            log.warning("batch %s: validation attempt %d, failing it", batch.id, attempts)
            errors.add(
                None,
                "validation_error",
                f"The input file could not be validated in {MAX_VALIDATION_ATTEMPTS} attempts.",
                "input_file_id",
            )
            await _fail(conn, batch, errors.listed)
            return False
        source = await get_file(conn, batch.tenant, batch.input_file_id)
        if source is None:
            errors.add(
                None,
                "invalid_input_file",
                f"The input file {batch.input_file_id} no longer exists.",
                "input_file_id",
            )
            await _fail(conn, batch, errors.listed)
            return False
        known = set(await models(False))  # looked up once per batch (and again on a miss)
        refreshed = False
        deadline_ms = int(batch.expires_at.timestamp() * 1000)
        seen: set[str] = set()
        rows: list[tuple[str, int, str, bytes]] = []
        model: str | None = None
        idx = 0
        async for number, raw in iter_lines(pool, source.id, MAX_LINE_BYTES):
            line = number + 1
            if raw is None:
                errors.add(
                    line,
                    "line_too_long",
                    f"The line is longer than {MAX_LINE_BYTES} bytes.",
                )
                continue
            if not raw.strip():
                continue
            parsed = _check_line(raw, line, batch.endpoint, errors)
            if parsed is None:
                continue
            if parsed.custom_id in seen:
                errors.add(
                    line,
                    "duplicate_custom_id",
                    f"The custom_id '{parsed.custom_id}' is used by an earlier line; "
                    "custom_ids must be unique within a batch.",
                    "custom_id",
                )
                continue
            seen.add(parsed.custom_id)
            try:
                envelope = Envelope(
                    bs.item_request_id(batch.id, idx), batch.tenant, Priority.BATCH, deadline_ms
                )
                request = codec.request(batch.endpoint, bytes(parsed.body), envelope)
            except ApiError as exc:
                code = exc.code or "invalid_request"
                param = f"body.{exc.param}" if exc.param else "body"
                errors.add(line, code, exc.message, param)
                continue
            if request.model not in known and not refreshed:  # it may have appeared since
                refreshed = True
                known = set(await models(True))
            if request.model not in known:
                errors.add(
                    line,
                    "model_not_found",
                    f"The model '{request.model}' does not exist.",
                    codec.model_param(batch.endpoint),
                )
                continue
            if model is None:
                model = request.model
            if request.model != model:
                errors.add(
                    line,
                    "mismatched_model",
                    f"The model '{request.model}' differs from '{model}' on an earlier line; "
                    "every request of a batch must use the same model.",
                    "body.model",
                )
                continue
            if errors.count == 0:
                sticky = sticky_of_body(bytes(parsed.body))
                if sticky:  # a served name's version is chosen at dispatch, by this key
                    metadata = {**request.metadata, names.ROUTE_KEY_METADATA: sticky}
                    request = msgspec.structs.replace(request, metadata=metadata)
                rows.append((batch.id, idx, parsed.custom_id, encode(request)))
                if len(rows) >= COPY_ROWS:
                    await bs.copy_items(conn, rows)
                    rows = []
            idx += 1
        if errors.count == 0 and idx == 0:
            errors.add(None, "empty_file", "The input file has no requests.", "input_file_id")
        if errors.count:
            if errors.count > len(errors.listed):
                errors.add(
                    None,
                    "too_many_errors",
                    f"{errors.count - MAX_LISTED_ERRORS} more lines have errors (not listed).",
                )
            await _fail(conn, batch, errors.listed[: MAX_LISTED_ERRORS + 1])
            log.info("batch %s failed validation: %d errors", batch.id, errors.count)
            return False
        if rows:
            await bs.copy_items(conn, rows)
        assert model is not None
        await bs.start_batch(conn, batch.id, model, idx)
        log.info("batch %s validated: %d items for %s", batch.id, idx, model)
        return True


async def fail_unvalidated(pool: asyncpg.Pool, batch: BatchRow) -> None:
    """Fail a batch whose validation raised (a bug, not the database): one bad file must
    not stop every other tenant's batches from being validated."""
    error = {
        "code": "validation_error",
        "message": "The input file could not be validated.",
        "param": "input_file_id",
        "line": None,
    }
    async with pool.acquire() as conn:
        await _fail(conn, batch, [error])


async def _fail(conn: asyncpg.Connection, batch: BatchRow, errors: list[dict[str, Any]]) -> None:
    async with conn.transaction():
        if await bs.fail_batch(conn, batch.id, errors):
            await enqueue(conn, batch.tenant, EventType.BATCH_FAILED, {"id": batch.id})


def _check_line(raw: bytes, line: int, endpoint: str, errors: LineErrors) -> _Line | None:
    try:
        parsed = _decode_line(raw)
    except msgspec.ValidationError as exc:
        errors.add(line, "invalid_request", f"Invalid request line: {exc}", decode_error_param(exc))
        return None
    except msgspec.DecodeError as exc:
        errors.add(line, "invalid_json_line", f"The line is not valid JSON: {exc}")
        return None
    except UnicodeDecodeError as exc:  # msgspec raises this, not a DecodeError
        errors.add(line, "invalid_json_line", f"The line is not valid UTF-8: {exc.reason}")
        return None
    if not parsed.custom_id or len(parsed.custom_id) > MAX_CUSTOM_ID_CHARS:
        errors.add(
            line,
            "invalid_request",
            f"custom_id must be 1 to {MAX_CUSTOM_ID_CHARS} characters.",
            "custom_id",
        )
        return None
    if parsed.method.upper() != "POST":
        errors.add(line, "invalid_method", "Only the POST method is supported.", "method")
        return None
    if parsed.url != endpoint:
        errors.add(
            line,
            "invalid_url",
            f"The url '{parsed.url[:200]}' does not match the batch's endpoint '{endpoint}'.",
            "url",
        )
        return None
    return parsed

"""The Files API (tenant-scoped): upload (streamed), list, retrieve, content (streamed), delete.

    POST   /v1/files                 multipart: purpose=batch, file=<JSONL>  (200 MB, 50,000 lines)
    GET    /v1/files                 ?purpose= &limit= &after= &order=asc|desc
    GET    /v1/files/{file_id}
    GET    /v1/files/{file_id}/content
    DELETE /v1/files/{file_id}

A file of another tenant is answered exactly like a file that does not exist (404).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.response import Stream
from litestar.types import ControllerRouterHandler

from scheduler.api.deps import JSON, Deps, query_limit
from scheduler.api.objects import deleted, file_object, list_page
from scheduler.api.upload import receive_upload
from scheduler.store import files as fs
from schemas.openai_errors import invalid, require_found

#: `batch`: a JSONL batch input (line limits); `vision`, `user_data`: images, for Responses'
#: `input_image` by `file_id` (jetserve/image_files.py).
PURPOSES = ("batch", "vision", "user_data")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _safe(filename: str) -> str:
    """A file name that cannot break out of the header's quotes."""
    return _UNSAFE.sub("_", filename)[:200] or "file"


_encode = msgspec.json.encode


def file_routes(deps: Deps) -> list[ControllerRouterHandler]:
    @post("/v1/files", status_code=200, summary="Upload a file (multipart, streamed)")
    async def upload(request: Request[Any, Any, Any]) -> Response[Any]:
        tenant = await deps.authenticate(request.headers)
        pool = await deps.pool()

        purpose: list[str] = []  # as soon as its field is read

        def check_field(name: str, value: str) -> None:
            if name == "purpose":
                if value not in PURPOSES:
                    raise invalid(
                        f"purpose must be one of {list(PURPOSES)}, not '{value[:50]}'.", "purpose"
                    )
                purpose.append(value)

        async def open_file(filename: str) -> fs.FileWriter:
            # A batch file's lines are checked as they arrive; other purposes hold bytes. A
            # file sent before its purpose is checked as a batch file.
            lines = not purpose or purpose[0] == "batch"
            return await fs.FileWriter.create(
                pool,
                tenant,
                purpose[0] if purpose else "batch",
                filename,
                max_bytes=deps.max_file_bytes,
                max_lines=deps.max_file_lines if lines else None,
                max_line_bytes=deps.max_line_bytes if lines else None,
            )

        upload = await receive_upload(
            request.receive, request.headers.get("content-type"), open_file, check_field
        )
        writer = upload.writer
        if "purpose" not in upload.fields or writer is None:
            if writer is not None:
                await writer.abort()
            missing = "purpose" if "purpose" not in upload.fields else "file"
            raise invalid(f"Missing required field `{missing}`.", missing)
        await writer.close()
        if upload.fields["purpose"] != writer.purpose:  # the file came before its purpose
            await fs.set_purpose(pool, writer.file_id, upload.fields["purpose"])
        row = await fs.get_file(pool, tenant, writer.file_id)
        assert row is not None
        return Response(_encode(file_object(row)), media_type=JSON)

    @get("/v1/files", summary="List files")
    async def list_files(request: Request[Any, Any, Any]) -> Response[Any]:
        tenant = await deps.authenticate(request.headers)
        q = request.query_params
        limit = query_limit(q.get("limit"), default=10_000, maximum=10_000)
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise invalid("order must be 'asc' or 'desc'.", "order")
        rows = await fs.list_files(
            await deps.pool(),
            tenant,
            purpose=q.get("purpose"),
            after=q.get("after"),
            limit=limit,
            ascending=order == "asc",
        )
        return Response(_encode(list_page(rows, limit, file_object)), media_type=JSON)

    @get("/v1/files/{file_id:str}", summary="Retrieve a file's metadata")
    async def retrieve(request: Request[Any, Any, Any], file_id: str) -> Response[Any]:
        tenant = await deps.authenticate(request.headers)
        row = require_found(
            await fs.get_file(await deps.pool(), tenant, file_id), "file", file_id, "file_id"
        )
        return Response(_encode(file_object(row)), media_type=JSON)

    @get("/v1/files/{file_id:str}/content", summary="Download a file's content (streamed)")
    async def content(request: Request[Any, Any, Any], file_id: str) -> Stream:
        tenant = await deps.authenticate(request.headers)
        pool = await deps.pool()
        row = require_found(await fs.get_file(pool, tenant, file_id), "file", file_id, "file_id")
        return Stream(
            fs.iter_chunks(pool, row.id),
            media_type="application/octet-stream",
            headers={
                "content-length": str(row.bytes),
                "content-disposition": f'attachment; filename="{_safe(row.filename)}"',
            },
        )

    @delete("/v1/files/{file_id:str}", status_code=200, summary="Delete a file")
    async def remove(request: Request[Any, Any, Any], file_id: str) -> Response[Any]:
        tenant = await deps.authenticate(request.headers)
        found = await fs.delete_file(await deps.pool(), tenant, file_id)
        return Response(_encode(deleted(found, "file", file_id, "file_id")), media_type=JSON)

    return [upload, list_files, retrieve, content, remove]

"""Pure and handler-tier tests of the batch pieces: URL guard, retry policy, completion
windows, line checks, the streaming multipart upload (with a recording fake database),
progress line, end statuses, and the webhook signature against `standardwebhooks`."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from jetserve.batch_cli import progress_line
from scheduler.api.batches import window_seconds
from scheduler.api.upload import MAX_FORM_BYTES, receive_upload
from scheduler.store.batches import item_request_id, parse_item_request_id
from scheduler.store.files import CHUNK_BYTES, FileTooLarge, FileWriter, TooManyLines
from scheduler.store.webhooks import new_secret
from scheduler.urlguard import (
    UrlRefused,
    check_url,
    is_internal,
    normalise,
    parse,
    registered_form,
)
from scheduler.validate import LineErrors, _check_line
from scheduler.webhooks import RetryPolicy, sign
from schemas.names import owner_from_results_subject, results_subject
from schemas.openai_errors import ApiError


@pytest.mark.parametrize(
    ("address", "internal"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),  # cloud metadata
        ("100.64.0.1", True),  # shared address space
        ("0.0.0.0", True),
        ("::1", True),
        ("fe80::1%eth0", True),
        ("fd00::1", True),
        ("::ffff:127.0.0.1", True),
        ("224.0.0.1", True),
        ("8.8.8.8", False),
        ("2001:4860:4860::8888", False),
        # IPv6 forms that carry an IPv4 address and are routed to it.
        ("64:ff9b::7f00:1", True),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", True),  # NAT64 of 169.254.169.254
        ("64:ff9b:1::a00:1", True),  # local-use NAT64
        ("2002:7f00:1::", True),  # 6to4 of 127.0.0.1
        ("2002:a00:1::1", True),  # 6to4 of 10.0.0.1
        ("::7f00:1", True),  # ::127.0.0.1, IPv4-compatible
        ("::a00:1", True),  # ::10.0.0.1
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", True),  # Teredo, client 127.0.0.1
        ("64:ff9b::808:808", False),  # NAT64 of 8.8.8.8
        ("2002:808:808::1", False),  # 6to4 of 8.8.8.8
    ],
)
def test_internal_addresses(address: str, internal: bool) -> None:
    assert is_internal(address) is internal


async def test_url_guard() -> None:
    assert parse("https://example.com/hook") == ("example.com", 443)
    for bad in ("ftp://example.com/", "http://", "http://user:pw@example.com/", "not a url"):
        with pytest.raises(UrlRefused):
            parse(bad)
    for private in ("http://127.0.0.1:8080/x", "http://10.0.0.5/x", "http://[::1]/x"):
        with pytest.raises(UrlRefused, match="internal address"):
            await check_url(private, allow_private=False)
        await check_url(private, allow_private=True)
    with pytest.raises(UrlRefused, match="internal address") as refused:
        await check_url("http://localhost:9/x", allow_private=False)  # resolved, then refused
    # Generic: the address a name resolved to is never told (no DNS oracle).
    assert "127.0.0.1" not in str(refused.value)
    assert "::1" not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("HTTPS://Example.COM:8443/a", "https://example.com:8443/a"),
        ("http://example.com/a/../b", "http://example.com/b"),
        ("https://bücher.de/x?q=1", "https://xn--bcher-kva.de/x?q=1"),
        ("http://example.com/é", "http://example.com/%C3%A9"),
    ],
)
def test_urls_are_stored_as_the_client_sends_them(url: str, stored: str) -> None:
    assert normalise(url) == stored
    assert normalise(stored) == stored
    # A callback URL (HTTP header or NATS metadata) is looked up in this form too.
    assert registered_form(url) == stored
    assert registered_form("http://a\tb/") == "http://a\tb/"  # matches no endpoint


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/a\tb",
        "http://exam\nple.com/",
        "http://example.com/\r\nx: y",
        " http://e.com/",
    ],
)
def test_urls_with_whitespace_or_controls_are_refused(url: str) -> None:
    """`urlsplit` drops tabs and newlines, so the old check passed URLs the client refuses."""
    with pytest.raises(UrlRefused, match="whitespace"):
        normalise(url)


def test_retry_policy_is_exponential_with_jitter_and_capped() -> None:
    policy = RetryPolicy(period_s=72 * 3600, base_s=1.0, max_s=60.0)
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(60.0, 2.0 ** (attempt - 1))
        delays = [policy.delay_s(attempt, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered


def test_signature_verifies_with_standardwebhooks() -> None:
    secret = new_secret()
    body = b'{"type":"batch.completed","data":{"id":"batch_1"}}'
    headers = sign(secret, "msg_1", datetime.now(UTC), body)
    assert Webhook(secret).verify(body, headers)["data"] == {"id": "batch_1"}
    assert headers["webhook-signature"].startswith("v1,")


def test_completion_windows() -> None:
    assert window_seconds("24h") == 86400
    assert window_seconds("90s") == 90
    assert window_seconds("30m") == 1800
    for bad in ("48h", "0s", "24", "1d", "", "-1h"):
        with pytest.raises(ApiError):
            window_seconds(bad)


def test_item_ids_and_result_subjects() -> None:
    rid = item_request_id("batch_abc", 41)
    assert parse_item_request_id(rid) == ("batch_abc", 41)
    assert parse_item_request_id("no-number-x") is None
    assert owner_from_results_subject(results_subject("batch", "batch_abc")) == (
        "batch",
        "batch_abc",
    )
    assert owner_from_results_subject("jetserve.req.x.online") is None


def test_line_checks() -> None:
    errors = LineErrors()
    endpoint = "/v1/chat/completions"
    ok = b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}'
    assert _check_line(ok, 1, endpoint, errors) is not None
    assert _check_line(b"{", 2, endpoint, errors) is None
    assert _check_line(ok.replace(b'"POST"', b'"GET"'), 3, endpoint, errors) is None
    assert _check_line(ok.replace(b'"a"', b'""'), 4, endpoint, errors) is None
    assert _check_line(b'{"custom_id":"a"}', 5, endpoint, errors) is None
    assert [(e["line"], e["code"], e["param"]) for e in errors.listed] == [
        (2, "invalid_json_line", None),
        (3, "invalid_method", "method"),
        (4, "invalid_request", "custom_id"),
        (5, "invalid_request", "method"),
    ]


class FakeDb:
    """Records what a FileWriter stores."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.statements: list[str] = []

    async def execute(self, sql: str, *args: Any) -> str:
        self.statements.append(sql.split()[0])
        if sql.startswith("INSERT INTO file_chunks"):
            self.chunks.append(args[2])
        return "OK 1"


def _receiver(body: bytes, piece: int) -> Any:
    pieces = [body[i : i + piece] for i in range(0, len(body), piece)] or [b""]

    async def receive() -> dict[str, Any]:
        chunk = pieces.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pieces)}

    return receive


def _multipart(content: bytes, purpose: str = "batch") -> tuple[bytes, str]:
    boundary = "XyZ123"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("piece", [61, 4096, 1 << 20])
async def test_multipart_upload_streams_into_chunks(piece: int) -> None:
    content = b"".join(b'{"n": %d}\n' % i for i in range(120_000))  # ~1.3 MB
    body, content_type = _multipart(content)
    db = FakeDb()

    async def open_file(filename: str) -> FileWriter:
        assert filename == "in.jsonl"
        return FileWriter(db, "file-1")

    upload = await receive_upload(
        _receiver(body, piece), content_type, open_file, lambda name, value: None
    )
    assert upload.fields == {"purpose": "batch"}
    assert upload.writer is not None
    await upload.writer.close()
    assert b"".join(db.chunks) == content
    assert all(len(c) == CHUNK_BYTES for c in db.chunks[:-1])
    assert upload.writer.lines == 120_000
    assert upload.writer.bytes == len(content)


async def test_multipart_limits_and_refusals() -> None:
    body, content_type = _multipart(b"a\n" * 100)
    db = FakeDb()

    async def small(filename: str) -> FileWriter:
        return FileWriter(db, "file-2", max_lines=50)

    with pytest.raises(ApiError) as lines:
        await receive_upload(_receiver(body, 64), content_type, small, lambda n, v: None)
    assert lines.value.code == "too_many_lines"
    assert "DELETE" in db.statements  # the half-written file is removed

    async def tiny(filename: str) -> FileWriter:
        return FileWriter(db, "file-3", max_bytes=100)

    with pytest.raises(ApiError) as size:
        await receive_upload(_receiver(body, 64), content_type, tiny, lambda n, v: None)
    assert size.value.status == 413

    def no_fine_tune(name: str, value: str) -> None:
        raise ApiError(400, "nope", param=name)

    with pytest.raises(ApiError) as field:
        await receive_upload(_receiver(body, 64), content_type, small, no_fine_tune)
    assert field.value.param == "purpose"
    with pytest.raises(ApiError):
        await receive_upload(_receiver(body, 64), "application/json", small, lambda n, v: None)


def _form(*parts: tuple[str, bytes], boundary: str = "XyZ123") -> tuple[bytes, str]:
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + value
        + b"\r\n"
        for name, value in parts
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def _no_file(filename: str) -> FileWriter:
    raise AssertionError("no file part was sent")


async def test_multipart_takes_only_its_known_fields_within_a_total() -> None:
    """Before, every form field was kept (each up to 1 KiB, with no total): 80 MB of fields
    stayed in the bridge's memory. Now an unknown field, a repeated one, or more than
    MAX_FORM_BYTES of headers and values is refused at once."""
    for parts, says in (
        ([("purpose", b"batch"), ("x0", b"v")], "Unknown form field `x0`"),
        ([("purpose", b"batch"), ("purpose", b"batch")], "more than once"),
    ):
        body, content_type = _form(*parts)
        with pytest.raises(ApiError, match=says) as refused:
            await receive_upload(_receiver(body, 64), content_type, _no_file, lambda n, v: None)
        assert refused.value.status == 400
    # A part with ever more header lines: refused once the total is past, not read on.
    bloat = (
        b'--XyZ123\r\nContent-Disposition: form-data; name="purpose"\r\n'
        + (b"X-Pad: " + b"p" * 3000 + b"\r\n") * 8
    )
    sent = 0
    pieces = [bloat[i : i + 1000] for i in range(0, len(bloat), 1000)]

    async def receive() -> dict[str, Any]:
        nonlocal sent
        sent += 1
        return {"type": "http.request", "body": pieces.pop(0), "more_body": bool(pieces)}

    with pytest.raises(ApiError, match="longer than") as total:
        await receive_upload(
            receive, "multipart/form-data; boundary=XyZ123", _no_file, lambda n, v: None
        )
    assert total.value.status == 400
    assert sent * 1000 <= MAX_FORM_BYTES + 2000


async def test_a_line_too_long_is_refused_while_the_upload_streams() -> None:
    content = b'{"a": 1}\n' * 3 + b"x" * 5000 + b"\n" + b'{"a": 2}\n'
    body, content_type = _multipart(content)
    db = FakeDb()

    async def capped(filename: str) -> FileWriter:
        return FileWriter(db, "file-4", max_line_bytes=4096)

    with pytest.raises(ApiError) as refused:
        await receive_upload(_receiver(body, 97), content_type, capped, lambda n, v: None)
    assert refused.value.status == 400
    assert refused.value.code == "line_too_long"
    assert refused.value.param == "file"
    assert "Line 4 " in refused.value.message
    assert "DELETE" in db.statements


async def test_file_writer_counts_a_last_line_without_newline() -> None:
    db = FakeDb()
    writer = FileWriter(db, "f", max_lines=3)
    await writer.write(b"a\nb\nc")
    assert writer.lines == 3
    with pytest.raises(TooManyLines):
        await writer.write(b"\nd")
    big = FileWriter(db, "g", max_bytes=3)
    with pytest.raises(FileTooLarge):
        await big.write(b"abcd")


def test_progress_line() -> None:
    line = progress_line(
        "in_progress", {"total": 1000, "completed": 400, "failed": 100}, 5.0, (1.0, 0), 6.0
    )
    assert "500/1,000" in line
    assert "failed 100" in line
    assert "100/s" in line
    assert "ETA" in line
    assert line.startswith("[###############---------------]")

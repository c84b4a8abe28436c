"""`jetserve batch ...`: batch jobs from the command line, over the HTTP API (the same calls
as the `openai` SDK), so it works against any deployment it can reach.

    JETSERVE_URL      the bridge (default: `http_url` in .jetserve/stack.json, else
                      http://127.0.0.1:8000)
    JETSERVE_API_KEY  an API key (`jetserve keys create`); not needed with JETSERVE_AUTH=off
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import httpx

from schemas.settings import ConfigError

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def _base_url() -> str:
    url = os.environ.get("JETSERVE_URL")
    if url:
        return url.rstrip("/")
    from jetserve.local_stack import stack_value

    http_url = stack_value("http_url")
    return http_url.rstrip("/") if http_url else "http://127.0.0.1:8000"


def _client() -> httpx.Client:
    key = os.environ.get("JETSERVE_API_KEY", "")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=_base_url() + "/v1", headers=headers, timeout=120)


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message = f"{error.get('message')} ({error.get('code')})"
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        raise SystemExit(f"jetserve: HTTP {response.status_code}: {message}")
    return response.json()


def _with_model(source: Path, model: str) -> Path:
    """A copy of `source` with `body.model` set on every line (streamed line by line)."""
    out = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, removed by the caller
        "w", suffix=".jsonl", delete=False, encoding="utf-8"
    )
    with source.open(encoding="utf-8") as lines, out:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                item["body"]["model"] = model
            except (ValueError, KeyError, TypeError) as exc:
                Path(out.name).unlink(missing_ok=True)
                raise SystemExit(f"jetserve: {source}:{number}: not a batch line ({exc})") from None
            out.write(json.dumps(item, separators=(",", ":")) + "\n")
    return Path(out.name)


def cmd_submit(args: argparse.Namespace) -> int:
    source = Path(args.file)
    if not source.is_file():
        raise ConfigError(f"no such file: {source}")
    upload = _with_model(source, args.model) if args.model else source
    try:
        with _client() as client, upload.open("rb") as f:
            # httpx streams the file part from disk.
            created = _check(
                client.post(
                    "/files",
                    data={"purpose": "batch"},
                    files={"file": (source.name, f, "application/jsonl")},
                )
            )
            batch = _check(
                client.post(
                    "/batches",
                    json={
                        "input_file_id": created["id"],
                        "endpoint": args.endpoint,
                        "completion_window": args.completion_window,
                    },
                )
            )
            print(f"{batch['id']}  uploaded {created['id']} ({created['bytes']} bytes)")
            if not args.wait:
                return 0
            batch = _wait(client, batch["id"], sys.stderr)
            if args.output and batch.get("output_file_id"):
                _download(client, batch["output_file_id"], Path(args.output))
            return 0 if batch["status"] == "completed" else 1
    finally:
        if upload is not source:
            upload.unlink(missing_ok=True)


def _wait(client: httpx.Client, batch_id: str, out: TextIO) -> dict[str, Any]:
    """Poll until the batch ends, drawing a progress bar (done/failed, rate, ETA)."""
    started = time.monotonic()
    first_done: tuple[float, int] | None = None
    while True:
        batch: dict[str, Any] = _check(client.get(f"/batches/{batch_id}"))
        counts = batch["request_counts"]
        done = counts["completed"] + counts["failed"]
        now = time.monotonic()
        if first_done is None and done:
            first_done = (now, done)
        out.write("\r" + progress_line(batch["status"], counts, now - started, first_done, now))
        out.flush()
        if batch["status"] in TERMINAL:
            out.write("\n")
            for error in (batch.get("errors") or {}).get("data", [])[:10]:
                out.write(f"  line {error.get('line')}: {error['code']}: {error['message']}\n")
            return batch
        time.sleep(0.5)


def progress_line(
    status: str,
    counts: dict[str, int],
    elapsed_s: float,
    first: tuple[float, int] | None,
    now: float,
    width: int = 30,
) -> str:
    total, ok, failed = counts["total"], counts["completed"], counts["failed"]
    done = ok + failed
    filled = int(width * done / total) if total else 0
    bar = "#" * filled + "-" * (width - filled)
    rate = 0.0
    if first is not None and now > first[0]:
        rate = (done - first[1]) / (now - first[0])
    eta = f"{(total - done) / rate:5.0f}s" if rate > 0 and done < total else "    -"
    return (
        f"[{bar}] {done:>7,}/{total:<7,} ok {ok:,} failed {failed:,}  "
        f"{rate:7,.0f}/s  ETA {eta}  {status:<11} {elapsed_s:6.1f}s"
    )


def _download(client: httpx.Client, file_id: str, path: Path) -> None:
    with client.stream("GET", f"/files/{file_id}/content") as response:
        if response.status_code >= 400:
            response.read()
            _check(response)
        with path.open("wb") as f:
            for chunk in response.iter_bytes():
                f.write(chunk)
    print(f"wrote {path}")


def cmd_status(args: argparse.Namespace) -> int:
    with _client() as client:
        if args.wait:
            batch = _wait(client, args.batch_id, sys.stderr)
        else:
            batch = _check(client.get(f"/batches/{args.batch_id}"))
    print(json.dumps(batch, indent=2))
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    with _client() as client:
        batch = _check(client.get(f"/batches/{args.batch_id}"))
        if batch["status"] not in TERMINAL:
            raise SystemExit(
                f"jetserve: batch {args.batch_id} is {batch['status']}: no results yet"
            )
        if batch.get("output_file_id"):
            _download(client, batch["output_file_id"], Path(args.output))
        else:
            Path(args.output).write_bytes(b"")
            print(f"no successful results; wrote an empty {args.output}")
        if args.errors and batch.get("error_file_id"):
            _download(client, batch["error_file_id"], Path(args.errors))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client() as client:
        batch = _check(client.post(f"/batches/{args.batch_id}/cancel"))
    print(f"{batch['id']}  {batch['status']}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _client() as client:
        page = _check(client.get("/batches", params={"limit": args.limit}))
    for b in page["data"]:
        c = b["request_counts"]
        print(
            f"{b['id']}  {b['status']:<11} {c['completed']}/{c['total']} ok, {c['failed']} failed"
            f"  {b.get('model') or ''}"
        )
    return 0

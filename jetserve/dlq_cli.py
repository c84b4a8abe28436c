"""`jetserve dlq list|show|replay|purge`: the dead-letter stream from the command line
(jetserve/dlq.py). NATS: `--nats-url`, else JETSERVE_NATS_URL, else the running local stack's."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable

from jetserve.dlq import DeadLetter, DeadLetters
from jetserve.local_stack import stack_value
from natsio.connection import connect
from schemas.settings import NATS_URL, ConfigError


def nats_url(args: argparse.Namespace) -> str:
    url = args.nats_url or os.environ.get(NATS_URL) or stack_value("nats_url")
    if not url:
        raise ConfigError(f"no NATS: pass --nats-url, set {NATS_URL}, or run `jetserve up`")
    return url


def _run(args: argparse.Namespace, work: Callable[[DeadLetters], Awaitable[None]]) -> int:
    """Run `work` on the dead-letter stream; the exit status (0: a failure raises)."""

    async def run() -> None:
        nc = await connect(nats_url(args), name="jetserve-dlq")
        try:
            await work(DeadLetters(nc.jetstream()))
        finally:
            await nc.close()

    asyncio.run(run())
    return 0


def _summary(d: DeadLetter) -> dict[str, object]:
    return {
        "id": d.seq,
        "model": d.model,
        "request_id": d.request_id,
        "attempts": d.attempts,
        "error": d.error,
        "dead_lettered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(d.time_s)),
    }


def cmd_list(args: argparse.Namespace) -> int:
    async def work(dlq: DeadLetters) -> None:
        letters = await dlq.list(args.model)
        if args.json:
            print(json.dumps([_summary(d) for d in letters], indent=2))
            return
        print(f"{'ID':>6}  {'MODEL':<20} {'REQUEST':<28} {'ATT':>3}  ERROR")
        for d in letters:
            print(f"{d.seq:>6}  {d.model:<20} {d.request_id:<28} {d.attempts:>3}  {d.error[:80]}")
        print(f"{len(letters)} dead letters")

    return _run(args, work)


def cmd_show(args: argparse.Namespace) -> int:
    async def work(dlq: DeadLetters) -> None:
        d = await dlq.get(args.id)
        shown = {**_summary(d), "subject": d.subject, "headers": d.headers}
        try:
            shown["request"] = json.loads(d.data)
        except ValueError:
            shown["request_bytes"] = len(d.data)  # msgpack
        print(json.dumps(shown, indent=2))

    return _run(args, work)


def cmd_replay(args: argparse.Namespace) -> int:
    if (args.id is None) == (not args.all):
        raise ConfigError("replay wants an ID or --all")

    async def work(dlq: DeadLetters) -> None:
        seqs = [args.id] if args.id is not None else [d.seq for d in await dlq.list(args.model)]
        for seq in seqs:
            print(f"replayed {seq} as {await dlq.replay(seq)}")
        print(f"{len(seqs)} replayed")

    return _run(args, work)


def cmd_purge(args: argparse.Namespace) -> int:
    if not args.yes:
        raise ConfigError("purge deletes dead letters for good: add --yes")

    async def work(dlq: DeadLetters) -> None:
        print(f"{await dlq.purge(args.model)} dead letters purged")

    return _run(args, work)

"""Two installations (two databases) on one NATS server: the scheduler consumers are claimed
for the first one's database, and a second installation's scheduler refuses them instead of
taking results it has no record of and acking them away."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from nats.js.errors import NotFoundError

from jetserve.servers import NatsServer, PostgresServer
from scheduler.streams import ConsumerClaimed, provision
from schemas import names

from .batches.conftest import launch_stack

pytestmark = pytest.mark.integration

MODEL = "i-echo"


async def _owners(url: str) -> set[str | None]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        found: set[str | None] = set()
        for stream, consumer in (
            (names.RESULTS_STREAM, names.RESULTS_CONSUMER),
            (names.ASYNC_STREAM, names.ASYNC_CONSUMER),
            (names.EVENTS_STREAM, names.EVENTS_CONSUMER),
        ):
            try:
                info = await js.consumer_info(stream, consumer)
            except NotFoundError:
                found.add("(none)")
                continue
            found.add((info.config.metadata or {}).get(names.CONSUMER_OWNER_METADATA))
        return found
    finally:
        await nc.close()


async def test_consumers_are_claimed_for_one_installation(own_nats: NatsServer) -> None:
    nc = await nats.connect(own_nats.url)
    js = nc.jetstream()
    try:
        # A consumer made before claims existed is claimed by the first scheduler to act.
        await provision(js, duplicate_window_s=60)
        assert await _owners(own_nats.url) == {None}
        await provision(js, duplicate_window_s=60, owner="db-a")
        assert await _owners(own_nats.url) == {"db-a"}
        await provision(js, duplicate_window_s=60, owner="db-a")  # its own again: fine
        with pytest.raises(ConsumerClaimed, match="db-a"):
            await provision(js, duplicate_window_s=60, owner="db-b")
        assert await _owners(own_nats.url) == {"db-a"}  # nothing changed
    finally:
        await nc.close()


def test_a_second_installations_scheduler_takes_no_results(
    own_nats: NatsServer, postgres: PostgresServer, tmp_path: Path
) -> None:
    """Without the claim, both schedulers pulled from the one `scheduler` consumer, and the
    second acked away the results it had no record of: background responses stayed queued."""
    other_db = f"other_{uuid.uuid4().hex[:8]}"
    other_dsn = postgres.dsn.rsplit("/", 1)[0] + f"/{other_db}"

    async def create_db() -> None:
        admin = await asyncpg.connect(postgres.dsn)
        try:
            await admin.execute(f"CREATE DATABASE {other_db}")
        finally:
            await admin.close()

    asyncio.run(create_db())
    with launch_stack(own_nats.url, postgres.dsn, tmp_path, [(MODEL, "echo", [])]) as stack:
        end = time.monotonic() + 30
        while len(owners := asyncio.run(_owners(own_nats.url))) != 1 or owners & {None, "(none)"}:
            assert time.monotonic() < end, owners
            time.sleep(0.1)
        (owner,) = owners
        assert owner == stack.query("SELECT id FROM installation")[0]["id"]
        stack.start_scheduler(JETSERVE_DATABASE_URL=other_dsn, JETSERVE_SCHEDULER_METRICS_PORT="-1")
        while "not acting, standing by" not in stack.scheduler_log():
            assert stack.schedulers[-1].poll() is None, stack.scheduler_log()
            assert time.monotonic() < end + 30, stack.scheduler_log()
            time.sleep(0.1)
        client: Any = stack.sdk()
        ids = [
            client.responses.create(model=MODEL, input=f"hello {i}", background=True).id
            for i in range(12)
        ]
        end = time.monotonic() + 60
        pending = set(ids)
        while pending:
            assert time.monotonic() < end, f"{len(pending)} of {len(ids)} never finished"
            for rid in list(pending):
                if client.responses.retrieve(rid).status == "completed":
                    pending.discard(rid)
            time.sleep(0.1)
        assert asyncio.run(_owners(own_nats.url)) == {owner}

"""k8s/nats/accounts.conf, loaded by a real nats-server: a tenant may publish requests to its
models and read its own inbox, and nothing else; KEDA reads the lag in the JETSERVE account."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from jetserve.servers import free_port, nats_server_binary
from natsio.routes import RouteStore
from producer.client import make_request
from schemas import names
from schemas.codec import decode_reply, encode
from schemas.errors import ErrorCode
from schemas.messages import ErrorResult, FinalResult
from schemas.names import Header, Priority
from schemas.routes import Route, Target
from workers.config import QueueSettings
from workers.provision import provision_model

from ..keda import StreamNotFound, keda_lag

pytestmark = pytest.mark.integration

ACCOUNTS = Path(__file__).resolve().parents[2] / "k8s" / "nats" / "accounts.conf"
PASSWORDS = {
    "JETSERVE_NATS_PASSWORD": "pw-jetserve",
    "TENANT_ACME_NATS_PASSWORD": "pw-acme",
    "SYS_NATS_PASSWORD": "pw-sys",
}


class Server:
    def __init__(self, port: int, monitor_port: int) -> None:
        self.url = f"nats://127.0.0.1:{port}"
        self.monitor_url = f"http://127.0.0.1:{monitor_port}"


@pytest.fixture
def accounts_server(tmp_path: Path) -> Iterator[Server]:
    shutil.copy(ACCOUNTS, tmp_path / "accounts.conf")
    port, monitor_port = free_port(), free_port()
    config = tmp_path / "server.conf"
    config.write_text(
        f"listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\n"
        f'jetstream {{ store_dir: "{tmp_path / "store"}" }}\ninclude "accounts.conf"\n'
    )
    log = (tmp_path / "nats.log").open("wb")
    proc = subprocess.Popen(
        [nats_server_binary(), "-c", str(config)],
        env={**os.environ, **PASSWORDS},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Server(port, monitor_port)
    end = time.monotonic() + 15
    while True:
        assert proc.poll() is None, (tmp_path / "nats.log").read_text()
        with contextlib.suppress(OSError):
            url = f"{server.monitor_url}/healthz?js-enabled-only=true"
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    break
        assert time.monotonic() < end, (tmp_path / "nats.log").read_text()
        time.sleep(0.05)
    yield server
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    log.close()


async def test_tenant_publishes_only_its_models_requests(accounts_server: Server) -> None:
    url = accounts_server.url
    service = await nats.connect(url, user="jetserve", password=PASSWORDS["JETSERVE_NATS_PASSWORD"])
    await provision_model(service.jetstream(), "echo", QueueSettings())
    await provision_model(service.jetstream(), "other", QueueSettings())

    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc))

    tenant = await nats.connect(
        url,
        user="tenant-acme",
        password=PASSWORDS["TENANT_ACME_NATS_PASSWORD"],
        inbox_prefix="_INBOX_acme",
        error_cb=on_error,
    )
    js = tenant.jetstream()
    request = make_request("echo", "predict", {"x": 1})
    ack = await js.publish(
        names.tenant_request_subject("echo", "acme", Priority.ONLINE),
        encode(request),
        headers={Header.MSG_ID: request.id, Header.REPLY_TO: "_INBOX_acme.replies"},
    )
    assert ack.stream == names.stream_name("echo")  # stored, and the PubAck reached the tenant

    # Another model's queue, the service's own subject, another tenant's subject, the
    # JetStream API, other inboxes: refused by the server.
    with pytest.raises(nats.errors.TimeoutError):
        await js.publish(names.tenant_request_subject("other", "acme"), b"{}", timeout=1)
    with pytest.raises(nats.errors.TimeoutError):
        await js.publish(names.request_subject("echo"), b"{}", timeout=1)
    with pytest.raises(nats.errors.TimeoutError):
        await js.publish(names.tenant_request_subject("echo", "globex"), b"{}", timeout=1)
    with pytest.raises(nats.errors.Error):
        await tenant.jetstream(timeout=1).stream_info(names.stream_name("echo"))
    await tenant.subscribe("_INBOX.>")
    await tenant.flush()
    await asyncio.sleep(0.2)
    joined = " ".join(violations).lower()
    assert "permissions violation for publish to" in joined
    assert names.tenant_request_subject("other", "acme") in " ".join(violations)
    assert f'"{names.request_subject("echo")}"' in " ".join(violations)
    assert "permissions violation for subscription to" in joined
    assert "$js.api" in joined

    # A worker (the jetserve user) replies on the tenant's inbox; the tenant receives it.
    # The subscription's interest reaches the exporting account asynchronously: a reply
    # published before that is dropped (core NATS), so publish until one arrives.
    replies = await tenant.subscribe("_INBOX_acme.replies")
    await tenant.flush()
    for _ in range(25):
        await service.publish("_INBOX_acme.replies", b"result")
        await service.flush()
        with contextlib.suppress(nats.errors.TimeoutError):
            received = await replies.next_msg(timeout=0.2)
            break
    else:
        pytest.fail("the tenant never received the reply on its inbox")
    assert received.data == b"result"

    # KEDA must be pointed at the account (`--nats-account JETSERVE`): `$G` has no streams.
    online = names.consumer_name(Priority.ONLINE)
    reading = await asyncio.to_thread(
        keda_lag, accounts_server.monitor_url, "JETSERVE", names.stream_name("echo"), online
    )
    assert (reading.consumer_found, reading.lag) == (True, 1)
    with pytest.raises(StreamNotFound):
        await asyncio.to_thread(
            keda_lag, accounts_server.monitor_url, "$G", names.stream_name("echo"), online
        )
    await tenant.close()
    await service.close()


async def test_a_tenants_nats_user_publishes_only_as_that_tenant(
    accounts_server: Server, inproc_worker: Any
) -> None:
    """A worker of the service account takes the tenant from the subject: acme's request
    naming another tenant is refused with an error naming `tenant`; one naming none runs."""
    host = accounts_server.url.removeprefix("nats://")
    service_url = f"nats://jetserve:{PASSWORDS['JETSERVE_NATS_PASSWORD']}@{host}"
    await inproc_worker("echo", nats_url=service_url)
    tenant = await nats.connect(
        accounts_server.url,
        user="tenant-acme",
        password=PASSWORDS["TENANT_ACME_NATS_PASSWORD"],
        inbox_prefix="_INBOX_acme",
    )
    replies = await tenant.subscribe("_INBOX_acme.tenancy")
    js = tenant.jetstream()
    claiming = make_request("echo", "predict", {"x": 1}, tenant="globex")
    plain = make_request("echo", "predict", {"x": 2})
    for request in (claiming, plain):
        await js.publish(
            names.tenant_request_subject("echo", "acme"),
            encode(request),
            headers={Header.MSG_ID: request.id, Header.REPLY_TO: "_INBOX_acme.tenancy"},
        )
    answers: dict[str, Any] = {}
    while len(answers) < 2:
        reply = decode_reply((await replies.next_msg(timeout=10)).data)
        answers[reply.id] = reply
    refused = answers[claiming.id]
    assert isinstance(refused, ErrorResult)
    assert refused.code == ErrorCode.INVALID_REQUEST
    assert "$.tenant" in refused.message
    served = answers[plain.id]
    assert isinstance(served, FinalResult)
    assert served.output == {"x": 2}
    await tenant.close()


async def test_a_tenant_reads_and_watches_the_routes_bucket_but_cannot_write_it(
    accounts_server: Server,
) -> None:
    """NATS-native publishers resolve a served name from the routes bucket (README): the
    tenant's user may get and watch its keys, not write them."""
    url = accounts_server.url
    service = await nats.connect(url, user="jetserve", password=PASSWORDS["JETSERVE_NATS_PASSWORD"])
    await provision_model(service.jetstream(), "echo", QueueSettings())
    await provision_model(service.jetstream(), "echo-b", QueueSettings())
    store = await RouteStore.open(service)
    await store.put(Route("chat", [Target("echo", 90), Target("echo-b", 10)]))
    tenant = await nats.connect(
        url,
        user="tenant-acme",
        password=PASSWORDS["TENANT_ACME_NATS_PASSWORD"],
        inbox_prefix="_INBOX_acme",
        error_cb=_ignore,
    )
    try:
        kv = await tenant.jetstream(timeout=2).key_value(names.ROUTES_BUCKET)
        entry = await kv.get("chat")
        assert entry.value is not None
        route = msgspec.json.decode(entry.value, type=Route)
        assert [(t.model, t.weight) for t in route.targets] == [("echo", 90), ("echo-b", 10)]
        watcher = await kv.watch("chat")
        first = await watcher.updates(timeout=2)  # type: ignore[no-untyped-call]
        assert first is not None
        assert first.key == "chat"
        await store.put(Route("chat", [Target("echo", 50), Target("echo-b", 50)]))
        changed = await watcher.updates(timeout=2)  # type: ignore[no-untyped-call]
        if changed is None:  # nats-py's marker: the values there were are all delivered
            changed = await watcher.updates(timeout=2)  # type: ignore[no-untyped-call]
        assert changed is not None
        assert changed.value is not None
        assert b"50" in changed.value
        await watcher.stop()  # type: ignore[no-untyped-call]
        with pytest.raises(nats.errors.Error):  # no write: the publish is refused, no PubAck
            await kv.put("chat", b"{}")
        again = await kv.get("chat")
        assert again.value == changed.value
    finally:
        await tenant.close()
        await service.close()


async def _ignore(exc: Exception) -> None:
    pass  # the refused put's permission violation

"""k8s/nats/values-prod.yaml's accounts, as the NATS Helm chart writes them into nats.conf
(`config.merge`, `<< $VAR >>` unquoted), loaded by a real nats-server: no anonymous client,
the `jetserve` user (password from the environment, as the chart's container.env gives it from
the Secret) provisions a model and its hand-back bucket, and KEDA reads the lag in JETSERVE."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
import yaml

from jetserve.k8s import OVERLAYS
from jetserve.servers import free_port, nats_server_binary
from schemas import names
from workers.config import ModelSpec, WorkerConfig
from workers.provision import provision_model
from workers.worker import queue_settings

from ..keda import keda_lag

pytestmark = pytest.mark.integration

VALUES = Path(__file__).resolve().parents[2] / "k8s" / "nats" / "values-prod.yaml"
PASSWORD = "0123456789abcdef" * 4  # URL-safe, as `openssl rand -hex 32`


def chart_config(merge: dict[str, object]) -> str:
    """`config.merge` as the chart renders it: JSON-like, `<< x >>` written unquoted."""
    return re.sub(r'"<< (.+?) >>"', r"\1", json.dumps(merge, indent=2))


@pytest.fixture
def prod_nats(tmp_path: Path) -> Iterator[tuple[str, str]]:
    values = yaml.safe_load(VALUES.read_text())
    env_names = set(values["container"]["env"])
    port, monitor = free_port(), free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(
        f"listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor}\n"
        f'jetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
        + chart_config(values["config"]["merge"])[1:-1]  # the map's members at top level
    )
    env = {**os.environ, **{n: PASSWORD if "JETSERVE" in n else "sys-pw" for n in env_names}}
    log = (tmp_path / "nats.log").open("wb")
    proc = subprocess.Popen(
        [nats_server_binary(), "-c", str(conf)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    end = time.monotonic() + 15
    while True:
        assert proc.poll() is None, (tmp_path / "nats.log").read_text()
        with contextlib.suppress(OSError):
            url = f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true"
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    break
        assert time.monotonic() < end, (tmp_path / "nats.log").read_text()
        time.sleep(0.05)
    yield f"127.0.0.1:{port}", f"http://127.0.0.1:{monitor}"
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    log.close()


async def _anonymous_connect(host: str) -> str:
    """The server's answer to a client without credentials (NATS protocol, by hand)."""
    address, port = host.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(address, int(port))
    try:
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 5)).decode()
    finally:
        writer.close()
        await writer.wait_closed()


async def test_prod_values_accounts_in_a_real_server(prod_nats: tuple[str, str]) -> None:
    host, monitor = prod_nats
    assert "Authorization Violation" in await _anonymous_connect(host)
    # The URL the manifests build from the Secret (jetserve/k8s_pod.py), with this host.
    nc = await nats.connect(f"nats://jetserve:{PASSWORD}@{host}")
    js = nc.jetstream()
    spec = ModelSpec(name="echo", capacity=8)
    await provision_model(js, "echo", queue_settings(WorkerConfig(), spec))
    await js.key_value(names.HANDBACK_BUCKET)
    await js.publish(names.request_subject("echo"), b"{}")
    account = OVERLAYS["prod"].nats_account
    reading = keda_lag(monitor, account, names.stream_name("echo"), "online")
    assert reading.consumer_found
    assert reading.lag == 1
    await nc.close()

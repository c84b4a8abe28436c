"""`jetserve routes ...` and `jetserve provision` (routes from the models file) against a real
nats-server."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import nats
import pytest

from jetserve.cli import main
from jetserve.servers import NatsServer
from natsio.routes import RouteStore
from schemas.routes import Route, Shadow, Target

pytestmark = pytest.mark.integration


def _routes(url: str) -> dict[str, Route]:
    async def read() -> dict[str, Route]:
        nc = await nats.connect(url)
        try:
            return await (await RouteStore.open(nc)).all()
        finally:
            await nc.close()

    return asyncio.run(read())


def test_provision_then_set_show_promote_rollback(
    nats_server: NatsServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JETSERVE_NATS_URL", nats_server.url)
    tag = uuid.uuid4().hex[:6]
    a, b, served = f"pa-{tag}", f"pb-{tag}", f"chat-{tag}"
    models = tmp_path / "models.toml"
    models.write_text(
        f'[[models]]\nname = "{a}"\n[[models]]\nname = "{b}"\n'
        f'[[routes]]\nname = "{served}"\ntargets = {{ {a} = 90, {b} = 10 }}\n'
    )
    assert main(["provision", "--models-file", str(models)]) == 0
    assert f"provisioned route {served}" in capsys.readouterr().out
    assert _routes(nats_server.url)[served] == Route(served, [Target(a, 90), Target(b, 10)])
    # Provisioning the same file again changes nothing (no new revision to roll back to).
    assert main(["provision", "--models-file", str(models)]) == 0
    assert "provisioned route" not in capsys.readouterr().out

    assert main(["routes", "set", served, f"{a}=50", f"{b}=50", "--shadow", f"{b}=5"]) == 0
    assert "50.0%" in capsys.readouterr().out
    assert main(["routes", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)[served]
    assert shown["targets"] == [{"model": a, "weight": 50}, {"model": b, "weight": 50}]
    assert _routes(nats_server.url)[served].shadow == Shadow(b, 5)

    assert main(["routes", "promote", served, b]) == 0
    assert _routes(nats_server.url)[served] == Route(served, [Target(a, 0), Target(b, 100)])
    assert main(["routes", "rollback", served]) == 0
    assert _routes(nats_server.url)[served].targets == [Target(a, 50), Target(b, 50)]

    for argv, problem in [
        (["routes", "set", served, f"ghost-{tag}=1"], "has no request stream"),
        (["routes", "set", served, f"{a}=0"], "must sum to more than 0"),
        (["routes", "set", "bad.name", f"{a}=1"], "invalid model name"),
        (["routes", "set", a, f"{b}=1"], "is a model's name"),
        (["routes", "set", served, f"{a}"], "MODEL=WEIGHT"),
        (["routes", "promote", served, f"ghost-{tag}"], "is not a target"),
    ]:
        assert main(argv) == 2, argv
        assert problem in capsys.readouterr().err, argv
    assert _routes(nats_server.url)[served].targets == [Target(a, 50), Target(b, 50)]

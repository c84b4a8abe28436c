"""`jetserve k8s render` and the files under k8s/: every manifest validates against the
Kubernetes and KEDA schemas, and every name in them comes from schemas/names.py."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from jetserve.k8s import OVERLAYS, RenderOptions, model_toml, render, render_file
from jetserve.k8s_files import overlay_image, write_dir
from jetserve.k8s_names import worker_name
from schemas import names
from schemas.names import Priority
from schemas.settings import ConfigError
from workers.config import WorkerConfig, load_models_file

from .k8s_check import K8S, REPO, ManifestError, kustomize, load_all, validate

DEFAULT_MODELS = REPO / "jetserve" / "models.toml"

MODELS = """
[[models]]
name = "echo"
class = "echo"
capacity = 256

[[models]]
name = "Chat_7B"
engine = "llm"
path = "/models/chat-7b"
device = "cuda"
capacity = 48
min_replicas = 1
max_replicas = 8
gpus = 1
memory_mib = 40960
cpu_cores = 8
drain_timeout_s = 120

[[models]]
name = "embed"
class = "minilm"
capacity = 64
max_replicas = 3
gpus = 1
"""


@pytest.fixture
def models_file(tmp_path: Path) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(MODELS)
    return path


def _all(files: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [m for manifests in files.values() for m in manifests]


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _static_resources() -> list[Path]:
    """The hand-written resource files the kustomizations list (not patches, not rendered)."""
    found = []
    for kustomization in K8S.glob("**/kustomization.yaml"):
        if kustomization.parent.name == "models":
            continue
        for entry in yaml.safe_load(kustomization.read_text()).get("resources", []):
            path = kustomization.parent / entry
            if path.is_file():
                found.append(path)
    return found


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_rendered_manifests_validate(models_file: Path, overlay: str) -> None:
    docs = _all(render_file(models_file, RenderOptions(OVERLAYS[overlay])))
    assert sorted({d["kind"] for d in docs}) == [
        "ConfigMap",
        "Deployment",
        "Job",
        "PodDisruptionBudget",
        "ScaledObject",
    ]
    for doc in docs:
        validate(doc)


def test_static_manifests_validate() -> None:
    paths = _static_resources()
    assert {p.name for p in paths} >= {"namespace.yaml", "config.yaml", "bridge.yaml"}
    assert {p.name for p in paths} >= {"scheduler.yaml", "postgres.yaml"}
    for path in paths:
        if path.parent.name == "monitoring":
            continue  # Prometheus Operator kinds: tests/test_k8s_monitoring.py
        for doc in load_all(path.read_text()):
            validate(doc)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_kustomize_build_of_each_overlay_validates(overlay: str) -> None:
    docs = kustomize(K8S / "overlays" / overlay)
    if docs is None:
        pytest.skip("kubectl is not installed (the same files are validated one by one above)")
    kinds = {d["kind"] for d in docs}
    assert kinds >= {"Namespace", "Deployment", "Service", "PodDisruptionBudget"}
    assert kinds >= {"HorizontalPodAutoscaler", "ScaledObject", "Job", "ConfigMap"}
    assert "NetworkPolicy" in kinds
    assert all(d["metadata"].get("namespace", "jetserve") == "jetserve" for d in docs)
    for doc in docs:
        validate(doc)
    # The Secret the bridge and scheduler read: made by dev, expected to exist in prod.
    secrets = {d["metadata"]["name"] for d in _by_kind(docs, "Secret")}
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for d in _by_kind(docs, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        for e in c.get("env", [])
        if "valueFrom" in e
    }
    if overlay == "dev":
        assert refs
        assert refs <= secrets
    else:  # the database DSN and the NATS password, made outside the repository
        assert refs == {"jetserve-database", "jetserve-nats"}
        assert not secrets
    # Stream replicas: 3 in prod, where NATS runs 3 servers.
    config = next(
        d for d in _by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "jetserve-config"
    )
    assert config["data"]["JETSERVE_STREAM_REPLICAS"] == ("3" if overlay == "prod" else "1")


def test_validation_catches_mistakes(models_file: Path) -> None:
    docs = _all(render_file(models_file, RenderOptions(OVERLAYS["prod"])))
    deployment = copy.deepcopy(_by_kind(docs, "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(ManifestError, match="readinessprobe"):
        validate(deployment)
    scaled = copy.deepcopy(_by_kind(docs, "ScaledObject")[0])
    scaled["spec"]["pollingIntervall"] = 5
    with pytest.raises(ManifestError, match="pollingIntervall"):
        validate(scaled)
    scaled = copy.deepcopy(_by_kind(docs, "ScaledObject")[0])
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 48  # must be a string
    with pytest.raises(ManifestError, match="string"):
        validate(scaled)


def test_names_come_from_schemas(models_file: Path) -> None:
    specs = load_models_file(models_file)
    docs = _all(render_file(models_file, RenderOptions(OVERLAYS["prod"])))
    scaled = {
        d["metadata"]["labels"]["jetserve.io/model"]: d for d in _by_kind(docs, "ScaledObject")
    }
    deployments = {
        d["metadata"]["labels"]["jetserve.io/model"]: d for d in _by_kind(docs, "Deployment")
    }
    assert set(scaled) == set(deployments) == {s.name for s in specs}
    for spec in specs:
        so = scaled[spec.name]["spec"]
        assert so["scaleTargetRef"]["name"] == deployments[spec.name]["metadata"]["name"]
        triggers = [t["metadata"] for t in so["triggers"]]
        assert {t["stream"] for t in triggers} == {names.stream_name(spec.name)}
        assert [t["consumer"] for t in triggers] == [names.consumer_name(p) for p in Priority]
        command = deployments[spec.name]["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[command.index("--model") + 1] == spec.name

    # The tenant permissions example names exactly the echo model's subjects.
    accounts = (K8S / "nats" / "accounts.conf").read_text()
    allowed = re.findall(r'"(jetserve\.[^"]+)"', accounts)
    assert allowed == [
        *[names.tenant_request_subject("echo", "acme", p) for p in Priority],
        names.tenant_async_submit_subject("acme"),
        names.cancel_subscription("echo"),
        names.ping_subject("echo"),
    ]
    # The alerts find streams by the names schemas/names.py makes.
    rules = (K8S / "monitoring" / "prometheusrule.yaml").read_text()
    stream_re = re.search(r'stream_name=~"([^"]+)"', rules)
    assert stream_re is not None
    assert re.fullmatch(stream_re.group(1), names.stream_name("m-1"))
    model_re = re.search(r'"stream_name", "([^"]+)"', rules)
    assert model_re is not None
    extracted = re.fullmatch(model_re.group(1), names.stream_name("m-1"))
    assert extracted is not None
    assert extracted.group(1) == "m-1"
    assert f'stream_name="{names.DLQ_STREAM}"' in rules


def test_worker_deployment_and_scaling(models_file: Path, tmp_path: Path) -> None:
    options = RenderOptions(OVERLAYS["prod"], drain_timeout_s=42.5)
    docs = _all(render_file(models_file, options))
    by_model = {
        d["metadata"]["labels"]["jetserve.io/model"]: d for d in _by_kind(docs, "Deployment")
    }
    scaled = {
        d["metadata"]["labels"]["jetserve.io/model"]: d for d in _by_kind(docs, "ScaledObject")
    }
    config_maps = {d["metadata"]["name"]: d for d in _by_kind(docs, "ConfigMap")}
    whole = next(d for n, d in config_maps.items() if n.startswith("jetserve-models-"))
    assert whole["data"]["models.toml"] == MODELS  # the provisioning Job's: every model

    chat = by_model["Chat_7B"]
    assert chat["metadata"]["name"] == "jetserve-worker-chat-7b"
    assert "replicas" not in chat["spec"]  # KEDA owns the count
    pod = chat["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == [
        "jetserve",
        "worker",
        "--model",
        "Chat_7B",
        "--models-file",
        "/etc/jetserve/models.toml",
    ]
    # GPU models: every limit equals its request (Guaranteed QoS), sized by the models file.
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["memory"] == "40960Mi"
    assert container["resources"]["requests"]["cpu"] == "8"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    # Its own drain timeout (models file) wins over the render's default.
    assert {"name": "JETSERVE_DRAIN_TIMEOUT_S", "value": "120"} in container["env"]
    assert pod["terminationGracePeriodSeconds"] > 120
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "/drain" in " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    # Each worker mounts a models file holding only its own model.
    own = config_maps[pod["volumes"][0]["configMap"]["name"]]["data"]["models.toml"]
    assert load_models_file(_write(tmp_path / "own.toml", own)) == [
        s for s in load_models_file(models_file) if s.name == "Chat_7B"
    ]

    echo_pod = by_model["echo"]["spec"]["template"]["spec"]
    assert "nodeSelector" not in echo_pod
    assert "tolerations" not in echo_pod
    assert "cpu" not in echo_pod["containers"][0]["resources"]["limits"]  # never throttled
    echo_env = echo_pod["containers"][0]["env"]
    assert {"name": "JETSERVE_DRAIN_TIMEOUT_S", "value": "42.5"} in echo_env
    default_grace = RenderOptions(OVERLAYS["prod"]).drain_timeout_s
    assert default_grace == WorkerConfig().drain_timeout_s

    so = scaled["Chat_7B"]["spec"]
    assert (so["minReplicaCount"], so["maxReplicaCount"]) == (1, 8)
    assert scaled["echo"]["spec"]["minReplicaCount"] == 0  # scale to zero
    for t in so["triggers"]:
        assert t["type"] == "nats-jetstream"
        # Capacity 48 less the online reserve (12) and the priority reserve (1).
        assert t["metadata"]["lagThreshold"] == "35"
        assert t["metadata"]["activationLagThreshold"] == "0"
        assert t["metadata"]["account"] == "JETSERVE"  # prod's NATS has accounts
        assert t["metadata"]["natsServerMonitoringEndpoint"] == (
            "nats-headless.jetserve.svc.cluster.local:8222"
        )
    assert so["cooldownPeriod"] == OVERLAYS["prod"].cooldown_s
    dev = _by_kind(_all(render_file(models_file, RenderOptions(OVERLAYS["dev"]))), "ScaledObject")
    assert dev[0]["spec"]["cooldownPeriod"] == OVERLAYS["dev"].cooldown_s
    assert dev[0]["spec"]["triggers"][0]["metadata"]["account"] == "$G"


@pytest.mark.parametrize(
    ("models", "error"),
    [
        ('[[models]]\nname = "a"\n', "set `capacity`"),
        (
            '[[models]]\nname = "a"\ncapacity = 1\nmin_replicas = 5\nmax_replicas = 2\n',
            "min_replicas",
        ),
        (
            '[[models]]\nname = "a_b"\ncapacity = 1\n[[models]]\nname = "a-b"\ncapacity = 1\n',
            "both render as",
        ),
        (f'[[models]]\nname = "{"x" * 60}"\ncapacity = 1\n', "shorten"),
        ('[[models]]\nname = "ends-with-dash-"\ncapacity = 1\n', "label value"),
        # Billed for N GPUs, using one: refused until the engine shards.
        ('[[models]]\nname = "a"\ncapacity = 1\ngpus = 2\n', "does not shard"),
        (
            '[[models]]\nname = "a"\ncapacity = 1\n[[routes]]\nname = "c"\n'
            "targets = { a = 1, b = 1 }\n",
            "'b' has no request stream",
        ),
    ],
)
def test_render_refuses_what_cannot_be_deployed(tmp_path: Path, models: str, error: str) -> None:
    path = tmp_path / "models.toml"
    path.write_text(models)
    with pytest.raises(ConfigError, match=error):
        render_file(path, RenderOptions(OVERLAYS["dev"]))


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_committed_rendered_folders_are_up_to_date(tmp_path: Path, overlay: str) -> None:
    image = overlay_image(K8S / "overlays" / overlay / "kustomization.yaml")
    options = RenderOptions(OVERLAYS[overlay], image=image)
    write_dir(tmp_path, render_file(DEFAULT_MODELS, options), options)
    committed = K8S / "overlays" / overlay / "models"
    expected = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert {p.name: p.read_text() for p in committed.iterdir()} == expected, (
        f"run: jetserve k8s render --overlay {overlay} -o k8s/overlays/{overlay}/models"
    )


def test_write_dir_replaces_only_its_own_files(tmp_path: Path, models_file: Path) -> None:
    options = RenderOptions(OVERLAYS["dev"])
    out = tmp_path / "out"
    write_dir(out, render_file(models_file, options), options)
    (out / "notes.yaml").write_text("mine: true\n")
    assert (out / f"{worker_name('embed')}.yaml").exists()
    text = MODELS.split('[[models]]\nname = "embed"')[0]
    write_dir(
        out, render(text, load_models_file(_write(tmp_path / "m2.toml", text)), options), options
    )
    assert not (out / f"{worker_name('embed')}.yaml").exists()
    assert (out / "notes.yaml").read_text() == "mine: true\n"
    listed = yaml.safe_load((out / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(
        p.name for p in out.glob("*.yaml") if p.name not in {"kustomization.yaml", "notes.yaml"}
    )


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_cli_renders_to_stdout_and_to_a_folder(tmp_path: Path, models_file: Path) -> None:
    base = [sys.executable, "-m", "jetserve", "k8s", "render", "--models-file", str(models_file)]
    out = subprocess.run(
        [*base, "--overlay", "dev", "--nats-account", "JETSERVE"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
        timeout=60,
    )
    docs = load_all(out.stdout)
    assert len(_by_kind(docs, "ScaledObject")) == 3
    assert {
        t["metadata"]["account"]
        for d in _by_kind(docs, "ScaledObject")
        for t in d["spec"]["triggers"]
    } == {"JETSERVE"}
    subprocess.run(
        [*base, "-o", str(tmp_path / "rendered")],
        cwd=REPO,
        check=True,
        timeout=60,
        capture_output=True,
    )
    folder = tmp_path / "rendered"
    listed = yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]
    written = [d for f in listed for d in load_all((folder / f).read_text())]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in written) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in docs
    )
    built = kustomize(folder)
    if built is not None:  # kustomize reorders by kind, and changes nothing else
        key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
        assert sorted(built, key=key) == sorted(written, key=key)


def test_model_entries_survive_the_round_trip_and_changes_roll_only_their_model(
    tmp_path: Path, models_file: Path
) -> None:
    options = 'options = { top = { "a.b" = [1, 2.5, true, "x\\"y\\u00e9"] }, "k" = "v" }\n'
    text = MODELS.replace('class = "minilm"\n', 'class = "minilm"\n' + options)
    specs = load_models_file(_write(tmp_path / "m.toml", text))
    for spec in specs:
        assert load_models_file(_write(tmp_path / "one.toml", model_toml(spec))) == [spec]
    assert specs[2].options["top"]["a.b"] == [1, 2.5, True, 'x"y\u00e9']

    def templates(models: str) -> dict[str, Any]:
        o = RenderOptions(OVERLAYS["prod"])
        docs = _all(render(models, load_models_file(_write(tmp_path / "r.toml", models)), o))
        return {d["metadata"]["name"]: d["spec"]["template"] for d in _by_kind(docs, "Deployment")}

    before = templates(MODELS)
    after = templates(MODELS.replace("capacity = 48", "capacity = 32"))
    assert before["jetserve-worker-chat-7b"] != after["jetserve-worker-chat-7b"]
    assert before["jetserve-worker-echo"] == after["jetserve-worker-echo"]
    assert before["jetserve-worker-embed"] == after["jetserve-worker-embed"]


def test_runtime_models_render_and_validate(tmp_path: Path) -> None:
    """A ready-made runtime (engine = "sklearn") is sized and deployed as an SDK model."""
    path = tmp_path / "models.toml"
    path.write_text(
        '[[models]]\nname = "iris"\nengine = "sklearn"\npath = "/models/iris.joblib"\n'
        "capacity = 64\n"
    )
    docs = _all(render_file(path, RenderOptions(OVERLAYS["prod"])))
    for doc in docs:
        validate(doc)
    (deployment,) = _by_kind(docs, "Deployment")
    requests = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    assert (requests["cpu"], requests["memory"]) == ("500m", "1024Mi")


def test_versions_of_a_route_render_as_models_and_the_routes_travel_to_provisioning(
    tmp_path: Path,
) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        MODELS
        + """
[[models]]
name = "echo-ft"
class = "echo"
capacity = 256

[[routes]]
name = "chat"
targets = { echo = 90, echo-ft = 10 }
shadow = { model = "embed", percent = 5 }
"""
    )
    files = render_file(path, RenderOptions(OVERLAYS["dev"]))
    for doc in _all(files):
        validate(doc)
    for version in ("echo", "echo-ft"):
        own = files[f"{worker_name(version)}.yaml"]
        assert [m["kind"] for m in own] == [
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "ScaledObject",
        ]
        # Scales to zero once its queue drains (a version at weight 0).
        assert own[3]["spec"]["minReplicaCount"] == 0
    [config_map] = files["models-configmap.yaml"]
    assert config_map["data"]["models.toml"] == path.read_text()
    [job] = files["provision-job.yaml"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["jetserve", "provision"]

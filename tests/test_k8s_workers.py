"""What a platform team needs from the rendered workers and the static bridge: sizing from the
models file, a grace period that covers the drain and the backend's stop, availability
through node drains and rollouts, a writable model cache, a provisioning Job per image."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from jetserve.k8s import OVERLAYS, RenderOptions, render, render_file
from jetserve.k8s_pod import CACHE_DIR
from producer.http.config import BridgeConfig
from workers.backend import STOP_TIMEOUT_S
from workers.config import load_models_file

from .k8s_check import K8S, REPO, load_all

DEFAULT_MODELS = REPO / "jetserve" / "models.toml"
GIB = 1024


def _docs(models: Path = DEFAULT_MODELS, **options: Any) -> list[dict[str, Any]]:
    files = render_file(models, RenderOptions(OVERLAYS["prod"], **options))
    return [d for docs in files.values() for d in docs]


def _by_model(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["labels"]["jetserve.io/model"]: d
        for d in docs
        if d["kind"] == kind and "jetserve.io/model" in d["metadata"]["labels"]
    }


def _mib(quantity: str) -> int:
    assert quantity.endswith("Mi"), quantity
    return int(quantity[:-2])


def test_sizing_comes_from_the_models_file() -> None:
    deployments = _by_model(_docs(), "Deployment")
    for model, deployment in deployments.items():
        resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
        # A worker over its memory is killed itself, never a neighbour.
        assert resources["limits"]["memory"] == resources["requests"]["memory"], model
    smollm2 = deployments["smollm2"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert _mib(smollm2["requests"]["memory"]) >= 2.3 * GIB  # the engine's resident size
    echo = deployments["echo"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert _mib(echo["requests"]["memory"]) < 512  # not every model is sized alike


def test_grace_period_covers_the_drain_and_the_backend_stop() -> None:
    specs = {s.name: s for s in load_models_file(DEFAULT_MODELS)}
    for model, deployment in _by_model(_docs(drain_timeout_s=20), "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        drain = float(env["JETSERVE_DRAIN_TIMEOUT_S"])
        own = specs[model].drain_timeout_s
        assert drain == (20 if own is None else own)
        # The drain, then the backend's stop (its longest wait), then handing back and
        # closing: all before Kubernetes' SIGKILL.
        assert pod["terminationGracePeriodSeconds"] >= drain + STOP_TIMEOUT_S + 5, model
    assert specs["smollm2"].drain_timeout_s == 60  # long generations finish first


def test_availability_through_node_drains_and_rollouts() -> None:
    docs = _docs()
    budgets = _by_model(docs, "PodDisruptionBudget")
    for model, deployment in _by_model(docs, "Deployment").items():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        budget = budgets[model]["spec"]
        assert budget["maxUnavailable"] == 1
        assert budget["selector"]["matchLabels"] == pod_labels
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert spread[0]["topologyKey"] == "kubernetes.io/hostname"
        assert spread[0]["labelSelector"]["matchLabels"] == pod_labels
        # A new replica serves before an old one goes, also at one replica.
        assert deployment["spec"]["strategy"]["rollingUpdate"] == {
            "maxSurge": 1,
            "maxUnavailable": 0,
        }


def test_gpu_models_get_the_same_rollout_and_guaranteed_resources(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('[[models]]\nname = "g"\nengine = "llm"\npath = "/m"\ncapacity = 8\ngpus = 1\n')
    deployment = _by_model(_docs(path), "Deployment")["g"]
    resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"] == resources["limits"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_a_writable_model_cache_of_the_stated_size() -> None:
    specs = {s.name: s for s in load_models_file(DEFAULT_MODELS)}
    for model, deployment in _by_model(_docs(), "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        cache = volumes[mounts[CACHE_DIR]]["emptyDir"]
        assert cache["sizeLimit"] == f"{specs[model].model_cache_mib}Mi"
        assert env["JETSERVE_MODEL_CACHE"].startswith(CACHE_DIR + "/")
        assert env["HF_HOME"].startswith(CACHE_DIR + "/")
        assert "/tmp" in mounts  # the root filesystem is read-only
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert specs["smollm2"].model_cache_mib * 1024 * 1024 > 517_000_000  # the conversion


def test_the_provisioning_job_is_named_after_the_image_and_the_models_file() -> None:
    text = DEFAULT_MODELS.read_text()
    specs = load_models_file(DEFAULT_MODELS)

    def job(image: str, models: str = text) -> str:
        files = render(models, specs, RenderOptions(OVERLAYS["prod"], image=image))
        return str(files["provision-job.yaml"][0]["metadata"]["name"])

    assert job("r/jetserve:1") == job("r/jetserve:1")
    assert job("r/jetserve:1") != job("r/jetserve:2")  # an image bump: a new Job
    assert job("r/jetserve:1") != job("r/jetserve:1", text + "\n")


def test_the_bridge_has_no_replicas_and_waits_for_streams() -> None:
    docs = load_all((K8S / "base" / "bridge.yaml").read_text())
    bridge = next(d for d in docs if d["kind"] == "Deployment")
    assert "replicas" not in bridge["spec"]  # the HPA owns the count
    assert any(d["kind"] == "HorizontalPodAutoscaler" for d in docs)
    for path in K8S.glob("overlays/*/*.yaml"):
        for doc in load_all(path.read_text()):
            if doc.get("kind") == "Deployment" and doc["metadata"]["name"] == "jetserve-bridge":
                assert "replicas" not in doc.get("spec", {}), path
    pod = bridge["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    graceful = BridgeConfig.from_env({**env, "JETSERVE_AUTH": "off"}).graceful_shutdown_s
    assert graceful >= 300  # SSE streams of long generations
    sleep = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > sleep + graceful


def test_stream_size_is_a_models_file_setting_with_a_default(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(
        '[[models]]\nname = "a"\ncapacity = 1\n[[models]]\nname = "b"\ncapacity = 1\n'
        "max_stream_mib = 64\n"
    )
    a, b = load_models_file(path)
    assert a.max_stream_mib == 256
    assert b.max_stream_mib == 64
    # Each worker mounts its own entry, with the setting.
    own = next(d for d in _docs(path) if d["metadata"]["name"].startswith("jetserve-worker-b-"))
    assert tomllib.loads(own["data"]["models.toml"])["models"][0]["max_stream_mib"] == 64

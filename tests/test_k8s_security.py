"""Security of what `jetserve k8s render` and k8s/ deploy: every pod passes Pod Security
"restricted", a worker's /drain is out of other pods' reach, NATS credentials come from a
Secret, and the NetworkPolicies let in exactly jetserve's pods, KEDA and Prometheus."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from jetserve.k8s import OVERLAYS, RenderOptions, render_file

from .k8s_check import K8S, REPO, kustomize, load_all, validate
from .netpol import Pod, allowed
from .pod_security import pod_templates, restricted_violations

DEFAULT_MODELS = REPO / "jetserve" / "models.toml"
GPU_MODEL = """
[[models]]
name = "big"
engine = "llm"
path = "/models/big"
capacity = 16
gpus = 1
"""


def _rendered(overlay: str, models: Path = DEFAULT_MODELS) -> list[dict[str, Any]]:
    files = render_file(models, RenderOptions(OVERLAYS[overlay]))
    return [d for docs in files.values() for d in docs]


def _static() -> list[dict[str, Any]]:
    docs = []
    for kustomization in K8S.glob("**/kustomization.yaml"):
        if kustomization.parent.name in {"models", "monitoring"}:
            continue
        for entry in yaml.safe_load(kustomization.read_text()).get("resources", []):
            path = kustomization.parent / entry
            if path.is_file():
                docs += load_all(path.read_text())
    return docs


def _every_workload(tmp_path: Path) -> list[dict[str, Any]]:
    gpu = tmp_path / "gpu.toml"
    gpu.write_text(GPU_MODEL)
    docs = _static() + _rendered("dev") + _rendered("prod") + _rendered("prod", gpu)
    for overlay in OVERLAYS:
        built = kustomize(K8S / "overlays" / overlay)
        docs += built or []
    return [d for d in docs if pod_templates(d)]


def test_every_pod_passes_the_restricted_profile(tmp_path: Path) -> None:
    workloads = _every_workload(tmp_path)
    names = {(d["kind"], d["metadata"]["name"]) for d in workloads}
    assert ("StatefulSet", "postgres") in names
    assert ("Deployment", "jetserve-bridge") in names
    assert ("Deployment", "jetserve-worker-smollm2") in names
    assert ("Deployment", "jetserve-worker-big") in names
    assert any(kind == "Job" for kind, _ in names)
    for doc in workloads:
        for pod in pod_templates(doc):
            assert restricted_violations(pod) == [], (doc["kind"], doc["metadata"]["name"])


def _sc(pod: dict[str, Any]) -> dict[str, Any]:
    sc: dict[str, Any] = pod["containers"][0]["securityContext"]
    return sc


BREAKS: list[tuple[str, Any]] = [
    ("allowPrivilegeEscalation", lambda p: _sc(p).pop("allowPrivilegeEscalation")),
    ("drop lacks ALL", lambda p: _sc(p).update(capabilities={})),
    ("seccompProfile None", lambda p: p["securityContext"].pop("seccompProfile")),
    ("runAsNonRoot", lambda p: p["securityContext"].pop("runAsNonRoot")),
    ("hostPath", lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}})),
]


@pytest.mark.parametrize(("rule", "breaks"), BREAKS)
def test_the_restricted_check_catches_each_rule(rule: str, breaks: Any) -> None:
    doc = next(d for d in _rendered("prod") if d["kind"] == "Deployment")
    pod = copy.deepcopy(pod_templates(doc)[0])
    assert restricted_violations(pod) == []
    breaks(pod)
    assert any(rule in v for v in restricted_violations(pod)), rule


def test_drain_is_reachable_only_from_inside_the_pod() -> None:
    for doc in _rendered("prod"):
        if doc["kind"] != "Deployment":
            continue
        container = doc["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        drain_port = env["JETSERVE_WORKER_DRAIN_PORT"]
        assert drain_port != env["JETSERVE_WORKER_METRICS_PORT"]
        # Not a container port (nothing outside the pod is meant to reach it) ...
        assert int(drain_port) not in {p["containerPort"] for p in container["ports"]}
        # ... and the hook runs inside the container, against its loopback.
        hook = container["lifecycle"]["preStop"]
        assert "httpGet" not in hook
        assert f"http://127.0.0.1:{drain_port}/drain" in " ".join(hook["exec"]["command"])


def _nats_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", []) if "NATS" in e["name"]}


def test_prod_nats_credentials_come_from_a_secret() -> None:
    containers = [
        c for d in _rendered("prod") for pod in pod_templates(d) for c in pod["containers"]
    ]
    built = kustomize(K8S / "overlays" / "prod")
    if built is not None:
        containers += [
            c
            for d in built
            if d["metadata"]["name"] in {"jetserve-bridge", "jetserve-scheduler"}
            for pod in pod_templates(d)
            for c in pod["containers"]
        ]
        assert len(containers) == 6  # 3 workers, the Job, the bridge, the scheduler
    for c in containers:
        env = _nats_env(c)
        password = env["JETSERVE_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert password == {"name": "jetserve-nats", "key": "password"}
        assert env["JETSERVE_NATS_URL"]["value"] == (
            "nats://jetserve:$(JETSERVE_NATS_PASSWORD)@nats:4222"
        )
        names = [e["name"] for e in c["env"]]  # $(VAR) expands only what comes before
        assert names.index("JETSERVE_NATS_PASSWORD") < names.index("JETSERVE_NATS_URL")
    # No credentials in any ConfigMap.
    for doc in _static():
        if doc["kind"] == "ConfigMap":
            assert "@" not in doc["data"].get("JETSERVE_NATS_URL", ""), doc["metadata"]["name"]


def _policies() -> list[dict[str, Any]]:
    docs = load_all((K8S / "base" / "network-policies.yaml").read_text())
    docs += load_all((K8S / "overlays" / "dev" / "postgres.yaml").read_text())
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    for policy in policies:
        validate(policy)
    return policies


def _jetserve_pods() -> dict[str, Pod]:
    """Every jetserve pod, with the labels and named ports its manifest gives it."""
    pods = {}
    for doc in _static() + _rendered("dev"):
        for pod in pod_templates(doc):
            template = doc["spec"]["template"]
            ports = {
                p["name"]: p["containerPort"]
                for c in pod["containers"]
                for p in c.get("ports", [])
                if "name" in p
            }
            pods[doc["metadata"]["name"]] = Pod(template["metadata"]["labels"], ports=ports)
    return pods


PROMETHEUS = Pod({"app.kubernetes.io/name": "prometheus"}, namespace="monitoring")
KEDA = Pod({"app.kubernetes.io/name": "keda-operator"}, namespace="keda")
STRANGER = Pod({"app": "x"}, namespace="default")
#: Another namespace's pod wearing jetserve's labels: a podSelector alone does not cover it.
IMPOSTOR = Pod({"app.kubernetes.io/name": "jetserve"}, namespace="default")
NATS = Pod({"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": "nats"})


@pytest.mark.parametrize(
    ("source", "target", "port", "expected"),
    [
        # Metrics of workers and the scheduler: Prometheus only.
        ("prometheus", "jetserve-worker-echo", 9090, True),
        ("jetserve-bridge", "jetserve-worker-echo", 9090, False),
        ("jetserve-worker-smollm2", "jetserve-worker-echo", 9090, False),
        ("stranger", "jetserve-worker-echo", 9090, False),
        ("prometheus", "jetserve-scheduler", 9090, True),
        ("jetserve-bridge", "jetserve-scheduler", 9090, False),
        # The API: everyone.
        ("stranger", "jetserve-bridge", 8000, True),
        # NATS clients: jetserve's pods only.
        ("jetserve-worker-echo", "nats", 4222, True),
        ("jetserve-bridge", "nats", 4222, True),
        ("jetserve-scheduler", "nats", 4222, True),
        ("provision", "nats", 4222, True),
        ("stranger", "nats", 4222, False),
        ("impostor", "nats", 4222, False),
        ("keda", "nats", 4222, False),
        # NATS monitoring: KEDA's scaler; the exporter: Prometheus; routes: NATS itself.
        ("keda", "nats", 8222, True),
        ("jetserve-worker-echo", "nats", 8222, False),
        ("prometheus", "nats", 7777, True),
        ("jetserve-bridge", "nats", 7777, False),
        ("nats", "nats", 6222, True),
        ("jetserve-worker-echo", "nats", 6222, False),
        # Postgres: the bridge and the scheduler.
        ("jetserve-bridge", "postgres", 5432, True),
        ("jetserve-scheduler", "postgres", 5432, True),
        ("jetserve-worker-echo", "postgres", 5432, True),  # tenant limits of NATS requests
        ("stranger", "postgres", 5432, False),
    ],
)
def test_network_policies(source: str, target: str, port: int, expected: bool) -> None:
    pods = _jetserve_pods()
    provision = next(p for n, p in pods.items() if n.startswith("jetserve-provision-"))
    named = {
        "prometheus": PROMETHEUS,
        "keda": KEDA,
        "stranger": STRANGER,
        "impostor": IMPOSTOR,
        "nats": NATS,
        "provision": provision,
        **pods,
    }
    assert allowed(_policies(), named[source], named[target], port) is expected

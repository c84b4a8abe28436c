"""`jetserve k8s render`: the per-model Kubernetes manifests, from the models file.

For each model: a worker Deployment, the ConfigMap with its own entry of the models file, a
PodDisruptionBudget, and a KEDA ScaledObject scaling on one formula over its two consumers'
lag (jetserve/k8s_scaling.py). Once per models file: the ConfigMap holding all of it, and the
Job that runs
`jetserve provision` so every stream and consumer exists before KEDA looks at it (KEDA's
scaler errors on a missing stream, and on a missing consumer reads the stream's last sequence
as the lag, scaling to the maximum).

Stream and consumer names come from `schemas.names`, never typed here. The static parts
(namespace, shared config, bridge, scheduler, Postgres) are kustomize files under `k8s/`;
the overlays there include a rendered folder (`k8s/overlays/<overlay>/models/`).
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from jetserve.k8s_names import check_label_value, labels, worker_name
from jetserve.k8s_pod import (
    CACHE_ENV,
    CONTAINER_SECURITY,
    DRAIN_HOOK,
    DRAIN_PORT,
    GPU_RESOURCE,
    POD_SECURITY,
    cache_volumes,
    grace_period_s,
    nats_env,
    resources,
    topology_spread,
)
from jetserve.k8s_scaling import capacity, scaled_object
from schemas.settings import ConfigError
from workers.config import ModelsFile, ModelSpec, WorkerConfig, load_models_file, load_routes

Manifest = dict[str, Any]

#: The image every jetserve container runs; the overlays set the real name and tag (`images:`).
IMAGE = "jetserve"
#: Environment shared by every jetserve container (k8s/base/config.yaml).
CONFIG_MAP = "jetserve-config"
MODELS_DIR = "/etc/jetserve"
MODELS_FILE = "models.toml"
METRICS_PORT = 9090
#: The NATS Helm chart's headless Service. KEDA must be pointed at it: in a cluster the scaler
#: finds the consumer's leader and queries `<pod>.<endpoint>`, which resolves only under the
#: StatefulSet's headless Service.
NATS_MONITORING_ENDPOINT = "nats-headless.{namespace}.svc.cluster.local:8222"
#: Account of the jetserve streams in the monitoring API; `$G` when NATS has no accounts.
NATS_ACCOUNT = "$G"
#: Label of GPU nodes (set by NVIDIA's GPU feature discovery / GPU operator).
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
#: The usual taint of GPU node pools, so that only pods asking for GPUs land there.
GPU_TOLERATIONS = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]


@dataclass(frozen=True)
class Overlay:
    name: str
    #: How often KEDA reads the lag.
    polling_interval_s: int
    #: After the lag was last above the activation threshold, this long before scaling to 0.
    cooldown_s: int
    #: The HPA's scale-down stabilization: the highest recommendation over this window wins.
    scale_down_window_s: int
    #: NATS account of jetserve's streams (KEDA's `/jsz?acc=`), and the Secret with the NATS
    #: password of the user `jetserve` (None: NATS without accounts).
    nats_account: str = NATS_ACCOUNT
    nats_secret: str | None = None


OVERLAYS = {
    # Fast reactions to try scaling out and in by hand; NATS without accounts.
    "dev": Overlay("dev", polling_interval_s=5, cooldown_s=60, scale_down_window_s=60),
    # Fewer cold starts: a model keeps its last replica 5 minutes after its queue empties.
    # NATS with accounts (k8s/nats/values-prod.yaml).
    "prod": Overlay(
        "prod",
        polling_interval_s=10,
        cooldown_s=300,
        scale_down_window_s=300,
        nats_account="JETSERVE",
        nats_secret="jetserve-nats",
    ),
}


@dataclass(frozen=True)
class RenderOptions:
    overlay: Overlay
    namespace: str = "jetserve"
    #: None: the NATS chart's headless Service in `namespace`.
    nats_monitoring_endpoint: str | None = None
    #: None: the overlay's.
    nats_account: str | None = None
    #: For models whose entry sets none.
    drain_timeout_s: float = WorkerConfig.drain_timeout_s
    #: The image the overlay runs (its `images:` entry): part of the provisioning Job's name.
    #: The containers name `IMAGE`, which kustomize replaces.
    image: str = IMAGE

    @property
    def monitoring_endpoint(self) -> str:
        return self.nats_monitoring_endpoint or NATS_MONITORING_ENDPOINT.format(
            namespace=self.namespace
        )

    @property
    def account(self) -> str:
        return self.nats_account or self.overlay.nats_account


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise ConfigError(f"cannot write {value!r} to TOML")


def model_toml(spec: ModelSpec) -> str:
    """A models file holding only `spec`: each worker Deployment mounts its own, so a change
    to one model rolls only that model's workers. Checked by reading it back."""
    raw = msgspec.to_builtins(spec)
    lines = ["[[models]]"] + [f"{k} = {_toml_value(v)}" for k, v in raw.items() if v is not None]
    text = "\n".join(lines) + "\n"
    if msgspec.convert(tomllib.loads(text), ModelsFile).models != [spec]:
        raise ConfigError(f"model {spec.name!r}: its entry does not survive a TOML round trip")
    return text


def _check(specs: list[ModelSpec]) -> None:
    seen: dict[str, str] = {}
    for spec in specs:
        check_label_value(spec.name)
        if spec.min_replicas > spec.max_replicas:
            raise ConfigError(
                f"model {spec.name!r}: min_replicas {spec.min_replicas} > "
                f"max_replicas {spec.max_replicas}"
            )
        if spec.gpus > 1:
            raise ConfigError(
                f"model {spec.name!r}: gpus = {spec.gpus}, but a worker runs its model on one "
                "GPU (the engine does not shard a model across GPUs yet): use gpus = 1"
            )
        capacity(spec)
        name = worker_name(spec.name)
        if name in seen:
            raise ConfigError(f"models {seen[name]!r} and {spec.name!r} both render as {name!r}")
        seen[name] = spec.name


def _models_volume(config_map: str) -> Manifest:
    return {"name": "models", "configMap": {"name": config_map}}


def _models_mount() -> Manifest:
    return {"name": "models", "mountPath": MODELS_DIR, "readOnly": True}


def _probe(path: str, period_s: int, failures: int, timeout_s: int = 3) -> Manifest:
    return {
        "httpGet": {"path": path, "port": "metrics"},
        "periodSeconds": period_s,
        "failureThreshold": failures,
        "timeoutSeconds": timeout_s,
    }


def drain_timeout_s(spec: ModelSpec, o: RenderOptions) -> float:
    return o.drain_timeout_s if spec.drain_timeout_s is None else spec.drain_timeout_s


def worker_deployment(spec: ModelSpec, config_map: str, o: RenderOptions) -> Manifest:
    name = worker_name(spec.name)
    lbl = labels("worker", spec.name)
    drain_s = drain_timeout_s(spec, o)
    cache, cache_mounts = cache_volumes(spec)
    container: Manifest = {
        "name": "worker",
        "image": IMAGE,
        "command": [
            "jetserve",
            "worker",
            "--model",
            spec.name,
            "--models-file",
            f"{MODELS_DIR}/{MODELS_FILE}",
        ],
        "envFrom": [{"configMapRef": {"name": CONFIG_MAP}}],
        "env": [
            {"name": "JETSERVE_WORKER_METRICS_PORT", "value": str(METRICS_PORT)},
            {"name": "JETSERVE_WORKER_DRAIN_PORT", "value": str(DRAIN_PORT)},
            {"name": "JETSERVE_DRAIN_TIMEOUT_S", "value": f"{drain_s:g}"},
            *CACHE_ENV,
            *nats_env(o.overlay.nats_secret),
            # Tenant limits on requests published straight to NATS are read from the
            # database (optional: without it a worker applies the default limits only).
            {
                "name": "JETSERVE_DATABASE_URL",
                "valueFrom": {
                    "secretKeyRef": {"name": "jetserve-database", "key": "dsn", "optional": True}
                },
            },
        ],
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
        # The endpoint answers from the start (workers/probes.py): the startup probe only
        # covers the interpreter starting; the model loads while the pod is live but unready.
        "startupProbe": _probe("/healthz", period_s=2, failures=30),
        "livenessProbe": _probe("/healthz", period_s=10, failures=6, timeout_s=5),
        # Ready: model loaded and NATS connected. A worker has no Service; readiness gates
        # rollouts (a new replica must serve before an old one goes).
        "readinessProbe": _probe("/readyz", period_s=5, failures=2),
        # Starts the drain (stop pulling, finish in-flight work) before SIGTERM arrives. Run
        # in the container: /drain listens on the pod's loopback only, out of other pods' reach.
        "lifecycle": {"preStop": {"exec": {"command": list(DRAIN_HOOK)}}},
        "resources": resources(spec),
        "securityContext": dict(CONTAINER_SECURITY),
        "volumeMounts": [_models_mount(), *cache_mounts],
    }
    volumes = [_models_volume(config_map), *cache]
    pod: Manifest = {
        "automountServiceAccountToken": False,  # a worker never calls the Kubernetes API
        "securityContext": dict(POD_SECURITY),
        "terminationGracePeriodSeconds": grace_period_s(drain_s),
        "topologySpreadConstraints": topology_spread(lbl),
        "containers": [container],
        "volumes": volumes,
    }
    if spec.gpus > 0:
        # PyTorch and NCCL use shared memory; the container default (64 MiB) is too small.
        container["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}})
        pod["nodeSelector"] = dict(GPU_NODE_SELECTOR)
        pod["tolerations"] = [dict(t) for t in GPU_TOLERATIONS]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": o.namespace, "labels": lbl},
        # No `replicas`: KEDA owns the count, and applying the manifest again must not reset it.
        "spec": {
            "selector": {"matchLabels": lbl},
            "revisionHistoryLimit": 3,
            # A new replica serves before an old one goes: a model keeps serving through a
            # rollout, also at one replica (GPU models need one spare GPU meanwhile).
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {"metadata": {"labels": lbl}, "spec": pod},
        },
    }


def disruption_budget(spec: ModelSpec, o: RenderOptions) -> Manifest:
    """Voluntary evictions (node drains, upgrades) take one replica of a model at a time."""
    lbl = labels("worker", spec.name)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": worker_name(spec.name), "namespace": o.namespace, "labels": lbl},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": lbl}},
    }


def worker_scaled_object(spec: ModelSpec, o: RenderOptions) -> Manifest:
    ov = o.overlay
    return scaled_object(
        spec,
        name=worker_name(spec.name),
        namespace=o.namespace,
        labels=labels("worker", spec.name),
        monitoring_endpoint=o.monitoring_endpoint,
        account=o.account,
        polling_interval_s=ov.polling_interval_s,
        cooldown_s=ov.cooldown_s,
        scale_down_window_s=ov.scale_down_window_s,
    )


def models_config_map(name: str, text: str, o: RenderOptions, model: str | None = None) -> Manifest:
    """Named after its content's hash: a changed file is a new ConfigMap, which rolls the pods
    that mount it (a ConfigMap edited in place reaches running pods late, or never)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": o.namespace, "labels": labels("models", model)},
        "data": {MODELS_FILE: text},
    }


def provision_job(name: str, config_map: str, o: RenderOptions) -> Manifest:
    lbl = labels("provision")
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        # Named after the hash of the models file and the image: a Job's pod template cannot
        # change, so a new file or image gets a new Job; finished ones are deleted after a day.
        "metadata": {"name": name, "namespace": o.namespace, "labels": lbl},
        "spec": {
            "backoffLimit": 20,  # NATS may come up after the Job
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": lbl},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": dict(POD_SECURITY),
                    "restartPolicy": "OnFailure",
                    "containers": [
                        {
                            "name": "provision",
                            "image": IMAGE,
                            "command": [
                                "jetserve",
                                "provision",
                                "--models-file",
                                f"{MODELS_DIR}/{MODELS_FILE}",
                            ],
                            "envFrom": [{"configMapRef": {"name": CONFIG_MAP}}],
                            "env": nats_env(o.overlay.nats_secret),
                            "securityContext": dict(CONTAINER_SECURITY),
                            "volumeMounts": [_models_mount()],
                        }
                    ],
                    "volumes": [_models_volume(config_map)],
                },
            },
        },
    }


def render(models_text: str, specs: list[ModelSpec], o: RenderOptions) -> dict[str, list[Manifest]]:
    """File name -> the manifests it holds, for every model in `specs`."""
    _check(specs)
    digest = hashlib.sha256(models_text.encode()).hexdigest()[:10]
    config_map = f"jetserve-models-{digest}"
    job_digest = hashlib.sha256(f"{o.image}\n{models_text}".encode()).hexdigest()[:10]
    files: dict[str, list[Manifest]] = {
        "models-configmap.yaml": [models_config_map(config_map, models_text, o)],
        "provision-job.yaml": [provision_job(f"jetserve-provision-{job_digest}", config_map, o)],
    }
    for spec in specs:
        text = model_toml(spec)
        name = worker_name(spec.name)
        own = f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"
        files[f"{name}.yaml"] = [
            models_config_map(own, text, o, spec.name),
            worker_deployment(spec, own, o),
            disruption_budget(spec, o),
            worker_scaled_object(spec, o),
        ]
    return files


def render_file(models_file: Path, o: RenderOptions) -> dict[str, list[Manifest]]:
    """The file's routes are checked too (a bad one is refused here, not by the Job); they
    travel in the models ConfigMap, and the provisioning Job stores them in the routes
    bucket. A version is a model: its own Deployment and ScaledObject, scaled to zero once a
    weight of 0 has drained its queue."""
    load_routes(models_file)
    return render(models_file.read_text(), load_models_file(models_file), o)

"""`jetserve k8s render`: the per-model Kubernetes manifests, from the models file.

For each model: a worker Deployment, the ConfigMap with its own entry of the models file, and
a KEDA ScaledObject with one `nats-jetstream` trigger per durable consumer. Once per models
file: the ConfigMap holding all of it, and the Job that runs
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
import math
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import yaml

from schemas import names
from schemas.names import Priority
from schemas.settings import ConfigError
from workers.config import ModelsFile, ModelSpec, WorkerConfig, load_models_file

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
GPU_RESOURCE = "nvidia.com/gpu"
#: Label of GPU nodes (set by NVIDIA's GPU feature discovery / GPU operator).
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
#: The usual taint of GPU node pools, so that only pods asking for GPUs land there.
GPU_TOLERATIONS = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
#: Added to the worker's drain timeout for the pod's grace period: handing back what is left,
#: closing the NATS connection, stopping the backend.
GRACE_MARGIN_S = 15

#: The image runs as an unprivileged user (Dockerfile).
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001}

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


@dataclass(frozen=True)
class Overlay:
    name: str
    #: How often KEDA reads the lag.
    polling_interval_s: int
    #: After the lag was last above the activation threshold, this long before scaling to 0.
    cooldown_s: int
    #: The HPA's scale-down stabilization: the highest recommendation over this window wins.
    scale_down_window_s: int


OVERLAYS = {
    # Fast reactions to try scaling out and in by hand.
    "dev": Overlay("dev", polling_interval_s=5, cooldown_s=60, scale_down_window_s=60),
    # Fewer cold starts: a model keeps its last replica 5 minutes after its queue empties.
    "prod": Overlay("prod", polling_interval_s=10, cooldown_s=300, scale_down_window_s=300),
}


@dataclass(frozen=True)
class RenderOptions:
    overlay: Overlay
    namespace: str = "jetserve"
    #: None: the NATS chart's headless Service in `namespace`.
    nats_monitoring_endpoint: str | None = None
    nats_account: str = NATS_ACCOUNT
    drain_timeout_s: float = WorkerConfig.drain_timeout_s
    image: str = IMAGE

    @property
    def monitoring_endpoint(self) -> str:
        return self.nats_monitoring_endpoint or NATS_MONITORING_ENDPOINT.format(
            namespace=self.namespace
        )


def labels(component: str, model: str | None = None) -> dict[str, str]:
    out = {"app.kubernetes.io/name": "jetserve", "app.kubernetes.io/component": component}
    if model is not None:
        out["jetserve.io/model"] = model
    return out


def worker_name(model: str) -> str:
    """Name of the model's Deployment and ScaledObject (a DNS label)."""
    name = f"jetserve-worker-{model.lower().replace('_', '-')}"
    if len(name) > 63 or not _DNS_LABEL.fullmatch(name):
        raise ConfigError(
            f"model {model!r}: {name!r} is not a Kubernetes name (at most 63 of a-z 0-9 -, "
            "not ending in -): shorten the model name"
        )
    return name


def lag_threshold(spec: ModelSpec) -> int:
    """KEDA's per-replica lag target: replicas = ceil(lag / threshold). The lag counts
    messages waiting and in flight, and a replica holds `capacity` in flight, so a threshold
    of `capacity` asks for just enough replicas to hold every request without queueing."""
    if spec.capacity is None:
        raise ConfigError(
            f"model {spec.name!r}: set `capacity` in the models file; KEDA's lagThreshold "
            "is derived from it"
        )
    return spec.capacity


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
        if not _LABEL_VALUE.fullmatch(spec.name) or len(spec.name) > 63:
            raise ConfigError(f"model {spec.name!r} cannot be a Kubernetes label value")
        if spec.min_replicas > spec.max_replicas:
            raise ConfigError(
                f"model {spec.name!r}: min_replicas {spec.min_replicas} > "
                f"max_replicas {spec.max_replicas}"
            )
        lag_threshold(spec)
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


def worker_deployment(spec: ModelSpec, config_map: str, o: RenderOptions) -> Manifest:
    name = worker_name(spec.name)
    lbl = labels("worker", spec.name)
    gpu = spec.gpus > 0
    resources: Manifest = {"requests": {"cpu": "500m", "memory": "512Mi"}}
    if gpu:
        # Extended resources: the request must equal the limit.
        resources = {
            "requests": {"cpu": "2", "memory": "8Gi", GPU_RESOURCE: str(spec.gpus)},
            "limits": {GPU_RESOURCE: str(spec.gpus)},
        }
    container: Manifest = {
        "name": "worker",
        "image": o.image,
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
            {"name": "JETSERVE_DRAIN_TIMEOUT_S", "value": f"{o.drain_timeout_s:g}"},
        ],
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
        # The endpoint answers from the start (workers/probes.py): the startup probe only
        # covers the interpreter starting; the model loads while the pod is live but unready.
        "startupProbe": _probe("/healthz", period_s=2, failures=30),
        "livenessProbe": _probe("/healthz", period_s=10, failures=6, timeout_s=5),
        # Ready: model loaded and NATS connected. A worker has no Service; readiness gates
        # rollouts (a new replica must serve before an old one goes).
        "readinessProbe": _probe("/readyz", period_s=5, failures=2),
        # Starts the drain (stop pulling, finish in-flight work) before SIGTERM arrives, and
        # even where SIGTERM would not reach the worker (a shell as PID 1).
        "lifecycle": {"preStop": {"httpGet": {"path": "/drain", "port": "metrics"}}},
        "resources": resources,
        "volumeMounts": [_models_mount()],
    }
    volumes = [_models_volume(config_map)]
    pod: Manifest = {
        "automountServiceAccountToken": False,  # a worker never calls the Kubernetes API
        "securityContext": dict(POD_SECURITY),
        "terminationGracePeriodSeconds": math.ceil(o.drain_timeout_s) + GRACE_MARGIN_S,
        "containers": [container],
        "volumes": volumes,
    }
    if gpu:
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
            # No spare GPU is assumed for a surge pod: GPU models replace one replica at a time.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}
                if gpu
                else {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {"metadata": {"labels": lbl}, "spec": pod},
        },
    }


def scaled_object(spec: ModelSpec, o: RenderOptions) -> Manifest:
    name = worker_name(spec.name)
    ov = o.overlay
    triggers = [
        {
            "type": "nats-jetstream",
            "name": f"{names.consumer_name(priority)}-lag",
            "metadata": {
                "natsServerMonitoringEndpoint": o.monitoring_endpoint,
                "account": o.nats_account,
                "stream": names.stream_name(spec.name),
                "consumer": names.consumer_name(priority),
                "lagThreshold": str(lag_threshold(spec)),
                # Any message wakes a model scaled to zero.
                "activationLagThreshold": "0",
            },
        }
        for priority in Priority
    ]
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": o.namespace, "labels": labels("worker", spec.name)},
        "spec": {
            "scaleTargetRef": {"name": name},
            "pollingInterval": ov.polling_interval_s,
            "cooldownPeriod": ov.cooldown_s,
            "minReplicaCount": spec.min_replicas,
            "maxReplicaCount": spec.max_replicas,
            # NATS monitoring unreachable: keep what runs (at least one replica), never scale
            # in blind.
            "fallback": {
                "failureThreshold": 3,
                "replicas": max(1, spec.min_replicas),
                "behavior": "currentReplicasIfHigher",
            },
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        "scaleUp": {
                            "stabilizationWindowSeconds": 0,
                            "selectPolicy": "Max",
                            "policies": [
                                {"type": "Percent", "value": 100, "periodSeconds": 15},
                                {"type": "Pods", "value": 4, "periodSeconds": 15},
                            ],
                        },
                        # One replica a minute: each one drains before it goes.
                        "scaleDown": {
                            "stabilizationWindowSeconds": ov.scale_down_window_s,
                            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                        },
                    }
                }
            },
            "triggers": triggers,
        },
    }


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
        # Named after the models file's hash: a Job's pod template cannot change, so a new
        # models file gets a new Job; finished ones are deleted after a day.
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
                            "image": o.image,
                            "command": [
                                "jetserve",
                                "provision",
                                "--models-file",
                                f"{MODELS_DIR}/{MODELS_FILE}",
                            ],
                            "envFrom": [{"configMapRef": {"name": CONFIG_MAP}}],
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
    files: dict[str, list[Manifest]] = {
        "models-configmap.yaml": [models_config_map(config_map, models_text, o)],
        "provision-job.yaml": [provision_job(f"jetserve-provision-{digest}", config_map, o)],
    }
    for spec in specs:
        text = model_toml(spec)
        name = worker_name(spec.name)
        own = f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"
        files[f"{name}.yaml"] = [
            models_config_map(own, text, o, spec.name),
            worker_deployment(spec, own, o),
            scaled_object(spec, o),
        ]
    return files


def render_file(models_file: Path, o: RenderOptions) -> dict[str, list[Manifest]]:
    return render(models_file.read_text(), load_models_file(models_file), o)


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # plain YAML for people: no &anchors for dicts used twice


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(manifests: Iterable[Manifest]) -> str:
    return yaml.dump_all(list(manifests), Dumper=_Dumper, sort_keys=False, explicit_start=True)


_MARK = "# Generated by `jetserve k8s render"


def header(o: RenderOptions) -> str:
    return (
        f"{_MARK} --overlay {o.overlay.name}`: do not edit. Change\n"
        "# the models file and render again (k8s/README.md).\n"
    )


def _generated(path: Path) -> bool:
    try:
        with path.open() as f:
            return f.readline().startswith(_MARK)
    except (OSError, UnicodeDecodeError):
        return False


def write_dir(out: Path, files: dict[str, list[Manifest]], o: RenderOptions) -> list[Path]:
    """Write the rendered files and a kustomization listing them. Files rendered earlier into
    the folder and not this time (a model removed) are deleted; nothing else is touched."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.yaml"):
        if old.name not in files and _generated(old):
            old.unlink()
    written = []
    for name, manifests in files.items():
        path = out / name
        path.write_text(header(o) + dump(manifests))
        written.append(path)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": list(files),
    }
    path = out / "kustomization.yaml"
    path.write_text(header(o) + yaml.dump(kustomization, Dumper=_Dumper, sort_keys=False))
    written.append(path)
    return written

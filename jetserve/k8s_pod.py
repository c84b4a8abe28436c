"""Pod parts every rendered jetserve container shares: the restricted security profile, NATS
credentials from a Secret, the writable model cache, a worker's resources and grace period.

Security: Pod Security "restricted" (non-root user 10001 of the image, seccomp RuntimeDefault,
no privilege escalation, every capability dropped) and a read-only root filesystem; what must
be writable is an emptyDir (the model cache, /tmp).
"""

from __future__ import annotations

import math
from typing import Any

from schemas.settings import NATS_URL
from workers.backend import STOP_TIMEOUT_S
from workers.config import ModelSpec

Manifest = dict[str, Any]

UID = 10001
POD_SECURITY: Manifest = {
    "runAsNonRoot": True,
    "runAsUser": UID,
    "runAsGroup": UID,
    "fsGroup": UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY: Manifest = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}

#: Where the image keeps converted weights and Hugging Face files (Dockerfile: the same ENV).
CACHE_DIR = "/var/cache/jetserve"
CACHE_ENV = [
    {"name": "JETSERVE_MODEL_CACHE", "value": f"{CACHE_DIR}/models"},
    {"name": "HF_HOME", "value": f"{CACHE_DIR}/hf"},
]
TMP_SIZE = "256Mi"

#: The NATS user jetserve's processes connect as, and the Secret holding its password (key
#: `password`), where the overlay's NATS has accounts (k8s/nats/values-prod.yaml).
NATS_USER = "jetserve"
NATS_PASSWORD_ENV = "JETSERVE_NATS_PASSWORD"
NATS_HOST = "nats:4222"

#: The worker's drain endpoint: loopback only, reached by the preStop hook run in the pod.
DRAIN_PORT = 9091
DRAIN_HOOK = [
    "python",
    "-c",
    "import urllib.request as u; "
    f"u.urlopen('http://127.0.0.1:{DRAIN_PORT}/drain', timeout=5).read()",
]
#: Beyond the drain timeout and the backend's stop: the preStop call, handing back what is
#: left (one KV write and a nak each), closing the NATS connection.
CLOSE_MARGIN_S = 10

#: Per engine when the models file sets none (sdk, llm): CPU cores, memory MiB.
DEFAULT_SIZES = {"sdk": (0.5, 1024), "llm": (2.0, 4096)}
GPU_RESOURCE = "nvidia.com/gpu"


def nats_env(secret: str | None) -> list[Manifest]:
    """With a Secret: its password in the environment, and the URL built from it by Kubernetes
    (`$(VAR)` expansion; the password must be URL-safe, e.g. `openssl rand -hex 32`). The
    ConfigMap's URL (no credentials) then never applies."""
    if secret is None:
        return []
    return [
        {
            "name": NATS_PASSWORD_ENV,
            "valueFrom": {"secretKeyRef": {"name": secret, "key": "password"}},
        },
        {"name": NATS_URL, "value": f"nats://{NATS_USER}:$({NATS_PASSWORD_ENV})@{NATS_HOST}"},
    ]


def _quantity_cpu(cores: float) -> str:
    millis = round(cores * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def resources(spec: ModelSpec) -> Manifest:
    """Requests from the models file. Memory: limit = request (a worker over it is killed,
    never a neighbour). GPU models: every limit equals its request (Guaranteed QoS, last to
    be evicted; GPUs must anyway). CPU models: no CPU limit (no throttling)."""
    cpu_default, memory_default = DEFAULT_SIZES[spec.engine]
    cpu = _quantity_cpu(spec.cpu_cores if spec.cpu_cores is not None else cpu_default)
    memory = f"{spec.memory_mib if spec.memory_mib is not None else memory_default}Mi"
    storage = f"{spec.model_cache_mib + 256}Mi"  # the cache and /tmp
    requests = {"cpu": cpu, "memory": memory, "ephemeral-storage": storage}
    limits = {"memory": memory, "ephemeral-storage": storage}
    if spec.gpus > 0:
        requests[GPU_RESOURCE] = str(spec.gpus)
        limits = dict(requests)
    return {"requests": requests, "limits": limits}


def cache_volumes(spec: ModelSpec) -> tuple[list[Manifest], list[Manifest]]:
    """(volumes, mounts): the model cache, sized in the models file, and /tmp."""
    volumes = [
        {"name": "model-cache", "emptyDir": {"sizeLimit": f"{spec.model_cache_mib}Mi"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}},
    ]
    mounts = [
        {"name": "model-cache", "mountPath": CACHE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    return volumes, mounts


def grace_period_s(drain_timeout_s: float) -> int:
    """terminationGracePeriodSeconds: the drain, the backend's stop, closing."""
    return math.ceil(drain_timeout_s) + math.ceil(STOP_TIMEOUT_S) + CLOSE_MARGIN_S


def topology_spread(pod_labels: dict[str, str]) -> list[Manifest]:
    """Replicas of one model on different nodes where possible: a node lost or drained takes
    one of them, not all."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": dict(pod_labels)},
        }
    ]

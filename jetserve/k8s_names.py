"""The names and labels `jetserve k8s render` gives a model's Kubernetes objects, and the
rules Kubernetes sets for them: a model name must be a label value, and its worker's name a
DNS label."""

from __future__ import annotations

import re

from schemas.settings import ConfigError

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def labels(component: str, model: str | None = None) -> dict[str, str]:
    out = {"app.kubernetes.io/name": "jetserve", "app.kubernetes.io/component": component}
    if model is not None:
        out["jetserve.io/model"] = model
    return out


def worker_name(model: str) -> str:
    """Name of the model's Deployment, ScaledObject and PodDisruptionBudget (a DNS label)."""
    name = f"jetserve-worker-{model.lower().replace('_', '-')}"
    if len(name) > 63 or not _DNS_LABEL.fullmatch(name):
        raise ConfigError(
            f"model {model!r}: {name!r} is not a Kubernetes name (at most 63 of a-z 0-9 -, "
            "not ending in -): shorten the model name"
        )
    return name


def check_label_value(model: str) -> None:
    """A `ConfigError` unless `model` can be the value of the `jetserve.io/model` label."""
    if not _LABEL_VALUE.fullmatch(model) or len(model) > 63:
        raise ConfigError(f"model {model!r} cannot be a Kubernetes label value")

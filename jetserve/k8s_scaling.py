"""The KEDA ScaledObject of a model: one scaling formula over its two queues.

Each model's stream has two durable consumers, `online` and `batch`. A `nats-jetstream`
trigger per consumer reads its lag (`num_pending + num_ack_pending`: waiting plus held by
workers). KEDA's `advanced.scalingModifiers` combines them into one metric,

    online_lag + batch_lag        target: capacity - online reserve   (AverageValue)

so the HPA asks for `ceil((online_lag + batch_lag) / target)` replicas. One trigger per
consumer with the HPA taking the larger answer would under-count (32 online + 32 batch at
capacity 32: one replica for 64 requests). The target is what a replica holds while it keeps
the online reserve free for the next interactive request (workers/intake.py): capacity minus
that reserve. Activation (scale from zero): the formula above 0.

While KEDA's fallback is active (NATS monitoring unreachable for `failureThreshold` polls),
KEDA does not evaluate the formula: the fallback's replica count applies instead.
"""

from __future__ import annotations

from typing import Any

from schemas import names
from schemas.names import Priority
from schemas.settings import ConfigError
from workers.config import ModelSpec
from workers.intake import online_reserve

Manifest = dict[str, Any]

#: KEDA needs names usable in the formula (expr-lang identifiers): no dashes.
TRIGGER_NAMES = {p: f"{names.consumer_name(p)}_lag" for p in Priority}
FORMULA = " + ".join(TRIGGER_NAMES[p] for p in Priority)


def capacity(spec: ModelSpec) -> int:
    if spec.capacity is None:
        raise ConfigError(
            f"model {spec.name!r}: set `capacity` in the models file; KEDA's scaling target "
            "is derived from it"
        )
    return spec.capacity


def scaling_target(spec: ModelSpec, reserve: int | None = None) -> int:
    """Requests one replica should hold: its capacity less the online reserve (>= 1)."""
    cap = capacity(spec)
    return max(1, cap - online_reserve(cap, reserve))


def scaled_object(
    spec: ModelSpec,
    *,
    name: str,
    namespace: str,
    labels: dict[str, str],
    monitoring_endpoint: str,
    account: str,
    polling_interval_s: int,
    cooldown_s: int,
    scale_down_window_s: int,
    reserve: int | None = None,
) -> Manifest:
    target = str(scaling_target(spec, reserve))
    triggers = [
        {
            "type": "nats-jetstream",
            "name": TRIGGER_NAMES[priority],
            "metadata": {
                "natsServerMonitoringEndpoint": monitoring_endpoint,
                "account": account,
                "stream": names.stream_name(spec.name),
                "consumer": names.consumer_name(priority),
                # Not used for the decision (the formula's target is), but KEDA reads it.
                "lagThreshold": target,
                "activationLagThreshold": "0",
            },
        }
        for priority in Priority
    ]
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "scaleTargetRef": {"name": name},
            "pollingInterval": polling_interval_s,
            "cooldownPeriod": cooldown_s,
            "minReplicaCount": spec.min_replicas,
            "maxReplicaCount": spec.max_replicas,
            # NATS monitoring unreachable: keep what runs (at least one replica), never scale
            # in blind. The formula is not evaluated meanwhile.
            "fallback": {
                "failureThreshold": 3,
                "replicas": max(1, spec.min_replicas),
                "behavior": "currentReplicasIfHigher",
            },
            "advanced": {
                "scalingModifiers": {
                    "formula": FORMULA,
                    "target": target,
                    # Any request in either queue wakes a model scaled to zero.
                    "activationTarget": "0",
                    "metricType": "AverageValue",
                },
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
                            "stabilizationWindowSeconds": scale_down_window_s,
                            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                        },
                    }
                },
            },
            "triggers": triggers,
        },
    }

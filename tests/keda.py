"""The lag KEDA's `nats-jetstream` scaler computes, computed the same way (KEDA's
pkg/scalers/nats_jetstream_scaler.go): GET
`<monitoring>/jsz?acc=<account>&consumers=true&config=true`, find the account, the stream and
the consumer named in the trigger: lag = num_pending + num_ack_pending. A missing stream is an
error for KEDA; a missing consumer makes it fall back to the stream's last sequence (scaling to
the maximum)."""

from __future__ import annotations

import json
import math
import urllib.request
from dataclasses import dataclass
from typing import Any


class StreamNotFound(LookupError):
    pass


@dataclass(frozen=True)
class KedaReading:
    lag: int
    consumer_found: bool
    num_pending: int
    num_ack_pending: int
    #: Messages stored in the stream, from the same response.
    stream_messages: int


def keda_lag(monitor_url: str, account: str, stream: str, consumer: str) -> KedaReading:
    # Built like KEDA builds it: no escaping of the account (`$G`).
    url = f"{monitor_url}/jsz?acc={account}&consumers=true&config=true"
    with urllib.request.urlopen(url, timeout=5) as resp:
        data = json.load(resp)
    for acc in data.get("account_details") or []:
        if acc.get("name") != account:
            continue
        for s in acc.get("stream_detail") or []:
            if s.get("name") != stream:
                continue
            messages = int(s["state"].get("messages", 0))
            for c in s.get("consumer_detail") or []:
                if c.get("name") == consumer:
                    pending, ack_pending = int(c["num_pending"]), int(c["num_ack_pending"])
                    return KedaReading(pending + ack_pending, True, pending, ack_pending, messages)
            return KedaReading(int(s["state"]["last_seq"]), False, 0, 0, messages)
    raise StreamNotFound(f"stream {stream} not found in account {account}")


# What KEDA and the HPA make of a ScaledObject with `advanced.scalingModifiers`
# (KEDA's pkg/scaling/modifiers: the formula over the named triggers' metrics, exposed to
# the HPA as one external metric; Kubernetes' replica calculator for AverageValue targets).
#: The HPA leaves the replicas as they are while the ratio is within this of 1.
HPA_TOLERANCE = 0.1


def evaluate_formula(formula: str, values: dict[str, float]) -> float:
    """The arithmetic subset of KEDA's expr-lang formulas: names, numbers, + - * / ( )."""
    import ast
    import operator

    ops = {
        ast.Add: operator.add,
        ast.Sub: operator.sub,
        ast.Mult: operator.mul,
        ast.Div: operator.truediv,
    }

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return float(ops[type(node.op)](ev(node.left), ev(node.right)))
        if isinstance(node, ast.Name):
            return float(values[node.id])  # KeyError: a name no trigger has
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        raise ValueError(f"unsupported in formula: {ast.dump(node)}")

    return ev(ast.parse(formula, mode="eval"))


def desired_replicas(scaled_object: dict[str, object], lags: dict[str, int], current: int) -> int:
    """Replicas KEDA + the HPA settle on for these per-consumer lags, from `current`
    (before the HPA's rate policies, which only pace the way there)."""
    spec: Any = scaled_object["spec"]
    modifiers = spec["advanced"]["scalingModifiers"]
    assert modifiers.get("metricType", "AverageValue") == "AverageValue"
    by_name = {str(t["name"]): float(lags[t["metadata"]["consumer"]]) for t in spec["triggers"]}
    value = evaluate_formula(modifiers["formula"], by_name)
    target = float(modifiers["target"])
    low, high = int(spec.get("minReplicaCount", 0)), int(spec["maxReplicaCount"])
    active = value > float(modifiers.get("activationTarget", "0"))
    if not active and low == 0:
        return 0  # KEDA scales to zero (after its cooldown)
    current = max(current, 1, low)  # KEDA activates to at least one; the HPA takes over
    ratio = value / (target * current)
    desired = current if abs(ratio - 1) <= HPA_TOLERANCE else math.ceil(value / target)
    return min(max(desired, max(1, low)), high)

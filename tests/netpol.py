"""Which connections a set of NetworkPolicies allows, as Kubernetes defines it: a pod
selected by no Ingress policy takes everything; otherwise a connection needs one rule of one
selecting policy whose peers and ports match. Peers: a podSelector alone means pods of the
policy's namespace; a namespaceSelector alone, every pod of the matching namespaces; both,
matching pods of matching namespaces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Pod:
    labels: dict[str, str]
    namespace: str = "jetserve"
    namespace_labels: dict[str, str] = field(default_factory=dict)
    #: Container port names -> numbers (named ports in policies resolve against these).
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def ns_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace, **self.namespace_labels}


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _peer_matches(peer: dict[str, Any], policy_ns: str, source: Pod) -> bool:
    pods, namespaces = peer.get("podSelector"), peer.get("namespaceSelector")
    if namespaces is None:
        return source.namespace == policy_ns and selects(pods, source.labels)
    if not selects(namespaces, source.ns_labels):
        return False
    return pods is None or selects(pods, source.labels)


def _port_matches(rule_ports: list[dict[str, Any]] | None, target: Pod, port: int) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        value = p.get("port")
        if value is None or value == port or target.ports.get(str(value)) == port:
            return True
    return False


def allowed(policies: list[dict[str, Any]], source: Pod, target: Pod, port: int) -> bool:
    selecting = [
        p
        for p in policies
        if p["metadata"].get("namespace", "jetserve") == target.namespace
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], target.labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        ns = policy["metadata"].get("namespace", "jetserve")
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from")
            if peers and not any(_peer_matches(peer, ns, source) for peer in peers):
                continue
            if _port_matches(rule.get("ports"), target, port):
                return True
    return False

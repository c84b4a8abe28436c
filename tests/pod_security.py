"""Kubernetes Pod Security Standards, "restricted" profile (which includes "baseline"), as
the API server's PodSecurity admission checks a pod template
(https://kubernetes.io/docs/concepts/security/pod-security-standards/). Returns the
violations, each naming the rule and the container."""

from __future__ import annotations

from typing import Any

RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def pod_templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod specs of a workload (Deployment, StatefulSet, DaemonSet, Job, CronJob, Pod)."""
    kind = doc.get("kind")
    if kind == "Pod":
        return [doc["spec"]]
    if kind == "CronJob":
        return [doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        return [doc["spec"]["template"]["spec"]]
    return []


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    out: list[str] = []
    psc = pod.get("securityContext") or {}
    containers = [
        *pod.get("initContainers", []),
        *pod.get("containers", []),
        *pod.get("ephemeralContainers", []),
    ]
    # Baseline.
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            out.append(f"baseline: {field}")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if "hostPath" in kinds:
            out.append(f"baseline: hostPath volume {volume['name']}")
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"restricted: volume {volume['name']} of type {sorted(kinds)}")
    for sysctl in psc.get("sysctls", []):
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"baseline: sysctl {sysctl.get('name')}")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp == "Unconfined":
        out.append("baseline: pod seccompProfile Unconfined")
    if psc.get("runAsUser") == 0:
        out.append("restricted: pod runAsUser 0")
    for c in containers:
        name = c.get("name")
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"baseline: {name} privileged")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"baseline: {name} hostPort")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"baseline: {name} procMount")
        # Restricted.
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"restricted: {name} allowPrivilegeEscalation != false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in caps.get("drop", []):
            out.append(f"restricted: {name} capabilities.drop lacks ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"restricted: {name} adds capabilities {caps.get('add')}")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            out.append(f"restricted: {name} runAsNonRoot != true")
        if sc.get("runAsUser") == 0:
            out.append(f"restricted: {name} runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in {"RuntimeDefault", "Localhost"}:
            out.append(f"restricted: {name} seccompProfile {seccomp}")
    return out

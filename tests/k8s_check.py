"""Validating Kubernetes manifests offline, for the k8s tests.

Built-in kinds: `kubernetes-validate` (the Kubernetes OpenAPI schemas, strict: unknown fields
are errors), for a pinned Kubernetes version. KEDA kinds: the OpenAPI v3 schema of KEDA's CRD
(copied in `k8s/crds/keda/`), with `jsonschema`, plus the check the API server's strict field
validation does and plain JSON Schema does not: no field the schema does not name.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
#: The Kubernetes version the manifests are checked against (kubectl sidecar-free `sleep`
#: preStop hooks need 1.30+).
KUBERNETES_VERSION = "1.32.0"
_CRDS = {
    ("keda.sh", "ScaledObject"): K8S / "crds" / "keda" / "keda.sh_scaledobjects.yaml",
}


class ManifestError(AssertionError):
    pass


@cache
def _crd_schema(group: str, kind: str, version: str) -> dict[str, Any]:
    crd = yaml.safe_load(_CRDS[(group, kind)].read_text())
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return dict(v["schema"]["openAPIV3Schema"])
    raise ManifestError(f"{group}/{version} {kind}: no such version in the CRD")


def _unknown_fields(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    if isinstance(value, dict):
        props = schema.get("properties")
        if props is None or schema.get("x-kubernetes-preserve-unknown-fields"):
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                return [
                    e for k, v in value.items() for e in _unknown_fields(v, extra, f"{path}.{k}")
                ]
            return []
        errors = [f"{path}.{k}: unknown field" for k in value if k not in props]
        for k, v in value.items():
            if k in props:
                errors += _unknown_fields(v, props[k], f"{path}.{k}")
        return errors
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [e for i, v in enumerate(value) for e in _unknown_fields(v, schema["items"], path)]
    return []


def validate(doc: dict[str, Any]) -> None:
    """Raise ManifestError naming the resource and the problem."""
    where = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
    group, _, version = str(doc.get("apiVersion", "")).rpartition("/")
    if (group, doc.get("kind")) in _CRDS:
        schema = _crd_schema(group, str(doc["kind"]), version)
        try:
            jsonschema.Draft7Validator(schema).validate(doc)
        except jsonschema.ValidationError as exc:
            raise ManifestError(f"{where}: {exc.message} at {list(exc.absolute_path)}") from None
        unknown = _unknown_fields(doc, schema, "")
        if unknown:
            raise ManifestError(f"{where}: {unknown}")
        return
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise ManifestError(f"{where}: {exc.message} at {list(exc.absolute_path)}") from None


def load_all(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def kustomize(folder: Path) -> list[dict[str, Any]] | None:
    """`kubectl kustomize folder`, or None where kubectl is not installed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    out = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        raise ManifestError(f"kubectl kustomize {folder}: {out.stderr}")
    return load_all(out.stdout)

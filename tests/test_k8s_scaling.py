"""The ScaledObject's one scaling formula over both consumers' lag, and the replicas KEDA and
the HPA derive from it for a table of lags (tests/keda.py does the arithmetic as they do)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jetserve.k8s import OVERLAYS, RenderOptions, render_file
from schemas import names
from schemas.names import Priority

from .k8s_check import validate
from .keda import desired_replicas, evaluate_formula

MODELS = """
[[models]]
name = "chat"
engine = "llm"
path = "builtin:smollm2"
capacity = 32
max_replicas = 8

[[models]]
name = "small"
class = "echo"
capacity = 1
min_replicas = 1
max_replicas = 3
"""


def _scaled(tmp_path: Path) -> dict[str, dict[str, Any]]:
    path = tmp_path / "models.toml"
    path.write_text(MODELS)
    docs = [d for ds in render_file(path, RenderOptions(OVERLAYS["prod"])).values() for d in ds]
    return {
        d["metadata"]["labels"]["jetserve.io/model"]: d for d in docs if d["kind"] == "ScaledObject"
    }


def test_one_formula_over_named_online_and_batch_triggers(tmp_path: Path) -> None:
    scaled = _scaled(tmp_path)["chat"]
    validate(scaled)  # KEDA's CRD schema, scalingModifiers included
    spec = scaled["spec"]
    modifiers = spec["advanced"]["scalingModifiers"]
    triggers = {t["name"]: t["metadata"]["consumer"] for t in spec["triggers"]}
    assert sorted(triggers.values()) == sorted(names.consumer_name(p) for p in Priority)
    # The formula names each trigger once: the sum of both lags.
    assert evaluate_formula(modifiers["formula"], dict.fromkeys(triggers, 1.0)) == 2.0
    # Capacity 32 less the online reserve (a quarter, workers/intake.py): 24 per replica.
    assert modifiers["target"] == "24"
    assert modifiers["activationTarget"] == "0"


# (online lag, batch lag, current replicas) -> replicas, for capacity 32 (target 24), 0..8.
TABLE = [
    ((0, 0, 0), 0),  # idle: scaled to zero
    ((1, 0, 0), 1),  # one online request wakes the model
    ((0, 1, 0), 1),  # ... as does one batch item
    ((32, 32, 1), 3),  # 64 requests: 3 replicas (one trigger per consumer gave 1)
    ((24, 0, 1), 1),  # exactly the target
    ((26, 0, 1), 1),  # within the HPA's 10 % tolerance
    ((27, 0, 1), 2),
    ((0, 500, 2), 8),  # capped at max_replicas
    ((10, 10, 3), 1),  # shrinking backlog
    ((48, 48, 4), 4),  # exactly 4 x 24
]


@pytest.mark.parametrize(("lags", "replicas"), TABLE)
def test_desired_replicas_for_a_table_of_lags(
    tmp_path: Path, lags: tuple[int, int, int], replicas: int
) -> None:
    online, batch, current = lags
    scaled = _scaled(tmp_path)["chat"]
    assert desired_replicas(scaled, {"online": online, "batch": batch}, current) == replicas


def test_capacity_one_keeps_a_target_of_one_and_min_replicas(tmp_path: Path) -> None:
    scaled = _scaled(tmp_path)["small"]
    assert scaled["spec"]["advanced"]["scalingModifiers"]["target"] == "1"
    assert desired_replicas(scaled, {"online": 0, "batch": 0}, 1) == 1  # min_replicas
    assert desired_replicas(scaled, {"online": 2, "batch": 0}, 1) == 2
    assert desired_replicas(scaled, {"online": 5, "batch": 5}, 1) == 3  # max_replicas

"""`engine = "xgboost"`: an XGBoost model saved with `save_model` (JSON or UBJSON).

Input `input-0` (FP32, [-1, num_features]); output `output-0` (FP32): what
`Booster.predict` gives (probabilities for a classifier's objective, values for a regressor).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from schemas.v2 import TensorMetadata
from workers.runtimes.base import Arrays, TensorModel


class XGBoostModel(TensorModel):
    platform: ClassVar[str] = "xgboost"
    openmp: ClassVar[bool] = True

    def load_file(self, path: Path) -> tuple[list[TensorMetadata], list[TensorMetadata]]:
        import xgboost

        self._xgb: Any = xgboost
        self._booster = xgboost.Booster(model_file=str(path))
        threads = self.options.get("threads")
        if threads:
            self._booster.set_param({"nthread": int(threads)})
        features = int(self._booster.num_features())
        probe = self._booster.predict(xgboost.DMatrix(np.zeros((1, features), np.float32)))
        return (
            [TensorMetadata("input-0", "FP32", [-1, features])],
            [TensorMetadata("output-0", "FP32", [-1, *probe.shape[1:]])],
        )

    def run(self, inputs: Arrays) -> Arrays:
        matrix = self._xgb.DMatrix(inputs["input-0"].astype(np.float32, copy=False))
        return {"output-0": np.asarray(self._booster.predict(matrix), dtype=np.float32)}

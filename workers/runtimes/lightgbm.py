"""`engine = "lightgbm"`: a LightGBM model saved with `save_model` (its text format).

Input `input-0` (FP64, [-1, num_features]); output `output-0` (FP64): what
`Booster.predict` gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from schemas.v2 import TensorMetadata
from workers.runtimes.base import Arrays, TensorModel


class LightGBMModel(TensorModel):
    platform: ClassVar[str] = "lightgbm"
    openmp: ClassVar[bool] = True

    def load_file(self, path: Path) -> tuple[list[TensorMetadata], list[TensorMetadata]]:
        import lightgbm

        self._booster = lightgbm.Booster(model_file=str(path))
        self._threads = int(self.options.get("threads", 0))
        features = int(self._booster.num_feature())
        probe = np.asarray(self._predict(np.zeros((1, features))))
        return (
            [TensorMetadata("input-0", "FP64", [-1, features])],
            [TensorMetadata("output-0", "FP64", [-1, *probe.shape[1:]])],
        )

    def _predict(self, rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        if self._threads:
            return np.asarray(self._booster.predict(rows, num_threads=self._threads))
        return np.asarray(self._booster.predict(rows))

    def run(self, inputs: Arrays) -> Arrays:
        return {"output-0": self._predict(inputs["input-0"]).astype(np.float64, copy=False)}

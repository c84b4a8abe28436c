"""`engine = "sklearn"`: a scikit-learn estimator saved with joblib (or pickle).

Loading a pickle runs code from the file: serve only files you trust. Option `method`:
`"predict"` (default) or `"predict_proba"`. Input `input-0` (FP64, [-1, n_features]),
output `output-0`, KServe's names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from schemas.v2 import TensorMetadata
from workers.runtimes.base import Arrays, TensorModel
from workers.runtimes.tensors import datatype_of

METHODS = ("predict", "predict_proba")


class SklearnModel(TensorModel):
    platform: ClassVar[str] = "sklearn"

    def load_file(self, path: Path) -> tuple[list[TensorMetadata], list[TensorMetadata]]:
        import joblib

        method = str(self.options.get("method", "predict"))
        if method not in METHODS:
            raise ValueError(f"model {self.name}: option `method` must be one of {METHODS}")
        self._estimator: Any = joblib.load(path)
        self._method = getattr(self._estimator, method)
        features = int(getattr(self._estimator, "n_features_in_", -1))
        # The output's datatype: what the method gives for one row of zeros.
        probe = np.asarray(self._method(np.zeros((1, max(features, 1)))))
        out_shape = [-1, *probe.shape[1:]]
        return (
            [TensorMetadata("input-0", "FP64", [-1, features])],
            [TensorMetadata("output-0", datatype_of(probe.dtype), out_shape)],
        )

    def run(self, inputs: Arrays) -> Arrays:
        return {"output-0": np.asarray(self._method(inputs["input-0"]))}

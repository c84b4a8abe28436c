"""Small real models made for the tests: an iris classifier in scikit-learn, an XGBoost
classifier, an ONNX graph exported from a torch module, a LightGBM regressor."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ClassicModels:
    folder: Path
    #: Iris features, 150 x 4.
    x: np.ndarray[Any, Any]
    sklearn: Any
    xgboost: Any
    onnx: Path
    lightgbm: Any

    def models_file(self, **names: str) -> Path:
        """A models file serving them under `names` (engine -> model name)."""
        paths = {
            "sklearn": self.folder / "iris.joblib",
            "xgboost": self.folder / "iris-xgb.json",
            "onnx": self.onnx,
            "lightgbm": self.folder / "iris-lgb.txt",
        }
        blocks = [
            f'[[models]]\nname = "{name}"\nengine = "{engine}"\npath = "{paths[engine]}"\n'
            f"[models.options]\nmax_tensor_elements = 4096\n"
            + ('method = "predict_proba"\n' if engine == "sklearn" else "")
            for engine, name in names.items()
        ]
        path = self.folder / f"models-{'-'.join(names.values())}.toml"
        path.write_text("\n".join(blocks))
        return path


def make_classic_models(folder: Path) -> ClassicModels:
    import joblib
    import lightgbm
    import torch
    import xgboost
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=500).fit(x, y)
    joblib.dump(clf, folder / "iris.joblib")
    booster = xgboost.train(
        {"objective": "multi:softprob", "num_class": 3, "max_depth": 3, "nthread": 1},
        xgboost.DMatrix(x.astype(np.float32), label=y),
        num_boost_round=10,
    )
    booster.save_model(str(folder / "iris-xgb.json"))
    lgb = lightgbm.train(
        {"objective": "regression", "num_leaves": 7, "verbose": -1, "num_threads": 1},
        lightgbm.Dataset(x, label=y.astype(float)),
        num_boost_round=10,
    )
    lgb.save_model(str(folder / "iris-lgb.txt"))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    onnx_path = folder / "mlp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            net,
            (torch.zeros(2, 4),),
            str(onnx_path),
            input_names=["features"],
            output_names=["logits"],
            dynamic_axes={"features": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    return ClassicModels(folder, x, clf, booster, onnx_path, lgb)

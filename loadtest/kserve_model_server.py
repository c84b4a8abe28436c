"""KServe's own `ModelServer` serving a joblib scikit-learn model in-process, as KServe's
sklearnserver does (sync `predict`, `get_predict_input` / `get_predict_response`). Run by
`loadtest.kserve_bench` with the Python of a separate environment that has `kserve`
installed; never imported by jetserve.

    MODELS=lr=/path/lr.joblib,rf=/path/rf.joblib \
        python loadtest/kserve_model_server.py --http_port PORT --workers 1

Every model answers with `predict_proba`.
"""

from __future__ import annotations

import os
from typing import Any

import joblib
from kserve import Model, ModelServer
from kserve.utils.utils import get_predict_input, get_predict_response


class SklearnModel(Model):  # type: ignore[misc]
    def __init__(self, name: str, path: str, method: str) -> None:
        super().__init__(name)
        self._path = path
        self._method = method

    def load(self) -> bool:
        self._model = joblib.load(self._path)
        self.ready = True
        return True

    def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
        instances = get_predict_input(payload)
        result = getattr(self._model, self._method)(instances)
        return get_predict_response(payload, result, self.name)


def main() -> None:
    models = []
    for item in os.environ["MODELS"].split(","):
        name, _, path = item.partition("=")
        model = SklearnModel(name, path, "predict_proba")
        model.load()
        models.append(model)
    # ModelServer reads its options (--http_port, --workers, ...) from argv.
    ModelServer().start(models)


if __name__ == "__main__":
    main()

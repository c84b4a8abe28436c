"""Ready-made runtimes (`engine = "sklearn"`, `"xgboost"`, `"lightgbm"`, `"onnx"`,
`"hf-pipeline"` in the models file): V2 tensors in, the library's predictions out, batched."""

#: engine name in the models file -> the runtime's `sdk.Model` class.
RUNTIMES = {
    "sklearn": "workers.runtimes.sklearn:SklearnModel",
    "xgboost": "workers.runtimes.xgboost:XGBoostModel",
    "lightgbm": "workers.runtimes.lightgbm:LightGBMModel",
    "onnx": "workers.runtimes.onnx:OnnxModel",
    "hf-pipeline": "workers.runtimes.hf_pipeline:HFPipelineModel",
}

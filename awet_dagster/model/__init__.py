"""The TFT model lifecycle: dataset, training, ONNX export/inference, MLflow registry.

Heavy imports (torch, pytorch-forecasting, mlflow) happen inside the submodules, so
`from awet_dagster.model.onnx_export import OnnxPredictor` stays light for the live loop.
"""

"""Deployment: export to OpenVINO IR / ONNX with metadata, and the OpenVINO inferencer."""

from otx.deploy.export import export_model
from otx.deploy.inferencer import OpenVINOInferencer, is_exported_model
from otx.deploy.metadata import ModelInfo

__all__ = ["ModelInfo", "OpenVINOInferencer", "export_model", "is_exported_model"]

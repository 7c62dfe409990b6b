"""The graph that export writes: resize, normalisation, the model core and the post-processor.

``ExportGraph`` takes images of any size and batch (float32 ``[B, 3, H, W]``, RGB, values in
[0, 1]) and returns the four outputs that openvino-model-api's anomaly wrapper and anomalib's
exports use: ``pred_score [B]``, ``pred_label [B]`` (bool), ``anomaly_map [B, 1, h, w]`` and
``pred_mask [B, 1, h, w]`` (bool), normalised so that 0.5 is the threshold, at ``h, w`` = the
model's input size. The resize is the training pipeline's (bilinear with antialiasing, written as
two matrix products, see ``resize_antialias_matmul``), so the exported model sees the pixels the
trained model saw.
"""

from __future__ import annotations

import torch
from torch import nn

from otx.models.base import AnomalyModel, core_outputs

OUTPUT_NAMES = ("pred_score", "pred_label", "anomaly_map", "pred_mask")
INPUT_NAME = "image"


class ExportGraph(nn.Module):
    """Plain ``nn.Module`` view of a trained model for tracing (no Lightning attributes).

    Args:
        model: a trained model whose post-processor is fitted.
    """

    def __init__(self, model: AnomalyModel) -> None:
        super().__init__()
        self.resize = AntialiasResize(tuple(model.input_size))
        self.core = model.model
        self.postprocessor = model.postprocessor
        self.register_buffer("mean", model.mean.detach().clone())
        self.register_buffer("std", model.std.detach().clone())

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised ``(pred_score, pred_label, anomaly_map, pred_mask)`` for images in [0, 1] of any size."""
        resized = self.resize(image)
        anomaly_map, pred_score = core_outputs(self.core, (resized - self.mean) / self.std)
        out = self.postprocessor(anomaly_map, pred_score)
        return out["pred_score"], out["pred_label"], out["anomaly_map"][:, None], out["pred_mask"][:, None]


class AntialiasResize(nn.Module):
    """``resize_antialias_matmul`` as a module, so its nodes carry the ``resize`` name in exported graphs.

    ``otx optimize`` keeps them in float by that name (``otx.deploy.optimize``).
    """

    def __init__(self, size_hw: tuple[int, int]) -> None:
        super().__init__()
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Images of any size resized to ``size_hw``."""
        return resize_antialias_matmul(image, self.size_hw)


def _antialias_weights(n_in: torch.Tensor, n_out: int) -> torch.Tensor:
    """``[n_out, n_in]`` weights of torch's antialiased bilinear resize along one axis.

    The same filter as ``F.interpolate(..., mode="bilinear", antialias=True)`` (PIL's): a triangle
    of half-width ``max(scale, 1)`` input pixels centred on each output pixel, normalised to sum 1.
    Everything up to the last division is integer arithmetic (distances and the half-width scaled
    by ``2 * n_out``), so that the weights stay exact when a device runs the graph in bf16, whose
    8-bit mantissa cannot even hold pixel positions above 256. Written with shape-dependent
    tensor ops so that it stays dynamic in a traced graph.
    """
    n_in = n_in.to(torch.int64)
    outputs = torch.arange(n_out, dtype=torch.int64)
    inputs = torch.arange(n_in, dtype=torch.int64)
    # (input centre - output centre) * 2 * n_out, and the filter's half-width on the same scale
    distance = (2 * inputs[None, :] + 1) * n_out - (2 * outputs[:, None] + 1) * n_in
    half_width = 2 * torch.clamp(n_in, min=n_out)
    weights = torch.clamp(half_width - torch.abs(distance), min=0)
    return weights.to(torch.float32) / weights.sum(dim=1, keepdim=True).to(torch.float32)


def resize_antialias_matmul(image: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize as two matrix products (``W_h @ image @ W_w^T``).

    Numerically equal to ``F.interpolate(..., antialias=True)`` (tested to 1e-5), and used in every
    export instead of it: ONNX's ``Resize`` with ``antialias=1`` defines another filter (0.063 max
    difference from torch's) and OpenVINO's ONNX reader yet another (0.50); OpenVINO's own
    antialiased ``Interpolate`` is exact but took about 300 ms per image of a new size on this
    2-core CPU (6 images/s on magnetic_tile against 32 with the two MatMuls).
    """
    shape = torch._shape_as_tensor(image)
    rows = _antialias_weights(shape[2], size_hw[0])
    cols = _antialias_weights(shape[3], size_hw[1])
    return torch.matmul(torch.matmul(rows, image), cols.transpose(0, 1))

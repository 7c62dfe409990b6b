"""The graph that export writes: resize, normalisation, the model core and the post-processor.

``ExportGraph`` takes images of any size and batch (float32 ``[B, 3, H, W]``, RGB, values in
[0, 1]) and returns the four outputs that openvino-model-api's anomaly wrapper and anomalib's
exports use: ``pred_score [B]``, ``pred_label [B]`` (bool), ``anomaly_map [B, 1, h, w]`` and
``pred_mask [B, 1, h, w]`` (bool), normalised so that 0.5 is the threshold, at ``h, w`` = the
model's input size. The resize is the training pipeline's (bilinear with antialiasing, written as
banded matrix products, see ``resize_antialias``), so the exported model sees the pixels the
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
    """``resize_antialias`` as a module, so its nodes carry the ``resize`` name in exported graphs.

    ``otx optimize`` keeps them in float by that name (``otx.deploy.optimize``).
    """

    def __init__(self, size_hw: tuple[int, int]) -> None:
        super().__init__()
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Images of any size resized to ``size_hw``."""
        return resize_antialias(image, self.size_hw)


RESIZE_BLOCK = 32  # outputs per block of the banded resize (see ``_antialias_blocks``)


def _antialias_blocks(n_in: torch.Tensor, n_out: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch's antialiased bilinear resize along one axis, as weights on blocks of the input.

    The filter is ``F.interpolate(..., mode="bilinear", antialias=True)``'s (PIL's): a triangle of
    half-width ``max(scale, 1)`` input pixels centred on each output pixel, normalised to sum 1.
    Its ``[n_out, n_in]`` matrix is banded, so the outputs are taken in blocks of ``block``: block
    ``j`` reads only the ``L`` consecutive inputs its triangles reach, from ``start[j]`` on.
    Returns ``indices [n_blocks * L]`` (the inputs each block reads, block after block; inputs
    outside the image are clamped to its edge and get weight 0) and ``weights [n_blocks, block, L]``
    (outputs past ``n_out`` pad the last block). Everything up to the last division is integer
    arithmetic (distances and the half-width scaled by ``2 * n_out``), so that the weights stay
    exact when a device runs the graph in bf16, whose 8-bit mantissa cannot even hold pixel
    positions above 256. Written with shape-dependent tensor ops so that it stays dynamic in a
    traced graph.
    """
    n_in = n_in.to(torch.int64)
    n_blocks = -(-n_out // block)
    outputs = torch.arange(n_blocks * block, dtype=torch.int64).reshape(n_blocks, block, 1)
    half_width = 2 * torch.clamp(n_in, min=n_out)
    # The first input inside each output's triangle (or one before it), and how many can be inside.
    first = torch.div((2 * outputs + 1) * n_in - half_width - n_out, 2 * n_out, rounding_mode="floor")
    taps = torch.div(half_width, n_out, rounding_mode="floor") + 2
    start = first[:, :1]  # [n_blocks, 1, 1]: the first input each block reads
    length = (first[:, -1] - first[:, 0]).max() + taps
    inputs = start + torch.arange(length, dtype=torch.int64)  # [n_blocks, 1, L]
    # (input centre - output centre) * 2 * n_out, against the half-width on the same scale
    distance = (2 * inputs + 1) * n_out - (2 * outputs + 1) * n_in
    inside = (inputs >= 0) & (inputs < n_in)
    weights = torch.clamp(half_width - torch.abs(distance), min=0) * inside.to(torch.int64)
    total = torch.clamp(weights.sum(dim=2, keepdim=True), min=1)  # 0 only for padding outputs
    indices = torch.minimum(torch.clamp(inputs, min=0), n_in - 1).reshape(-1)
    return indices, weights.to(torch.float32) / total.to(torch.float32)


def resize_antialias(image: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of ``[B, C, H, W]`` images as banded matrix products.

    Numerically equal to ``F.interpolate(..., antialias=True)`` (tested to 1e-5), and used in every
    export instead of it: ONNX's ``Resize`` with ``antialias=1`` defines another filter (0.063 max
    difference from torch's) and OpenVINO's ONNX reader yet another (0.50); OpenVINO's own
    antialiased ``Interpolate`` is exact but took about 300 ms per image of a new size on this
    2-core CPU. Each axis gathers the input rows (columns) that each block of 32 outputs reads and
    multiplies them by that block's weights (``_antialias_blocks``): about 1/8 of the work of
    multiplying by the dense ``[n_out, n_in]`` matrices, which for a 400x600 image cost as much
    as a small backbone.
    """
    out_h, out_w = size_hw
    shape = torch._shape_as_tensor(image)
    batch, channels = shape[0], shape[1]
    rows, row_weights = _antialias_blocks(shape[2], out_h, RESIZE_BLOCK)
    cols, col_weights = _antialias_blocks(shape[3], out_w, RESIZE_BLOCK)
    # Rows: [B, C, H, W] -> [B, C, blocks, L, W]; [blocks, 32, L] @ that -> [B, C, blocks * 32, W].
    gathered = torch.index_select(image, 2, rows).reshape(batch, channels, row_weights.shape[0], -1, shape[3])
    image = torch.matmul(row_weights, gathered).reshape(batch, channels, -1, shape[3])[:, :, :out_h]
    # Columns: [B, C, h, W] -> [B, C, blocks, h, L]; that @ [blocks, L, 32] -> [B, C, h, blocks * 32].
    gathered = torch.index_select(image, 3, cols).reshape(batch, channels, out_h, col_weights.shape[0], -1)
    image = torch.matmul(gathered.transpose(2, 3), col_weights.transpose(1, 2)).transpose(2, 3)
    return image.reshape(batch, channels, out_h, -1)[:, :, :, :out_w]

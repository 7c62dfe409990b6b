"""The graph that export writes: resize, normalisation, the model core and the post-processor.

``ExportGraph`` takes images of any size and batch (float32 ``[B, 3, H, W]``, RGB, values in
[0, 1]) and returns the four outputs that openvino-model-api's anomaly wrapper and anomalib's
exports use: ``pred_score [B]``, ``pred_label [B]`` (bool), ``anomaly_map [B, 1, h, w]`` and
``pred_mask [B, 1, h, w]`` (bool), normalised so that 0.5 is the threshold, at ``h, w`` = the
model's input size. The resize is the training pipeline's (bilinear with antialiasing, written as
banded matrix products, see ``resize_antialias``), so the exported model sees the pixels the
trained model saw. The input normalisation is folded into the backbones' first convolutions
where it can be (``NormalizedStem``), so that INT8 quantisation finds unsigned inputs there.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from timm.layers.padding import pad_same_arg
from torch import nn

from otx.models.base import AnomalyModel, core_outputs

log = logging.getLogger(__name__)

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
        mean, std = model.mean.detach().clone(), model.std.detach().clone()
        folded = fold_input_normalization(model.model, mean, std, tuple(model.input_size))
        self.normalize = folded is None
        self.core = model.model if folded is None else folded
        self.postprocessor = model.postprocessor
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised ``(pred_score, pred_label, anomaly_map, pred_mask)`` for images in [0, 1] of any size."""
        resized = self.resize(image)
        core_input = (resized - self.mean) / self.std if self.normalize else resized
        anomaly_map, pred_score = core_outputs(self.core, core_input)
        return graph_outputs(self.postprocessor, anomaly_map, pred_score)


def graph_outputs(
    postprocessor: nn.Module, anomaly_map: torch.Tensor, pred_score: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exported outputs (``OUTPUT_NAMES`` order) from raw map and score: the graph's tail."""
    out = postprocessor(anomaly_map, pred_score)
    return out["pred_score"], out["pred_label"], out["anomaly_map"][:, None], out["pred_mask"][:, None]


class ExportHead(nn.Module):
    """The tail of ``ExportGraph`` alone: raw ``(anomaly_map, pred_score)`` in, the four outputs out.

    ``otx.deploy.calibrate`` traces it with recalibrated statistics and splices it onto a model's
    raw outputs, so a recalibrated export runs the very post-processing code of every export.
    """

    def __init__(self, postprocessor: nn.Module) -> None:
        super().__init__()
        self.postprocessor = postprocessor

    def forward(
        self, anomaly_map: torch.Tensor, pred_score: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised outputs from raw ones."""
        return graph_outputs(self.postprocessor, anomaly_map, pred_score)


class NormalizedStem(nn.Module):
    """A backbone's first convolution with the input normalisation folded in: takes [0, 1] images.

    ``conv((x - mean) / std)`` with zero padding equals ``conv'(x padded with mean)`` where
    ``conv'`` has weights ``W / std`` and bias ``b - sum(W * mean / std)``: a normalised zero is
    the mean in [0, 1] units. The point is INT8: the quantiser in front of the stem then sees
    [0, 1] values (unsigned, which OpenVINO's CPU convolutions take in INT8) instead of signed
    normalised ones (which kept STFPM's stem convolutions in FP32: 12% of its INT8 time).
    Supports ``nn.Conv2d`` with integer zero padding and timm's ``Conv2dSame`` (its TensorFlow
    "same" padding computed once for ``input_hw``).
    """

    def __init__(self, conv: nn.Conv2d, mean: torch.Tensor, std: torch.Tensor, input_hw: tuple[int, int]) -> None:
        super().__init__()
        kernel = list(conv.weight.shape[-2:])
        if isinstance(conv, Conv2dSame):
            self.padding = pad_same_arg(list(input_hw), kernel, list(conv.stride), list(conv.dilation))
        else:
            pad_h, pad_w = conv.padding  # integers: checked by ``_foldable``
            self.padding = [pad_w, pad_w, pad_h, pad_h]
        mean, std = mean.reshape(1, -1, 1, 1), std.reshape(1, -1, 1, 1)
        weight = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(weight.shape[0])
        self.register_buffer("mean", mean.clone())
        self.register_buffer("weight", weight / std)
        self.register_buffer("bias", bias - (weight * (mean / std)).sum(dim=(1, 2, 3)))
        self.stride, self.dilation, self.groups = conv.stride, conv.dilation, conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The stem's output for ``x`` in [0, 1] (not normalised)."""
        padded = F.pad(x - self.mean, self.padding) + self.mean  # padded with the mean
        return F.conv2d(padded, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _foldable(module: nn.Module) -> bool:
    if isinstance(module, Conv2dSame):
        return True
    return (
        type(module) is nn.Conv2d
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
        and module.groups == 1
    )


def fold_input_normalization(
    core: nn.Module, mean: torch.Tensor, std: torch.Tensor, input_hw: tuple[int, int]
) -> nn.Module | None:
    """A copy of ``core`` that takes [0, 1] images, its stems replaced by ``NormalizedStem`` modules.

    The stems are the modules that read the input (found by one forward pass on a probe image).
    Parameters and buffers are shared with ``core``, which is unchanged.

    Returns None, and the export keeps the normalisation in front of the core, when anything
    else reads the input, a stem is of a kind ``NormalizedStem`` does not cover, or the folded
    core's outputs differ from the original's on a probe image (relative 1e-4).
    """
    probe = torch.rand(1, 3, *input_hw, generator=torch.Generator().manual_seed(0))
    normalized = (probe - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)
    readers: list[tuple[str, nn.Module]] = []

    def record(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if args and args[0] is normalized:
                readers.append((name, module))

        return hook

    leaves = [(name, m) for name, m in core.named_modules() if name and not list(m.children())]
    hooks = [module.register_forward_pre_hook(record(name)) for name, module in leaves]
    try:
        with torch.no_grad():
            expected = core_outputs(core, normalized)
    finally:
        for hook in hooks:
            hook.remove()
    if not readers or not all(_foldable(module) for _, module in readers):
        return None
    shared = {id(t): t for t in (*core.parameters(), *core.buffers())}
    folded = copy.deepcopy(core, memo=shared)
    for name, module in readers:
        parent, _, child = name.rpartition(".")
        setattr(folded.get_submodule(parent) if parent else folded, child, NormalizedStem(module, mean, std, input_hw))
    with torch.no_grad():
        got = core_outputs(folded, probe)
    for want, have in zip(expected, got, strict=True):
        scale = float(want.abs().max()) or 1.0
        if have.shape != want.shape or float((have - want).abs().max()) > 1e-4 * scale:
            log.warning("input normalisation not folded into the stem: outputs differ; exporting it separately")
            return None
    return folded


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
    multiplying by the dense ``[n_out, n_in]`` matrices (a 1024x1024 image resized in 6.6 instead
    of 14.8 ms on this CPU).
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

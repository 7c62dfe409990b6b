"""The graph that export writes: pre-processing, normalisation, the model core and the post-processor.

``ExportGraph`` takes images of any size and batch (float32 ``[B, 3, H, W]``, RGB, values in
[0, 1]) and returns the four outputs that openvino-model-api's anomaly wrapper and anomalib's
exports use: ``pred_score [B]``, ``pred_label [B]`` (bool), ``anomaly_map [B, 1, h, w]`` and
``pred_mask [B, 1, h, w]`` (bool), normalised so that 0.5 is the threshold, at ``h, w`` = the
model's input size. The pre-processing is the model's ``PreProcessor`` (resize, padding to keep
the aspect ratio, tiles and their stitching, by its input mode); its resize is the training
pipeline's (bilinear with antialiasing, written as banded matrix products, see
``resize_antialias``), so the exported model sees the pixels the trained model saw. The input
normalisation is folded into the backbones' first convolutions where it can be
(``NormalizedStem``), so that INT8 quantisation finds unsigned inputs there.
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

from otx.models.base import AnomalyModel, core_outputs, image_outputs
from otx.preprocess import resize_antialias  # noqa: F401 - part of this module's interface

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
        self.resize = model.preprocessor  # the model's own pre-processing (nodes named __module.resize)
        mean, std = model.mean.detach().clone(), model.std.detach().clone()
        folded = fold_input_normalization(model.model, mean, std, model.preprocessor.core_size)
        self.normalize = folded is None
        self.core = model.model if folded is None else folded
        self.postprocessor = model.postprocessor
        self.score_top_share = model.score_top_share
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised ``(pred_score, pred_label, anomaly_map, pred_mask)`` for images in [0, 1] of any size."""
        resized = self.resize(image)
        core_input = (resized - self.mean) / self.std if self.normalize else resized
        anomaly_map, pred_score = image_outputs(self.core, self.resize, core_input, self.score_top_share)
        return graph_outputs(self.postprocessor, anomaly_map, pred_score)


def convert_model(model: Any, **kwargs: Any) -> Any:
    """``openvino.convert_model(model, **kwargs)``, leaving the root logger as it found it, also on failure.

    OpenVINO's converter gives the root logger a handler of its own and takes it away only when the
    conversion succeeds; after an error or a stop (Ctrl+C) the handler stayed, and otx's log lines
    meant for the run's otx.log reached the console unformatted, with their tracebacks.
    """
    import openvino as ov

    root = logging.getLogger()
    level, filters, handlers = root.level, list(root.filters), list(root.handlers)
    try:
        return ov.convert_model(model, **kwargs)
    finally:
        root.setLevel(level)
        root.filters = filters
        root.handlers = handlers


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

"""Bilinear upsampling of anomaly maps as two matrix products, equal to ``F.interpolate``.

PADIM and STFPM upsample their feature-resolution maps (16x16 to 64x64) to the input size with
``F.interpolate(..., mode="bilinear", align_corners=False)``. OpenVINO's CPU plugin runs that
``Interpolate`` on one-channel maps slowly: STFPM's three layer maps took 3.4 ms per image on one
core of this 2-core CPU, as long as a third of its whole INT8 graph. Along each axis the
interpolation is a fixed linear map (each output is a weighted sum of at most two inputs), so
``rows @ map @ cols^T`` gives the same values (tested to 1e-6) as two small matrix products.
"""

from __future__ import annotations

import torch


def _bilinear_weights(n_in: torch.Tensor, n_out: int) -> torch.Tensor:
    """``[n_out, n_in]`` weights of torch's bilinear interpolation (``align_corners=False``) on one axis.

    Output ``o`` samples the input at ``(o + 0.5) * n_in / n_out - 0.5``, clamped to the first and
    last input (torch replicates the edge), with triangle weights ``max(1 - |i - source|, 0)``.
    Positions are integers scaled by ``2 * n_out`` up to the last division, so that a device
    running the graph in bf16 (8-bit mantissa) cannot round them; written with shape-dependent
    tensor ops so that a traced graph stays dynamic.
    """
    n_in = n_in.to(torch.int64)
    scale = 2 * n_out
    outputs = torch.arange(n_out, dtype=torch.int64)[:, None]
    inputs = torch.arange(n_in, dtype=torch.int64)[None, :]
    source = torch.minimum(torch.clamp((2 * outputs + 1) * n_in - n_out, min=0), scale * (n_in - 1))
    weights = torch.clamp(scale - torch.abs(scale * inputs - source), min=0)
    return weights.to(torch.float32) / scale


def upsample_bilinear(maps: torch.Tensor, size_hw: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``F.interpolate(maps, size_hw, mode="bilinear", align_corners=False)`` as two matrix products.

    Args:
        maps: ``[B, C, h, w]`` maps.
        size_hw: output ``(H, W)``.

    Returns:
        ``[B, C, H, W]`` maps.
    """
    shape = torch._shape_as_tensor(maps)
    # on the maps' device (a GPU's: before, the weights stayed on the CPU and the product failed there; a review)
    rows = _bilinear_weights(shape[2], int(size_hw[0]))
    cols = _bilinear_weights(shape[3], int(size_hw[1]))
    if maps.device != rows.device:  # (not on the CPU: nothing recorded in a graph traced there)
        rows, cols = rows.to(maps.device), cols.to(maps.device)
    return torch.matmul(torch.matmul(rows, maps), cols.transpose(0, 1))

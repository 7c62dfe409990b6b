"""Pre-processing: what a model does to an image before its core sees it.

``PreProcessor`` is owned by the model (``AnomalyModel.preprocessor``) and used by every path
that feeds it: the data pipeline (``AnomalyDataset``: one image at a time, exact antialiased
resize), torch inference, and the exported graph (``ExportGraph``: batches of any size, the same
resize as banded matrix products). Its settings travel in checkpoints (the model's init args) and
in export metadata (``config()``). Today's mode is ``resize``; aspect-preserving and tiled modes
are further modes of this class.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def resize_image(image: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Resize a float ``[3, H, W]`` image: bilinear with antialiasing, as torchvision's ``Resize`` on tensors.

    This is the resize anomalib's pre-processor applies, so a model sees the same pixels in both tools.
    """
    return F.interpolate(image[None], size=size_hw, mode="bilinear", antialias=True, align_corners=False)[0]


def resize_mask(mask: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Resize a bool ``[H, W]`` mask with nearest neighbour (as torchvision does for masks)."""
    return F.interpolate(mask[None, None].float(), size=size_hw, mode="nearest")[0, 0] > 0.5


class PreProcessor(nn.Module):
    """The ``resize`` mode: every image is resized to ``input_size`` (antialiased bilinear).

    Args:
        input_size: ``[height, width]`` the core sees; anomaly maps come out at this size.
    """

    mode = "resize"

    def __init__(self, input_size: tuple[int, int] | list[int]) -> None:
        super().__init__()
        self.input_size = (int(input_size[0]), int(input_size[1]))

    @property
    def map_size(self) -> tuple[int, int]:
        """The size of the anomaly maps, at which ground-truth masks are compared."""
        return self.input_size

    def image(self, image: torch.Tensor) -> torch.Tensor:
        """One float ``[3, H, W]`` image as the core takes it (the data pipeline)."""
        return resize_image(image, self.input_size)

    def mask(self, mask: torch.Tensor) -> torch.Tensor:
        """One bool ``[H, W]`` ground-truth mask at ``map_size``."""
        return resize_mask(mask, self.map_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """A batch ``[B, 3, H, W]`` of any size as the core takes it (traceable: the exported graph)."""
        return resize_antialias(images, self.input_size)

    def config(self) -> dict[str, Any]:
        """The settings, for export metadata and summaries."""
        return {"mode": self.mode, "input_size": list(self.input_size)}


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

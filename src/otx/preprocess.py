"""Pre-processing: what a model does to an image before its core sees it, and back.

``PreProcessor`` is owned by the model (``AnomalyModel.preprocessor``) and used by every path
that feeds it: the data pipeline (``AnomalyDataset``: one image at a time, exact antialiased
resize), torch inference, and the exported graph (``ExportGraph``: batches of any size, the same
resize as banded matrix products). Its settings travel in checkpoints (the model's init args) and
in export metadata (``config()``, rebuilt by ``from_config``).

Three input modes (``mode``):

- ``resize``: the image is resized to ``input_size`` (its aspect ratio is lost).
- ``keep_aspect``: the image is padded at its bottom or right edge (edge pixels repeated) to the
  aspect ratio of ``input_size``, then resized to it: nothing is bent. Maps are brought back by
  resizing them to the padded size and cropping the image's part (``restore``).
- ``tile``: the image is resized to ``input_size`` (e.g. the camera's own resolution), cut into
  ``tile_size`` tiles every ``tile_stride`` pixels (the edges repeated to fill the last row and
  column), the core runs on the tiles, and their maps are stitched back, overlaps averaged; the
  image score is the largest tile score. anomalib's ``Tiler`` is the reference.

A model's ``input_mode`` may also be ``auto`` (the recipes' default): ``otx train`` takes ``resize``
unless that would squash the training images by 2x or more, and ``keep_aspect`` at an input of the
same number of pixels in their aspect ratio then (``auto_input``).

Every mode gives maps at ``map_size`` (= ``input_size``), where thresholds are fitted, and
``restore`` takes a map back to the image's own size, where pixel metrics are computed.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from otx.errors import OTXConfigError, for_caller

MODES = ("resize", "keep_aspect", "tile")
# A model setting, not a mode of its own: `otx train` chooses resize or keep_aspect from the training images
# (`auto_input`), and the model is saved and exported with the mode it chose.
AUTO = "auto"
DEFAULT_TILE = 256
SQUASH_LIMIT = 2.0  # resize changing the images' aspect ratio by this factor or more: auto keeps it instead


def resize_image(image: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Resize a float ``[3, H, W]`` image: bilinear with antialiasing, as torchvision's ``Resize`` on tensors.

    This is the resize anomalib's pre-processor applies, so a model sees the same pixels in both tools.
    """
    return F.interpolate(image[None], size=size_hw, mode="bilinear", antialias=True, align_corners=False)[0]


def resize_mask(mask: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Resize a bool ``[H, W]`` mask with nearest neighbour (as torchvision does for masks)."""
    return F.interpolate(mask[None, None].float(), size=size_hw, mode="nearest")[0, 0] > 0.5


def padded_size(height: int, width: int, aspect_hw: tuple[int, int]) -> tuple[int, int]:
    """The size an ``height x width`` image is padded to so that it has the aspect ratio of ``aspect_hw``.

    Only one side grows: ``max(h, ceil(w * H / W))`` by ``max(w, ceil(h * W / H))``.
    """
    big_h, big_w = aspect_hw
    return max(height, -(-width * big_h // big_w)), max(width, -(-height * big_w // big_h))


def aspect_input_size(aspect: float, area: int = 256 * 256, multiple: int = 32) -> tuple[int, int]:
    """An input ``(height, width)`` of about ``area`` pixels with the aspect ratio ``aspect`` (width / height).

    Each side is a multiple of ``multiple`` (the backbones' largest stride), at least one multiple.
    The ``keep_aspect`` mode's input when none is given, from the training images' median ratio.
    """
    height = math.sqrt(area / aspect)
    return tuple(max(multiple, round(side / multiple) * multiple) for side in (height, height * aspect))  # type: ignore[return-value]


def squash_factor(aspect: float, input_hw: tuple[int, int]) -> float:
    """By how much ``resize`` changes a ``aspect`` (width / height) image's aspect ratio at ``input_hw`` (>= 1)."""
    ratio = float(aspect) / (input_hw[1] / input_hw[0])
    return max(ratio, 1.0 / ratio) if ratio > 0 else 1.0


def auto_input(aspect: float, input_hw: tuple[int, int], multiple: int = 32) -> tuple[str, tuple[int, int]]:
    """The mode and input ``(height, width)`` that ``input_mode auto`` takes for images of median ``aspect``.

    ``resize`` at ``input_hw`` unless that changes the images' aspect ratio by ``SQUASH_LIMIT`` or more
    (a 2:1 image into a square input); then ``keep_aspect`` at an input of as many pixels as
    ``input_hw`` in the images' aspect ratio (``aspect_input_size``): nothing is bent, and images of
    one shape are not padded either.
    """
    if squash_factor(aspect, input_hw) < SQUASH_LIMIT:
        return "resize", (int(input_hw[0]), int(input_hw[1]))
    return "keep_aspect", aspect_input_size(aspect, area=int(input_hw[0]) * int(input_hw[1]), multiple=multiple)


def auto_chose(size_hw: tuple[int, int] | list[int], input_hw: tuple[int, int] | list[int], multiple: int = 32) -> bool:
    """Whether ``auto_input`` takes ``keep_aspect`` at ``size_hw`` from ``input_hw`` for some aspect ratio.

    Each side of its input is the image's side at ``input_hw``'s area rounded to ``multiple`` (at
    least one), so the aspect ratios that give ``size_hw`` form an interval: points inside it are
    tried. (Recomputing from ``size_hw``'s own ratio is not enough: it is already rounded.)
    """
    height, width = int(size_hw[0]), int(size_hw[1])
    area, half = int(input_hw[0]) * int(input_hw[1]), multiple / 2
    # width = sqrt(area * aspect) and height = sqrt(area / aspect), each within half a step (or below 1.5 steps)
    low = max((width - half) ** 2 / area if width > multiple else 0.0, area / (height + half) ** 2)
    high = min((width + half) ** 2 / area, area / (height - half) ** 2 if height > multiple else math.inf)
    if not low < high:
        return False
    wanted = ("keep_aspect", (height, width))
    return any(auto_input(float(a), input_hw, multiple) == wanted for a in np.linspace(low, high, 34)[1:-1])


MAX_OVERLAP = 8  # tiles per pixel along a side, at most: tile_stride >= tile_size / 8 for new models
# Set while a saved model is read (checkpoint, export metadata): its tile stride loads as it was trained,
# also one below the bound (set in 2026-12; such models were accepted before).
SAVED_SETTINGS: ContextVar[bool] = ContextVar("otx_saved_settings", default=False)


@contextlib.contextmanager
def saved_settings() -> Iterator[None]:
    """Read a saved model's pre-processing as it was trained (``SAVED_SETTINGS``)."""
    token = SAVED_SETTINGS.set(True)
    try:
        yield
    finally:
        SAVED_SETTINGS.reset(token)


def _tiles_covering(length: int, count: int, tile: int, stride: int) -> torch.Tensor:
    """How many of ``count`` tiles (``tile`` long, ``stride`` apart) cover each of ``length`` positions."""
    cover = torch.zeros(length)
    for start in range(0, stride * count, stride):
        cover[start : start + tile] += 1
    return cover


def _tile_lines(count: int, tile: int, stride: int) -> torch.Tensor:
    """The rows (or columns) of ``count`` tiles of side ``tile``, ``stride`` apart, tile after tile."""
    return (torch.arange(count)[:, None] * stride + torch.arange(tile)[None, :]).reshape(-1)


def _gather_lines(images: torch.Tensor, lines: torch.Tensor) -> torch.Tensor:
    """``images [B, C, H, W]`` at rows ``lines`` (``torch.index_select`` on axis 2; traceable).

    Every gather of the exported graph runs along an axis other than the last: OpenVINO's CPU
    plugin (2026.4) gathers along the last axis of a tensor of dynamic shape wrongly on two or more
    threads once the output holds more than 2**25 elements (a 3000x4000 image's columns: values
    off by up to 1.0, or garbage), while one thread, static shapes and other axes are exact. On
    this project's 2-core CPU the default hint runs one thread per request, so only a larger CPU
    or the latency hint met it (``docs/input-modes.md``, "A 4000x3000 image").
    """
    return torch.index_select(images, 2, lines)


def tile_grid(size: int, tile: int, stride: int) -> tuple[int, int]:
    """Tiles along one side (``count``) and the side's length once the last tile fits (``padded``)."""
    count = max(1, math.ceil((size - tile) / stride) + 1)
    return count, tile + stride * (count - 1)


class PreProcessor(nn.Module):
    """A model's input mode: from an image to what the core takes, and from its maps back to the image.

    Args:
        input_size: ``[height, width]`` every image is brought to; anomaly maps come out at this size.
        mode: ``resize``, ``keep_aspect`` or ``tile`` (see the module's docstring).
        tile_size: the side of the square tiles the core sees (``tile`` mode; default 256).
        tile_stride: pixels between tile origins (``tile`` mode; default ``tile_size``, no overlap).
    """

    def __init__(
        self,
        input_size: tuple[int, int] | list[int],
        mode: str = "resize",
        tile_size: int | None = None,
        tile_stride: int | None = None,
    ) -> None:
        super().__init__()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        if mode not in MODES:
            raise OTXConfigError(f"input_mode must be one of {', '.join(MODES)} (got {mode!r})")
        self.mode = mode
        if mode != "tile":
            if tile_size is not None or tile_stride is not None:
                given = [
                    f"--model.init_args.{k} null"
                    for k, v in (("tile_size", tile_size), ("tile_stride", tile_stride))
                    if v is not None
                ]
                raise OTXConfigError(
                    for_caller(
                        f"tile_size and tile_stride apply to input_mode tile only (input_mode is {mode}); pass "
                        f"{' and '.join(given)} (a config file may set them: a tile run's config.yaml does), or "
                        "--model.init_args.input_mode tile"
                    )
                )
            self.tile_size = self.tile_stride = None
            return
        tile = DEFAULT_TILE if tile_size is None else tile_size
        if isinstance(tile, bool) or not isinstance(tile, numbers.Integral) or not 32 <= tile <= min(self.input_size):
            got = f"the default tile_size {tile}" if tile_size is None else f"got {tile!r}"
            raise OTXConfigError(
                for_caller(
                    f"tile_size must be an integer from 32 to the smaller side of input_size {list(self.input_size)} "
                    f"({got}); pass --model.init_args.tile_size N or a larger input_size"
                )
            )
        tile = int(tile)
        stride = tile if tile_stride is None else tile_stride
        lowest = 1 if SAVED_SETTINGS.get() else -(-tile // MAX_OVERLAP)
        if isinstance(stride, bool) or not isinstance(stride, numbers.Integral) or not lowest <= stride <= tile:
            large = isinstance(stride, numbers.Real) and not isinstance(stride, bool) and stride > tile
            why = (
                "a larger stride leaves pixels between the tiles that no tile covers"
                if large
                else f"a smaller stride puts each pixel in more than {MAX_OVERLAP}x{MAX_OVERLAP} tiles, and the core "
                "runs once per tile"
            )
            raise OTXConfigError(
                for_caller(
                    f"tile_stride must be an integer from {lowest} to tile_size {tile} (got {stride!r}): {why}; pass "
                    "--model.init_args.tile_stride N (tile_size / 2, half-overlapping tiles, is usual)"
                )
            )
        self.tile_size, self.tile_stride = tile, int(stride)
        (rows, height), (cols, width) = (tile_grid(side, tile, self.tile_stride) for side in self.input_size)
        self.grid = (rows, cols)
        self.padded = (height, width)
        # How many tiles cover each pixel (for averaging the overlaps), computed once: the product of
        # the counts along each side (folding a tile of ones per tile held tile^2 x tiles floats:
        # 17 GB at stride 1).
        covers = [
            _tiles_covering(side, count, tile, self.tile_stride) for side, count in ((height, rows), (width, cols))
        ]
        self.register_buffer("coverage", torch.outer(*covers)[None, None], persistent=False)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PreProcessor:
        """The pre-processor ``config()`` describes (export metadata)."""
        mode, tile_size, tile_stride = config.get("mode", "resize"), config.get("tile_size"), config.get("tile_stride")
        return cls(config["input_size"], mode, tile_size, tile_stride)

    @property
    def map_size(self) -> tuple[int, int]:
        """The size of the anomaly maps, at which thresholds are fitted."""
        return self.input_size

    @property
    def core_size(self) -> tuple[int, int]:
        """The size of the images the core sees (a tile in ``tile`` mode)."""
        return (self.tile_size, self.tile_size) if self.tile_size else self.input_size

    @property
    def tiles_per_image(self) -> int:
        """How many core images one image gives (1 unless tiled)."""
        return self.grid[0] * self.grid[1] if self.tile_size else 1

    def describe(self) -> str:
        """The mode in words, sizes as width x height: ``keep_aspect: images to 224x288 (width x height)``."""
        size = f"{self.input_size[1]}x{self.input_size[0]} (width x height)"
        count = self.tiles_per_image
        tiles = f", {count} tile{'s' if count > 1 else ''} of {self.tile_size} per image" if self.mode == "tile" else ""
        if self.mode == "tile" and self.tile_stride != self.tile_size:
            tiles += f" (stride {self.tile_stride})"
        return f"{self.mode}: images to {size}{tiles}"

    def config(self) -> dict[str, Any]:
        """The settings, for export metadata and summaries."""
        config: dict[str, Any] = {"mode": self.mode, "input_size": list(self.input_size)}
        if self.tile_size:
            config.update(tile_size=self.tile_size, tile_stride=self.tile_stride)
        return config

    # --- the data pipeline (one image) and the graph (batches) --------------------------------
    def image(self, image: torch.Tensor) -> torch.Tensor:
        """One float ``[3, H, W]`` image at ``input_size`` (the data pipeline's exact resize)."""
        if self.mode == "keep_aspect":
            image = _pad_edges(image[None], padded_size(*image.shape[1:], self.input_size))[0]
        return resize_image(image, self.input_size)

    def mask(self, mask: torch.Tensor) -> torch.Tensor:
        """One bool ``[H, W]`` ground-truth mask at ``map_size``, as the image went there."""
        if self.mode == "keep_aspect":
            mask = _pad_edges(mask[None, None].float(), padded_size(*mask.shape, self.input_size))[0, 0] > 0.5
        return resize_mask(mask, self.map_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """A batch ``[B, 3, H, W]`` of any size at ``input_size`` (traceable: the exported graph)."""
        return resize_antialias(images, self.input_size, keep_aspect=self.mode == "keep_aspect")

    # --- between the images at input_size and the core -----------------------------------------
    def tiles(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` at ``input_size`` -> ``[B * tiles, C, t, t]`` (unchanged unless tiled)."""
        if not self.tile_size:
            return images
        tile, (height, width) = self.tile_size, self.input_size
        padded = F.pad(images, (0, self.padded[1] - width, 0, self.padded[0] - height), mode="replicate")
        (rows, cols), channels = self.grid, images.shape[1]
        if self.tile_stride == tile:  # side by side: the padded image cut by reshapes alone
            cut = padded.reshape(-1, channels, rows, tile, cols, tile).permute(0, 2, 4, 1, 3, 5)
            return cut.reshape(-1, channels, tile, tile)
        if not torch.jit.is_tracing():  # F.unfold's tiles as views, copied once (3x faster than the gathers below)
            cut = padded.unfold(2, tile, self.tile_stride).unfold(3, tile, self.tile_stride)  # [B, C, rows, cols, t, t]
            return cut.permute(0, 2, 3, 1, 4, 5).reshape(-1, channels, tile, tile)
        # In the exported graph, F.unfold's tiles in its order, gathered along the second-last axis only (rows,
        # then the columns of the transposed rows): OpenVINO's CPU Gather along the last axis goes wrong on
        # several threads once its output passes 2**25 elements (``_gather_lines``).
        picked = _gather_lines(padded, _tile_lines(rows, tile, self.tile_stride))  # [B, C, rows * t, W]
        picked = _gather_lines(
            picked.transpose(2, 3), _tile_lines(cols, tile, self.tile_stride)
        )  # [B, C, cols*t, rows*t]
        picked = picked.reshape(-1, channels, cols, tile, rows, tile).permute(0, 4, 2, 1, 5, 3)
        return picked.reshape(-1, channels, tile, tile)

    def untile(self, maps: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The core's ``(maps [B * tiles, t, t], scores [B * tiles])`` as one map and score per image."""
        if not self.tile_size:
            return maps, scores
        count, tile = self.tiles_per_image, self.tile_size
        columns = maps.reshape(-1, count, tile * tile).transpose(1, 2)
        stitched = F.fold(columns, self.padded, tile, stride=self.tile_stride) / self.coverage
        height, width = self.input_size
        return stitched[:, 0, :height, :width], scores.reshape(-1, count).amax(dim=1)

    # --- back to the image ----------------------------------------------------------------------
    def restore(self, anomaly_map: np.ndarray, size_hw: tuple[int, int], divisor: int = 1) -> np.ndarray:
        """A ``map_size`` map at an image's own ``(height, width)`` (bilinear; the padding cropped).

        ``divisor`` > 1: at ``reduced_size(size_hw, divisor)`` instead (``otx test``'s pixel metrics
        on more pixels than memory holds), the same crop of a map resized to the reduced canvas.
        """
        height, width = int(size_hw[0]), int(size_hw[1])
        full_h, full_w = padded_size(height, width, self.input_size) if self.mode == "keep_aspect" else (height, width)
        if divisor > 1:
            (full_h, full_w), (height, width) = reduced_size((full_h, full_w), divisor), reduced_size(size_hw, divisor)
        return resize_crop(anomaly_map.astype(np.float32, copy=False), (full_h, full_w), (height, width))


def resize_crop(small: np.ndarray, full_hw: tuple[int, int], crop_hw: tuple[int, int]) -> np.ndarray:
    """``small`` resized bilinearly to ``full_hw``, then its top-left ``crop_hw``; only what the crop reads is resized.

    A ``keep_aspect`` map of a long image is mostly padding once resized: a 300x12000 image of a
    256x256 model is padded to 12000x12000, a 576 MB map of which 14 MB is kept. Resizing only the
    rows and columns of ``small`` that the crop's pixels interpolate from (with OpenCV's scale factors,
    so every kept pixel samples the same source positions) gives the same values (to float rounding)
    without that map, and returns an array that does not hold it (before: a view into it).
    """
    (full_h, full_w), (height, width) = full_hw, crop_hw
    rows, cols = small.shape[:2]
    if (full_h, full_w) == (rows, cols):
        return small[:height, :width]
    scale_y, scale_x = full_h / rows, full_w / cols
    # Output pixel i of a bilinear resize reads source lines floor((i + 0.5) / scale - 0.5) and the one after;
    # a line more, and two at least: OpenCV's vectorised rows round otherwise on a one-line part (6e-6 off).
    need_h = min(rows, max(2, math.floor((height - 0.5) / scale_y - 0.5) + 3))
    need_w = min(cols, max(2, math.floor((width - 0.5) / scale_x - 0.5) + 3))
    if (need_h, need_w) != (rows, cols):
        part = np.ascontiguousarray(small[:need_h, :need_w])
        part = cv2.resize(part, (0, 0), fx=scale_x, fy=scale_y, interpolation=cv2.INTER_LINEAR)
        # (a part whose size comes out unchanged is copied by OpenCV, not resampled at the scale: resized whole)
        if part.shape[:2] != (need_h, need_w) and part.shape[0] >= height and part.shape[1] >= width:
            return part[:height, :width].copy()  # not a view: the few lines past the crop go
    full = cv2.resize(small, (full_w, full_h), interpolation=cv2.INTER_LINEAR)
    return full if (height, width) == (full_h, full_w) else full[:height, :width].copy()


def reduced_size(size_hw: tuple[int, int], divisor: int) -> tuple[int, int]:
    """``(height, width)`` divided by ``divisor``, rounded up (at least one pixel each)."""
    return -(-int(size_hw[0]) // divisor), -(-int(size_hw[1]) // divisor)


def _pad_edges(images: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Pad ``[B, C, h, w]`` at the bottom and right to ``size_hw``, repeating the edge pixels."""
    pad_h, pad_w = size_hw[0] - images.shape[-2], size_hw[1] - images.shape[-1]
    return F.pad(images, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else images


RESIZE_BLOCK = 32  # outputs per block of the banded resize (see ``_antialias_blocks``)


def _antialias_blocks(
    n_in: torch.Tensor, n_out: int, block: int, n_read: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
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
    traced graph. With ``n_read`` < ``n_in`` the axis is resized as if it were padded to ``n_in``
    by repeating its last pixel (the ``keep_aspect`` mode): inputs from ``n_read`` on read it.
    """
    n_in = n_in.to(torch.int64)
    n_read = n_in if n_read is None else n_read.to(torch.int64)
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
    indices = torch.minimum(torch.clamp(inputs, min=0), n_read - 1).reshape(-1)
    return indices, weights.to(torch.float32) / total.to(torch.float32)


def resize_antialias(image: torch.Tensor, size_hw: tuple[int, int], keep_aspect: bool = False) -> torch.Tensor:
    """Antialiased bilinear resize of ``[B, C, H, W]`` images as banded matrix products.

    With ``keep_aspect`` the images are first padded at the bottom or right, edge pixels repeated,
    to the aspect ratio of ``size_hw`` (``padded_size``), inside the same products.

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
    height, width = shape[2], shape[3]
    if keep_aspect:  # padded_size on shape tensors (dynamic in a traced graph)
        full_h = torch.maximum(height, torch.div(width * out_h + out_w - 1, out_w, rounding_mode="floor"))
        full_w = torch.maximum(width, torch.div(height * out_w + out_h - 1, out_h, rounding_mode="floor"))
    else:
        full_h, full_w = height, width
    rows, row_weights = _antialias_blocks(full_h, out_h, RESIZE_BLOCK, height)
    cols, col_weights = _antialias_blocks(full_w, out_w, RESIZE_BLOCK, width)
    image = _resize_rows(image, rows, row_weights, out_h, (batch, channels, shape[3]))
    # the columns as the rows of the transposed image (no gather along the last axis, ``_gather_lines``)
    image = _resize_rows(image.transpose(2, 3), cols, col_weights, out_w, (batch, channels, out_h))
    return image.transpose(2, 3).contiguous()  # (eager: what follows reads rows; the graph drops it)


def _resize_rows(
    image: torch.Tensor, lines: torch.Tensor, weights: torch.Tensor, size: int, bcw: tuple[Any, Any, Any]
) -> torch.Tensor:
    """One axis of ``resize_antialias``: the rows of ``image [B, C, H, W]`` resized to ``size``.

    ``lines`` and ``weights`` are ``_antialias_blocks``'s; ``bcw`` is ``(B, C, W)`` (shape values,
    dynamic in a traced graph). ``[B, C, blocks, L, W]`` gathered; ``[blocks, 32, L]`` @ that ->
    ``[B, C, blocks * 32, W]``, cropped to ``size`` rows.
    """
    batch, channels, width = bcw
    gathered = _gather_lines(image, lines).reshape(batch, channels, weights.shape[0], -1, width)
    return torch.matmul(weights, gathered).reshape(batch, channels, -1, width)[:, :, :size]

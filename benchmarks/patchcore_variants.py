"""The otx CLI with PatchCore's map or embedding changed, to measure variants without a model change.

Environment variables (unset: the shipped model):

- ``PCX_UPSAMPLE``: ``nearest`` (anomalib's) or ``bilinear``: how the patch scores are brought to
  the input size before the blur, whatever the checkpoint's ``map_upsample`` says (the model's key
  since 2026-12-02, ``bilinear`` by default; earlier checkpoints are ``nearest``);
- ``PCX_SIGMA``: the blur's sigma (4: the model's; 0: no blur);
- ``PCX_EMBED_GRID``: ``second``: the embedding takes the grid of the second layer, finer layers
  area-pooled onto it (anomalib's takes the first layer's grid, upsampling the coarser ones).

A checkpoint trained under a variant must be tested under the same one (the script changes code,
not the checkpoint). Usage, e.g. (docs/models.md, PatchCore, "Against PADIM's AUPRO"):

    PCX_UPSAMPLE=bilinear OTX_OFFLINE=1 .venv/bin/python benchmarks/patchcore_variants.py test \\
        --work_dir /tmp/pcx/t_bilinear --checkpoint W/<run>-train/model.ckpt --data_root ../shared/data/magnetic_tile
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

from otx.cli import main
from otx.models import patchcore

UPSAMPLE = os.environ.get("PCX_UPSAMPLE")
SIGMA = os.environ.get("PCX_SIGMA")
EMBED_GRID = os.environ.get("PCX_EMBED_GRID")


def _patch_map(mode: str, sigma: float) -> None:
    # the model's own generator at another sigma: anomalib's kernel size, the separable blur
    blur = patchcore.PatchcoreMapGenerator(sigma=sigma).blur if sigma > 0 else None  # type: ignore[arg-type]

    def forward(self: torch.nn.Module, patch_scores: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        del self
        extra = {"align_corners": False} if mode == "bilinear" else {}
        size = tuple(int(s) for s in image_size)
        upsampled = F.interpolate(patch_scores, size=size, mode=mode, **extra)
        return upsampled if blur is None else blur(upsampled)

    patchcore.PatchcoreMapGenerator.forward = forward


def _embed_on_second_grid(self: patchcore.PatchcoreCore, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        features = self.feature_extractor(images)
    pooled = [self.feature_pooler(features[layer]) for layer in self.layers]
    grid = pooled[min(1, len(pooled) - 1)].shape[-2:]
    parts = []
    for part in pooled:
        if part.shape[-2] > grid[0]:
            part = F.adaptive_avg_pool2d(part, grid)
        elif part.shape[-2] < grid[0]:
            part = F.interpolate(part, size=grid, mode="bilinear")
        parts.append(part)
    return torch.cat(parts, 1)


if __name__ == "__main__":
    if UPSAMPLE or SIGMA:
        _patch_map(UPSAMPLE or "nearest", float(SIGMA or 4))
    if EMBED_GRID == "second":
        patchcore.PatchcoreCore.embed = _embed_on_second_grid
    elif EMBED_GRID:
        sys.exit(f"error: PCX_EMBED_GRID must be 'second' or unset (got {EMBED_GRID!r})")
    sys.exit(main())

"""PatchCore core: a memory bank of normal patch features, nearest-neighbour distance as the anomaly.

Wraps anomalib's ``PatchcoreModel`` (feature extraction, 3x3 average pooling of the layer maps,
their concatenation, the anomaly map: upsampling and a Gaussian blur, and the paper's
re-weighted image score). Two parts are replaced, one is an option:

- **Fitting.** anomalib keeps every patch embedding of the training set (779k x 152 floats on
  magnetic_tile with EfficientNet-Lite0) and runs a greedy k-centre selection over all of them,
  in a 335-dimensional random projection (larger than the embedding itself): about 3 iterations
  per second on 2 cores, 45 minutes for a 1 % coreset. ``StreamingCoreset`` selects in two
  stages: each training batch is reduced to its own greedy k-centres (``oversample`` times the
  coreset ratio of each image's patches) as it arrives, so the embeddings of the whole set are
  never held; the final coreset is the greedy k-centre selection over those candidates. Both
  stages compute distances as one matrix-vector product per step on the embeddings themselves.
- **Scoring.** ``MemoryBankScorer`` computes the nearest-neighbour search and anomalib's
  re-weighting with batch-independent tensor operations (gathers instead of ``arange`` indexing,
  no Python loop over chunks), so that the traced export holds the search for any batch size.
  In torch it runs image by image (memory: one image's patches x the bank).
- **Map upsampling** (``map_upsample``). anomalib brings the patch scores to the image size by
  nearest-neighbour upsampling; the default here is bilinear (``otx.models.upsample``), which on
  magnetic_tile raised the pixel AUROC from 0.8101 to 0.8123 and AUPRO from 0.7485 to 0.7498 on the
  same checkpoint (docs/models.md, "Against PADIM's AUPRO"). ``nearest`` is anomalib's map.

Image-level and (with ``map_upsample="nearest"``) pixel-level outputs equal anomalib's for the same
memory bank (``tests/test_models.py``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from anomalib.data import InferenceBatch
from anomalib.models.image.patchcore.anomaly_map import AnomalyMapGenerator
from anomalib.models.image.patchcore.torch_model import PatchcoreModel
from torch import nn

from otx import distributed
from otx.errors import OTXConfigError
from otx.models.base import AnomalyModel
from otx.models.padim import SeparableGaussianBlur
from otx.models.quantization import Scheme
from otx.models.upsample import upsample_bilinear
from otx.validate import check_choice, check_int, check_number

log = logging.getLogger("otx")

# Above this embedding size the k-centre selection runs on a seeded random projection to this many
# dimensions (selection only; the memory bank keeps the full embeddings).
SELECTION_DIMS = 256


PROGRESS_STEPS = 256  # greedy_k_center reports its progress every this many centres


def greedy_k_center(points: np.ndarray, k: int, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Greedy k-centre selection among ``points [n, d]``; returns ``k`` indices (all when ``k >= n``).

    The first centre is the point farthest from the points' mean (deterministic: no random start);
    each next one is the point farthest from the centres chosen so far (Gonzalez's 2-approximation
    of the k-centre problem, the selection of the PatchCore paper and of anomalib's
    ``KCenterGreedy``). Squared distances, from one matrix-vector product per step. NumPy, not
    torch: the loop makes thousands of small calls, and NumPy's call overhead is a fraction of
    torch's (one image's selection: 103 steps over 1024 patches). ``progress(done, k)`` is called
    every ``PROGRESS_STEPS`` centres and at the end.
    """
    n = points.shape[0]
    if k >= n:
        return np.arange(n)
    points = np.ascontiguousarray(points, dtype=np.float32)
    norms = np.einsum("ij,ij->i", points, points)
    chosen = np.empty(k, dtype=np.int64)
    min_distance = np.full(n, np.inf, dtype=np.float32)
    centred = points - points.mean(axis=0)
    index = int(np.einsum("ij,ij->i", centred, centred).argmax())
    distance = np.empty(n, dtype=np.float32)
    for step in range(k):
        chosen[step] = index
        np.dot(points, points[index], out=distance)
        distance *= -2.0
        distance += norms
        distance += norms[index]
        np.minimum(min_distance, distance, out=min_distance)
        min_distance[index] = -1.0  # chosen: never again
        index = int(min_distance.argmax())
        if progress is not None and ((step + 1) % PROGRESS_STEPS == 0 or step + 1 == k):
            progress(step + 1, k)
    return chosen


class StreamingCoreset:
    """Two-stage greedy coreset of patch embeddings, fed batch by batch (memory: the candidates only).

    Selection runs on a seeded Gaussian random projection of the embeddings to ``SELECTION_DIMS``
    dimensions when they have more (anomalib selects on a random projection too); the memory
    bank keeps the full embeddings.

    Args:
        ratio: share of all training patches the memory bank keeps.
        oversample: each image keeps ``oversample * ratio`` of its patches as candidates (at least one;
            the default is the model's, ``Patchcore(oversample=...)``).
        seed: seed of the random projection.
    """

    def __init__(self, ratio: float, oversample: float, seed: int = 0) -> None:
        self.ratio = ratio
        self.oversample = oversample
        self.seed = seed
        self.count = 0
        self._images: list[int] = []  # the index of each image the candidates come from
        self._candidates: list[np.ndarray] = []  # full embeddings
        self._projected: list[np.ndarray] = []  # the same in the selection space
        self._projection: np.ndarray | None = None

    def _selection_space(self, patches: np.ndarray) -> np.ndarray:
        dims = patches.shape[-1]
        if dims <= SELECTION_DIMS:
            return patches
        if self._projection is None:
            rng = np.random.default_rng(self.seed)
            self._projection = (rng.standard_normal((dims, SELECTION_DIMS)) / math.sqrt(SELECTION_DIMS)).astype(
                np.float32
            )
        return patches @ self._projection

    def update(self, embedding: torch.Tensor, indices: list[int] | None = None) -> None:
        """Add a batch of embeddings ``[B, D, h, w]``; keeps each image's greedy k-centre candidates.

        ``indices`` identify the images (their position in the training set): candidates are
        joined in that order, so the bank does not depend on the batch order or on how images
        were split between processes. None numbers the images in the order they arrive.
        """
        patches = embedding.detach().float().flatten(2).transpose(1, 2).cpu().numpy()  # [B, P, D]
        per_image = patches.shape[1]
        self.count += patches.shape[0] * per_image
        if indices is None:
            indices = list(range(len(self._images), len(self._images) + patches.shape[0]))
        keep = max(1, math.ceil(min(1.0, self.oversample * self.ratio) * per_image))
        for index, image in zip(indices, patches, strict=True):  # one image at a time: it stays in cache
            projected = self._selection_space(image)
            chosen = greedy_k_center(projected, keep)
            self._images.append(int(index))
            self._candidates.append(image[chosen])
            self._projected.append(projected[chosen])

    @property
    def candidates(self) -> int:
        """How many candidate patches this process holds."""
        return sum(c.shape[0] for c in self._candidates)

    def finalize(self, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """The memory bank ``[M, D]``: ``ceil(ratio * patches seen)`` greedy k-centres of the candidates.

        In a distributed run every process calls it: the candidates of all processes are gathered
        (in image order) and each process selects the same bank, the one a single process selects.
        ``progress(done, total)``: the selection's progress (``greedy_k_center``).
        """
        held = (self.count, self._images, self._candidates, self._projected)
        self._images, self._candidates, self._projected = [], [], []
        counts, images, candidate_parts, projected_parts = zip(*distributed.gather(held), strict=True)
        count = self.count = sum(counts)  # patches seen by all processes
        order = np.argsort(np.concatenate([np.asarray(i, dtype=np.int64) for i in images]), kind="stable")
        if not len(order):
            raise ValueError("PatchCore saw no training images")
        candidates = [part for process in candidate_parts for part in process]
        projected = [part for process in projected_parts for part in process]
        candidates = np.concatenate([candidates[i] for i in order])
        projected = np.concatenate([projected[i] for i in order])
        size = max(1, math.ceil(self.ratio * count))
        if size < candidates.shape[0]:
            candidates = candidates[greedy_k_center(projected, size, progress)]
        return torch.from_numpy(np.ascontiguousarray(candidates))


class BankSearch(nn.Module):
    """For each patch ``x``, the smallest ``|y|^2 - 2 x.y`` over one block of bank entries ``y``."""

    def forward(self, patches: torch.Tensor, block: torch.Tensor) -> torch.Tensor:  # noqa: D102
        rank = torch.matmul(patches, block.transpose(0, 1))
        return rank.mul_(-2).add_(block.pow(2).sum(dim=-1)).amin(dim=-1)


class MemoryBankScorer(nn.Module):
    """Nearest-neighbour patch scores and anomalib's re-weighted image score, batch-independent.

    ``forward(patches [B, P, D], memory_bank [M, D])`` returns ``(patch_scores [B, P], pred_score [B])``:
    the Euclidean distance of each patch to its nearest bank entry and, with ``num_neighbors``
    above 1, the largest patch score weighted by ``1 - softmax`` of the patch's distances to the
    ``num_neighbors`` bank entries nearest its own nearest neighbour (PatchCore paper, eq. 7).

    The search is a matrix product against the bank (``|y|^2 - 2 x.y`` ranks the entries ``y`` for
    a patch ``x``, and ``|x|^2`` is added to the minimum only) and a minimum per patch, in blocks
    of ``block`` entries (``BankSearch``): a [patches x block] product stays in the CPU's caches
    until its minimum is taken. Only the most anomalous patch needs to know which entry is its
    nearest (for the re-weighting), so that index is found in its own row alone. Measured in
    OpenVINO on this project's CPU (1,024 patches against 7,793 entries of 152 floats): the
    product and minimum in one piece 14.2 ms in f32 and 19.2 ms in INT8, in blocks of about 2,000
    entries 12.1 and 5.7 ms; a top-k over every patch's row (what ``torch.min(dim)`` exports to)
    cost as much as the product. In an INT8 export the blocks' products are the one quantised part
    of the search; the image score is measured again in float, from its patch to the entry found.
    """

    def __init__(self, num_neighbors: int, block: int = 2048) -> None:
        super().__init__()
        self.num_neighbors = num_neighbors
        self.block = block
        self.search = BankSearch()

    def forward(self, patches: torch.Tensor, memory_bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        if patches.shape[0] > 1 and not torch.jit.is_tracing():  # one image at a time: memory P x M, not B x P x M
            parts = [self(image.unsqueeze(0), memory_bank) for image in patches]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        parts = memory_bank.chunk(max(1, math.ceil(memory_bank.shape[0] / self.block)))  # equal blocks
        minima = [self.search(patches, part) for part in parts]
        nearest_partial = minima[0] if len(parts) == 1 else torch.stack(minima, dim=-1).amin(dim=-1)
        patch_scores = (nearest_partial + patches.pow(2).sum(dim=-1)).clamp_min(0).sqrt()  # [B, P]
        worst = patch_scores.argmax(dim=1, keepdim=True)  # [B, 1]: the most anomalous patch
        feature = patches.gather(1, worst.unsqueeze(2).expand(-1, -1, patches.shape[2])).squeeze(1)  # [B, D]
        # Everything below reads the bank through the same blocks as the search, each on the left of
        # its products: an export folds each block (and any transpose of one) into a constant of its
        # own, so one more use of the whole bank, or of a transposed block, would store it again.
        row = torch.cat([self.squared_distances(feature, part, with_x=False) for part in parts], dim=1)  # [B, M]
        nearest = self.entries(parts, row.argmin(dim=1, keepdim=True))[:, 0]  # [B, D]: its nearest bank entry
        score = (feature - nearest).pow(2).sum(dim=-1).sqrt()  # [B]
        if self.num_neighbors == 1:
            return patch_scores, score
        neighbours = min(self.num_neighbors, memory_bank.shape[0])
        if neighbours == 1:  # a one-entry bank: the softmax of one distance is 1, which weighted every score to 0
            return patch_scores, score
        to_nearest = torch.cat([self.squared_distances(nearest, part) for part in parts], dim=1)  # [B, M]
        support = to_nearest.topk(neighbours, dim=-1, largest=False).indices  # [B, k]
        # anomalib's euclidean_dist, as the re-weighting's distances are computed there
        distances = PatchcoreModel.euclidean_dist(feature.unsqueeze(1), self.entries(parts, support)).squeeze(1)
        weights = 1 - F.softmax(distances, dim=1)[:, 0]
        return patch_scores, weights * score

    @staticmethod
    def squared_distances(x: torch.Tensor, part: torch.Tensor, with_x: bool = True) -> torch.Tensor:
        """``|x - y|^2`` (or ``|y|^2 - 2 x.y``, without ``|x|^2``) of each ``x [B, D]`` to each ``y`` in ``part``.

        The terms and their order are anomalib's ``euclidean_dist`` before its square root, so the
        ranking of entries is the same; the block stays on the left of the product.
        """
        products = torch.matmul(part, x.transpose(0, 1)).transpose(0, 1)  # [B, m]
        if not with_x:
            return part.pow(2).sum(dim=-1) - 2 * products
        return (x.pow(2).sum(dim=-1, keepdim=True) - 2 * products + part.pow(2).sum(dim=-1)).clamp_min(0)

    @staticmethod
    def entries(parts: tuple[torch.Tensor, ...], indices: torch.Tensor) -> torch.Tensor:
        """The bank entries ``[B, k, D]`` at ``indices [B, k]``, gathered from the block that holds each.

        Every block is read at the index clamped into it and the reads are summed, each times 1
        where the entry lies in that block and 0 elsewhere: exact, and one copy of the bank in an
        export (a one-hot product would store each block again, transposed for the product).
        """
        picked, start = [], 0
        for part in parts:
            local = indices - start
            inside = ((local >= 0) & (local < part.shape[0])).unsqueeze(-1).to(part.dtype)
            picked.append(part[local.clamp(0, part.shape[0] - 1)] * inside)
            start += part.shape[0]
        return torch.stack(picked).sum(dim=0)


MAP_UPSAMPLING = ("bilinear", "nearest")


class PatchcoreMapGenerator(AnomalyMapGenerator):
    """anomalib's PatchCore anomaly map (patch scores upsampled, Gaussian blur) with the separable blur.

    Args:
        sigma: the blur's standard deviation (anomalib's 4; its kernel size formula).
        upsample: ``nearest`` (anomalib's ``F.interpolate`` default) or ``bilinear``
            (``otx.models.upsample``, the same values as ``F.interpolate(mode="bilinear")``): how the
            patch scores reach the image size before the blur.
    """

    def __init__(self, sigma: int = 4, upsample: str = "bilinear") -> None:
        super().__init__(sigma=sigma)
        self.blur = SeparableGaussianBlur(self.blur)
        self.upsample = check_choice("map_upsample", upsample, MAP_UPSAMPLING, case_insensitive=False)

    def compute_anomaly_map(  # noqa: D102
        self, patch_scores: torch.Tensor, image_size: tuple[int, int] | torch.Size | None = None
    ) -> torch.Tensor:
        if image_size is not None and self.upsample == "bilinear":
            return self.blur(upsample_bilinear(patch_scores, image_size))
        return super().compute_anomaly_map(patch_scores, image_size)


class PatchcoreCore(PatchcoreModel):
    """anomalib's ``PatchcoreModel`` scored by ``MemoryBankScorer`` and blurred by the separable blur."""

    def __init__(self, layers: list[str], backbone: str, num_neighbors: int, map_upsample: str = "bilinear") -> None:
        super().__init__(layers=layers, backbone=backbone, pre_trained=False, num_neighbors=num_neighbors)
        self.anomaly_map_generator = PatchcoreMapGenerator(upsample=map_upsample)
        self.scorer = MemoryBankScorer(num_neighbors)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Locally aware patch embeddings ``[B, D, h, w]`` of normalised images."""
        with torch.no_grad():
            features = self.feature_extractor(images)
        return self.generate_embedding({layer: self.feature_pooler(f) for layer, f in features.items()})

    def forward(self, images: torch.Tensor) -> InferenceBatch:  # type: ignore[override]
        """``InferenceBatch`` with ``pred_score [B]`` and ``anomaly_map [B, 1, H, W]`` (eval and training alike)."""
        if self.memory_bank.numel() == 0:
            raise ValueError("PatchCore's memory bank is empty: fit the model first")
        embedding = self.embed(images)
        height, width = embedding.shape[-2:]
        patch_scores, pred_score = self.scorer(embedding.flatten(2).transpose(1, 2), self.memory_bank)
        anomaly_map = self.anomaly_map_generator(patch_scores.reshape(-1, 1, height, width), images.shape[-2:])
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)


class Patchcore(AnomalyModel):
    """PatchCore (Roth et al., 2022): nearest-neighbour search in a coreset of normal patch features.

    Args:
        backbone: backbone name.
        layers: feature layers; None takes the backbone's defaults.
        input_size: ``[height, width]`` every image is brought to (its anomaly map's size); None with
            ``keep_aspect``: chosen from the training images' aspect ratio.
        input_mode: ``auto`` (resize, or keep_aspect for images resize would squash 2x or more, chosen by
            ``otx train``), ``resize``, ``keep_aspect`` or ``tile`` (``docs/input-modes.md``).
        tile_size: tile side in the ``tile`` mode (default 256).
        tile_stride: pixels between tiles in the ``tile`` mode (default ``tile_size``).
        boxes_on_normal: detection boxes also on images labelled normal.
        boxes_refine: how detection boxes are snapped to the image: ``auto`` (chosen on the
            validation split), ``none``, ``dark``, ``bright`` or ``contrast``.
        score_top_share: the image score is the mean of this share of the map's highest pixels;
            None: the core's own score (``AnomalyModel``).
        pretrained: load ImageNet weights into the backbone.
        weights: a local weights file for the backbone.
        image_threshold: manual raw image threshold; None learns it on validation.
        pixel_threshold: manual raw pixel threshold; None learns it on validation.
        coreset_ratio: share of the training patches the memory bank keeps (0, 1].
        num_neighbors: bank entries around the nearest one that re-weight the image score (1: no re-weighting).
        oversample: candidates kept per training image, as a multiple of ``coreset_ratio`` (16: on
            magnetic_tile's test split image AUROC 0.979 against 0.960 at 4 and anomalib's 0.975
            with its full greedy selection; fit 88 s, docs/models.md).
        map_upsample: ``bilinear`` or ``nearest`` (anomalib's): how the patch scores reach the input
            size before the blur. Checkpoints written before the option keep ``nearest``.
    """

    default_trainer: ClassVar[dict[str, Any]] = {"max_epochs": 1}
    fits_in_one_pass = True
    anomalib_names: ClassVar[dict[str, str]] = {
        **AnomalyModel.anomalib_names,
        "coreset_sampling_ratio": "coreset_ratio",
    }
    # Two middle layers (strides 8 and 16), as the paper's layer2 + layer3 of a ResNet.
    layers_by_backbone: ClassVar[dict[str, tuple[str, ...]]] = {
        "efficientnet_lite0": ("blocks.2", "blocks.4"),
        "efficientnet_lite1": ("blocks.2", "blocks.4"),
        "efficientnet_lite2": ("blocks.2", "blocks.4"),
        "mobilenet_v2": ("blocks.2", "blocks.4"),
        "resnet18": ("layer2", "layer3"),
        "wide_resnet50_2": ("layer2", "layer3"),
    }
    # Backbone INT8 and the search's matrix product INT8; everything else from the pooled layer maps
    # on (pooling, embedding, distances, re-weighting, anomaly map, score, post-processing) float.
    # Distances to the bank grow with the anomaly (what a calibration on normal images clips), and
    # a quantiser on the pooled maps rounds every embedding channel to one per-tensor grid: with it,
    # the sample data's INT8 image AUROC was 0.52 (FP32 1.0). The search's product is quantised on
    # its own (its input quantiser feeds nothing else), and the image score is measured again in
    # float from the patch to the entry the product found (MemoryBankScorer): magnetic_tile's
    # validation image AUROC 0.928 with the product in float, 0.928 with it INT8 (7-bit weights).
    int8_scheme = Scheme(
        name="patchcore-int8",
        summary="backbone and the nearest-neighbour search's matrix product INT8 (activation ranges: min-max); "
        "pooled features, embedding, distances, re-weighting, anomaly map, score and post-processing float",
        float_patterns=(
            r"^__module\.core\.feature_pooler.*",
            r"^__module\.core/.*",
            r"^__module\.core\.scorer.*",
            r"^__module\.core\.anomaly_map_generator.*",
        ),
        float_after=(r"^__module\.core\.feature_pooler.*",),
        fast_bias_correction=False,
        int8_patterns=(r"^__module\.core\.scorer\.search/aten::matmul/MatMul(_\d+)?$",),
        # Nearest-neighbour distances turn small feature errors into score errors; activation ranges
        # from the full observed range over up to 1,000 train/good images (all 761 of magnetic_tile):
        # 288 of 291 test labels equal to the FP32 IR's, against 283 with NNCF's default ranges (each
        # image's extremes averaged) over 300 images (docs/models.md, "INT8").
        activation_ranges="minmax",
        calibration_images=1000,
    )

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        layers: list[str] | None = None,
        input_size: tuple[int, int] | None = (256, 256),
        input_mode: str = "auto",
        tile_size: int | None = None,
        tile_stride: int | None = None,
        boxes_on_normal: bool = False,
        boxes_refine: str = "auto",
        score_top_share: float | None = None,
        pretrained: bool = True,
        weights: str | None = None,
        image_threshold: float | None = None,
        pixel_threshold: float | None = None,
        coreset_ratio: float = 0.01,
        num_neighbors: int = 9,
        oversample: float = 16.0,
        map_upsample: str = "bilinear",
    ) -> None:
        self.coreset_ratio = check_number("coreset_ratio", coreset_ratio, low=0.0, high=1.0, above_low=True)
        self.num_neighbors = check_int("num_neighbors", num_neighbors, minimum=1)
        self.oversample = check_number("oversample", oversample, low=1.0)
        self.map_upsample = check_choice("map_upsample", map_upsample, MAP_UPSAMPLING)
        super().__init__(
            backbone,
            layers,
            input_size,
            pretrained,
            weights,
            image_threshold,
            pixel_threshold,
            input_mode=input_mode,
            tile_size=tile_size,
            tile_stride=tile_stride,
            boxes_on_normal=boxes_on_normal,
            boxes_refine=boxes_refine,
            score_top_share=score_top_share,
        )
        self.save_hyperparameters()

    @classmethod
    def upgrade_init_args(cls, init_args: dict[str, Any]) -> dict[str, Any]:
        """Checkpoints written before ``map_upsample``: nearest upsampling, the map their thresholds were fitted on."""
        return super().upgrade_init_args({"map_upsample": "nearest", **init_args})

    def build_core(self) -> nn.Module:  # noqa: D102
        try:
            return PatchcoreCore(
                layers=self.layers,
                backbone=self.spec.timm_name,
                num_neighbors=self.num_neighbors,
                map_upsample=self.map_upsample,
            )
        except ValueError as exc:
            raise OTXConfigError(f"PatchCore: {exc}") from exc

    def pretrained_modules(self) -> list[nn.Module]:  # noqa: D102
        return [self.model.feature_extractor.feature_extractor]

    def on_train_epoch_start(self) -> None:  # noqa: D102
        self._coreset = StreamingCoreset(self.coreset_ratio, self.oversample)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:  # noqa: D102
        del batch_idx
        batch = distributed.drop_padding(batch)  # each training image counts once in a distributed fit
        if batch is None:
            return
        tiles = self.preprocessor.tiles_per_image  # each tile's candidates are chosen on their own
        indices = [index * tiles + tile for index in torch.as_tensor(batch["index"]).tolist() for tile in range(tiles)]
        for chunk in self.core_input_chunks(batch["image"]):
            self._coreset.update(self.model.embed(chunk), indices[: chunk.shape[0]])
            indices = indices[chunk.shape[0] :]

    def finish_fit(self) -> None:  # noqa: D102 - every process of a distributed run calls it (a collective)
        coreset = getattr(self, "_coreset", None)
        if coreset is None:
            return
        start = time.perf_counter()
        candidates = coreset.candidates
        with self.fit_progress("Coreset") as progress:  # minutes on large training sets: a bar of its own
            self.model.memory_bank = coreset.finalize(progress).to(self.device)
        self._coreset = None
        log.info(
            "PatchCore memory bank: %d of %d training patches (coreset ratio %g; k-centres of %d candidates, %.1f s)",
            self.model.memory_bank.shape[0],
            coreset.count,
            self.coreset_ratio,
            candidates,
            time.perf_counter() - start,
        )
        entries = self.model.memory_bank.shape[0]
        if entries < self.num_neighbors:
            self.fit_warnings.append(
                f"PatchCore's memory bank holds {entries} entries (coreset ratio {self.coreset_ratio:g} of "
                f"{coreset.count} training patches), fewer than num_neighbors {self.num_neighbors}: so few entries "
                "describe the normal images poorly; raise --model.init_args.coreset_ratio or add training images"
            )

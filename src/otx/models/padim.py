"""PADIM core: a Gaussian per feature-map position, fitted in one pass over normal images.

Wraps anomalib's ``PadimModel`` (feature extraction, random channel selection, Mahalanobis
anomaly map). One part is replaced: anomalib keeps every training embedding in a memory bank
and then estimates each position's covariance in a Python loop over positions (strided reads of
the whole bank, 4096 times at 256x256). ``StreamingGaussian`` accumulates the same statistics
chunk by chunk with batched matrix products and inverts with one thread, so memory no longer
grows with the number of training images (docs/architecture.md has the measurements; PADIM
train time on magnetic_tile is 0.77x anomalib's). It writes the same ``mean`` /
``inv_covariance`` buffers, with the same regularisation, so anomalib's anomaly-map code runs
on them; its Gaussian blur and its upsampling are computed in faster equal forms
(``SeparableGaussianBlur``, ``otx.models.upsample``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from anomalib.models.components import GaussianBlur2d
from anomalib.models.image.padim.anomaly_map import AnomalyMapGenerator
from anomalib.models.image.padim.torch_model import PadimModel
from torch import nn

from otx import distributed
from otx.errors import OTXConfigError
from otx.models.backbones import layer_channels
from otx.models.base import AnomalyModel
from otx.models.quantization import Scheme
from otx.models.upsample import upsample_bilinear
from otx.validate import SEED_MAX, check_int


class StreamingGaussian:
    """Per-position mean and covariance of ``[B, C, H, W]`` embeddings, accumulated chunk by chunk.

    Batches are buffered into chunks of ``chunk`` images so that each batched matrix product has
    a long inner dimension (writing the ``[P, C, C]`` sums once per chunk, not once per batch).
    Sums are taken around a shift (the first batch's mean per position) to avoid cancellation,
    and accumulated in float64: the covariance of a few dozen images is near-singular, and its
    regularised inverse turned float32 rounding (which depends on the order of the images) into
    relative differences of 1e-3 between a one-process and a two-process fit of the sample data.
    """

    def __init__(self, chunk: int = 64) -> None:
        self.chunk = chunk
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.count = 0
        self.shift: torch.Tensor | None = None
        self.sum: torch.Tensor | None = None
        self.sum_outer: torch.Tensor | None = None
        self._pending: list[torch.Tensor] = []
        self._pending_count = 0

    def update(self, embedding: torch.Tensor) -> None:
        """Add a batch of embeddings ``[B, C, H, W]``."""
        batch, channels, height, width = embedding.shape
        x = embedding.detach().float().reshape(batch, channels, height * width).permute(2, 0, 1)  # [P, B, C]
        if self.shift is None:
            self.shift = x.mean(dim=1, keepdim=True)
            self.sum = torch.zeros(height * width, channels, dtype=torch.float64, device=x.device)
            self.sum_outer = torch.zeros(height * width, channels, channels, dtype=torch.float64, device=x.device)
        self._pending.append(x - self.shift)
        self._pending_count += batch
        self.count += batch
        if self._pending_count >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        if not self._pending or self.sum is None or self.sum_outer is None:
            return
        centred = torch.cat(self._pending, dim=1).double()  # [P, N, C]
        self._pending, self._pending_count = [], 0
        self.sum += centred.sum(dim=1)
        self.sum_outer.baddbmm_(centred.transpose(1, 2), centred)

    def finalize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``mean [C, P]`` and ``inv_covariance [P, C, C]`` as anomalib's MultiVariateGaussian does.

        The covariance is unbiased and regularised with ``0.01 * I`` and then ``1e-5 * I``, as there.
        In a distributed run (an initialised process group) every process calls it: the count, the
        sum and the scatter matrix about the common mean are summed over the processes, so each
        gets the statistics of all training images, as one process would (to rounding).
        """
        self._flush()
        if self.sum is None or self.sum_outer is None or self.shift is None:
            raise ValueError("PADIM saw no training images")
        count = distributed.all_sum(torch.tensor([float(self.count)], dtype=torch.float64, device=self.sum.device))
        n = int(count.item())
        if n < 2:
            raise ValueError("PADIM needs at least two training images")
        shift = self.shift[:, 0, :].double()  # [P, C]
        total = distributed.all_sum(self.sum + self.count * shift)  # sum of all embeddings, float64
        mean = total / n
        # scatter about the common mean from the sums about this process's shift:
        # S2 + S1 d^T + d S1^T + count d d^T, with d = shift - mean (one process: S2 - n m m^T)
        offset = shift - mean
        covariance, self.sum_outer = self.sum_outer, None  # finished in place: no second [P, C, C] copy
        covariance.baddbmm_(self.sum.unsqueeze(2), offset.unsqueeze(1))  # in place: no [P, C, C] temporaries
        covariance.baddbmm_(offset.unsqueeze(2), self.sum.unsqueeze(1))
        covariance.baddbmm_(offset.unsqueeze(2), offset.unsqueeze(1), alpha=self.count)
        covariance = distributed.all_sum(covariance)
        covariance /= n - 1
        identity = torch.eye(covariance.shape[-1], dtype=covariance.dtype, device=covariance.device)
        covariance += (0.01 + 1e-5) * identity
        # Batched inversion of thousands of small matrices is ~50x slower with several intra-op
        # threads than with one on CPU (measured: 60 s vs 0.9 s for 4096 x 100 x 100 on 2 cores).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            inv_covariance = torch.linalg.inv(covariance).float()
        finally:
            torch.set_num_threads(threads)
        return mean.float().T.contiguous(), inv_covariance


class SeparableGaussianBlur(nn.Module):
    """anomalib's ``GaussianBlur2d`` computed as two 1-D convolutions (same result, 16x fewer operations).

    PADIM smooths its anomaly map with a 33x33 Gaussian (sigma 4); as one 2-D convolution it was
    the most expensive node of the exported graph (11.6 of 30 ms per image on this 2-core CPU).
    A Gaussian kernel is the outer product of two 1-D kernels, so the blur is a 33x1 and a 1x33
    convolution after the same reflect padding. The 2-D ``kernel`` buffer is kept (same state dict
    as anomalib's module); the 1-D kernels are its row and column sums, exact because the kernel
    is normalised to sum 1.
    """

    def __init__(self, blur: GaussianBlur2d) -> None:
        super().__init__()
        if blur.padding != "same":
            raise ValueError("SeparableGaussianBlur supports 'same' padding only")
        self.register_buffer("kernel", blur.kernel.detach().clone())
        self.channels = blur.channels
        self.border_type = blur.border_type
        self.padding_shape = list(blur.padding_shape)

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor:
        """Blur ``[B, C, H, W]`` maps; output of the same shape."""
        padded = F.pad(input_tensor, self.padding_shape, mode=self.border_type)
        column = self.kernel.sum(dim=-1, keepdim=True)  # [C, 1, k, 1]
        row = self.kernel.sum(dim=-2, keepdim=True)  # [C, 1, 1, k]
        vertical = F.conv2d(padded, column, groups=self.channels)
        return F.conv2d(vertical, row, groups=self.channels)


class PadimMapGenerator(AnomalyMapGenerator):
    """anomalib's PADIM anomaly map with the separable blur and matrix-product upsampling.

    Same values as anomalib's generator and the same state dict (``blur.kernel``); only faster.
    The Mahalanobis product takes the per-position differences contiguous: anomalib multiplies a
    permuted view, which sent torch's batched matmul down a slow path (16 tiles of 256: 3.4-6.2 s
    against 0.17 s on this CPU).
    """

    def __init__(self, sigma: int = 4) -> None:
        super().__init__(sigma=sigma)
        self.blur = SeparableGaussianBlur(self.blur)

    @staticmethod
    def compute_distance(embedding: torch.Tensor, stats: list[torch.Tensor]) -> torch.Tensor:
        """Mahalanobis distance ``[B, 1, h, w]`` of each position's embedding (anomalib's, contiguous)."""
        batch, channels, height, width = embedding.shape
        mean, inv_covariance = stats
        delta = (embedding.reshape(batch, channels, height * width) - mean).permute(2, 0, 1).contiguous()
        distances = (torch.matmul(delta, inv_covariance) * delta).sum(2).permute(1, 0)
        return distances.reshape(batch, 1, height, width).clamp(0).sqrt()

    @staticmethod
    def up_sample(distance: torch.Tensor, image_size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """Bilinear upsampling of ``[B, 1, h, w]`` distances to ``image_size`` (``upsample_bilinear``)."""
        return upsample_bilinear(distance, image_size)


class Padim(AnomalyModel):
    """PaDiM (Defard et al., 2020) on a pretrained backbone; no gradient training, one epoch.

    Args:
        backbone: backbone name.
        layers: feature layers; None takes the backbone's defaults.
        n_features: channels kept by random selection; None takes the backbone's default (at most the
            channels the layers have).
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
        seed: seed of the random channel selection.
    """

    default_trainer: ClassVar[dict[str, Any]] = {"max_epochs": 1}
    fits_in_one_pass = True
    min_train_images = (2, "to fit a covariance at each patch position")
    layers_by_backbone: ClassVar[dict[str, tuple[str, ...]]] = {
        "efficientnet_lite0": ("blocks.1", "blocks.2", "blocks.4"),
        "efficientnet_lite1": ("blocks.1", "blocks.2", "blocks.4"),
        "efficientnet_lite2": ("blocks.1", "blocks.2", "blocks.4"),
        "mobilenet_v2": ("blocks.1", "blocks.2", "blocks.4"),
        "resnet18": ("layer1", "layer2", "layer3"),
        "wide_resnet50_2": ("layer1", "layer2", "layer3"),
    }
    # Channels kept by the random selection when n_features is not given (anomalib's choices).
    n_features_by_backbone: ClassVar[dict[str, int]] = {
        "efficientnet_lite0": 100,
        "resnet18": 100,
        "wide_resnet50_2": 550,
    }
    # Backbone in INT8; the Mahalanobis product and all that follows in float. With the product in
    # INT8 too (1.6-1.8x the FP32 IR's throughput on a VNNI CPU, against 1.3x), magnetic_tile's test
    # labels at the FP32 threshold agreed with FP32's for 94 % of the images on an AVX2 CPU (image
    # AUROC 0.964 against 0.968); backbone only: 99 % (AUROC 0.969). Decisions come first.
    int8_scheme = Scheme(
        name="padim-int8",
        summary="backbone INT8 (activation ranges over the training and validation images, ReLU6 outputs over "
        "[0, 6]); Mahalanobis distance, upsampling, blur, score and post-processing float",
        float_patterns=(r"^__module\.core\.anomaly_map_generator.*",),
        float_after=(r"^__module\.core\.anomaly_map_generator.*",),
        # Ranges from normal images clipped strong defects: on a texture with dark and bright discs
        # INT8 scored them at 0.50 where FP32 gave 0.97-1.0 (labelled normal); with these, 0.95-1.0
        # (docs/deploy.md, "Defects beyond the calibration's ranges").
        activation_ranges="minmax",
        calibrate_with_validation=True,
        bounded_full_range=True,
    )
    # Its fallback calibrates the ReLU6 outputs' ranges too: over [0, 6], 8 bits are steps of 0.024, too
    # coarse for some backbones' features (MobileNetV2 on magnetic_tile: 31 of 291 test labels moved,
    # image AUROC 0.950 -> 0.901; calibrated: 8, 0.949; docs/models.md, "Backbones").
    int8_scheme = dataclasses.replace(
        int8_scheme,
        fallback=dataclasses.replace(
            int8_scheme,
            name="padim-int8-calibrated",
            summary="backbone INT8 (activation ranges over the training and validation images, ReLU6 outputs "
            "too: a fallback); Mahalanobis distance, upsampling, blur, score and post-processing float",
            bounded_full_range=False,
        ),
    )

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        layers: list[str] | None = None,
        n_features: int | None = None,
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
        seed: int = 0,
    ) -> None:
        self.n_features = check_int("n_features", n_features, minimum=1, optional=True)
        self.seed = check_int("seed", seed, minimum=0, maximum=SEED_MAX)
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

    def build_core(self) -> nn.Module:  # noqa: D102
        channels = layer_channels(self.spec, self.layers)
        n_features = self.n_features or min(self.n_features_by_backbone.get(self.spec.name, 100), channels)
        if n_features > channels:
            raise OTXConfigError(
                f"n_features {n_features} is more than the {channels} channels of layers [{','.join(self.layers)}]; "
                f"pass --model.init_args.n_features {channels} or less, or more layers"
            )
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            try:
                core = PadimModel(
                    backbone=self.spec.timm_name, layers=self.layers, pre_trained=False, n_features=n_features
                )
            except ValueError as exc:
                raise OTXConfigError(f"PADIM: {exc}") from exc
        core.anomaly_map_generator = PadimMapGenerator()
        return core

    def pretrained_modules(self) -> list[nn.Module]:  # noqa: D102
        return [self.model.feature_extractor.feature_extractor]

    def fitted_state_problem(self) -> str | None:
        """The statistics are per feature position: they serve only the input they were fitted at.

        Before: a checkpoint whose input settings were edited failed at prediction as "internal error
        (RuntimeError: The size of tensor a (1024) must match the size of tensor b (576) ...)".
        """
        mean = self.model.gaussian.mean
        if mean.dim() != 2:  # not fitted
            return None
        extractor = self.model.feature_extractor
        training = extractor.training
        extractor.eval()  # (batch norms keep their statistics)
        try:
            with torch.no_grad():
                first = extractor(torch.zeros(1, 3, *self.preprocessor.core_size))[self.layers[0]]
        finally:
            extractor.train(training)
        positions = first.shape[-2] * first.shape[-1]
        if positions == mean.shape[-1]:
            return None
        return (
            f"holds PADIM statistics for {mean.shape[-1]} feature positions, but its input settings "
            f"({self.preprocessor.describe()}) give {positions}: PADIM predicts only at the input it was fitted at"
        )

    def on_train_epoch_start(self) -> None:  # noqa: D102
        self._gaussian = StreamingGaussian()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:  # noqa: D102
        del batch_idx
        batch = distributed.drop_padding(batch)  # each training image counts once in a distributed fit
        if batch is None:
            return
        with torch.no_grad():
            for tiles in self.core_input_chunks(batch["image"]):
                self._gaussian.update(self.model.generate_embedding(self.model.feature_extractor(tiles)))

    def finish_fit(self) -> None:  # noqa: D102 - every process of a distributed run calls it (a collective)
        gaussian = getattr(self, "_gaussian", None)
        if gaussian is not None:
            self._gaussian = None
            self.model.gaussian.mean, self.model.gaussian.inv_covariance = gaussian.finalize()

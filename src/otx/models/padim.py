"""PADIM core: a Gaussian per feature-map position, fitted in one pass over normal images.

Wraps anomalib's ``PadimModel`` (feature extraction, random channel selection, Mahalanobis
anomaly map); this module adds offline weights and the otx training protocol.
"""

from __future__ import annotations

from typing import Any

import torch
from anomalib.models.image.padim.torch_model import PadimModel
from torch import nn

from otx.errors import OTXConfigError
from otx.models.backbones import BackboneSpec
from otx.models.base import AnomalyModel


class Padim(AnomalyModel):
    """PaDiM (Defard et al., 2020) on a pretrained backbone; no gradient training, one epoch.

    Args:
        backbone: backbone name.
        layers: feature layers; None takes the backbone's defaults.
        n_features: channels kept by random selection; None takes the backbone's default.
        input_size: ``[height, width]`` the images are resized to.
        pretrained: load ImageNet weights into the backbone.
        weights: a local weights file for the backbone.
        image_threshold: manual raw image threshold; None learns it on validation.
        pixel_threshold: manual raw pixel threshold; None learns it on validation.
        seed: seed of the random channel selection.
    """

    default_max_epochs = 1

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        layers: list[str] | None = None,
        n_features: int | None = None,
        input_size: tuple[int, int] = (256, 256),
        pretrained: bool = True,
        weights: str | None = None,
        image_threshold: float | None = None,
        pixel_threshold: float | None = None,
        seed: int = 0,
    ) -> None:
        self.n_features = n_features
        self.seed = seed
        super().__init__(backbone, layers, input_size, pretrained, weights, image_threshold, pixel_threshold)
        self.save_hyperparameters()

    @staticmethod
    def default_layers(spec: BackboneSpec) -> tuple[str, ...]:  # noqa: D102
        return spec.padim_layers

    def build_core(self) -> nn.Module:  # noqa: D102
        n_features = self.n_features or self.spec.padim_n_features
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            try:
                return PadimModel(
                    backbone=self.spec.timm_name, layers=self.layers, pre_trained=False, n_features=n_features
                )
            except ValueError as exc:
                raise OTXConfigError(f"PADIM: {exc}") from exc

    def pretrained_modules(self) -> list[nn.Module]:  # noqa: D102
        return [self.model.feature_extractor.feature_extractor]

    def on_train_epoch_start(self) -> None:  # noqa: D102
        self.model.memory_bank = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:  # noqa: D102
        del batch_idx
        self.model(self.normalize_input(batch["image"]))  # appends embeddings to the memory bank

    def on_train_epoch_end(self) -> None:  # noqa: D102
        self.model.fit()

"""PatchFlow core: one normalising flow over locally pooled multi-scale features of normal images.

Wraps anomalib's PatchFlow parts (the frozen ``TimmFeatureExtractor``, FrEIA's ``SequenceINN``
of anomalib's ``AllInOneBlock`` couplings with anomalib's subnets, ``PatchflowLoss`` and its
anomaly map ``-exp(-mean(z^2) / 2)``). The construction differs from anomalib's
``PatchflowModel`` in four ways, each kept equal to it where both apply
(``tests/test_models.py`` compares the two on the same weights):

- the feature layers are named per backbone (anomalib takes the backbone's feature levels 2, 3
  and 4, which are these layers for the EfficientNets), so every otx backbone works offline;
- the scales' sizes and the fused size follow the input tensor instead of a size fixed at
  construction, so the same weights serve ``keep_aspect``'s chosen size and ``tile``'s tiles
  (the flow's couplings are convolutions: nothing in them depends on the size);
- the map upsamples with matrix products (``otx.models.upsample``), the same values as
  ``F.interpolate``, faster in OpenVINO;
- the couplings' global scale is written ``0.2 * softplus(0.5 * s)``, equal to anomalib's
  ``0.1 * Softplus(beta=0.5)(s)``: OpenVINO's PyTorch converter drops ``beta`` (its ``SoftPlus``
  has none), which scaled every flow output by about 0.999 in the IR and moved normalised
  scores by 0.01 on the sample data.
- the 1x1 adaptor runs on each scale's and layer's pooled features at their own size, before
  they are upsampled (``SourceAdaptor``), instead of on all of them concatenated at the finest
  size: the same values, a twelfth of the adaptor's arithmetic.

The flow is convolutional, so one density serves every position of the image, as PatchCore's one
memory bank does, where PADIM fits a Gaussian per position: on textures whose parts are not
aligned, the place of a patch says nothing (``docs/models.md``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from anomalib.models.components import TimmFeatureExtractor
from anomalib.models.components.flow import AllInOneBlock
from anomalib.models.components.flow import all_in_one_block as _all_in_one
from anomalib.models.image.patchflow.loss import PatchflowLoss
from anomalib.models.image.patchflow.torch_model import _build_subnet_constructor
from FrEIA.framework import SequenceINN
from torch import nn

from otx.errors import OTXConfigError, for_caller
from otx.models.base import KEEP_BEST_EPOCH, AnomalyModel
from otx.models.quantization import Scheme
from otx.models.upsample import upsample_bilinear
from otx.validate import SEED_MAX, check_int, check_number


def softplus_scale(global_scale: torch.Tensor) -> torch.Tensor:
    """The coupling scale of anomalib's flows, ``0.1 * Softplus(beta=0.5)(x)``, as ``0.2 * softplus(0.5 * x)``."""
    return 0.2 * F.softplus(0.5 * global_scale)


# Each coupling's subnet is 3x3 convolution, ReLU, 3x3 convolution; the first one's name in an export.
SUBNET_FIRST_CONVOLUTION = r"^__module\.core\.flow\.module_list\.\d+\.subnet\.0/aten::_convolution/Convolution$"


class PatchflowMapGenerator(nn.Module):
    """anomalib's PatchFlow anomaly map ``-exp(-mean_c(z^2) / 2)``, upsampled to the image size."""

    def forward(self, hidden_variables: torch.Tensor, image_size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """``[B, 1, H, W]`` map (values in [-1, 0); higher is more anomalous)."""
        probability = torch.exp(-torch.mean(hidden_variables**2, dim=1, keepdim=True) * 0.5)
        return upsample_bilinear(-probability, image_size)


class SourceAdaptor(nn.Conv2d):
    """The 1x1 adaptor over every source's pooled features, upsampled and concatenated, computed per source.

    anomalib upsamples each scale's and layer's pooled features to the finest layer's size,
    concatenates them (1,416 channels for EfficientNet-Lite0 at three scales) and applies one 1x1
    convolution. Bilinear upsampling is a per-channel weighted sum whose weights sum to one, and a
    1x1 convolution is a per-position linear map, so the two commute: the convolution's slice of
    weights for a source's channels runs on that source at its own size (a fourth, a sixteenth...
    of the positions), only the 128-channel results are upsampled, and the bias is added once.
    The parameters are the ``nn.Conv2d``'s over the concatenation, so checkpoints are unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1)

    def forward(self, sources: list[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        """``[B, out, h, w]`` at the finest source's size from the sources in concatenation order."""
        size = max((f.shape[-2:] for f in sources), key=lambda s: s[0] * s[1])
        fused: torch.Tensor | None = None
        start = 0
        for source in sources:
            channels = source.shape[1]
            part = F.conv2d(source, self.weight[:, start : start + channels])
            start += channels
            if part.shape[-2:] != size:
                part = F.interpolate(part, size=size, mode="bilinear", align_corners=False)
            fused = part if fused is None else fused + part
        if fused is None or start != self.in_channels:
            raise ValueError(f"the adaptor takes {self.in_channels} channels, got {start}")
        return fused + self.bias.view(1, -1, 1, 1)


class PatchflowCore(nn.Module):
    """Frozen backbone at several scales, 3x3-pooled and fused features, a 1x1 adaptor and one flow.

    Args:
        backbone: timm name of the backbone.
        layers: feature layers (anomalib: the stride-8, -16 and -32 outputs).
        num_scales: input resolutions (1x, 0.5x, 0.25x, ...) the backbone runs at.
        patch_size: side of the average pooling over each feature's neighbourhood.
        flow_steps: all-in-one coupling blocks of the flow.
        flow_feature_dim: channels after the adaptor (the flow's width).
        flow_hidden_dim: hidden channels of the couplings' subnets.
    """

    def __init__(
        self,
        backbone: str,
        layers: list[str],
        num_scales: int,
        patch_size: int,
        flow_steps: int,
        flow_feature_dim: int,
        flow_hidden_dim: int,
    ) -> None:
        super().__init__()
        self.num_scales = num_scales
        self.feature_extractor = TimmFeatureExtractor(
            backbone=backbone, layers=layers, pre_trained=False, requires_grad=False
        ).eval()
        for parameter in self.feature_extractor.parameters():
            parameter.requires_grad = False
        self.avg_pool = nn.AvgPool2d(kernel_size=patch_size, stride=1, padding=patch_size // 2)
        self.feature_adaptor = SourceAdaptor(sum(self.feature_extractor.out_dims) * num_scales, flow_feature_dim)
        # the flow's size is only FrEIA's bookkeeping: its couplings are convolutions of any size
        self.flow = SequenceINN(flow_feature_dim, 32, 32)
        for _ in range(flow_steps):
            self.flow.append(AllInOneBlock, subnet_constructor=_build_subnet_constructor(flow_hidden_dim))
        for block in self.flow.module_list:
            if block.global_scale_activation is not _all_in_one._global_scale_softplus_activation:
                raise ValueError("PatchFlow's couplings are expected to use anomalib's softplus global scale")
            block.global_scale_activation = softplus_scale
        self.anomaly_map_generator = PatchflowMapGenerator()

    def pooled_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Every scale's and layer's features, each averaged over its neighbourhood, at its own size."""
        height, width = images.shape[-2:]
        features: list[torch.Tensor] = []
        self.feature_extractor.eval()
        with torch.no_grad():  # the backbone is frozen
            for scale in range(self.num_scales):
                scaled = images
                if scale > 0:
                    size = (height // 2**scale, width // 2**scale)
                    scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
                features += list(self.feature_extractor(scaled).values())
        return [self.avg_pool(f) for f in features]

    def flow_outputs(self, pooled: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The trained part: ``(hidden_variables, log_jacobians)`` of the flow on the adapted ``pooled_features``."""
        return self.flow(self.feature_adaptor(pooled))

    def forward(self, images: torch.Tensor) -> Any:
        """Training: ``(hidden_variables, log_jacobians)``; inference: anomalib's ``InferenceBatch``."""
        from anomalib.data import InferenceBatch

        hidden_variables, log_jacobians = self.flow_outputs(self.pooled_features(images))
        if self.training:
            return hidden_variables, log_jacobians
        anomaly_map = self.anomaly_map_generator(hidden_variables, images.shape[-2:])
        return InferenceBatch(pred_score=torch.amax(anomaly_map, dim=(-2, -1)), anomaly_map=anomaly_map)


class Patchflow(AnomalyModel):
    """PatchFlow (Zhang et al., 2026): a normalising flow on locally aware multi-scale features, trained by Adam.

    Args:
        backbone: backbone name.
        layers: feature layers; None takes the backbone's defaults (its stride-8, -16 and -32 outputs).
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
        num_scales: input resolutions the backbone runs at (anomalib's 3: 1x, 0.5x, 0.25x).
        patch_size: side of the neighbourhood each feature is averaged over (anomalib's 3).
        flow_steps: coupling blocks of the flow (anomalib's 1).
        flow_feature_dim: channels the adaptor reduces the features to (anomalib's 128).
        flow_hidden_dim: hidden channels of the couplings' subnets (anomalib's 128).
        lr: Adam learning rate (anomalib's 0.001).
        weight_decay: Adam weight decay (anomalib's 1e-4).
        seed: seed of the adaptor's and the flow's random initialisation.
    """

    # the recipes' (tests/test_cli.py): five epochs, the best one kept
    default_trainer: ClassVar[dict[str, Any]] = {
        "max_epochs": 5,
        "check_val_every_n_epoch": 1,
        "callbacks": [KEEP_BEST_EPOCH],
    }
    ddp_unused_parameters = False  # the adaptor and the flow: every parameter is in the loss
    layers_by_backbone: ClassVar[dict[str, tuple[str, ...]]] = {
        "efficientnet_lite0": ("blocks.2", "blocks.4", "blocks.6"),
        "efficientnet_lite1": ("blocks.2", "blocks.4", "blocks.6"),
        "efficientnet_lite2": ("blocks.2", "blocks.4", "blocks.6"),
        "mobilenet_v2": ("blocks.2", "blocks.4", "blocks.6"),
        "resnet18": ("layer2", "layer3", "layer4"),
        "wide_resnet50_2": ("layer2", "layer3", "layer4"),
    }
    # The couplings' subnets (3x3 convolution, ReLU, 3x3 convolution: most of the flow's work) run
    # in INT8 too: 1.49x -> 1.59x the FP32 IR at the same test labels (docs/models.md, "PatchFlow").
    int8_scheme = Scheme(
        name="patchflow-int8",
        summary="backbone and the flow's subnet convolutions INT8; pooling, adaptor, the rest of the flow, "
        "anomaly map, score and post-processing float",
        float_patterns=(r"^__module\.core\.(avg_pool|feature_adaptor|flow|anomaly_map_generator).*",),
        float_after=(r"^__module\.core\.feature_adaptor.*",),
        int8_patterns=(SUBNET_FIRST_CONVOLUTION,),
        int8_next_convolution=(SUBNET_FIRST_CONVOLUTION,),  # the second one is named after FrEIA's folded 0.1 multiply
        fast_bias_correction=False,
        activation_ranges="minmax",
    )
    # Its fallback keeps everything the adaptor is computed from (the backbone at every scale) in
    # float: the backbone's INT8 noise is what moves labels where the image scores crowd the
    # threshold (docs/models.md, "INT8 fallback").
    int8_scheme = dataclasses.replace(
        int8_scheme,
        fallback=dataclasses.replace(
            int8_scheme,
            name="patchflow-int8-flow",
            summary="the flow's subnet convolutions INT8; backbone, pooling, adaptor, the rest of the flow, "
            "anomaly map, score and post-processing float (a fallback: little faster than FP32)",
            float_before=(r"^__module\.core\.feature_adaptor.*",),
        ),
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
        num_scales: int = 3,
        patch_size: int = 3,
        flow_steps: int = 1,
        flow_feature_dim: int = 128,
        flow_hidden_dim: int = 128,
        lr: float = 0.001,
        weight_decay: float = 0.0001,
        seed: int = 0,
    ) -> None:
        self.num_scales = check_int("num_scales", num_scales, minimum=1)
        self.patch_size = check_int("patch_size", patch_size, minimum=1)
        if self.patch_size % 2 == 0:
            raise OTXConfigError(f"patch_size must be odd, so that pooling keeps the map's size (got {patch_size})")
        self.flow_steps = check_int("flow_steps", flow_steps, minimum=1)
        self.flow_feature_dim = check_int("flow_feature_dim", flow_feature_dim, minimum=2)
        self.flow_hidden_dim = check_int("flow_hidden_dim", flow_hidden_dim, minimum=1)
        self.lr = check_number("lr", lr, low=0.0, open_interval=True)
        self.weight_decay = check_number("weight_decay", weight_decay, low=0.0)
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
        self.loss = PatchflowLoss()

    def build_core(self) -> nn.Module:  # noqa: D102
        side = min(self.preprocessor.core_size)  # (before: accepted, then "Input and output sizes should be
        if 2 ** (self.num_scales - 1) > side:  # greater than 0" inside the model, "internal error"; a review)
            raise OTXConfigError(
                for_caller(
                    f"num_scales {self.num_scales} halves the {side}-pixel side of the images the model sees "
                    f"{self.num_scales - 1} times, to nothing; pass --model.init_args.num_scales "
                    f"{max(1, side.bit_length())} or fewer, or a larger input_size (tile_size in tile mode)"
                )
            )
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            return PatchflowCore(
                self.spec.timm_name,
                self.layers,
                self.num_scales,
                self.patch_size,
                self.flow_steps,
                self.flow_feature_dim,
                self.flow_hidden_dim,
            )

    def pretrained_modules(self) -> list[nn.Module]:  # noqa: D102
        return [self.model.feature_extractor.feature_extractor]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:  # noqa: D102
        del batch_idx
        # (anomalib's loss is a mean over the batch; the tile mode's chunks are weighted by their sizes. The
        # frozen backbone's pooled features are computed once per chunk, not again in its recomputation)
        loss = self.training_loss(
            batch["image"],
            lambda tiles, pooled: self.loss(*self.model.flow_outputs(pooled)),
            reduction="mean",
            frozen_of=self.model.pooled_features,
        )
        self.log_train_loss(loss, batch["image"])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:  # noqa: D102
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.Adam(parameters, lr=self.lr, weight_decay=self.weight_decay)

"""STFPM core: a student network learns to mimic a frozen pretrained teacher on normal images.

Wraps anomalib's ``STFPMModel`` (forward pass, anomaly map) and ``STFPMLoss``. The construction
differs, so that the teacher's ImageNet weights resolve offline, and the anomaly map upsamples
its layer maps with matrix products (``otx.models.upsample``) instead of ``F.interpolate``: the
same values, about ten times faster in OpenVINO.

The student is otx's by default: a small plain network (``SmallStudent``) trained by Adam on the
teacher's stride-16 layer. anomalib's student (the teacher's own architecture, randomly
initialised, trained by SGD on three layers) learns to follow the teacher so well that on
textures it follows it on the defects too: on magnetic_tile it stayed at image AUROC 0.6-0.8
whatever its learning rate, layers or epochs, while the small student reaches 0.98 on the
validation split (``docs/models.md``, "STFPM on textures"). ``student="backbone"`` with
``optimizer="sgd"`` and ``lr=0.4`` is anomalib's STFPM.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from anomalib.models.components import TimmFeatureExtractor
from anomalib.models.image.stfpm.anomaly_map import AnomalyMapGenerator
from anomalib.models.image.stfpm.loss import STFPMLoss
from anomalib.models.image.stfpm.torch_model import STFPMModel
from torch import nn

from otx.errors import OTXConfigError
from otx.models.base import KEEP_BEST_EPOCH, AnomalyModel
from otx.models.quantization import Scheme
from otx.models.upsample import upsample_bilinear
from otx.validate import SEED_MAX, check_choice, check_int, check_number


class StfpmMapGenerator(AnomalyMapGenerator):
    """anomalib's STFPM anomaly map (product over layers of the upsampled feature distances).

    The same computation as anomalib's generator, with ``upsample_bilinear`` in place of
    ``F.interpolate`` and the product taken without an all-ones start map.
    """

    def compute_layer_map(
        self, teacher_features: torch.Tensor, student_features: torch.Tensor, image_size: tuple[int, int] | torch.Size
    ) -> torch.Tensor:
        """Half the squared distance of the channel-normalised features, upsampled to ``image_size``."""
        distance = F.normalize(teacher_features) - F.normalize(student_features)
        layer_map = 0.5 * torch.norm(distance, p=2, dim=-3, keepdim=True) ** 2
        return upsample_bilinear(layer_map, image_size)

    def compute_anomaly_map(
        self,
        teacher_features: dict[str, torch.Tensor],
        student_features: dict[str, torch.Tensor],
        image_size: tuple[int, int] | torch.Size,
    ) -> torch.Tensor:
        """``[B, 1, H, W]`` product of the layer maps."""
        anomaly_map = None
        for layer in teacher_features:
            layer_map = self.compute_layer_map(teacher_features[layer], student_features[layer], image_size)
            anomaly_map = layer_map if anomaly_map is None else anomaly_map * layer_map
        if anomaly_map is None:
            raise ValueError("STFPM needs at least one feature layer")
        return anomaly_map


def _conv(channels_in: int, channels_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False), nn.BatchNorm2d(channels_out), nn.ReLU()
    )


class SmallStudent(nn.Module):
    """A small plain student: 3x3 convolutions down to each teacher layer's stride, a 1x1 head per layer.

    Two convolutions per stage (the first halves the resolution); ``width`` channels at stride 2,
    doubled at every further stage. With ``width`` 32 and a stride-16 layer: eight convolutions,
    1.2 M parameters, a receptive field of 91 pixels. Returns ``{layer: features}`` with each
    teacher layer's channels.

    Args:
        layers: ``{layer name: (channels, stride)}`` of the teacher's feature layers (strides 4 to 32,
            powers of two).
        width: channels of the first stage.
    """

    def __init__(self, layers: dict[str, tuple[int, int]], width: int) -> None:
        super().__init__()
        for name, (_, stride) in layers.items():
            if stride not in (4, 8, 16, 32):
                raise OTXConfigError(
                    f"the small STFPM student needs feature layers at stride 4, 8, 16 or 32; {name} is at "
                    f"stride {stride} (choose other layers, or --model.init_args.student backbone)"
                )
        deepest = max(stride for _, stride in layers.values())
        stages, channels, stride = [nn.Sequential(_conv(3, width, 2), _conv(width, width))], width, 2
        while stride < deepest:
            stages.append(nn.Sequential(_conv(channels, 2 * channels, 2), _conv(2 * channels, 2 * channels)))
            channels, stride = 2 * channels, 2 * stride
        self.stages = nn.ModuleList(stages)
        self.names = list(layers)
        self.taps = [int(math.log2(stride)) - 1 for _, stride in layers.values()]  # each layer's stage
        self.heads = nn.ModuleList(
            nn.Conv2d(width * 2**tap, count, 1) for tap, (count, _) in zip(self.taps, layers.values(), strict=True)
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:  # noqa: D102
        outputs, x = [], images
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return {name: head(outputs[tap]) for name, tap, head in zip(self.names, self.taps, self.heads, strict=True)}


class _OfflineSTFPMModel(STFPMModel):
    """anomalib's STFPMModel, built without its hard-wired teacher download (weights are loaded by otx).

    ``student_width`` None: anomalib's student (the teacher's architecture); else a ``SmallStudent``.
    """

    def __init__(self, layers: list[str], backbone: str, student_width: int | None = None) -> None:
        nn.Module.__init__(self)
        self.tiler = None
        self.backbone = backbone
        self.teacher_model = TimmFeatureExtractor(backbone=backbone, pre_trained=False, layers=layers).eval()
        for parameter in self.teacher_model.parameters():
            parameter.requires_grad = False
        if student_width is None:
            self.student_model = TimmFeatureExtractor(
                backbone=backbone, pre_trained=False, layers=layers, requires_grad=True
            )
        else:
            info = self.teacher_model.feature_extractor.feature_info  # each layer's channels and stride
            shapes = dict(
                zip(self.teacher_model.layers, zip(info.channels(), info.reduction(), strict=True), strict=True)
            )
            self.student_model = SmallStudent(shapes, student_width)
        self.anomaly_map_generator = StfpmMapGenerator()


class Stfpm(AnomalyModel):
    """STFPM (Wang et al., 2021): student-teacher feature matching; by default a small student, trained by Adam.

    Args:
        backbone: the teacher's backbone name.
        layers: feature layers; None takes the backbone's defaults (its stride-16 layer for the
            small student; for ``student="backbone"`` the strides 4, 8 and 16, as anomalib).
        input_size: ``[height, width]`` every image is brought to (its anomaly map's size); None with
            ``keep_aspect``: chosen from the training images' aspect ratio.
        input_mode: ``auto`` (resize, or keep_aspect for images resize would squash 2x or more, chosen by
            ``otx train``), ``resize``, ``keep_aspect`` or ``tile`` (``docs/input-modes.md``).
        tile_size: tile side in the ``tile`` mode (default 256).
        tile_stride: pixels between tiles in the ``tile`` mode (default ``tile_size``).
        boxes_on_normal: detection boxes also on images labelled normal.
        boxes_refine: how detection boxes are snapped to the image: ``auto`` (chosen on the
            validation split), ``none``, ``dark``, ``bright`` or ``contrast``.
        score_top_share: the image score is the mean of this share of the map's highest pixels
            (default 0.02: about one cell of the 8x8 feature grid of a 128x128 input); None: the
            map's maximum, anomalib's score (``docs/models.md``, "Image score").
        pretrained: load ImageNet weights into the teacher.
        weights: a local weights file for the teacher.
        image_threshold: manual raw image threshold; None learns it on validation.
        pixel_threshold: manual raw pixel threshold; None learns it on validation.
        lr: learning rate; None: 0.001 for Adam, anomalib's 0.4 for SGD.
        momentum: SGD momentum; None: 0.9. Adam has none, so a value with ``optimizer="adam"`` is refused
            (but 0.9, which earlier recipes and run configs wrote beside Adam).
        weight_decay: weight decay; None: 1e-5 for Adam, anomalib's 0.001 for SGD.
        seed: seed of the student's random initialisation.
        student: ``small`` (a ``SmallStudent``) or ``backbone`` (anomalib's: the teacher's architecture).
        student_width: channels of the small student's first stage.
        optimizer: ``adam`` or ``sgd`` (anomalib's).
    """

    # the recipes' (tests/test_cli.py): 20 epochs, the best epoch kept. No early stopping (until 2026-12-06:
    # patience 4): on objects the validation AUROC dips while the student learns, and it stopped at epoch 5
    # keeping epoch 1, an untrained student (a bug bash: test image AUROC 0.72 and 0.64, against 1.00 and 0.88
    # trained 20 epochs); magnetic_tile's runs trained all 20 epochs either way (docs/models.md)
    default_trainer: ClassVar[dict[str, Any]] = {
        "max_epochs": 20,
        "check_val_every_n_epoch": 1,
        "callbacks": [KEEP_BEST_EPOCH],
    }
    input_area: ClassVar[int] = 128 * 128  # the size the small student was measured at (docs/models.md)
    # The small student's: each backbone's stride-16 layer.
    layers_by_backbone: ClassVar[dict[str, tuple[str, ...]]] = {
        "efficientnet_lite0": ("blocks.4",),
        "efficientnet_lite1": ("blocks.4",),
        "efficientnet_lite2": ("blocks.4",),
        "mobilenet_v2": ("blocks.4",),
        "resnet18": ("layer3",),
        "wide_resnet50_2": ("layer3",),
    }
    # anomalib's student's (``student="backbone"``): strides 4, 8 and 16.
    pyramid_layers_by_backbone: ClassVar[dict[str, tuple[str, ...]]] = {
        "efficientnet_lite0": ("blocks.1", "blocks.2", "blocks.4"),
        "efficientnet_lite1": ("blocks.1", "blocks.2", "blocks.4"),
        "efficientnet_lite2": ("blocks.1", "blocks.2", "blocks.4"),
        "mobilenet_v2": ("blocks.1", "blocks.2", "blocks.4"),
        "resnet18": ("layer1", "layer2", "layer3"),
        "wide_resnet50_2": ("layer1", "layer2", "layer3"),
    }
    # Teacher and student in INT8; their feature comparison, the product of the layer maps (in
    # INT8 its calibration range capped every defect's score at one value) and the score in float.
    # Full bias correction: on magnetic_tile image AUROC -0.023 with the fast one, +0.008 with it
    # (anomalib's student). The small student's score is one feature distance, so quantisation
    # noise moves it: activation ranges from the full observed range over up to 1,000 train/good
    # images. On magnetic_tile (test split, against the FP32 IR): 282 of 291 labels equal, image
    # AUROC -0.004; NNCF's default ranges over 300 images: 279, -0.016 (docs/models.md).
    int8_scheme = Scheme(
        name="stfpm-int8",
        summary="teacher and student INT8 (activation ranges: min-max); feature distances, anomaly map, score "
        "and post-processing float",
        float_patterns=(r"^__module\.core\.anomaly_map_generator.*",),
        float_after=(r"^__module\.core\.anomaly_map_generator.*",),
        fast_bias_correction=False,
        activation_ranges="minmax",
        calibration_images=1000,
    )

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        layers: list[str] | None = None,
        input_size: tuple[int, int] | None = (128, 128),
        input_mode: str = "auto",
        tile_size: int | None = None,
        tile_stride: int | None = None,
        boxes_on_normal: bool = False,
        boxes_refine: str = "auto",
        score_top_share: float | None = 0.02,
        pretrained: bool = True,
        weights: str | None = None,
        image_threshold: float | None = None,
        pixel_threshold: float | None = None,
        lr: float | None = None,
        momentum: float | None = None,
        weight_decay: float | None = None,
        seed: int = 0,
        student: str = "small",
        student_width: int = 32,
        optimizer: str = "adam",
    ) -> None:
        self.optimizer = check_choice("optimizer", optimizer, ("adam", "sgd"))
        rate = check_number("lr", lr, low=0.0, open_interval=True, optional=True)
        self.lr = rate if rate is not None else (0.001 if self.optimizer == "adam" else 0.4)
        moment = check_number("momentum", momentum, low=0.0, high=1.0, optional=True)
        if moment is not None and self.optimizer == "adam" and moment != 0.9:  # 0.9: old recipes
            raise OTXConfigError(
                f"momentum applies to optimizer sgd only (got momentum {moment} with optimizer adam); "
                "leave momentum out, or set optimizer sgd"
            )
        self.momentum = moment if moment is not None else 0.9
        decay = check_number("weight_decay", weight_decay, low=0.0, optional=True)
        self.weight_decay = decay if decay is not None else (1e-5 if self.optimizer == "adam" else 0.001)
        self.seed = check_int("seed", seed, minimum=0, maximum=SEED_MAX)
        self.student = check_choice("student", student, ("small", "backbone"))
        self.ddp_unused_parameters = self.student == "backbone"  # the small student uses every parameter
        self.student_width = check_int("student_width", student_width, minimum=1)
        if layers is None and self.student == "backbone" and isinstance(backbone, str):
            layers = list(self.pyramid_layers_by_backbone.get(backbone, ())) or None
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
        self.loss = STFPMLoss()

    @classmethod
    def upgrade_init_args(cls, init_args: dict[str, Any]) -> dict[str, Any]:
        """Earlier checkpoints: anomalib's student by SGD (before the small student); the map's maximum as score.

        Their thresholds were fitted on the maximum, so they keep it (``score_top_share`` None). Adam
        runs from before momentum was refused with it wrote the unused 0.9: it is dropped.
        """
        init_args = super().upgrade_init_args({"score_top_share": None, **init_args})
        if init_args.get("optimizer") == "adam":
            init_args.pop("momentum", None)
        if "student" not in init_args:
            return {**init_args, "student": "backbone", "optimizer": "sgd"}
        return init_args

    def build_core(self) -> nn.Module:  # noqa: D102
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            width = self.student_width if self.student == "small" else None
            return _OfflineSTFPMModel(layers=self.layers, backbone=self.spec.timm_name, student_width=width)

    def pretrained_modules(self) -> list[nn.Module]:  # noqa: D102
        return [self.model.teacher_model.feature_extractor]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:  # noqa: D102
        del batch_idx
        # (anomalib's loss sums over the batch; the tile mode's chunks add up to it. The frozen teacher's
        # features are computed once per chunk, not again in its recomputation)
        loss = self.training_loss(
            batch["image"],
            lambda tiles, teacher: self.loss(teacher, self.model.student_model(tiles)),
            reduction="sum",
            frozen_of=self.model.teacher_model,
        )
        self.log_train_loss(loss, batch["image"])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:  # noqa: D102
        parameters = self.model.student_model.parameters()
        if self.optimizer == "adam":
            return torch.optim.Adam(parameters, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(parameters, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

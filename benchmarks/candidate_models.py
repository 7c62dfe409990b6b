"""Candidate models measured for issue 15's "second new model", kept out of ``otx.models``.

A candidate joins ``otx.models`` only if it beats PADIM on magnetic_tile in pixel AUROC or AUPRO
(docs/models.md, "Candidates"). They are ``AnomalyModel`` subclasses like the shipped models, so
``otx.engine.Engine`` trains, tests and exports them unchanged; ``main`` trains one and prints
its validation metrics per epoch and its test metrics.

    OTX_OFFLINE=1 .venv/bin/python benchmarks/candidate_models.py --model Supersimplenet \
        --data_root ../shared/data/magnetic_tile --epochs 3 --work_dir /tmp/candidates

CFlow: conditional normalising flows, one per feature layer, over every feature vector and its
position, trained by Adam in batches of feature vectors (anomalib's decoders and likelihood).

FastFlow: 2D normalising flows turn normal feature maps into a standard normal, trained by Adam.

Wraps anomalib's ``FastflowModel`` (its flow blocks, its forward pass, its log-likelihood anomaly
map) and ``FastflowLoss``. The construction differs: anomalib builds FastFlow on a few named
backbones only (ResNet-18, Wide-ResNet-50, CaiT, DeiT) and downloads their weights; here the
feature extractor is the same offline ``TimmFeatureExtractor`` as PADIM's and PatchCore's, so
every otx backbone and layer choice works, and the anomaly map upsamples with matrix products
(``otx.models.upsample``, the same values as anomalib's ``F.interpolate``).

The flows' layer norms are sized for the core's input (``input_size``, or the tile in the
``tile`` mode), so when ``keep_aspect`` picks the input size from the training images the flows
are rebuilt for it before training starts.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from anomalib.models.components import TimmFeatureExtractor
from anomalib.models.image.fastflow.loss import FastflowLoss
from anomalib.models.image.fastflow.torch_model import FastflowModel, create_fast_flow_block
from torch import nn

from otx.models.base import AnomalyModel
from otx.models.quantization import Scheme
from otx.models.upsample import upsample_bilinear
from otx.validate import check_bool, check_int, check_number


class FastflowMapGenerator(nn.Module):
    """anomalib's FastFlow anomaly map: the mean over scales of ``-exp(-mean(z^2) / 2)``, upsampled.

    The same computation as anomalib's ``AnomalyMapGenerator``, with ``upsample_bilinear`` in
    place of ``F.interpolate`` and the mean taken as a running sum.
    """

    def __init__(self, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.input_size = tuple(input_size)

    def forward(self, hidden_variables: list[torch.Tensor]) -> torch.Tensor:
        """``[B, 1, H, W]`` anomaly map (values in [-1, 0]; higher is more anomalous)."""
        total = None
        for hidden in hidden_variables:
            probability = torch.exp(-torch.mean(hidden**2, dim=1, keepdim=True) * 0.5)
            flow_map = upsample_bilinear(-probability, self.input_size)
            total = flow_map if total is None else total + flow_map
        if total is None:
            raise ValueError("FastFlow needs at least one feature layer")
        return total / len(hidden_variables)


class _OfflineFastflowModel(FastflowModel):
    """anomalib's FastflowModel on an offline ``TimmFeatureExtractor`` (any backbone, any layers)."""

    def __init__(
        self,
        backbone: str,
        layers: list[str],
        input_size: tuple[int, int],
        flow_steps: int,
        conv3x3_only: bool,
        hidden_ratio: float,
    ) -> None:
        nn.Module.__init__(self)
        self.input_size = input_size
        self.feature_extractor = TimmFeatureExtractor(backbone=backbone, pre_trained=False, layers=layers).eval()
        channels = list(self.feature_extractor.out_dims)
        reductions = self.feature_extractor.feature_extractor.feature_info.reduction()
        shapes = [[c, input_size[0] // r, input_size[1] // r] for c, r in zip(channels, reductions, strict=True)]
        self.norms = nn.ModuleList(nn.LayerNorm(shape, elementwise_affine=True) for shape in shapes)
        self.fast_flow_blocks = nn.ModuleList(
            create_fast_flow_block(
                input_dimensions=shape, conv3x3_only=conv3x3_only, hidden_ratio=hidden_ratio, flow_steps=flow_steps
            )
            for shape in shapes
        )
        self.anomaly_map_generator = FastflowMapGenerator(input_size)

    def _get_cnn_features(self, input_tensor: torch.Tensor) -> list[torch.Tensor]:
        features = self.feature_extractor(input_tensor)  # frozen: no gradient (requires_grad False)
        return [norm(feature) for norm, feature in zip(self.norms, features.values(), strict=True)]


class Fastflow(AnomalyModel):
    """FastFlow (Yu et al., 2021): normalising flows on frozen pretrained features, trained by Adam.

    Args:
        backbone: backbone name.
        layers: feature layers, one flow per layer; None takes the backbone's defaults.
        input_size: ``[height, width]`` every image is brought to (its anomaly map's size); None with
            ``keep_aspect``: chosen from the training images' aspect ratio.
        input_mode: ``resize``, ``keep_aspect`` or ``tile`` (``docs/input-modes.md``).
        tile_size: tile side in the ``tile`` mode (default 256).
        tile_stride: pixels between tiles in the ``tile`` mode (default ``tile_size``).
        boxes_on_normal: detection boxes also on images labelled normal.
        pretrained: load ImageNet weights into the backbone.
        weights: a local weights file for the backbone.
        image_threshold: manual raw image threshold; None learns it on validation.
        pixel_threshold: manual raw pixel threshold; None learns it on validation.
        flow_steps: affine coupling blocks per flow (anomalib's default 8).
        conv3x3_only: 3x3 convolutions in every coupling block (default: 3x3 and 1x1 alternate).
        hidden_ratio: hidden channels of the coupling subnets, as a share of the layer's channels.
        lr: Adam learning rate (anomalib's 0.001).
        weight_decay: Adam weight decay (anomalib's 1e-5).
        seed: seed of the flows' random initialisation.
    """

    default_trainer: ClassVar[dict[str, Any]] = {"max_epochs": 10}
    layers_by_backbone: ClassVar[dict[str, tuple[str, ...]]] = {
        "efficientnet_lite0": ("blocks.1", "blocks.2", "blocks.4"),
        "efficientnet_lite1": ("blocks.1", "blocks.2", "blocks.4"),
        "efficientnet_lite2": ("blocks.1", "blocks.2", "blocks.4"),
        "mobilenet_v2": ("blocks.1", "blocks.2", "blocks.4"),
        "resnet18": ("layer1", "layer2", "layer3"),
        "wide_resnet50_2": ("layer1", "layer2", "layer3"),
    }
    int8_scheme = Scheme(
        name="fastflow-int8",
        summary="backbone INT8; layer norms, flows, anomaly map, score and post-processing float",
        float_patterns=(r"^__module\.core\.(norms|fast_flow_blocks|anomaly_map_generator).*",),
        float_after=(r"^__module\.core\.norms.*",),
    )

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        layers: list[str] | None = None,
        input_size: tuple[int, int] | None = (256, 256),
        input_mode: str = "resize",
        tile_size: int | None = None,
        tile_stride: int | None = None,
        boxes_on_normal: bool = False,
        pretrained: bool = True,
        weights: str | None = None,
        image_threshold: float | None = None,
        pixel_threshold: float | None = None,
        flow_steps: int = 8,
        conv3x3_only: bool = False,
        hidden_ratio: float = 1.0,
        lr: float = 0.001,
        weight_decay: float = 0.00001,
        seed: int = 0,
    ) -> None:
        self.flow_steps = check_int("flow_steps", flow_steps, minimum=1)
        self.conv3x3_only = check_bool("conv3x3_only", conv3x3_only)
        self.hidden_ratio = check_number("hidden_ratio", hidden_ratio, low=0.0, open_interval=True)
        self.lr = check_number("lr", lr, low=0.0, open_interval=True)
        self.weight_decay = check_number("weight_decay", weight_decay, low=0.0)
        self.seed = check_int("seed", seed, minimum=0)
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
        )
        self.save_hyperparameters()
        self.loss = FastflowLoss()

    def build_core(self) -> nn.Module:  # noqa: D102
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            return _OfflineFastflowModel(
                backbone=self.spec.timm_name,
                layers=self.layers,
                input_size=self.preprocessor.core_size,
                flow_steps=self.flow_steps,
                conv3x3_only=self.conv3x3_only,
                hidden_ratio=self.hidden_ratio,
            )

    def pretrained_modules(self) -> list[nn.Module]:  # noqa: D102
        return [self.model.feature_extractor.feature_extractor]

    def choose_input_size(self, aspect: float) -> tuple[int, int]:
        """Choose the input size (``AnomalyModel.choose_input_size``) and size the untrained flows for it."""
        size = super().choose_input_size(aspect)
        extractor = self.model.feature_extractor
        self.model = self.build_core()
        self.model.feature_extractor = extractor  # keeps the loaded ImageNet weights
        return size

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:  # noqa: D102
        del batch_idx
        hidden_variables, jacobians = self.model(self.core_input(batch["image"]))
        loss = self.loss(hidden_variables, jacobians)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:  # noqa: D102
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.Adam(parameters, lr=self.lr, weight_decay=self.weight_decay)


# --------------------------------------------------------------------------- CFlow
class _CflowCore(nn.Module):
    """anomalib's CFLOW decoders (conditional flows per feature layer) on an offline feature extractor.

    The anomaly map is batch-independent: each layer's per-dimension log-likelihood is compared with
    a reference fixed in training (``reference``, the largest seen), where anomalib compares it with
    the largest in the current batch.
    """

    def __init__(
        self,
        backbone: str,
        layers: list[str],
        condition_vector: int,
        coupling_blocks: int,
        clamp_alpha: float,
        positional: bool = True,
    ) -> None:
        super().__init__()
        from anomalib.models.image.cflow.utils import cflow_head

        self.condition_vector = condition_vector
        self.positional = positional
        self.encoder = TimmFeatureExtractor(backbone=backbone, pre_trained=False, layers=layers).eval()
        for parameter in self.encoder.parameters():
            parameter.requires_grad = False
        self.decoders = nn.ModuleList(
            cflow_head(condition_vector, coupling_blocks, clamp_alpha, dim) for dim in self.encoder.out_dims
        )
        self.register_buffer("reference", torch.zeros(len(layers)))

    def conditions(self, height: int, width: int, batch: int) -> torch.Tensor:
        """``[B*H*W, P]`` positional encodings in the (batch, row, column) order of ``fibers``."""
        from anomalib.models.image.cflow.utils import positional_encoding_2d

        encoding = positional_encoding_2d(self.condition_vector, height, width)
        if not self.positional:  # one density for every position (textures: the place says nothing)
            encoding = torch.zeros_like(encoding)
        return (
            encoding.permute(1, 2, 0)
            .reshape(1, height * width, -1)
            .expand(batch, -1, -1)
            .reshape(batch * height * width, -1)
        )

    @staticmethod
    def fibers(feature: torch.Tensor) -> torch.Tensor:
        """``[B*H*W, C]`` feature vectors of a ``[B, C, H, W]`` map."""
        return feature.permute(0, 2, 3, 1).reshape(-1, feature.shape[1])

    def log_likelihood(self, index: int, fibers: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """Per-dimension log-likelihood of each fiber under layer ``index``'s flow."""
        from anomalib.models.image.cflow.utils import get_logp

        latent, log_jacobian = self.decoders[index](fibers, [conditions])
        return get_logp(fibers.shape[1], latent, log_jacobian) / fibers.shape[1]

    def forward(self, images: torch.Tensor) -> Any:
        """anomalib-style ``InferenceBatch``: map = minus the sum of the layers' upsampled likelihoods."""
        from anomalib.data import InferenceBatch

        features = self.encoder(images)
        total = None
        for index, feature in enumerate(features.values()):
            batch, _, height, width = feature.shape
            likelihood = self.log_likelihood(index, self.fibers(feature), self.conditions(height, width, batch))
            probability = torch.exp(likelihood - self.reference[index]).reshape(batch, 1, height, width)
            layer_map = upsample_bilinear(probability, images.shape[-2:])
            total = layer_map if total is None else total + layer_map
        anomaly_map = -total
        return InferenceBatch(pred_score=torch.amax(anomaly_map, dim=(-2, -1)), anomaly_map=anomaly_map)


class Cflow(AnomalyModel):
    """CFLOW-AD (Gudovskiy et al., 2022): conditional normalising flows over feature positions.

    Args:
        backbone: backbone name.
        layers: feature layers, one flow per layer.
        input_size: ``[height, width]`` every image is brought to.
        fiber_batch_size: feature vectors per optimiser step (anomalib's 64).
        condition_vector: positional-encoding length.
        coupling_blocks: coupling blocks per flow.
        clamp_alpha: affine clamping of the couplings.
        lr: Adam learning rate (anomalib's 1e-4).
        positional: condition the flows on the position (False: zeros, one density everywhere).
        seed: seed of the flows' initialisation and of the fiber order.
    """

    default_trainer: ClassVar[dict[str, Any]] = {"max_epochs": 3}
    layers_by_backbone: ClassVar[dict[str, tuple[str, ...]]] = {
        "efficientnet_lite0": ("blocks.2", "blocks.4"),
        "efficientnet_lite1": ("blocks.2", "blocks.4"),
        "efficientnet_lite2": ("blocks.2", "blocks.4"),
        "mobilenet_v2": ("blocks.2", "blocks.4"),
        "resnet18": ("layer2", "layer3"),
        "wide_resnet50_2": ("layer2", "layer3"),
    }

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        layers: list[str] | None = None,
        input_size: tuple[int, int] | None = (256, 256),
        pretrained: bool = True,
        weights: str | None = None,
        fiber_batch_size: int = 64,
        condition_vector: int = 128,
        coupling_blocks: int = 8,
        clamp_alpha: float = 1.9,
        lr: float = 0.0001,
        positional: bool = True,
        seed: int = 0,
    ) -> None:
        self.positional = check_bool("positional", positional)
        self.fiber_batch_size = check_int("fiber_batch_size", fiber_batch_size, minimum=1)
        self.condition_vector = check_int("condition_vector", condition_vector, minimum=4)
        self.coupling_blocks = check_int("coupling_blocks", coupling_blocks, minimum=1)
        self.clamp_alpha = check_number("clamp_alpha", clamp_alpha, low=0.0, open_interval=True)
        self.lr = check_number("lr", lr, low=0.0, open_interval=True)
        self.seed = check_int("seed", seed, minimum=0)
        super().__init__(backbone, layers, input_size, pretrained, weights)
        self.automatic_optimization = False  # many optimiser steps per image batch, as anomalib
        self.save_hyperparameters()

    def build_core(self) -> nn.Module:  # noqa: D102
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            return _CflowCore(
                self.spec.timm_name,
                self.layers,
                self.condition_vector,
                self.coupling_blocks,
                self.clamp_alpha,
                self.positional,
            )

    def pretrained_modules(self) -> list[nn.Module]:  # noqa: D102
        return [self.model.encoder.feature_extractor]

    def on_train_epoch_start(self) -> None:  # noqa: D102
        self.model.reference.fill_(-float("inf"))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:  # noqa: D102
        del batch_idx
        import torch.nn.functional as F

        optimizer = self.optimizers()
        core = self.model
        with torch.no_grad():
            features = core.encoder(self.core_input(batch["image"]))
        total, count = 0.0, 0
        for index, feature in enumerate(features.values()):
            batch_size, _, height, width = feature.shape
            fibers = core.fibers(feature)
            conditions = core.conditions(height, width, batch_size).to(fibers.device)
            for chunk in torch.randperm(fibers.shape[0], device=fibers.device).split(self.fiber_batch_size):
                optimizer.zero_grad()
                likelihood = core.log_likelihood(index, fibers[chunk], conditions[chunk])
                loss = -F.logsigmoid(likelihood).mean()
                self.manual_backward(loss)
                optimizer.step()
                core.reference[index] = torch.maximum(core.reference[index], likelihood.detach().max())
                total += float(loss.detach()) * len(chunk)
                count += len(chunk)
        mean = torch.tensor(total / max(count, 1))
        self.log("train_loss", mean, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch["image"].shape[0])
        return mean

    def configure_optimizers(self) -> torch.optim.Optimizer:  # noqa: D102
        return torch.optim.Adam(self.model.decoders.parameters(), lr=self.lr)


# --------------------------------------------------------------------------- SuperSimpleNet
class Supersimplenet(AnomalyModel):
    """SuperSimpleNet (Rolih et al., 2024), unsupervised: a feature adaptor and a segmentation-detection
    head learn to find Perlin-shaped Gaussian noise added to normal features (anomalib's torch model).

    Args:
        backbone: backbone name.
        layers: feature layers (upscaled to twice the first layer's resolution and concatenated).
        input_size: ``[height, width]`` every image is brought to.
        perlin_threshold: share of the Perlin noise kept as the synthetic anomaly mask.
        seed: seed of the heads' initialisation.
    """

    default_trainer: ClassVar[dict[str, Any]] = {"max_epochs": 10}
    layers_by_backbone: ClassVar[dict[str, tuple[str, ...]]] = {
        "efficientnet_lite0": ("blocks.2", "blocks.4"),
        "efficientnet_lite1": ("blocks.2", "blocks.4"),
        "efficientnet_lite2": ("blocks.2", "blocks.4"),
        "mobilenet_v2": ("blocks.2", "blocks.4"),
        "resnet18": ("layer2", "layer3"),
        "wide_resnet50_2": ("layer2", "layer3"),
    }

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        layers: list[str] | None = None,
        input_size: tuple[int, int] | None = (256, 256),
        pretrained: bool = True,
        weights: str | None = None,
        perlin_threshold: float = 0.2,
        seed: int = 0,
    ) -> None:
        self.perlin_threshold = check_number("perlin_threshold", perlin_threshold, low=0.0, high=1.0)
        self.seed = check_int("seed", seed, minimum=0)
        super().__init__(backbone, layers, input_size, pretrained, weights)
        self.save_hyperparameters()
        from anomalib.models.image.supersimplenet.loss import SSNLoss

        self.loss = SSNLoss()

    def build_core(self) -> nn.Module:  # noqa: D102
        import functools

        from anomalib.models.image.supersimplenet import torch_model

        original = torch_model.TimmFeatureExtractor
        torch_model.TimmFeatureExtractor = functools.partial(original, pre_trained=False)  # no hub download
        try:
            with torch.random.fork_rng():
                torch.manual_seed(self.seed)
                return torch_model.SupersimplenetModel(
                    perlin_threshold=self.perlin_threshold, backbone=self.spec.timm_name, layers=self.layers
                )
        finally:
            torch_model.TimmFeatureExtractor = original

    def pretrained_modules(self) -> list[nn.Module]:  # noqa: D102
        return [self.model.feature_extractor.feature_extractor.feature_extractor]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:  # noqa: D102
        del batch_idx
        images = self.core_input(batch["image"])
        normal = torch.zeros(images.shape[0], device=images.device)  # train/good only: no anomalous labels
        anomaly_map, score, masks, labels = self.model(images, labels=normal)
        loss = self.loss(pred_map=anomaly_map, pred_score=score, target_mask=masks, target_label=labels)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def configure_optimizers(self) -> Any:  # noqa: D102 - anomalib's optimiser and schedule
        optimizer = torch.optim.AdamW(
            [
                {"params": self.model.adaptor.parameters(), "lr": 0.0001},
                {"params": self.model.segdec.parameters(), "lr": 0.0002, "weight_decay": 0.00001},
            ]
        )
        epochs = self.trainer.max_epochs or 1
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=[int(epochs * 0.8), int(epochs * 0.9)], gamma=0.4
        )
        return [optimizer], [scheduler]


def main() -> None:
    """Train one candidate, print its validation metrics per epoch and its test metrics."""
    import argparse
    import csv
    import json
    import time
    from pathlib import Path

    from otx.data import AnomalyDataModule
    from otx.engine import Engine

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["Cflow", "Fastflow", "Supersimplenet"], required=True)
    parser.add_argument("--data_root", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/candidates"))
    parser.add_argument("--init_args", default="{}", help="JSON of extra model arguments")
    args = parser.parse_args()
    model = globals()[args.model](**json.loads(args.init_args))
    data = AnomalyDataModule(str(args.data_root), val_split=0.5, seed=42, batch_size=16, num_workers=2)
    engine = Engine(
        model=model,
        data=data,
        task="segmentation",
        work_dir=args.work_dir / args.model,
        max_epochs=args.epochs,
        seed=42,
    )
    start = time.perf_counter()
    trained = engine.train()
    train_s = time.perf_counter() - start
    for row in csv.DictReader(open(next(Path(trained["checkpoint"]).parent.glob("logs/metrics.csv")))):
        if row.get("val/image_AUROC"):
            print(
                f"epoch {row['epoch']}: val image AUROC {float(row['val/image_AUROC']):.3f}, "
                f"pixel AUROC {float(row['val/pixel_AUROC']):.3f}"
            )
    metrics = engine.test()["metrics"]
    print(
        json.dumps(
            {
                "model": args.model,
                "epochs": args.epochs,
                "train_s": round(train_s, 1),
                **{k: round(float(v), 4) for k, v in metrics.items()},
            }
        )
    )


if __name__ == "__main__":
    main()

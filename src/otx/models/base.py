"""The base LightningModule shared by every model core.

A model core (PADIM, STFPM, ...) wraps one of anomalib's pure torch models and knows nothing
about tasks: ``forward`` maps a batch of images (float ``[B, 3, H, W]`` in [0, 1], already
brought to ``input_size`` by the model's ``PreProcessor``) to a raw anomaly map ``[B, H, W]`` and a
raw image score ``[B]``; in the ``tile`` input mode the core runs on each image's tiles and their
maps are stitched (``image_outputs``).
Input normalisation (the backbone's mean/std) happens inside ``forward`` so that it travels
into exported graphs; thresholds and normalisation statistics live in ``self.postprocessor``.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import os
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import lightning as L
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from otx import distributed
from otx.boxes import REFINES, BoxSettings
from otx.data.datamodule import raise_batch_errors
from otx.errors import OTXConfigError, for_caller
from otx.memory import return_freed_memory
from otx.models.backbones import BackboneSpec, check_layers, get_backbone, load_into, resolve_weights
from otx.models.quantization import GENERIC, Scheme
from otx.postprocess import PostProcessor, known_pixel_rows
from otx.preprocess import AUTO, DEFAULT_TILE, MODES, PreProcessor, aspect_input_size, auto_input
from otx.validate import check_bool, check_number, check_path, check_size


def core_outputs(core: nn.Module, normalized: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run an anomalib torch model in eval mode; return ``(anomaly_map [B, H, W], pred_score [B])``.

    Shared by ``AnomalyModel.forward`` and the export graph (``otx.deploy.graph``), so that both
    compute exactly the same thing.
    """
    out = core(normalized)
    anomaly_map = out.anomaly_map
    if anomaly_map.dim() == 4:
        anomaly_map = anomaly_map[:, 0]
    return anomaly_map, out.pred_score.reshape(-1)


def plain_value(value: Any) -> Any:
    """``value`` with NumPy scalars as Python numbers and paths as strings, inside lists, tuples and dicts."""
    if isinstance(value, dict):
        return {key: plain_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain_value(item) for item in value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if type(value).__module__ == "numpy" and hasattr(value, "item"):  # a NumPy scalar (arrays are not arguments)
        return value.item()
    return value


TILE_CHUNK = 16  # tiles the core takes at once, in eager torch and in the exported graph (bounds their memory)
# pixels a gradient training step takes at once in the tile mode (AnomalyModel.training_loss): 16 tiles of 256
TRAIN_CHUNK_PIXELS = TILE_CHUNK * DEFAULT_TILE * DEFAULT_TILE
# a chunked step keeps its frozen part's outputs for the recomputation while all chunks' take at most this
# many times the bytes of the tiles (beyond: the frozen part is recomputed with the trained part)
FROZEN_KEPT_LIMIT = 1.0


def _tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in ``value`` (a tensor, or dicts, lists and tuples of them)."""
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, dict):
        value = list(value.values())
    return sum(_tensor_bytes(item) for item in value) if isinstance(value, (list, tuple)) else 0


def image_outputs(
    core: nn.Module, preprocessor: PreProcessor, normalized: torch.Tensor, score_top_share: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw ``(anomaly_map [B, H, W], pred_score [B])`` of images at ``input_size``, tiled if the mode says so.

    Shared by ``AnomalyModel.forward`` and the export graph. The core takes the tiles a few at a
    time (``core_in_chunks``), in torch as in the traced graph.
    ``score_top_share``: the image score is the mean of that share of the map's highest pixels
    (``top_share_score``); None keeps the core's own score.
    """
    tiles = preprocessor.tiles(normalized)
    count = preprocessor.tiles_per_image
    if count == 1 or tiles.shape[0] <= TILE_CHUNK:
        maps, scores = core_outputs(core, tiles)
    else:
        maps, scores = core_in_chunks(core, tiles, count)
    maps, scores = preprocessor.untile(maps, scores)
    if score_top_share is not None:
        scores = top_share_score(maps, score_top_share, preprocessor.input_size)
    return maps, scores


def _trained_norms(module: nn.Module) -> list[_BatchNorm]:
    return [m for m in module.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]


@contextlib.contextmanager
def _one_of_chunks(module: nn.Module, chunks: int) -> Iterator[None]:
    """Around the first pass of one of a step's ``chunks`` chunks (``AnomalyModel.training_loss``).

    The batch norm layers of ``module`` in training move their running statistics by
    ``1 - (1 - momentum) ** (1 / chunks)`` per chunk, so that the step's chunks together move them
    as far as the step's one batch did (with 12 chunks at torch's default 0.1, one image would otherwise
    replace 72 % of them instead of 10 %). A momentum of None (a cumulative average) counts chunks.
    """
    layers = [m for m in _trained_norms(module) if m.momentum is not None]
    momenta = [m.momentum for m in layers]
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = 1.0 - (1.0 - momentum) ** (1.0 / chunks)
    try:
        yield
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum


@contextlib.contextmanager
def _recomputation(module: nn.Module, device: torch.device) -> Iterator[None]:
    """Around activation checkpointing's recomputation of a chunk (``AnomalyModel.training_loss``).

    The freed pages of the chunk before go back to the system (``otx.memory.return_freed_memory``), and the
    batch norm layers of ``module`` end with the running statistics they had: the recomputation
    runs the forward pass a second time, which would otherwise count every chunk twice. (The
    layers still run as in training, so the recomputation saves what the first pass saved.)
    """
    return_freed_memory(device)
    buffers = [b for m in _trained_norms(module) for b in m.buffers()]
    kept = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, kept, strict=True):
                buffer.copy_(value)


MIN_TRACED_CHUNK = 4  # a traced graph takes an image's tiles in one batch rather than in smaller equal chunks
_EQUAL_CHUNKS = contextvars.ContextVar("otx_equal_tile_chunks", default=False)


@contextlib.contextmanager
def equal_tile_chunks() -> Iterator[None]:
    """While tracing inside it, tile chunks are equal parts at run time (``torch.chunk``): the ONNX export's."""
    token = _EQUAL_CHUNKS.set(True)
    try:
        yield
    finally:
        _EQUAL_CHUNKS.reset(token)


def core_in_chunks(core: nn.Module, tiles: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``core_outputs`` of ``[B * count, C, t, t]`` tiles (image after image), ``TILE_CHUNK`` at a time.

    Traced (the export), an image's ``count`` tiles go in chunks of the largest size up to
    ``TILE_CHUNK`` that divides it, branches of the graph that OpenVINO runs one after another,
    reusing their memory: a 4000x3000 PADIM IR of 192 tiles predicted within 3.0 GB instead of 5.3
    (``docs/input-modes.md``, "A 4000x3000 image"). The OpenVINO IR splits by those fixed sizes
    (static shapes: equal parts computed at run time, ``torch.chunk``, took 4.7 GB), so a batch of
    several images runs its extra images' tiles in the last chunk (the same outputs, more memory).
    The ONNX export splits into equal parts at run time (``equal_tile_chunks``): ONNX's split by
    fixed sizes refuses a batch. A count with no divisor from ``MIN_TRACED_CHUNK`` to
    ``TILE_CHUNK`` (a prime number of tiles) is traced as one batch.
    """
    if torch.jit.is_tracing():
        step = max(size for size in range(1, TILE_CHUNK + 1) if count % size == 0)
        if step < MIN_TRACED_CHUNK:
            return core_outputs(core, tiles)
        chunks = tiles.chunk(count // step) if _EQUAL_CHUNKS.get() else tiles.split(step)
    else:
        chunks = tiles.split(TILE_CHUNK)
    parts = [core_outputs(core, chunk) for chunk in chunks]
    return torch.cat([m for m, _ in parts]), torch.cat([s for _, s in parts])


def top_share_count(share: float, input_size: tuple[int, int]) -> int:
    """How many of a ``input_size`` map's pixels the top-share image score averages (at least one)."""
    return max(1, int(round(share * input_size[0] * input_size[1])))


def top_share_score(maps: torch.Tensor, share: float, input_size: tuple[int, int]) -> torch.Tensor:
    """Image scores ``[B]``: the mean of the ``share`` highest pixels of each map ``[B, H, W]`` (at ``input_size``).

    The count is fixed by the input size, so the exported graph holds it as a constant.
    """
    count = top_share_count(share, input_size)
    return torch.topk(maps.flatten(1), count, dim=1).values.mean(dim=1)


# The callback of the gradient-trained models' defaults (and recipes): keep the epoch of the best
# validation image AUROC (the latest of tied epochs). No early stopping by default: docs/models.md.
KEEP_BEST_EPOCH: dict[str, Any] = {
    "class_path": "otx.training.BestEpoch",
    "init_args": {"monitor": "val/image_AUROC", "mode": "max", "save_top_k": 1, "filename": "best"},
}


class AnomalyModel(L.LightningModule):
    """Base of the model cores.

    Args:
        backbone: backbone name (``efficientnet_lite0``, ``resnet18``, ``wide_resnet50_2``).
        layers: backbone feature layers; None takes the model's defaults for the backbone.
        input_size: ``[height, width]`` every image is brought to (and its anomaly map's size); None
            with ``keep_aspect``: about 256x256 pixels in the training images' median aspect ratio; with
            ``auto``: the model's ``input_area`` (256x256, STFPM's 128x128) for ``auto`` to shape.
        pretrained: load ImageNet weights into the backbone (False is an explicit choice).
        weights: a local weights file for the backbone; None searches caches and packages.
        image_threshold: manual raw image-score threshold; None learns it (F1-adaptive) on validation.
        pixel_threshold: manual raw pixel threshold; None learns it (F1-adaptive) on validation.
        input_mode: ``auto`` (``otx train`` takes ``resize``, or ``keep_aspect`` at as many pixels as
            ``input_size`` for training images that ``resize`` would squash by 2x or more:
            ``otx.preprocess.auto_input``), ``resize``, ``keep_aspect`` or ``tile`` (``otx.preprocess``;
            ``docs/input-modes.md``). A trained model holds the mode it ran with.
        tile_size: side of the square tiles the core sees in the ``tile`` mode (default 256).
        tile_stride: pixels between tiles in the ``tile`` mode (default ``tile_size``: no overlap).
        boxes_on_normal: detection boxes also on images labelled normal (default: none there).
        boxes_refine: how detection boxes are snapped to the image (``otx.boxes.REFINES``): ``auto``
            lets box tuning choose on the validation split (the default), ``none`` keeps the map's
            boxes, ``dark``, ``bright`` or ``contrast`` snaps every box that way.
        score_top_share: None: the core's own image score (the map's maximum; PatchCore's re-weighted
            distance). A share in (0, 1]: the mean of that share of the map's highest pixels, less
            moved by one noisy pixel (``docs/models.md``, "Image score").
    """

    # lightning.Trainer arguments of this model (a recipe's trainer: section overrides them, each key
    # as a whole: a recipe's or a caller's callbacks replace these). Callbacks by class path, as in a recipe.
    default_trainer: ClassVar[dict[str, Any]] = {"max_epochs": 1}
    # Feature layers per backbone name, used when the config gives none (each model measures its own).
    layers_by_backbone: ClassVar[dict[str, tuple[str, ...]]] = {}
    # Which nodes stay in float when `otx optimize` quantises an export of this model.
    int8_scheme: ClassVar[Scheme] = GENERIC
    # Fitted in one pass without gradients (statistics, memory bank): in a distributed run each
    # process sees every one of its training images once and `finish_fit` joins the processes'
    # statistics exactly; False: trained by gradient (Lightning's DDP averages the gradients).
    fits_in_one_pass: ClassVar[bool] = False
    # Trainable parameters that take no part in the loss (layers past the last feature layer of a
    # timm student): DDP must look for them after every step. False spares that search (and
    # PyTorch's warning that it found none); a model that says False wrongly fails in DDP.
    ddp_unused_parameters: bool = True
    # Pixels of the input that `keep_aspect` chooses from the training images (input_size null).
    input_area: ClassVar[int] = 256 * 256
    # The fewest training images the model can fit on, and why (`otx train` refuses fewer up front).
    min_train_images: ClassVar[tuple[int, str]] = (1, "")
    # anomalib's names of this model's settings, for "did you mean" to those who bring anomalib's
    # configs (a model adds its own: PatchCore's coreset_sampling_ratio).
    anomalib_names: ClassVar[dict[str, str]] = {"pre_trained": "pretrained"}

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        layers: list[str] | None = None,
        input_size: tuple[int, int] | None = (256, 256),
        pretrained: bool = True,
        weights: str | None = None,
        image_threshold: float | None = None,
        pixel_threshold: float | None = None,
        input_mode: str = AUTO,
        tile_size: int | None = None,
        tile_stride: int | None = None,
        boxes_on_normal: bool = False,
        boxes_refine: str = "auto",
        score_top_share: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, str):
            raise OTXConfigError(f"backbone must be a backbone name such as 'efficientnet_lite0' (got {backbone!r})")
        self.spec: BackboneSpec = get_backbone(backbone)
        if layers is not None and (isinstance(layers, str) or not all(isinstance(x, str) for x in layers)):
            raise OTXConfigError(f"layers must be a list of layer names, e.g. ['blocks.2'] (got {layers!r})")
        if layers is not None and not layers:
            raise OTXConfigError("layers is empty; name at least one (`otx find --what backbones`) or leave it out")
        self.layers = check_layers(self.spec, list(layers) if layers else list(self.default_layers(self.spec)))
        if input_mode not in (AUTO, *MODES):
            raise OTXConfigError(
                f"input_mode must be one of {', '.join((AUTO, *MODES))} (got {input_mode!r}); docs/input-modes.md"
            )
        # auto: resize or keep_aspect, chosen from the training images by `otx train` (`choose_input_mode`)
        self.input_mode_from_data = input_mode == AUTO
        if self.input_mode_from_data and (tile_size is not None or tile_stride is not None):
            given = [k for k, v in (("tile_size", tile_size), ("tile_stride", tile_stride)) if v is not None]
            raise OTXConfigError(
                for_caller(
                    f"{' and '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to input_mode tile only "
                    "(input_mode is auto); pass "
                    f"{' and '.join(f'--model.init_args.{k} null' for k in given)} (a config file may set "
                    "them: a tile run's config.yaml does), or --model.init_args.input_mode tile"
                )
            )
        # None (keep_aspect, auto): chosen from the training images' aspect ratio (`choose_input_size`)
        self.input_size_from_data = input_size is None
        if self.input_size_from_data and input_mode not in ("keep_aspect", AUTO):
            raise OTXConfigError(
                for_caller(
                    "input_size null (chosen from the training images) needs input_mode keep_aspect or auto; "
                    "pass --model.init_args.input_size '[H,W]' or --model.init_args.input_mode keep_aspect"
                )
            )
        self._set_input(input_mode, input_size, tile_size, tile_stride)  # (one line for a bad size)
        # what was asked, for a later training to choose afresh from its own images (`forget_data_choices`)
        self._asked_input = (input_mode, None if input_size is None else list(input_size))
        self.pretrained = check_bool("pretrained", pretrained)
        check_path("weights", weights, optional=True)
        self.image_threshold = check_number("image_threshold", image_threshold, optional=True)
        self.pixel_threshold = check_number("pixel_threshold", pixel_threshold, optional=True)
        # None: the core's own image score; a share: the mean of the map's highest pixels (`top_share_score`)
        self.score_top_share = check_number("score_top_share", score_top_share, 0.0, 1.0, optional=True, above_low=True)
        self.register_buffer("mean", torch.tensor(self.spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.spec.std).view(1, 3, 1, 1), persistent=False)
        self.model = self.build_core()
        self._set_backbone_layout(torch.channels_last)  # oneDNN's fast layout for the backbones' convolutions
        from_checkpoint = getattr(self, "_skip_weights", False)  # (the weights come from a checkpoint next)
        if not pretrained and weights is not None and not from_checkpoint:  # before: the file was passed over
            raise OTXConfigError(
                for_caller(
                    f"a weights file ({weights}) is loaded only with --model.init_args.pretrained true (the default): "
                    "drop --model.init_args.weights, or --model.init_args.pretrained false"
                )
            )
        # before: "checkpoint" for a backbone left at random initialisation too (the console and metrics.json)
        self.weights_source = "checkpoint" if from_checkpoint else "random initialisation (pretrained false)"
        if pretrained and not from_checkpoint:
            state, self.weights_source = resolve_weights(self.spec, weights)
            for module in self.pretrained_modules():
                load_into(module, state, self.spec.name)
        # One-pass models return no loss: manual optimisation (no optimiser) is what DDP accepts then.
        self.automatic_optimization = not self.fits_in_one_pass
        self.postprocessor = PostProcessor()
        # how detection boxes are cut from the maps (tuned on the validation split by `otx train`)
        self.box_settings = BoxSettings(on_normal=check_bool("boxes_on_normal", boxes_on_normal))
        if boxes_refine not in ("auto", *REFINES):
            raise OTXConfigError(
                f"boxes_refine must be one of auto, {', '.join(REFINES)} (got {boxes_refine!r}); "
                "auto lets the validation split choose (docs/input-modes.md)"
            )
        self.boxes_refine = boxes_refine
        self.validation_outputs: dict[str, torch.Tensor] | None = None  # the last validation epoch's
        self.validated_step = self.validated_epoch = -1  # the step and epoch those outputs come from
        self.fit_warnings: list[str] = []  # what finish_fit found wrong: otx train lists them in metrics.json

    # --- to be provided by each core -------------------------------------------------------
    def save_hyperparameters(self, *args: Any, frame: Any = None, **kwargs: Any) -> None:
        """Lightning's ``save_hyperparameters`` of the caller's arguments, as plain Python values.

        The checkpoint is read back with ``torch.load(weights_only=True)``, which refuses NumPy
        scalars and paths: ``Padim(weights=Path(...))`` or ``score_top_share=np.float64(0.05)``
        wrote a checkpoint that nothing could load. They are stored as ``float`` / ``int`` / ``str``.
        """
        caller = frame if frame is not None else inspect.currentframe().f_back  # type: ignore[union-attr]
        super().save_hyperparameters(*args, frame=caller, **kwargs)
        for hparams in (self._hparams, self._hparams_initial):
            for key, value in hparams.items():
                hparams[key] = plain_value(value)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> AnomalyModel:  # type: ignore[override]
        """The model an otx ``model.ckpt`` holds (``otx.checkpoint.load_checkpoint``), as Lightning's name says.

        otx's checkpoint is not a Lightning training checkpoint, so Lightning's own loader failed on it
        with ``KeyError: 'pytorch-lightning_version'`` (a migrants bug bash). A checkpoint of another
        model class is refused in one line. otx loads to the CPU with every weight, so Lightning's
        ``map_location="cpu"`` and ``strict`` are taken; another device or hyperparameters are refused
        (the checkpoint holds the model's settings; ``.to(device)`` moves it).
        """
        from otx.checkpoint import class_path, load_checkpoint

        # Lightning's usual map_location="cpu" and strict are what otx does anyway; others would be ignored
        location = kwargs.pop("map_location", None)
        kwargs.pop("strict", None)
        if args or kwargs or str(location) not in ("None", "cpu"):
            extra = [*(repr(a) for a in args), *kwargs, *([f"map_location={location!r}"] if location else [])]
            raise OTXConfigError(
                f"{cls.__name__}.load_from_checkpoint takes the checkpoint path (and map_location='cpu') alone (got "
                f"also {', '.join(extra)}): the model's settings come from the checkpoint; move it with .to(device)"
            )
        model, _ = load_checkpoint(checkpoint_path)
        if not isinstance(model, cls):
            raise OTXConfigError(
                f"'{checkpoint_path}' holds a {class_path(model)}, not a {cls.__name__}; load it with "
                f"{type(model).__name__}.load_from_checkpoint, or otx.checkpoint.load_checkpoint for any model"
            )
        return model

    @classmethod
    def upgrade_init_args(cls, init_args: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint's init arguments, written by an earlier otx, in this version's terms.

        A model saved without ``input_mode`` (before the input modes) ran ``resize``, the default then;
        a saved ``auto`` (never settled by ``otx train``) ran its placeholder ``resize`` too. A model
        that changes its own defaults extends this (``super().upgrade_init_args``).
        """
        if init_args.get("input_mode", AUTO) == AUTO:
            init_args = {**init_args, "input_mode": "resize"}
        return init_args

    @classmethod
    def default_layers(cls, spec: BackboneSpec) -> tuple[str, ...]:
        """Feature layers used when the config gives none (``layers_by_backbone``)."""
        if spec.name not in cls.layers_by_backbone:
            raise OTXConfigError(
                f"{cls.__name__} has no default layers for backbone '{spec.name}'; pass them, e.g. "
                f"--model.init_args.layers '[...]' (`otx find --what backbones`)"
            )
        return cls.layers_by_backbone[spec.name]

    def build_core(self) -> nn.Module:
        """Build the anomalib torch model, without downloading weights."""
        raise NotImplementedError

    def pretrained_modules(self) -> list[nn.Module]:
        """The timm feature extractors that receive ImageNet weights."""
        raise NotImplementedError

    def fitted_state_problem(self) -> str | None:
        """Why the fitted state just loaded (a checkpoint's) cannot serve this model's settings; None when it can.

        What the weights' shapes cannot show: a model whose fitted state depends on its input (PADIM's
        statistics per feature position) says so here, before prediction fails inside its core.
        """
        return None

    # --- shared ------------------------------------------------------------------------------
    def normalize_input(self, images: torch.Tensor) -> torch.Tensor:
        """Apply the backbone's mean/std to images in [0, 1]."""
        return (images - self.mean) / self.std

    def _set_input(self, input_mode: str, input_size: Any, tile_size: Any, tile_stride: Any) -> None:
        size = aspect_input_size(1.0, self.input_area) if input_size is None else input_size
        self.input_size = check_size("input_size", list(size) if isinstance(size, tuple) else size)
        # data pipeline, torch inference and export alike (auto: resize until `otx train` chooses)
        mode = "resize" if self.input_mode_from_data else input_mode
        self.preprocessor = PreProcessor(self.input_size, mode, tile_size, tile_stride)

    def forget_data_choices(self) -> None:
        """Undo ``choose_input_mode`` / ``choose_input_size``: the next training chooses from its own images.

        ``otx train`` calls it first, so that a model object trained on 3:1 strips (``auto`` chose
        ``keep_aspect``) and then given to another training on square images is not trained at the
        strips' input there.
        """
        mode, size = self._asked_input
        if (mode, size) == (self.hparams.get("input_mode"), self.hparams.get("input_size")):
            return  # nothing was chosen (or nothing could be)
        self.input_mode_from_data = mode == AUTO
        self.input_size_from_data = size is None
        pre = self.preprocessor
        self._set_input(mode, size, pre.tile_size, pre.tile_stride)
        self._record_chosen(input_mode=mode, input_size=size)

    def choose_input_size(self, aspect: float) -> tuple[int, int]:
        """Set an input size from the training images' median ``aspect`` (width / height); return it.

        For ``input_size`` None (``keep_aspect``): about ``input_area`` pixels (256x256; the model's
        own), sides multiples of 32. The choice is written into the hyper-parameters, so checkpoints
        and exports carry it.
        """
        pre = self.preprocessor
        self.input_size = aspect_input_size(aspect, area=self.input_area)
        self.preprocessor = PreProcessor(self.input_size, pre.mode, pre.tile_size, pre.tile_stride)
        self._record_chosen(input_size=list(self.input_size))
        self.input_size_from_data = False
        return self.input_size

    def choose_input_mode(self, aspect: float | None) -> str:
        """Settle ``input_mode auto`` for training images of median ``aspect`` (width / height); return the mode.

        ``resize`` at the input size, or ``keep_aspect`` at as many pixels in the images' aspect ratio
        when ``resize`` would squash them by ``SQUASH_LIMIT`` or more (``otx.preprocess.auto_input``;
        ``input_size`` null: the model's ``input_area``). ``aspect`` None (no image could be measured):
        ``resize``. The choice is written into the hyper-parameters, so checkpoints and exports carry it.
        """
        mode, size = ("resize", self.input_size) if aspect is None else auto_input(aspect, self.input_size)
        self.input_size = size
        self.preprocessor = PreProcessor(size, mode)
        self._record_chosen(input_mode=mode, input_size=list(size))
        self.input_mode_from_data = self.input_size_from_data = False
        return mode

    def _record_chosen(self, **values: Any) -> None:
        """Write settings chosen from the data into the hyper-parameters: the checkpoint's and those Lightning logs."""
        self.hparams.update(values)
        if getattr(self, "_hparams_initial", None) is not None:  # logs/hparams.yaml (set by save_hyperparameters)
            self._hparams_initial.update(values)

    def given_thresholds(self) -> list[str]:
        """The thresholds set by hand (``image``, ``pixel``); the others are learned on the validation split."""
        return [name for name in ("image", "pixel") if getattr(self, f"{name}_threshold") is not None]

    def core_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] at ``input_size`` as the core takes them in training: normalised, tiled if tiling."""
        return self.preprocessor.tiles(self.normalize_input(images))

    @contextlib.contextmanager
    def fit_progress(self, description: str) -> Iterator[Callable[[int, int], None]]:
        """``update(done, total)`` of a bar of its own on the training's progress display, for a long step of the fit.

        The bar is the trainer's progress bar's ``phase`` (``otx.training.EpochProgressBar`` on a
        terminal, ``EpochLines``' quarter lines into a file or pipe); without one (no trainer, another
        bar, a process of rank > 0) updates go nowhere.
        """
        trainer = self._trainer  # (Lightning's; None outside a fit)
        phase = getattr(getattr(trainer, "progress_bar_callback", None), "phase", None)
        if phase is None:
            yield lambda done, total: None
            return
        with phase(description) as update:
            yield update

    def core_input_chunks(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``core_input`` in parts of ``TILE_CHUNK`` tiles when tiling (one part otherwise), in order.

        For fits without gradients (PADIM, PatchCore): the backbone takes a tiled image's tiles a
        few at a time, as at inference, so its memory no longer grows with the tiles per image (a
        bug bash: a 4000x3000 image in 713 tiles asked for 4.2 GiB at once and failed under 12 GB).
        """
        tiles = self.core_input(images)
        return tiles.split(TILE_CHUNK) if self.preprocessor.tiles_per_image > 1 else (tiles,)

    def training_loss(
        self,
        images: torch.Tensor,
        loss_of: Callable[..., torch.Tensor],
        reduction: str,
        frozen_of: Callable[[torch.Tensor], Any] | None = None,
    ) -> torch.Tensor:
        """The training loss of ``images``, with gradients: ``loss_of`` of their ``core_input``.

        ``loss_of(tiles)`` is the model's loss over a batch of core inputs, which it ``reduction``s
        over them (``"sum"`` or ``"mean"``). With ``frozen_of`` (what the frozen part of the model,
        a teacher or a backbone, makes of the tiles, computed without gradients) it is
        ``loss_of(tiles, frozen_of(tiles))``. For the models trained with gradients (STFPM,
        PatchFlow): in the ``tile`` mode a step of more pixels than ``TRAIN_CHUNK_PIXELS`` (those of
        16 tiles of 256: a large image's) runs in near-equal chunks within it, each under
        activation checkpointing, so only the tiles (and their frozen outputs) are held for the
        backward pass, which recomputes one chunk at a time: the step's activations are one chunk's,
        not the image's tiles' at once (a 3000x4000 image in 192 tiles asked for 4.2 GB in STFPM's step,
        ``docs/input-modes.md``). The frozen outputs are computed once per chunk, outside the
        checkpoint, so that the recomputation runs only the trained part, as long as all chunks'
        take no more memory than the tiles (``FROZEN_KEPT_LIMIT``: 22 MB for STFPM's default
        teacher layer over 192 tiles of 256, 90 MB for PatchFlow's, against 151 MB of tiles; a
        wide ResNet's would take gigabytes, and is recomputed instead). Steps within the budget
        run as one batch: small tiles cost little memory,
        and chunks of them cost time (the recomputation, a pass per chunk) and change batch norm.
        A chunk takes every n-th tile, so that it spans the image rather than one row of tiles:
        batch norm normalises each chunk by its statistics (as a batch of 16 images), moves its
        running statistics per chunk by a share of its momentum (``_one_of_chunks``) and not
        again in the recomputation (``_recomputation``). Between chunks the freed memory goes back
        to the system (``otx.memory.return_freed_memory``).
        """
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be sum or mean, not {reduction!r}")
        tiles = self.core_input(images)

        def inputs(chunk: torch.Tensor) -> tuple[Any, ...]:
            if frozen_of is None:
                return (chunk,)
            with torch.no_grad():
                return chunk, frozen_of(chunk)

        per_chunk = max(1, TRAIN_CHUNK_PIXELS // (tiles.shape[-2] * tiles.shape[-1]))
        if self.preprocessor.tiles_per_image == 1 or tiles.shape[0] <= per_chunk:
            return loss_of(*inputs(tiles))
        count = -(-tiles.shape[0] // per_chunk)
        chunks = [tiles[start::count] for start in range(count)]  # every count-th tile: each chunk spans the image
        contexts = lambda: (_one_of_chunks(self.model, count), _recomputation(self.model, tiles.device))  # noqa: E731
        kept = frozen_of is not None  # the frozen outputs computed outside the checkpoint, kept for its recomputation
        losses = []
        for index, chunk in enumerate(chunks):
            args = inputs(chunk) if kept else (chunk,)
            if kept and index == 0 and _tensor_bytes(args[1]) * count > FROZEN_KEPT_LIMIT * tiles.nbytes:
                kept, args = False, (chunk,)  # (a large backbone's: recomputed in the chunk's checkpoint instead)
            function = loss_of if kept or frozen_of is None else lambda part: loss_of(*inputs(part))
            losses.append(checkpoint(function, *args, use_reentrant=False, context_fn=contexts))
            return_freed_memory(tiles.device)
        stacked = torch.stack(losses).float()  # (weights and sums in float32 under a 16-bit autocast too)
        if reduction == "sum":
            return stacked.sum()
        return (stacked * torch.tensor([len(chunk) / tiles.shape[0] for chunk in chunks], device=stacked.device)).sum()

    def log_train_loss(self, loss: torch.Tensor, images: torch.Tensor) -> None:
        """The training loss, per step and per epoch (the progress bar, ``logs/``), over all processes.

        On several devices each process holds its share of the batch: the logged loss is their
        weighted mean (``sync_dist``), not the first process's share alone.
        """
        self.log(
            "train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=images.shape[0], sync_dist=True
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw ``(anomaly_map [B, H, W], pred_score [B])`` for images in [0, 1] at ``input_size``."""
        return image_outputs(self.model, self.preprocessor, self.normalize_input(images), self.score_top_share)

    def _set_backbone_layout(self, layout: torch.memory_format) -> None:
        for module in self.pretrained_modules():
            module.to(memory_format=layout)

    def on_fit_start(self) -> None:
        """Fitting on an accelerator: the backbones back in torch's default layout (NHWC was measured on CPUs)."""
        if self.device.type != "cpu":
            self._set_backbone_layout(torch.contiguous_format)

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Stop with one clear line when a training image failed to decode."""
        del batch_idx
        raise_batch_errors(batch)

    def configure_optimizers(self) -> Any:  # noqa: D102 - models without gradient training return None
        return None

    def finish_fit(self) -> None:
        """Turn what the epoch's ``training_step`` calls accumulated into the model's statistics.

        For models fitted in one pass (PADIM's Gaussian, PatchCore's memory bank); a no-op for
        models trained by gradient. Called before validation (Lightning validates before
        ``on_train_epoch_end``) and at the epoch's end when no validation ran; must be idempotent.
        """

    def on_train_epoch_end(self) -> None:  # noqa: D102 - when no validation ran this epoch
        self.finish_fit()

    # --- validation loop: thresholds and normalisation statistics -----------------------------
    def on_validation_epoch_start(self) -> None:
        """Finish fitting (``finish_fit``), then start collecting this epoch's validation outputs.

        In a distributed run of a model trained by gradient, every process first takes rank 0's
        buffers (batch-norm statistics), so that all validate the model rank 0 saves.
        """
        self.finish_fit()
        if not self.fits_in_one_pass:
            distributed.broadcast_buffers(self)
        self._validation_parts: list[dict[str, torch.Tensor]] = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Raw outputs of one validation batch (a decode error stops with one line)."""
        del batch_idx
        raise_batch_errors(batch)
        batch = distributed.drop_padding(batch)  # a distributed split's place holder is not validated
        if batch is None:
            return
        maps, scores = self(batch["image"])
        self._validation_parts.append(
            {
                "maps": maps.float().cpu(),
                "scores": scores.float().cpu(),
                "labels": torch.as_tensor(batch["label"]).cpu(),
                "masks": batch["mask"].cpu(),
                "pixel_known": torch.as_tensor(batch.get("pixel_known", True)).expand(len(scores)).cpu(),
                "orig_sizes": batch["orig_size"].cpu(),
                "index": torch.as_tensor(batch["index"]).cpu(),
            }
        )

    @staticmethod
    def logged_validation_metrics(normal: bool = True, defective: bool = True, defect_pixels: bool = True) -> set[str]:
        """The metric names ``on_validation_epoch_end`` logs, given what the validation split holds.

        Image AUROC needs normal and defective images, image F1 defective ones (with none it is
        0 / 0 unless something is flagged), pixel AUROC defect pixels in the masks. All three
        (the defaults): every name otx can log, what a recipe may monitor.
        """
        names = {"val/image_F1"} if defective else set()
        if normal and defective:
            names.add("val/image_AUROC")
        if defect_pixels:
            names.add("val/pixel_AUROC")
        return names

    def on_validation_epoch_end(self) -> None:
        """Fit thresholds and min/max on the validation outputs; log the validation metrics.

        The outputs stay in ``validation_outputs`` (in the split's order) for the training summary.
        Logged: ``val/image_AUROC``, ``val/image_F1`` and, with masks, ``val/pixel_AUROC``
        (what recipes may monitor for early stopping and the best checkpoint).
        """
        from otx.metrics import image_metrics, roc_auc

        parts = getattr(self, "_validation_parts", [])
        # every process's outputs, by image index (a distributed run's split is exact: no repeats)
        parts = [part for process in distributed.gather(parts) for part in process]
        if not parts:
            return
        outputs = distributed.join_by_index(parts)
        self.validation_outputs = outputs
        self.validated_step = self.global_step
        self.validated_epoch = self.current_epoch
        self._validation_parts = []
        maps, masks = outputs["maps"], outputs["masks"]
        known = outputs.get("pixel_known")
        # Anomalous images without a mask file (where others have one) say nothing about their pixels:
        # the pixel threshold and pixel AUROC leave them out, as the test metrics do (the maps' range,
        # which normalises every map, still spans all of them).
        truth = known_pixel_rows(known, outputs["labels"])
        self.postprocessor.fit(
            outputs["scores"],
            outputs["labels"],
            maps,
            masks,
            self.image_threshold,
            self.pixel_threshold,
            pixel_known=truth,
        )
        if truth is not None:
            maps, masks = maps[truth], masks[truth]
        labels = outputs["labels"].numpy()
        predicted = (outputs["scores"] >= float(self.postprocessor.image_threshold)).numpy()
        logged = image_metrics(outputs["scores"].numpy(), labels, predicted)
        if bool(masks.any()):
            logged["pixel_AUROC"] = roc_auc(maps.numpy(), masks.numpy())
        del maps, masks
        for key, value in logged.items():
            if value == value:  # AUROC is NaN when the split has one class only
                # the same value in every process (computed on the gathered outputs)
                self.log(f"val/{key}", float(value), on_epoch=True, prog_bar=key == "image_AUROC", sync_dist=True)

    @classmethod
    def without_weights(cls, **init_args: Any) -> AnomalyModel:
        """Build the model without resolving ImageNet weights (they come from a checkpoint next)."""
        cls._skip_weights = True
        try:
            return cls(**init_args)
        finally:
            cls._skip_weights = False

"""``otx train``: fit on ``train/good`` inside Lightning, fit thresholds in its validation loop, save model.ckpt."""

from __future__ import annotations

import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from otx import distributed
from otx.boxes import UNTUNED
from otx.checkpoint import CHECKPOINT_NAME, model_entry, save_checkpoint
from otx.checks import (
    copies_warning,
    image_profile,
    mask_coverage_warning,
    mixed_channels_warning,
    threshold_warnings,
    unmasked_warning,
)
from otx.data import AnomalyDataModule
from otx.data.dataset import relative_names
from otx.errors import OTXConfigError, OTXDataError, OTXError
from otx.models.base import AnomalyModel
from otx.postprocess import known_pixel_rows
from otx.preprocess import SQUASH_LIMIT, PreProcessor, squash_factor
from otx.results import TrainResult, recorded_path
from otx.scoring import TorchScorer
from otx.training import (
    SHORT_PRECISION,
    build_trainer,
    callback_name,
    check_resume,
    describe_settings,
    keeps_best_epoch,
    merge_settings,
    monitor_of,
    record_resumed_from,
    record_split,
    resumable,
    stop_reason,
    without_unlogged_monitors,
)
from otx.verbs.context import FILE_ONLY, VerbContext, peak_memory_mb, write_result
from otx.verbs.inference import drop_maps, evaluate, iter_predictions, tune_boxes
from otx.workdir import Run, stop_name

log = logging.getLogger("otx")

SQUASH_NOTE = SQUASH_LIMIT  # resize changing the images' aspect ratio by this factor or more gets a note
TILE_NOTE_SIDE = 8192  # the longest side the tile mode's note suggests (a 4000x3000 camera image fits)
SHRINK_NOTE = 8.0  # training images shrunk this much per side or more to the input get a note (2048x2048 to 256x256)


def _ratio(aspect: float) -> str:
    """``16``, ``2.5`` or ``0.12``: an aspect ratio as people write it (never ``1e+02``)."""
    return f"{aspect:.0f}" if aspect >= 10 else f"{aspect:.2g}"


def spread_note(profile: dict[str, Any], pre: PreProcessor) -> str | None:
    """A note when a tenth or more of the training images are shaped unlike the median and the input bends them.

    ``squash_note`` judges the median image; a set of landscape and portrait images (median about
    1:1) or of squares with a quarter of 8:1 strips passes it while ``resize`` squashes many of its
    images 2x or more, or ``keep_aspect`` fills their inputs mostly with padding. ``profile``:
    ``checks.image_profile``'s, whose ``aspect_spread`` is the 10th and 90th percentile.
    """
    low, high = profile.get("aspect_spread") or (profile["aspect"], profile["aspect"])
    height, width = pre.input_size
    shape = width / height

    def bent(aspect: float) -> float:  # squashed by (resize, tile), or the input's share it fills, inverted
        return (
            max(aspect, shape) / min(aspect, shape)
            if pre.mode == "keep_aspect"
            else squash_factor(aspect, (height, width))
        )

    worst = max(bent(low), bent(high))
    if worst < SQUASH_NOTE or bent(profile["aspect"]) >= SQUASH_NOTE:  # the median's own note says it
        return None
    how = (
        f"keep_aspect fits them into {width}x{height} (width x height) with about {1 - 1 / worst:.0%} of the input "
        "padding"
        if pre.mode == "keep_aspect"
        else f"{pre.mode} at {width}x{height} (width x height) squashes them {worst:.1f}x"
    )
    return (
        f"a tenth or more of the training images are shaped unlike the others (width:height {_ratio(low)}:1 to "
        f"{_ratio(high)}:1 between the 10th and 90th percentiles, median {_ratio(profile['aspect'])}:1) and {how}; "
        "train a model per shape, or turn the files to one orientation (docs/input-modes.md)"
    )


def first_epoch_kept(epochs: int, monitor: str) -> str:
    """The warning when a training of several epochs keeps its first: the later ones scored lower on validation.

    An STFPM student's validation AUROC can dip for epochs while it learns; with early stopping
    (the recipes' until 2026-12-06) a bug bash's runs stopped at epoch 5 and kept epoch 1, whose
    maps carry almost nothing (test image AUROC 0.64-0.72 where 20 epochs reach 0.88-1.0).
    """
    return (
        f"of {epochs} epochs the first scored best on the validation split ({monitor}), so the model kept is the "
        "least trained one: check the validation curve in metrics.json; more validation images (a val/ folder), "
        "more epochs (--max_epochs), or no early stopping give a choice it can rely on"
    )


def shrink_note(profile: dict[str, Any], pre: PreProcessor) -> str | None:
    """A note when even the smallest training image is shrunk ``SHRINK_NOTE`` times per side or more to the input.

    Whatever the mode, images go to ``input_size`` first; from a 4000x3000 camera image to 256x256
    (13.5x per side) a defect 12 pixels across is about one input pixel, and a bug bash's model of
    such images scored its validation images below chance without a word on why (tiled at the
    images' size: AUROC 1.0). Per side as the square root of the pixel ratio, so that the aspect
    ratio (``squash_note``) does not count twice.
    """
    (height, _), (width, _) = profile["height"], profile["width"]
    input_h, input_w = pre.input_size
    shrink = math.sqrt(height * width / (input_h * input_w))
    if shrink < SHRINK_NOTE:
        return None
    big_h, big_w = (-(-side // 32) * 32 for side in (profile["height"][1], profile["width"][1]))
    return (
        f"the training images (at least {width}x{height}, width x height) are shrunk about {shrink:.0f}x per side "
        f"to the model's input {input_w}x{input_h}, so a defect under about {shrink:.0f} pixels across becomes one "
        "input pixel or less; for small defects on large images tile them at their own size "
        f"(--model.init_args.input_mode tile --model.init_args.input_size [{big_h},{big_w}]) or give a larger "
        "input_size (docs/input-modes.md)"
    )


def squash_note(
    aspect: float, pre: PreProcessor, chosen: bool = False, largest: tuple[int, int] | None = None
) -> str | None:
    """What to do when ``resize`` or ``tile`` bends images of ``aspect`` (width / height, median); None if little.

    ``keep_aspect``: a note when most of the input would be padding; ``chosen``: the input size was
    chosen from the images (its sides are at least 32, so only very thin images get the note).

    For ``tile`` the input size suggested has the images' aspect, sides in multiples of 32 and at
    least the tile (a size the tile mode takes). Its shorter side is the images' own (``largest``:
    their largest height and width), the full resolution tiling is for, with a tile no larger than
    that side, and its longer side at most ``TILE_NOTE_SIDE``; without ``largest``, the input's.
    Before, the input's shorter side was kept: 128x512 strips got 256x1024 from a 256x256 input,
    four times their pixels.
    """
    if pre.mode == "keep_aspect":  # nothing bends; a fixed input of another shape is mostly padding
        height, width = pre.input_size
        fill = min(aspect, width / height) / max(aspect, width / height)  # the share the image covers
        if fill >= 1 / SQUASH_NOTE:
            return None
        fix = (
            "the input's shorter side is at least 32 pixels; for images this thin, input_mode tile with an "
            "input_size of their shape keeps their detail"
            if chosen
            else "--model.init_args.input_size null chooses a size of their shape"
        )
        return (
            f"the training images are {_ratio(aspect)}:1 (width:height, median) and keep_aspect fits them into "
            f"{width}x{height} (width x height), so about {1 - fill:.0%} of each input is padding and the "
            f"images get few of its pixels: {fix} (docs/input-modes.md)"
        )
    if pre.mode not in ("resize", "tile") or (squash := squash_factor(aspect, pre.input_size)) < SQUASH_NOTE:
        return None
    if pre.mode == "resize":
        fix = (
            "consider --model.init_args.input_mode keep_aspect with --model.init_args.input_size null (chosen from "
            "the images), or input_mode tile with an input_size of their shape"
        )
    else:
        tile, step = pre.tile_size or 32, 32
        short_h, short_w = largest or pre.input_size
        short = -(-(short_h if aspect >= 1 else short_w) // step) * step  # the images' shorter side, up to 32s
        # the long side at most TILE_NOTE_SIDE: the shorter side shrinks with it (aspect kept)
        short = min(short, max(step, int(TILE_NOTE_SIDE * min(aspect, 1 / aspect)) // step * step))
        smaller_tile = largest is not None and tile > short  # tiles larger than the images: smaller ones
        if smaller_tile:
            tile = max(step, short)
        long = max(tile, round(short * max(aspect, 1 / aspect) / step) * step)
        short = max(tile, short)
        height, width = (short, long) if aspect >= 1 else (long, short)
        fix = (
            "give tile an input_size of their shape, e.g. "
            f"--model.init_args.input_size '[{height},{width}]' (height, width)"
            + (f" with --model.init_args.tile_size {tile}" if smaller_tile else "")
        )
    return (
        f"the training images are {_ratio(aspect)}:1 (width:height, median) and {pre.mode} squashes them {squash:.1f}x "
        f"into {pre.input_size[1]}x{pre.input_size[0]} (width x height); thin or round defects bend: {fix} "
        "(docs/input-modes.md)"
    )


# Trainer settings of gradient training, and their values that do nothing: one-pass models leave them out
GRADIENT_ONLY: dict[str, Any] = {
    "gradient_clip_val": None,
    "gradient_clip_algorithm": None,
    "accumulate_grad_batches": 1,
}


def _drop_unlogged_monitors(model: AnomalyModel, data: AnomalyDataModule, settings: dict[str, Any]) -> str | None:
    """Leave out of ``settings`` the callbacks monitoring a validation metric the split cannot give; say so.

    Before, Lightning's early stopping raised a RuntimeError after the first epoch ("internal error").
    """
    val = data.splits["val"]
    normal, defective = any(s.label == 0 for s in val), any(s.label == 1 for s in val)
    masks = data.has_masks and any(s.label == 1 and s.mask_path is not None for s in val)
    logged = model.logged_validation_metrics(normal, defective, masks)
    every = model.logged_validation_metrics()
    training = set() if model.fits_in_one_pass else {"train_loss", "train_loss_step", "train_loss_epoch"}
    kept, dropped = without_unlogged_monitors(settings.get("callbacks") or [], logged, every, training)
    if settings.get("callbacks") is not None:  # (None: the model's defaults) the entries as checked, mode max given
        settings["callbacks"] = kept
    if not dropped:
        return None
    needs = {"val/image_AUROC": "defective images" if normal else "normal images", "val/pixel_AUROC": "defect masks"}
    monitors = list(dict.fromkeys(str(monitor_of(spec)) for spec in dropped))
    whys = " and no ".join(dict.fromkeys(needs.get(m, "defective images") for m in monitors))
    effect = [] if any(callback_name(c) == "EarlyStopping" for c in kept) else ["trains every epoch"]
    if not any(keeps_best_epoch(c) for c in kept):
        effect.append("keeps the last")
    return (
        f"the validation split has no {whys}, so {' and '.join(monitors)} cannot be computed: "
        f"{', '.join(dict.fromkeys(callback_name(c) for c in dropped))} monitoring it left out"
        + (f" (the run {' and '.join(effect)})" if effect else "")
        + f"; add {whys.replace(' and no ', ' and ')} to test/ (or val/) to use them"
    )


def run(
    ctx: VerbContext,
    run: Run,
    model: AnomalyModel,
    trainer_args: dict[str, Any],
    max_epochs: int | None,
    resumes: list[Path],
) -> TrainResult:
    """Train ``model`` on the context's data; ``trainer_args`` go over the model's ``default_trainer``.

    ``resumes``: Lightning states (``last.ckpt`` / ``epochN.ckpt``), newest first, of which the first
    this training fits is continued (``resumable``); none: a new training.
    """
    L.seed_everything(ctx.seed, verbose=False)
    model.forget_data_choices()  # a model object trained before: input_mode auto chooses again for these images
    adapter = ctx.adapter()
    data = ctx.data
    data.setup()
    data.check_validation_readable()
    settings = merge_settings(model.default_trainer, trainer_args, {"max_epochs": max_epochs})
    epochs_asked = int(settings.get("max_epochs") or 1)
    if model.fits_in_one_pass and epochs_asked > 1:  # each epoch would refit from scratch: the same model, N times
        ctx.warn(
            f"{type(model).__name__} fits in one pass over the training images (no gradient training): "
            f"max_epochs {epochs_asked} would repeat the same fit {epochs_asked} times, so it trains 1 epoch"
        )
        settings["max_epochs"] = 1
    if model.fits_in_one_pass and settings.get("max_time") is not None:
        # before: a time up mid-pass fitted on part of the images, said nowhere (or stopped unfitted, "internal error")
        raise OTXConfigError(
            f"trainer.max_time: {type(model).__name__} fits in one pass over the training images, which a time limit "
            "would cut short (a model fitted on part of them, or on none); remove it, and train on a smaller data "
            "root for a quicker run"
        )
    unused = [key for key, idle in GRADIENT_ONLY.items() if settings.get(key, idle) != idle]
    if model.fits_in_one_pass and unused:
        # before: Lightning's MisconfigurationException once the run had started ("internal error")
        ctx.warn(
            f"{type(model).__name__} fits in one pass over the training images (no gradient training): "
            f"{', '.join(f'{key} {settings[key]}' for key in unused)} would do nothing, so "
            f"{'they are' if len(unused) > 1 else 'it is'} left out"
        )
        for key in unused:
            settings.pop(key)
    every = int(settings.get("check_val_every_n_epoch") or 1)
    monitoring = [callback_name(spec) for spec in settings.get("callbacks") or [] if monitor_of(spec)]
    if every > int(settings.get("max_epochs") or 1) and monitoring:  # before: they never ran, without a word
        names = list(dict.fromkeys(monitoring))
        ctx.warn(
            f"check_val_every_n_epoch {every} validates after none of the {settings.get('max_epochs') or 1} epochs: "
            f"{', '.join(names)} never {'sees' if len(names) == 1 else 'see'} a validation, so the last epoch is kept; "
            "validate at least once (check_val_every_n_epoch at most max_epochs)"
        )
    if data.splits["val"] and (message := _drop_unlogged_monitors(model, data, settings)):
        ctx.warn(message)  # before saving the config: config.yaml lists the callbacks the run uses
    ctx.save_config(run, adapter.task.value, model_entry(model), {"trainer": describe_settings(settings)})
    first_epoch = 0
    # the images its epochs are trained and chosen on: a resumed run must have the same ones
    split = {
        "val_files": sorted(relative_names(data.splits["val"], data.data_root)),
        "train_fingerprint": data.index.fingerprint(),
    }
    resume = None
    if resumes:
        resume, first_epoch = resumable(
            resumes,
            lambda state: check_resume(
                state, model, model_entry(model), data.data_root, settings.get("max_epochs"), data.run_settings(), split
            ),
        )
        if not distributed.secondary():  # this run continues that state: --resume true passes it over
            record_resumed_from(run.path, resume)
    if not distributed.secondary():
        record_split(run.path, split)
    splits = data.splits
    if not splits["val"]:  # checked before training, not after it
        labelled = [s for s in splits.get("test", []) if s.label >= 0]
        if labelled:  # too few to split: each folder's one image stays in the test part
            raise OTXError(  # (split_validation: a folder of one image gives it to validation above 0.5 only)
                f"no validation images: each test/ folder holds one image, which stays in the test split at "
                f"val_split {data.val_split:g}; add a second image to test/good and to each test/<defect>, "
                "or put validation images in a val/ folder"
            )
        raise OTXError(
            "no validation images: thresholds need test/ (or val/) images; add test/good and test/<defect> folders"
        )
    if data.has_masks and (message := unmasked_warning(splits["val"], "validation")):
        ctx.warn(message)
    others = [s.path for s in (*splits["val"], *splits.get("test", [])) if s.label >= 0]  # unknown/: never scored
    if not distributed.secondary() and (
        message := copies_warning([s.path for s in splits["train"]], others, data.data_root)
    ):
        ctx.warn(message)
    fewest, why = model.min_train_images
    if len(splits["train"]) < fewest:
        raise OTXDataError(
            f"{type(model).__name__} needs at least {fewest} training images ({why}); train/good holds "
            f"{len(splits['train'])}: add normal images"
        )
    steps = max(1, min(50, len(splits["train"]) // data.images_per_batch(model.preprocessor)))
    # Engine(console=Console(quiet=True)) and processes of rank > 0: no epoch bar either (Lightning draws it on its own)
    asked_precision = settings.get("precision")
    # output that is not a terminal (a log file, a CI job): a line per epoch instead of a bar drawn at the end
    drawn = ctx.console.is_terminal or ctx.console.is_jupyter  # (a notebook draws rich's bars too)
    lines = None if drawn else lambda line: ctx.console.print(line, highlight=False, soft_wrap=True)
    trainer, roles = build_trainer(
        settings, run.path, steps, model.ddp_unused_parameters, bar=not ctx.console.quiet, lines=lines
    )
    rank, world = trainer.global_rank, trainer.world_size
    asked = SHORT_PRECISION.get(str(asked_precision), str(asked_precision))
    if asked_precision is not None and asked != str(trainer.precision):
        # before: Lightning's switch (16-mixed on the CPU runs bf16-mixed) went unsaid, its warning silenced
        device = type(trainer.accelerator).__name__.removesuffix("Accelerator")
        ctx.warn(
            f"precision {asked_precision} is not available on {device}: training runs in {trainer.precision} "
            "(thresholds are fitted on its scores)"
        )
    if len(splits["train"]) < world:
        raise OTXError(
            f"{len(splits['train'])} training image(s) cannot be split between {world} processes; use fewer processes "
            "(--trainer.devices, --trainer.num_nodes) or add training images"
        )
    epochs = trainer.max_epochs
    ctx.console.print(
        f"[bold]otx train[/]: {type(model).__name__} ({model.spec.name}, {model.weights_source}) on "
        f"{len(splits['train'])} normal images, up to {epochs} epoch(s), task {adapter.task.value}, "
        f"{type(trainer.accelerator).__name__.removesuffix('Accelerator').lower()} x{trainer.num_devices}"
        + (f" x {trainer.num_nodes} nodes" if trainer.num_nodes > 1 else "")
        + (f", resuming {resume}" if resume else "")
    )
    profile = image_profile(s.path for s in splits["train"])
    if profile.get("channels") == "mixed" and (
        mixed := mixed_channels_warning([s.path for s in splits["train"]], data.data_root)
    ):
        ctx.warn(mixed)
    auto, chosen = model.input_mode_from_data, False
    if auto:  # resize, or keep_aspect for images resize would squash (resize when no image could be read)
        chosen = model.choose_input_mode(profile["aspect"] if profile else None) == "keep_aspect"
    elif model.input_size_from_data and profile:
        model.choose_input_size(profile["aspect"])
        chosen = True
    pre = model.preprocessor
    largest = (profile["height"][1], profile["width"][1]) if profile else None
    if profile and (note := squash_note(profile["aspect"], pre, chosen, largest) or spread_note(profile, pre)):
        ctx.console.print(f"[yellow]note[/]: {note}")
    if profile and (note := shrink_note(profile, pre)):
        ctx.console.print(f"[yellow]note[/]: {note}")
    if pre.mode != "resize" or auto:
        why = f" (input_mode auto: the training images are {_ratio(profile['aspect'])}:1)" if auto and profile else ""
        ctx.console.print(f"input mode {pre.describe()}{why}")
        log.info("input mode %s%s", pre.describe(), why, extra=FILE_ONLY)
    start = time.perf_counter()
    # Each process gets its share: every training image once for one-pass models (exact statistics),
    # equal padded shares for gradient training; validation images once each (gathered by index).
    train_loader = data.dataloader(
        "train", model.preprocessor, shuffle=True, shard=(rank, world, "mark" if model.fits_in_one_pass else "repeat")
    )
    # Lightning creates the training iterator before it sets the resumed epoch on the sampler, and a
    # loader with workers draws its first batches' indices right then: without this a run resumed
    # at epoch e saw epoch 0's order in e (and so another model) when num_workers > 0.
    if first_epoch and hasattr(train_loader.sampler, "set_epoch"):
        train_loader.sampler.set_epoch(first_epoch)
    val_loader = data.dataloader("val", model.preprocessor, shard=(rank, world, "mark"))
    model.validation_outputs = None
    model.fit_warnings = []  # (a model trained again by one engine)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*configure_optimizers.*")
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # the frozen backbone, on purpose
        warnings.filterwarnings(
            "ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*"
        )  # Lightning's
        # several processes: otx turns DDP's per-forward buffer broadcast off on purpose (otx.distributed.ddp_strategy)
        warnings.filterwarnings("ignore", message=".*`broadcast_buffers` is deprecated.*")
        # a resumed run: its new folder holds the epoch files otx copied there (BestAcrossResume), and the
        # best epoch's record moves with them; Lightning's notes on both are about its own layout
        warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
        warnings.filterwarnings("ignore", message=".*The dirpath has changed from.*")
        try:
            with distributed.meeting(world, trainer.num_nodes, "--trainer.num_nodes", trainer):
                trainer.fit(model, train_loader, val_loader, ckpt_path=resume, weights_only=True)
        except SystemExit as exc:  # Lightning ends an interrupted fit with sys.exit(1) after its clean-up
            interrupt = exc.__context__ if isinstance(exc.__context__, KeyboardInterrupt) else None
            if interrupt is None:  # not seen to carry the stop; say what did, for the log
                log.info("the fit ended with %r after %r", exc, exc.__context__, extra=FILE_ONLY)
            raise KeyboardInterrupt(stop_name(interrupt)) from exc
        except Exception as exc:
            distributed.end_launched(trainer, exc)  # else they wait for this process for ever (Lightning leaves them)
            if taken := distributed.port_in_use(exc):
                raise taken from exc
            raise
        if trainer.interrupted:
            raise OTXError("training was interrupted; no checkpoint was written")
        if roles["patience"].note and rank == 0:
            ctx.console.print(roles["patience"].note)
        best = roles["best"]
        best_epoch = None
        # rank 0's best epoch, and the checkpoint it will write (the engines of the other processes take it)
        best_path, written = distributed.broadcast(
            (best.best_model_path if best is not None else None, run.path.resolve() / CHECKPOINT_NAME)
        )
        if best_path:  # the best epoch's weights (read by rank 0, sent to all), then its thresholds
            state = torch.load(best_path, map_location="cpu", weights_only=True) if rank == 0 else None
            state = distributed.broadcast(state)
            model.load_state_dict(state["state_dict"])
            best_epoch = int(state["epoch"]) + 1
            model.validation_outputs = None
            if best_epoch == 1 and trainer.current_epoch >= 3 and rank == 0:
                ctx.warn(first_epoch_kept(trainer.current_epoch, best.monitor))
        if model.validation_outputs is None or model.validated_step != trainer.global_step:
            # the kept epoch's thresholds again, not a validation of its own: off the training logs, where it
            # read as one more epoch (logs/metrics.csv's epoch 3 after a 3-epoch run, numbered from 0)
            loggers, trainer.loggers = trainer.loggers, []
            try:
                trainer.validate(model, val_loader, verbose=False)
            finally:
                trainer.loggers = loggers
    model.eval()  # Lightning leaves the fitted model in training mode; engine.model is used for inference next
    # The processes' last collective is behind them: set in every process alike (Engine.train waits there
    # for rank 0's files), and the checkpoint rank 0 writes, which the engines of the others take as theirs.
    ctx.primary_output = written
    if rank != 0:  # every process has the same weights and thresholds now; rank 0 writes them
        raise distributed.SecondaryRankDone
    timings = {"fit_s": time.perf_counter() - start}
    for message in model.fit_warnings:
        ctx.warn(message)
    stats = model.postprocessor.stats()
    log.info("fit (with validation) took %.1f s; thresholds: %s", timings["fit_s"], stats)
    outputs = model.validation_outputs
    for logger in trainer.loggers:  # timings for every model, also those without a loss
        logger.log_metrics({f"time/{k}": v for k, v in timings.items()}, step=trainer.global_step)
        # saved and closed: TensorBoard's writer reopens after Lightning's own finalize, and its thread
        # and file stayed open for as long as the Python session (one more per Engine.train)
        logger.finalize("success")
    thresholds = (stats["image_threshold"], stats["pixel_threshold"])
    predictions = None
    regions = any(s.label == 1 and s.mask_path is not None for s in splits["val"])
    if adapter.box_level and data.has_masks and not regions:  # (before: the defaults, said to be "chosen on the
        # validation split": every candidate's AP was NaN, so the first was kept; a review)
        ctx.warn(f"the validation split has no defect image with a mask, so the detection boxes keep {UNTUNED}")
    elif adapter.box_level and data.has_masks:  # box threshold, merging and minimum area for this model
        start_boxes = time.perf_counter()
        model.box_settings, _ = tune_boxes(TorchScorer(model), outputs, splits["val"], model.boxes_refine)
        timings["box_tuning_s"] = time.perf_counter() - start_boxes
        log.info("box settings from the validation split: %s", model.box_settings)
        predictions = [drop_maps(p) for p in iter_predictions(adapter, TorchScorer(model), outputs, splits["val"])]
    elif adapter.box_level:
        ctx.warn(f"the data has no ground_truth/ masks, so the detection boxes keep {UNTUNED}")
    val_metrics = evaluate(
        ctx,
        adapter,
        data.has_masks,
        thresholds,
        outputs,
        splits["val"],
        model.preprocessor,
        predictions=predictions,
        pixel_range=(stats["pixel_min"], stats["pixel_max"]),
    ).metrics
    labels = outputs["labels"].numpy() == 1
    own_val = bool(data.index is not None and data.index.subsets.get("val"))  # images to add go there
    found = threshold_warnings(
        outputs["scores"].numpy(),
        labels,
        stats["image_threshold"],
        "image",
        "validation",
        learned=model.image_threshold is None,
        folder="val" if own_val else "test",
        given=model.image_threshold is not None,
    )
    maps, pixel_truth = outputs["maps"], outputs["masks"] if data.has_masks else None
    rows = known_pixel_rows(outputs.get("pixel_known"), outputs["labels"])  # as the pixel threshold was fitted
    if pixel_truth is not None and rows is not None:
        maps, pixel_truth = maps[rows], pixel_truth[rows]
    if not labels.any() and adapter.pixel_level:  # before: only the image threshold's line said so
        found += threshold_warnings(
            maps.numpy(),
            np.zeros(maps.shape, bool),
            stats["pixel_threshold"],
            "pixel",
            "validation",
            learned=True,
            folder="val" if own_val else "test",
        )
    if labels.any() and adapter.pixel_level:  # (classification: no masks, its pixel threshold decides nothing)
        found += threshold_warnings(
            maps.numpy(),
            pixel_truth.numpy() if pixel_truth is not None else None,
            stats["pixel_threshold"],
            "pixel",
            "validation",
            folder="val" if own_val else "test",
        )
    if adapter.pixel_level and (given := model.given_thresholds()):
        # thresholds set by hand can disagree: masks on images called normal (a bug bash found 4 of 9)
        called_normal = outputs["scores"] < stats["image_threshold"]
        marked = (outputs["maps"].flatten(1) >= stats["pixel_threshold"]).any(dim=1)
        if both := int((called_normal & marked).sum()):
            found.append(
                f"{both} of {int(called_normal.sum())} validation images called normal have pixels at or above the "
                f"pixel threshold ({stats['pixel_threshold']:.6g}), so their masks are not empty: the thresholds "
                f"disagree ({' and '.join(given)} set by hand); raise the pixel threshold, or leave them to be learned"
            )
        if blank := int((~called_normal & ~marked).sum()):  # the other way: anomalous images with an empty mask
            found.append(
                f"{blank} of {int((~called_normal).sum())} validation images called anomalous have no pixel at or "
                f"above the pixel threshold ({stats['pixel_threshold']:.6g}), so their masks are empty: the thresholds "
                f"disagree ({' and '.join(given)} set by hand); lower the pixel threshold "
                "(--model.init_args.pixel_threshold), or leave them to be learned"
            )
    if data.has_masks and adapter.pixel_level:
        covered = mask_coverage_warning(outputs["masks"], outputs["labels"], outputs.get("pixel_known"), "validation")
        found += [covered] if covered else []
    for message in found:
        ctx.warn(message)
    checkpoint = run.path / CHECKPOINT_NAME
    record = {
        "data_root": str(Path(data.data_root).resolve()) if data.data_root else None,
        "val_split": data.val_split,
        "seed": data.seed,
        "fingerprint": data.index.fingerprint() if data.index else None,
        "val_files": data.validation_names(),  # so later test folders' changes keep these out of the test split
        "has_masks": data.has_masks,
        "profile": profile,
    }
    save_checkpoint(model, checkpoint, adapter.task.value, record)
    result = TrainResult(
        task=adapter.task.value,
        model=type(model).__name__,
        backbone=model.spec.name,
        weights=model.weights_source,
        epochs=trainer.current_epoch,
        max_epochs=epochs,
        stopped_early=trainer.current_epoch < epochs,
        stop_reason=stop_reason(trainer, epochs),
        best_epoch=best_epoch,
        validation_curve=roles["curve"].epochs,
        trainer={
            "accelerator": type(trainer.accelerator).__name__,
            "devices": trainer.num_devices,  # per machine
            "num_nodes": trainer.num_nodes,  # machines (before: not recorded, so two machines read "devices 1")
            "processes": trainer.world_size,
            "precision": trainer.precision,
        },
        resumed_from=recorded_path(resume) if resume else None,  # absolute: read from any directory
        checkpoint=str(checkpoint),
        validation_metrics=val_metrics,
        thresholds=stats,
        boxes=model.box_settings.as_dict() if adapter.box_level else None,
        input=model.preprocessor.config(),
        splits=data.split_summary(),
        validation=data.validation_record(),
        seeds={"global": ctx.seed, "model": getattr(model, "seed", None)},
        timing_s={k: round(v, 2) for k, v in timings.items()},
        peak_memory_mb=peak_memory_mb(),
        warnings=list(ctx.warnings),
    )
    write_result(run, result)
    model.validation_outputs = None  # the summary is written: the maps need not outlive the verb
    return result

"""Images through a scorer, batch by batch: raw outputs, predictions and metrics (test, predict, train)."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from rich.markup import escape
from torch.utils.data import DataLoader

from otx import distributed
from otx.boxes import BoxSettings, tune
from otx.data.datamodule import AnomalyDataModule, raise_batch_errors
from otx.data.dataset import Sample, check_mask_size
from otx.data.io import read_image, read_mask
from otx.errors import OTXConfigError, OTXError
from otx.metrics import box_ap, defect_recall, gt_boxes_from_mask, image_metrics, per_defect, pixel_metrics
from otx.postprocess import normalize
from otx.preprocess import PreProcessor, reduced_size
from otx.render import progress
from otx.scoring import Scorer, as_numpy
from otx.tasks import Prediction, TaskAdapter
from otx.verbs.context import VerbContext

Outputs = dict[str, torch.Tensor]

METRIC_PIXELS_ENV = "OTX_METRIC_PIXELS"  # pixels the pixel metrics may hold at once (default: from free memory)
# Memory per pixel at the metrics' peak (the map, mask and predicted mask rows held, 6 bytes, plus
# per_defect's copies, 8.5, by tracemalloc on 120 M pixels; 12.6 for a whole otx test: docs/input-modes.md).
METRIC_BYTES_PER_PIXEL = 16
METRIC_MEMORY_SHARE = 0.5  # of the memory free when the metrics start


def metric_pixel_budget() -> int:
    """How many pixels the pixel metrics may hold: ``$OTX_METRIC_PIXELS``, else half the free memory's worth."""
    value = os.environ.get(METRIC_PIXELS_ENV, "").strip()
    if value:
        try:
            budget = int(float(value))
        except (ValueError, OverflowError):  # (int(inf) overflows)
            budget = 0
        if budget < 1:
            raise OTXConfigError(
                f"{METRIC_PIXELS_ENV}={value!r} is not a pixel count; set it to a whole number such as 500000000, "
                "or unset it"
            )
        return budget
    import psutil

    free = psutil.virtual_memory().available
    if (container := _cgroup_free()) is not None:  # a container's limit, which psutil does not see
        free = min(free, container)
    return int(free * METRIC_MEMORY_SHARE / METRIC_BYTES_PER_PIXEL)


_CGROUP_FILES = (  # (limit, usage): cgroup v2, then v1
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def _cgroup_free() -> int | None:
    """Bytes left under this process's cgroup memory limit (Linux containers); None without a limit."""
    for limit_file, usage_file in _CGROUP_FILES:
        try:
            limit, usage = Path(limit_file).read_text().strip(), int(Path(usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:  # no limit (v1 writes a huge number)
            return None
        return max(0, int(limit) - usage)
    return None


def verb_pixel_budget(ctx: VerbContext) -> int:
    """``metric_pixel_budget`` as first read in this verb call (kept on ``ctx``, so models score alike)."""
    if ctx.metric_pixels is None:
        ctx.metric_pixels = metric_pixel_budget()
    return ctx.metric_pixels


def metric_divisor(total_pixels: int, budget: int) -> int:
    """1, or the smallest whole factor by which images' sides shrink so their pixels fit ``budget``."""
    return 1 if total_pixels <= budget else max(2, math.ceil(math.sqrt(total_pixels / budget)))


NO_SCORE = (
    "the model computed no score for '{path}' (NaN in its score or map: the model's arithmetic failed on it, an FP16 "
    "or INT8 model's overflow or a model trained to NaN); score it with the FP32 export or the checkpoint, or train "
    "again"
)


def no_score(maps: torch.Tensor, scores: torch.Tensor, errors: list[str]) -> list[int]:
    """The images of a batch, read without error, whose score or map holds NaN (before: labelled "normal").

    A NaN score fails every comparison with the threshold, so the image came out normal, score
    null, and ``otx test`` stopped in its metrics with "internal error (scores contain NaN)".
    """
    count = len(errors)
    nan = torch.isnan(scores.reshape(count, -1)).any(dim=1) | torch.isnan(maps.reshape(count, -1)).any(dim=1)
    return [j for j in torch.nonzero(nan).flatten().tolist() if not errors[j]]


def batches(
    ctx: VerbContext,
    data: AnomalyDataModule,
    scorer: Scorer,
    samples: list[Sample],
    desc: str,
    skip_errors: bool = False,
) -> Iterator[tuple[Outputs, list[Sample], list[str]]]:
    """Raw outputs batch by batch: ``maps``, ``scores``, ``labels``, ``masks``, ``orig_sizes``.

    An image that fails to decode stops with one ``OTXDataError`` line, or, with
    ``skip_errors``, comes back with its error message (and meaningless outputs). In a
    distributed run (``otx.distributed.launch``) each process gets its share of ``samples``
    (every image once); ``outputs["index"]`` is each image's position in ``samples``.
    """
    rank, world = distributed.rank_and_world()
    loader: DataLoader = data.loader(
        samples,
        scorer.preprocessor,
        resize=scorer.resize_in_loader,
        shard=(rank, world, "none"),
        min_images=scorer.parallel_images,
    )
    share = len(loader.batch_sampler.sampler)  # (this process's images: its order, batched by count or by pixels)
    if world > 1:  # the bar counts this process's share (rank 0's; the others print nothing): said so
        desc = f"{desc} (process {rank + 1} of {world}: its {share} of {len(samples)} images)"
    with progress(ctx.console) as bars:
        bar = bars.add_task(f"{desc:<10}", total=share)
        for batch in loader:
            if not skip_errors:
                raise_batch_errors(batch)
            maps, scores = scorer.run(batch.pop("image"))  # (the images are not held while the caller works:
            indices = batch["index"].tolist()  # 16 images of 3000x4000 as read are 576 MB)
            errors = list(batch["error"])
            for j in no_score(maps, scores, errors):
                errors[j] = NO_SCORE.format(path=samples[indices[j]].path)
                if not skip_errors:
                    raise OTXError(errors[j])
            yield (
                {
                    "maps": maps,
                    "scores": scores,
                    "labels": batch["label"],
                    "masks": batch["mask"],
                    "orig_sizes": batch["orig_size"],
                    "index": torch.as_tensor(batch["index"]),
                },
                [samples[i] for i in indices],
                errors,
            )
            bars.advance(bar, len(indices))


def collect(
    ctx: VerbContext,
    data: AnomalyDataModule,
    scorer: Scorer,
    samples: list[Sample],
    desc: str,
    skip_errors: bool = False,
) -> tuple[Outputs, list[str]]:
    """All raw outputs of ``samples`` (in their order) and, per sample, its decode error ("" when read).

    In a distributed run the processes' outputs are gathered in every process, then the
    processes of rank > 0 end their share of the verb (``SecondaryRankDone``): rank 0 goes on
    with exactly the outputs one process would have.
    """
    parts: list[Outputs] = []
    errors: dict[int, str] = {}
    for outputs, _, batch_errors in batches(ctx, data, scorer, samples, desc, skip_errors=skip_errors):
        parts.append({key: value.cpu() for key, value in outputs.items()})
        errors.update(zip(outputs["index"].tolist(), batch_errors, strict=True))
    gathered = distributed.gather((parts, errors))
    if distributed.rank_and_world()[0] != 0:
        raise distributed.SecondaryRankDone
    parts = [part for process_parts, _ in gathered for part in process_parts]
    for _, process_errors in gathered:
        errors.update(process_errors)
    return distributed.join_by_index(parts), [errors[i] for i in range(len(samples))]


def to_predictions(
    adapter: TaskAdapter, scorer: Scorer, outputs: Outputs, samples: list[Sample], errors: list[str] | None = None
) -> list[Prediction]:
    """Task predictions (label, score, map, mask, boxes at each image's own size) from raw outputs.

    ``errors``: per sample, why it could not be read ("" when it was); such a sample's prediction
    is ``Prediction.unreadable`` (its outputs are a placeholder's, and nothing of it is read again).
    """
    return list(iter_predictions(adapter, scorer, outputs, samples, errors))


def drop_maps(prediction: Prediction) -> Prediction:
    """``prediction`` without its full-size map and mask (5 bytes a pixel), its scores, label and boxes kept.

    For predictions kept for a whole split (the box metrics, ``otx test``'s records): the pixel
    metrics restore the maps themselves, within their memory budget (``metric_pixel_budget``).
    """
    prediction.anomaly_map = prediction.pred_mask = None
    return prediction


def iter_predictions(
    adapter: TaskAdapter, scorer: Scorer, outputs: Outputs, samples: list[Sample], errors: list[str] | None = None
) -> Iterator[Prediction]:
    """``to_predictions`` one sample at a time (``TaskAdapter.iter_predictions``: one full-size map at a time)."""
    normalized = as_numpy(scorer.normalize(outputs["maps"], outputs["scores"]))
    good = [i for i in range(len(samples)) if not (errors and errors[i])]
    if len(good) < len(samples):
        normalized = {key: value[good] for key, value in normalized.items()}
    done = adapter.iter_predictions(
        normalized,
        [samples[i].path for i in good],
        outputs["orig_sizes"].numpy()[good],
        scorer.preprocessor,
        scorer.boxes,
    )
    # the scores before normalisation: they rank images where normalised ones clip
    raw = iter(outputs["scores"].numpy()[good].tolist()) if scorer.raw_scores else None
    for i, sample in enumerate(samples):
        if errors and errors[i]:
            yield Prediction.unreadable(sample.path, errors[i])
            continue
        prediction = next(done)
        if raw is not None:
            prediction.raw_score = next(raw)
        yield prediction


def pixel_range(scorer: Scorer) -> tuple[float, float] | None:
    """The raw ``(pixel_min, pixel_max)`` that normalise ``scorer``'s maps; None when it returns them normalised."""
    if not scorer.raw_scores:
        return None
    stats = scorer.stats()
    return stats["pixel_min"], stats["pixel_max"]


_PIXEL_BY_DEFECT = ("pixel_AUROC", "AUPRO", "defect_pixel_share", "box_AP50", "box_AP25", "box_AP10", "defect_recall")


class Evaluation(NamedTuple):
    """``evaluate``'s result: the pooled metrics and, when asked for, the same per defect type."""

    metrics: dict[str, float]
    per_defect: dict[str, dict[str, float]]


def evaluate(
    ctx: VerbContext,
    adapter: TaskAdapter,
    has_masks: bool,
    thresholds: tuple[float, float],
    outputs: Outputs,
    samples: list[Sample],
    preprocessor: PreProcessor,
    predictions: list[Prediction] | None = None,
    by_defect: bool = False,
    pixel_range: tuple[float, float] | None = None,
) -> Evaluation:
    """Image metrics, and for pixel-level tasks with masks, pixel (and with ``predictions``, box) metrics.

    ``thresholds`` (image, pixel) are in the units of ``outputs``. Pixel metrics are computed at
    each image's own size (its map brought back by ``preprocessor.restore``, against the mask
    file as it is), so that input modes compare fairly; the same at the model's map size are the
    ``*_input`` entries. With ``by_defect``, ``otx.metrics.per_defect`` scores every defect type
    against the normal images as well (pixel metrics at each image's own size).

    Where the images hold more pixels than ``metric_pixel_budget`` allows (thousands of large
    images), pixel and box metrics are computed with each image's sides divided by the smallest
    whole ``divisor`` that fits (maps restored to that size, masks shrunk keeping every region, boxes
    scaled), said in a warning and as ``pixel_metrics_divisor`` in the metrics; the ``*_input``
    entries are left out when the maps at the model's size alone exceed it.

    ``pixel_range``: the post-processor's raw ``(pixel_min, pixel_max)`` when ``outputs`` are raw.
    The pixel F1 at each image's own size is then that of the masks predictions carry (the map
    normalised, which clips it, then restored, then ``>= 0.5``): restoring the raw map and
    thresholding it marks other pixels where a clipped value meets an unclipped one. Without
    it (outputs already normalised, or a caller that has no range) the restored map ``>=`` the
    pixel threshold.
    """
    labels = outputs["labels"].numpy()
    image_threshold, pixel_threshold = thresholds
    scores = outputs["scores"].numpy()
    pred_labels = (outputs["scores"] >= image_threshold).numpy()
    metrics = image_metrics(scores, labels, pred_labels)  # F1 n/a (NaN) where it is 0 / 0, like the AUROC
    defects = [s.defect for s in samples]
    if not adapter.pixel_level or not has_masks:  # (otx test warns of it)
        return Evaluation(metrics, per_defect(defects, scores, pred_labels) if by_defect else {})
    what = "box and pixel" if adapter.box_level and predictions is not None else "pixel"
    # a spinner on a terminal: restoring every map to its image's size takes a while on large images
    with ctx.working(f"{what} metrics of {len(samples)} images at their own size"):
        # Anomalous images without a mask file cannot be scored per pixel: leave them out.
        usable = [s.label == 0 or s.mask_path is not None for s in samples]
        maps, masks = outputs["maps"], outputs["masks"]
        if not all(usable):  # a copy only then (76 MB of maps on magnetic_tile's test split)
            maps, masks = maps[torch.tensor(usable)], masks[torch.tensor(usable)]
        budget = verb_pixel_budget(ctx)
        at_input = pixel_metrics(maps, masks, maps >= pixel_threshold) if maps.numel() <= budget else {}
        input_pixels = maps.numel()
        del maps, masks
        sizes = outputs["orig_sizes"].numpy()
        total = sum(int(h) * int(w) for (h, w), use in zip(sizes, usable, strict=True) if use)
        divisor = metric_divisor(total, budget)
        allows = (
            f"the {budget / 1e6:.3g} M this run allows "
            f"({METRIC_PIXELS_ENV if os.environ.get(METRIC_PIXELS_ENV, '').strip() else 'half the free memory'})"
        )
        if divisor > 1:  # (box metrics stay at full size: boxes and their masks' regions are a few numbers each)
            ctx.warn(
                f"pixel metrics at 1/{divisor} of each image's own size (pixel_metrics_divisor"
                + ("; the *_input ones left out" if not at_input else "")
                + f"): the {sum(usable)} images hold {total / 1e6:.3g} M pixels, about "
                f"{total * METRIC_BYTES_PER_PIXEL / 2**30:.1f} GB of metrics at full size, over {allows}; "
                f"{METRIC_PIXELS_ENV}={total} computes them at full size where the memory is there"
            )
        elif not at_input:  # images smaller than the model's input: their own size fits, the input size does not
            ctx.warn(
                f"the pixel metrics at the model's input size (*_input) are left out: its maps hold "
                f"{input_pixels / 1e6:.3g} M pixels, over {allows}"
            )
        normalized = None if pixel_range is None else (pixel_threshold, *pixel_range)
        full_maps, full_masks, flat, predicted = _full_size(samples, outputs, usable, preprocessor, normalized, divisor)
        used = [s for s, use in zip(samples, usable, strict=True) if use]  # in the order of full_masks
        blank = [s for s, m in zip(used, full_masks, strict=True) if s.label == 1 and s.mask_path and not m.any()]
        if blank:  # an annotation slip, usually: the image counts as defective, none of its pixels do
            first = Path(blank[0].mask_path or "")
            ctx.warn(
                f"{len(blank)} anomalous image(s) have an all-black mask (e.g. ground_truth/{first.parent.name}/"
                f"{first.name}): none of their pixels counts as defect in the pixel and box metrics; check the masks"
            )
        predicted = flat[0] >= pixel_threshold if predicted is None else predicted
        metrics.update(pixel_metrics(full_maps, full_masks, predicted, flat=flat))
        del predicted
        metrics.update({f"{key}_input": value for key, value in at_input.items()})
        if divisor > 1:
            metrics["pixel_metrics_divisor"] = float(divisor)
        pred_boxes = box_scores = box_masks = None
        if adapter.box_level and predictions is not None:
            boxed = [p for p, use in zip(predictions, usable, strict=True) if use]  # in the order of full_masks
            pred_boxes = [np.asarray(p.pred_boxes, np.float64).reshape(-1, 4) for p in boxed]
            box_scores = [p.box_scores for p in boxed]
            # at each image's own size: shrunk masks' regions round outward and merge, and their boxes then
            # disagreed with the predicted ones (box AP 0.390 -> 0.121 at a third of the size; a bug bash)
            box_masks = full_masks if divisor == 1 else OwnSizeMasks(used, sizes[np.flatnonzero(usable)])
            metrics.update(
                box_ap([gt_boxes_from_mask(box_masks[i]) for i in range(len(boxed))], pred_boxes, box_scores)
            )
            metrics["defect_recall"] = defect_recall((box_masks[i] for i in range(len(boxed))), pred_boxes)
            on_normal = [len(p.pred_boxes) for p, s in zip(predictions, samples, strict=True) if s.label == 0]
            metrics["false_boxes_per_normal_image"] = float(np.mean(on_normal)) if on_normal else float("nan")
        kinds = per_defect(defects, scores, pred_labels) if by_defect else {}
        if by_defect:  # pixel (and box) metrics from the images that have a mask (or are normal); the image
            # metrics stay those of every image above (a defect image without a mask still counts there)
            use = np.array(usable)
            pixel_level = per_defect(
                [d for d, u in zip(defects, usable, strict=True) if u],
                scores[use],
                pred_labels[use],
                full_maps,
                full_masks,
                pred_boxes,
                box_scores,
                box_masks=box_masks,
            )
            for kind, row in pixel_level.items():
                kinds[kind].update({k: v for k, v in row.items() if k in _PIXEL_BY_DEFECT})
        return Evaluation(metrics, kinds)


class OwnSizeMasks:
    """The ground-truth masks of ``samples`` at their images' own ``sizes``, read one at a time when indexed.

    For the box metrics where the pixel metrics run at a reduced size: a mask at a time, not all of
    them at once (an image without a mask file: all False).
    """

    def __init__(self, samples: list[Sample], sizes: np.ndarray) -> None:
        self.samples, self.sizes = samples, sizes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> np.ndarray:
        shape = (int(self.sizes[index][0]), int(self.sizes[index][1]))
        path = self.samples[index].mask_path
        return read_mask(path) != 0 if path else np.zeros(shape, bool)


INF_STAND_IN = float(np.finfo(np.float32).max / 4)  # above any finite map value; a bilinear mix of two stays finite


def resizable(raw: np.ndarray) -> np.ndarray:
    """A raw map with its infinities as ``+-INF_STAND_IN``, which a bilinear resize keeps in their order.

    A model's map can hold infinities (an FP16 model's arithmetic overflows at 65,504); OpenCV's
    resize made NaN of them next to finite pixels (infinity times a zero weight), and the metrics
    refuse NaN: ``otx test`` stopped (a review, 2026-12-07). The pixels keep their order.
    """
    if np.isfinite(raw).all():
        return raw
    return np.nan_to_num(raw, nan=np.nan, posinf=INF_STAND_IN, neginf=-INF_STAND_IN)


def _full_size(
    samples: list[Sample],
    outputs: Outputs,
    usable: list[bool],
    preprocessor: PreProcessor,
    normalized: tuple[float, float, float] | None = None,
    divisor: int = 1,
) -> tuple[list[np.ndarray], list[np.ndarray], tuple[np.ndarray, np.ndarray], np.ndarray | None]:
    """The usable images' maps and masks at their own sizes, as views into one row of pixels each.

    Returns the maps, the masks (all False for a normal image without a mask file), the two rows
    and, with ``normalized`` (the pixel threshold, min and max), the row of the predicted masks as
    the task adapters make them (``normalize``, restore, ``>= 0.5``); else None. With ``divisor``
    > 1, each at its image's size divided by it (``reduced_size``; a mask pixel is defect where any
    of the pixels it stands for is, ``shrink_mask``).

    The pixel metrics need every pixel in one row; restoring into it directly saves a copy of
    all pixels (114 MB on magnetic_tile's test split).
    """
    sizes = outputs["orig_sizes"].numpy()
    if not len(samples) == len(usable) == len(sizes) == len(outputs["maps"]):
        raise ValueError(
            f"{len(samples)} samples, {len(usable)} flags and {len(outputs['maps'])} maps: one each per image"
        )
    chosen = [i for i, use in enumerate(usable) if use]
    shapes = [reduced_size((int(sizes[i][0]), int(sizes[i][1])), divisor) for i in chosen]
    counts = [h * w for h, w in shapes]
    flat_maps, flat_masks = np.empty(sum(counts), np.float32), np.zeros(sum(counts), bool)
    predicted = None if normalized is None else np.empty(sum(counts), bool)
    full_maps, full_masks = [], []
    start = 0
    for i, count, reduced in zip(chosen, counts, shapes, strict=True):
        shape = (int(sizes[i][0]), int(sizes[i][1]))
        full_maps.append(flat_maps[start : start + count].reshape(reduced))
        full_maps[-1][...] = preprocessor.restore(resizable(outputs["maps"][i].numpy()), shape, divisor)
        if predicted is not None and normalized is not None:
            clipped = normalize(outputs["maps"][i].numpy(), *normalized)
            predicted[start : start + count] = (preprocessor.restore(clipped, shape, divisor) >= 0.5).reshape(-1)
        full_masks.append(flat_masks[start : start + count].reshape(reduced))
        if samples[i].mask_path:
            mask = read_mask(samples[i].mask_path)  # the data index checks this too, unless told not to
            check_mask_size(samples[i].mask_path, mask.shape, samples[i].path, shape)
            full_masks[-1][...] = mask if divisor == 1 else shrink_mask(mask, reduced)
        start += count
    return full_maps, full_masks, (flat_maps, flat_masks), predicted


def shrink_mask(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """A binary mask at a smaller ``(height, width)``: a pixel is defect where any of the pixels it stands for is.

    So every defect region, a 1-pixel scratch or spot too, is still there at the smaller size (a
    majority vote dropped them at a third of the size), a little wider.
    """
    import cv2

    shrunk = cv2.resize((mask != 0).astype(np.float32), (size_hw[1], size_hw[0]), interpolation=cv2.INTER_AREA)
    return shrunk > 0


def tune_boxes(
    scorer: Scorer, outputs: Outputs, samples: list[Sample], refine: str, first: BoxSettings | None = None
) -> tuple[BoxSettings, dict[str, float]]:
    """Box settings for a model chosen on its validation outputs (``otx.boxes.tune``), at each image's size.

    ``refine``: the model's ``boxes_refine``; the refinements are tried on the images as read again
    from their files, one at a time. ``first``: settings kept unless others do better (``tune``).
    """
    normalized = as_numpy(scorer.normalize(outputs["maps"], outputs["scores"]))
    maps, labels, gt_boxes, images = [], [], [], []
    sizes = outputs["orig_sizes"].numpy()
    for sample, amap, label, size in zip(
        samples, normalized["anomaly_map"], normalized["pred_label"], sizes, strict=True
    ):
        if sample.label == 1 and sample.mask_path is None:
            continue  # an anomalous image without a mask cannot judge boxes
        maps.append(scorer.preprocessor.restore(amap, tuple(size)))
        labels.append(bool(label))
        gt_boxes.append(gt_boxes_from_mask(read_mask(sample.mask_path)) if sample.mask_path else np.zeros((0, 4)))
        images.append(functools.partial(read_image, sample.path))
    on_normal = scorer.boxes.on_normal
    return tune(maps, labels, gt_boxes, on_normal=on_normal, images=images, refine=refine, first=first)


def marks_nothing(adapter: TaskAdapter, prediction: Prediction) -> bool:
    """Whether a prediction labelled anomalous marks nothing: no box (detection), an empty mask (segmentation).

    A segmentation prediction is looked at only while it holds its mask (``otx predict`` drops it
    once written, ``otx test`` once looked at). Classification marks no region: never.
    """
    if prediction.label_name != "anomalous":
        return False
    if adapter.box_level:
        return not len(prediction.pred_boxes)
    # (an image threshold set below the pixel threshold: a bug bash saw 4 of 57 images)
    return bool(adapter.pixel_level and prediction.pred_mask is not None and not prediction.pred_mask.any())


def unmarked_key(adapter: TaskAdapter) -> str | None:
    """The name of the count of ``marks_nothing`` predictions in a predict run's ``counts`` (None: classification)."""
    return "anomalous_without_box" if adapter.box_level else "anomalous_without_mask" if adapter.pixel_level else None


def unmarked_note(adapter: TaskAdapter, unmarked: list[Prediction], more: str = "") -> str:
    """The note on images labelled anomalous that mark nothing (``marks_nothing``), ``more`` appended."""
    example = Path(unmarked[0].image_path)
    what, why = (
        ("no box", "no region of the map reaches the box level and minimum box area")
        if adapter.box_level
        else ("an empty mask", "no pixel of the map reaches the pixel threshold")
    )
    return (
        f"[yellow]note[/]: {len(unmarked)} image(s) labelled anomalous have {what} (e.g. "
        f"{escape(example.parent.name)}/{escape(example.name)}): the image score passes its threshold but {why}{more}"
    )


def prediction_counts(predictions: list[Prediction]) -> dict[str, int]:
    """Images by label: ``images``, ``anomalous``, ``normal`` and ``error`` (could not be read)."""
    names = [p.label_name for p in predictions]
    return {"images": len(names), **{label: names.count(label) for label in ("anomalous", "normal", "error")}}

"""Detection boxes from anomaly maps, with settings tuned on the validation split.

A box is a group of pixels of the normalised map at or above ``threshold`` (a level of its own,
not necessarily the pixel threshold 0.5); components closer than ``merge`` (a share of the
image's longer side) form one group, so a crack broken into pieces gives one box; the box encloses
the group's pixels at or above ``threshold + peak * (group maximum - threshold)``, so with ``peak``
above 0 it fits the group's core, not the shoulders that the map's blur spreads around a defect;
groups whose box covers less than ``min_area`` of the image are dropped; each box is scored by the
mean of its group's map values at or above the box level (``score="mean"``: a group whose values
stay high across it ranks above one that peaks as high with low shoulders around the peak;
``"max"``, the group's maximum, is how checkpoints and exports written before it score). Images
labelled normal get no box unless ``on_normal``.

``tune`` picks threshold, merge, peak share and minimum area on the validation split: the
combination with the best mean of box AP at IoU 0.1, 0.25 and 0.5 (pycocotools). The settings
are buffers of the model's ``PostProcessor`` (checkpoints) and entries of the export metadata;
the demo package's script repeats ``boxes_from_map`` in numpy and OpenCV.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import cv2
import numpy as np

# Box levels tried: 0.5 + step * (highest level - 0.5); none below the pixel threshold 0.5, so that
# every box holds pixels the predicted mask marks anomalous.
THRESHOLD_STEPS = (0.0, 0.15, 0.3, 0.45, 0.6)
MERGE_CHOICES = (0.0, 0.02, 0.05)  # share of the longer side within which components are joined
MIN_AREA_CHOICES = (0.0, 0.0005, 0.002)  # share of the image area a box must cover
PEAK_CHOICES = (0.0, 0.25, 0.5)  # share of the way from the box level to the group's maximum
TUNED_IOUS = (0.1, 0.25, 0.5)
BOX_SCORES = ("mean", "max")  # how a box is scored: its group's mean value, or its maximum (before 2026-12-05)


@dataclass(frozen=True)
class BoxSettings:
    """How boxes are cut from a normalised anomaly map (see the module's docstring)."""

    threshold: float = 0.5
    merge: float = 0.0
    min_area: float = 0.0
    on_normal: bool = False
    peak: float = 0.0
    score: str = "mean"

    def __post_init__(self) -> None:
        if self.score not in BOX_SCORES:
            raise ValueError(f"box score must be one of {', '.join(BOX_SCORES)} (got {self.score!r})")

    def as_dict(self) -> dict[str, float | bool | str]:
        """The settings as plain values (metrics.json, metadata)."""
        return asdict(self)


UNTUNED = "the default settings (box level 0.5, no merging, no core), not settings tuned on the validation split"
"""What boxes cut without ``tune`` use (``BoxSettings()``), for the warnings that say so."""

LEGACY_SCORE = "max"
"""The box score of checkpoints and exports that do not name one (written before ``score``)."""


def boxes_from_map(anomaly_map: np.ndarray, label: bool | None, settings: BoxSettings) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``[K, 4]`` (``x1, y1, x2, y2``, exclusive ends) and their scores from a full-size normalised map."""
    if not label and not settings.on_normal:
        return _empty()
    found = _groups(anomaly_map, settings.threshold, settings.merge)
    return _boxes(found, settings.peak, settings.min_area, settings.score)


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)


class _Groups(NamedTuple):
    """The pixels of one map at or above a box level, grouped (what every peak and area choice shares)."""

    ys: np.ndarray
    xs: np.ndarray
    ids: np.ndarray  # each pixel's group (0: none; every pixel here has one)
    values: np.ndarray
    maxima: np.ndarray  # each group's largest value (-inf for ids without a pixel)
    means: np.ndarray  # each group's mean value (nan for ids without a pixel)
    threshold: float
    shape: tuple[int, int]


def _groups(anomaly_map: np.ndarray, threshold: float, merge: float) -> _Groups | None:
    """The map's pixels at or above ``threshold``, each with its group (components within ``merge`` joined)."""
    mask = (anomaly_map >= threshold).astype(np.uint8)
    if not mask.any():
        return None
    height, width = mask.shape
    radius = int(round(merge * max(height, width)))
    grouped = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)) if radius else mask
    count, groups = cv2.connectedComponents(grouped, connectivity=8, ltype=cv2.CV_32S)
    ys, xs = np.nonzero(mask)  # the box holds the group's own pixels, not the dilation
    ids = groups[ys, xs]
    values = anomaly_map[ys, xs].astype(np.float32)  # compact: `tune` holds every validation map's groups
    maxima = np.full(count, -np.inf)
    np.maximum.at(maxima, ids, values)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.bincount(ids, weights=values, minlength=count) / np.bincount(ids, minlength=count)
    return _Groups(
        ys.astype(np.int32), xs.astype(np.int32), ids, values, maxima, means, float(threshold), (height, width)
    )


def _boxes(found: _Groups | None, peak: float, min_area: float, score: str) -> tuple[np.ndarray, np.ndarray]:
    """Each group's box (around its pixels at or above its ``peak`` level) and score; small boxes dropped."""
    if found is None:
        return _empty()
    ys, xs, ids, maxima, threshold = found.ys, found.xs, found.ids, found.maxima, found.threshold
    count = maxima.size
    if peak > 0.0:  # the group's core: its maximum always stays, so no group loses every pixel
        core = found.values >= threshold + peak * (maxima[ids] - threshold)
        ys, xs, ids = ys[core], xs[core], ids[core]
    boxes = np.empty((count, 4), np.float64)
    boxes[:, :2] = np.inf
    boxes[:, 2:] = -np.inf
    np.minimum.at(boxes[:, 0], ids, xs)
    np.minimum.at(boxes[:, 1], ids, ys)
    np.maximum.at(boxes[:, 2], ids, xs + 1)
    np.maximum.at(boxes[:, 3], ids, ys + 1)
    keep = np.isfinite(maxima)
    keep[0] = False  # background
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep &= area >= min_area * found.shape[0] * found.shape[1]
    scores = found.means if score == "mean" else maxima  # the group's values at or above the box level
    return boxes[keep].astype(np.float32), scores[keep].astype(np.float32)


def candidates(highest: float) -> list[BoxSettings]:
    """The settings ``tune`` tries, given the highest normalised level on the validation maps."""
    span = max(float(highest) - 0.5, 0.0)
    levels = sorted({round(0.5 + step * span, 6) for step in THRESHOLD_STEPS})
    return [
        BoxSettings(level, merge, area, peak=peak)
        for level, merge, peak, area in itertools.product(levels, MERGE_CHOICES, PEAK_CHOICES, MIN_AREA_CHOICES)
    ]


def tune(
    maps: Sequence[np.ndarray], labels: Sequence[bool], gt_boxes: Sequence[np.ndarray], on_normal: bool = False
) -> tuple[BoxSettings, dict[str, float]]:
    """The candidate settings with the best mean box AP at IoU 0.1, 0.25 and 0.5 on validation images.

    Args:
        maps: each validation image's normalised map at its own size.
        labels: the predicted label of each image (boxes only on anomalous ones unless ``on_normal``).
        gt_boxes: each image's ground-truth boxes ``[K, 4]`` (empty for normal images).
        on_normal: keep boxes on images labelled normal.

    Returns:
        The chosen settings and their box metrics on the validation images. Ties keep the
        earlier candidate (lower threshold, no merging, no peak share, no minimum area).
    """
    from otx.metrics import box_ap

    highest = max((float(m.max()) for m in maps), default=0.5)
    best: tuple[float, BoxSettings, dict[str, float]] | None = None
    key, grouped = None, []  # the groups of one level and merge, shared by its peak and area choices
    for settings in candidates(highest):
        settings = replace(settings, on_normal=on_normal)
        if (settings.threshold, settings.merge) != key:
            key = (settings.threshold, settings.merge)
            grouped = [_groups(m, *key) if label or on_normal else None for m, label in zip(maps, labels, strict=True)]
        found = [_boxes(groups, settings.peak, settings.min_area, settings.score) for groups in grouped]
        metrics = box_ap(list(gt_boxes), [b for b, _ in found], [s for _, s in found])
        objective = float(np.nanmean([metrics[f"box_AP{int(iou * 100)}"] for iou in TUNED_IOUS]))
        if best is None or objective > best[0]:
            best = (objective, settings, metrics)
    assert best is not None
    return best[1], best[2]

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

A box can then be snapped to the image (``refine``, ``refine_boxes``): shrunk to the pixels inside
it that stand out from the box's median, darker (``"dark"``), brighter (``"bright"``) or either way
in colour (``"contrast"``), by Otsu's threshold on that difference. The map is blurred and coarse
(a stride of 8 or 16 pixels), so its box around an 11-pixel hole is several times the hole; the
image's own pixels mark where the defect ends. ``"none"`` keeps the map's box (checkpoints and
exports written before ``refine``).

``tune`` picks threshold, merge, peak share, minimum area and refinement on the validation split:
the combination with the best mean of box AP at IoU 0.1, 0.25 and 0.5 (pycocotools), so a
refinement is used only where it places the validation boxes better (by at least one ground-truth
region's worth, so that snapping to texture noise does not win on a few images by chance). The settings are buffers of
the model's ``PostProcessor`` (checkpoints) and entries of the export metadata; the demo package's
script repeats ``boxes_from_map`` and ``refine_boxes`` in numpy and OpenCV.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
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
# How a box is snapped to the image: not at all, or to its pixels darker / brighter / other in colour than
# the box's median ("none" first: on a tie the map's own box is kept)
REFINES = ("none", "dark", "bright", "contrast")


REFINE_WORDS = {
    "none": "not snapped to the image",
    "dark": "snapped to its pixels darker than the box's median",
    "bright": "snapped to its pixels brighter than the box's median",
    "contrast": "snapped to its pixels whose colour differs most from the box's median",
}
"""Each refinement in words (otx train's summary, the report)."""


def score_words(settings: dict[str, object]) -> str:
    """How a box is scored and refined, in words, from ``BoxSettings.as_dict()`` (older ones: the maximum)."""
    score = "mean" if settings.get("score") == "mean" else "maximum"
    refine = REFINE_WORDS.get(str(settings.get("refine", "none")), str(settings.get("refine")))
    return f"scored by the {score} of its group's map values, {refine}"


@dataclass(frozen=True)
class BoxSettings:
    """How boxes are cut from a normalised anomaly map (see the module's docstring)."""

    threshold: float = 0.5
    merge: float = 0.0
    min_area: float = 0.0
    on_normal: bool = False
    peak: float = 0.0
    score: str = "mean"
    refine: str = "none"

    def __post_init__(self) -> None:
        if self.score not in BOX_SCORES:
            raise ValueError(f"box score must be one of {', '.join(BOX_SCORES)} (got {self.score!r})")
        if self.refine not in REFINES:
            raise ValueError(f"box refinement must be one of {', '.join(REFINES)} (got {self.refine!r})")

    def as_dict(self) -> dict[str, float | bool | str]:
        """The settings as plain values (metrics.json, metadata)."""
        return asdict(self)


UNTUNED = "the default settings (box level 0.5, no merging, no core), not settings tuned on the validation split"
"""What boxes cut without ``tune`` use (``BoxSettings()``), for the warnings that say so."""

LEGACY_SCORE = "max"
"""The box score of checkpoints and exports that do not name one (written before ``score``)."""


def unknown_saved(settings: dict[str, object]) -> str | None:
    """What a checkpoint's or export's box settings ask that this otx cannot do (a newer otx wrote them), else None.

    Returns the end of a one-line message ("box score 'x', which this otx ... does not know ...").
    """
    from otx import __version__

    for key, known in (("score", BOX_SCORES), ("refine", REFINES)):
        value = settings.get(key)
        if value is not None and value not in known:
            name = "score" if key == "score" else "refinement"
            return (
                f"box {name} {value!r}, which this otx {__version__} does not know (it knows {', '.join(known)}); "
                "upgrade otx to the version that wrote it"
            )
    return None


def boxes_from_map(
    anomaly_map: np.ndarray,
    label: bool | None,
    settings: BoxSettings,
    image: np.ndarray | Callable[[], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``[K, 4]`` (``x1, y1, x2, y2``, exclusive ends) and their scores from a full-size normalised map.

    ``image`` (``H x W x 3`` RGB ``uint8``, the map's size), or a function that reads it (called
    only when there are boxes), is needed when ``settings.refine`` snaps the boxes to it.
    """
    if not label and not settings.on_normal:
        return _empty()
    found = _groups(anomaly_map, settings.threshold, settings.merge)
    boxes, scores = _boxes(found, settings.peak, settings.min_area, settings.score)
    if settings.refine != "none" and len(boxes):
        if image is None:
            raise ValueError(f"box refinement {settings.refine!r} needs the image")
        pixels = image() if callable(image) else image
        if pixels.shape[:2] != anomaly_map.shape:
            raise ValueError(
                f"box refinement needs the image at the map's size {anomaly_map.shape} (got {pixels.shape[:2]})"
            )
        boxes = refine_boxes(pixels, boxes, settings.refine)
    return boxes, scores


def refine_boxes(image: np.ndarray, boxes: np.ndarray, refine: str) -> np.ndarray:
    """Each box shrunk to the pixels inside it that stand out from the box's median (``REFINES``).

    Inside a box (its pixels blurred 3x3), each pixel's difference from the box's median grey
    level (``dark``: median minus pixel, ``bright``: pixel minus median, negatives 0) or colour
    (``contrast``: the distance between the RGB values) is scaled to 0-255, and Otsu's threshold
    splits it; the box becomes the bounding box of the pixels above it. Boxes under 3 pixels a
    side, and boxes without any difference, stay as they are. Only the boxes' pixels are
    converted (a 4000x3000 image is not copied whole).

    Args:
        image: ``H x W x 3`` RGB ``uint8`` at the map's size (``otx.data.io.read_image``).
        boxes: ``[K, 4]`` boxes (``x1, y1, x2, y2``, exclusive ends, whole pixels).
        refine: one of ``REFINES``.
    """
    if refine == "none" or not len(boxes):
        return boxes
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"box refinement needs an H x W x 3 RGB uint8 image (got {image.dtype}, shape {image.shape})")
    out = np.array(boxes, np.float32, copy=True)
    for row, (x1, y1, x2, y2) in enumerate(np.asarray(boxes).astype(np.int64)):
        snapped = _snap(image[y1:y2, x1:x2], refine)
        if snapped is not None:
            out[row] = (x1 + snapped[0], y1 + snapped[1], x1 + snapped[2], y1 + snapped[3])
    return out


def _snap(pixels: np.ndarray, refine: str) -> tuple[int, int, int, int] | None:
    """The box (``x1, y1, x2, y2`` within ``pixels``, RGB uint8) of its pixels above Otsu's threshold, or None."""
    if min(pixels.shape[:2]) < 3:
        return None
    pixels = np.ascontiguousarray(pixels)
    if refine == "contrast":  # the distance from the box's median colour
        patch = cv2.GaussianBlur(pixels.astype(np.float32), (3, 3), 0)
        median = np.median(patch.reshape(-1, 3), axis=0).astype(np.float32)
        difference = np.sqrt(((patch - median) ** 2).sum(axis=2))
    else:  # darker or brighter than the box's median grey level
        patch = cv2.GaussianBlur(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY).astype(np.float32), (3, 3), 0)
        median = np.float32(np.median(patch))
        difference = np.maximum(median - patch if refine == "dark" else patch - median, np.float32(0.0))
    top = float(difference.max())
    if not top > 0.0:
        return None
    scaled = np.round(difference * np.float32(255.0 / top)).astype(np.uint8)
    _, chosen = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    ys, xs = np.nonzero(chosen)
    if not len(ys):
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


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


def grown(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` (uint8) with every pixel within ``radius`` of it (Euclidean) set: components within twice it touch.

    By the exact distance transform, not ``cv2.dilate`` with an elliptical kernel of that radius: the
    kernel's cost grows with its area, and a merge of 5 % of a 4000-pixel side (radius 200) took 9.6 s
    a dilation against 0.2 s (a 3000x4000 map; tuning tries several per validation map). The two
    differ only on the disc's rim (864 of 403,020 grown pixels there): a pixel kernel is not a disc.
    """
    if not radius:
        return mask
    distance = cv2.distanceTransform(1 - mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return (distance <= radius).astype(np.uint8)


def _groups(anomaly_map: np.ndarray, threshold: float, merge: float) -> _Groups | None:
    """The map's pixels at or above ``threshold``, each with its group (components within ``merge`` joined)."""
    mask = (anomaly_map >= threshold).astype(np.uint8)
    if not mask.any():
        return None
    height, width = mask.shape
    grouped = grown(mask, int(round(merge * max(height, width))))
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
        # compared in float32, as the map's pixels were against the box threshold (numpy rounds a Python float to
        # the array's float32): in float64, a group whose maximum is float32(threshold), just below the threshold,
        # lost every pixel and came out as an [inf, inf, -inf, -inf] box (a review)
        core = found.values >= (threshold + peak * (maxima - threshold)).astype(np.float32)[ids]
        ys, xs, ids = ys[core], xs[core], ids[core]
    boxes = np.empty((count, 4), np.float64)
    boxes[:, :2] = np.inf
    boxes[:, 2:] = -np.inf
    np.minimum.at(boxes[:, 0], ids, xs)
    np.minimum.at(boxes[:, 1], ids, ys)
    np.maximum.at(boxes[:, 2], ids, xs + 1)
    np.maximum.at(boxes[:, 3], ids, ys + 1)
    keep = np.isfinite(maxima) & np.isfinite(boxes[:, 0])
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
    maps: Sequence[np.ndarray],
    labels: Sequence[bool],
    gt_boxes: Sequence[np.ndarray],
    on_normal: bool = False,
    images: Sequence[Callable[[], np.ndarray]] | None = None,
    refine: str = "auto",
    first: BoxSettings | None = None,
) -> tuple[BoxSettings, dict[str, float]]:
    """The candidate settings with the best mean box AP at IoU 0.1, 0.25 and 0.5 on validation images.

    Args:
        maps: each validation image's normalised map at its own size.
        labels: the predicted label of each image (boxes only on anomalous ones unless ``on_normal``).
        gt_boxes: each image's ground-truth boxes ``[K, 4]`` (empty for normal images).
        on_normal: keep boxes on images labelled normal.
        images: for each image, a function that reads it (``H x W x 3`` RGB ``uint8``, the map's
            size); with them every candidate is tried with each ``REFINES`` too, reading one image
            at a time, and the best refined one is chosen if its objective is at least one
            ground-truth region's worth (1 / their number) above the best unrefined one's. Without
            them boxes are not refined.
        refine: ``auto`` (the above), or one of ``REFINES``: every candidate cut that way (with
            ``images``, unless ``none``), the choice left to the level, merge, core and area.
        first: settings tried before the candidates, so that they are kept unless one does better
            (a model's own, re-chosen for its INT8 version's maps); its refinement is ``refine``'s.

    Returns:
        The chosen settings and their box metrics on the validation images. Ties keep the
        earlier candidate (lower threshold, no merging, no peak share, no minimum area, no refinement).
    """
    from otx.metrics import box_ap

    def objective(boxes: list[np.ndarray], scores: list[np.ndarray]) -> tuple[float, dict[str, float]]:
        metrics = box_ap(list(gt_boxes), boxes, scores)
        return float(np.nanmean([metrics[f"box_AP{int(iou * 100)}"] for iou in TUNED_IOUS])), metrics

    # (a NaN pixel of the first map made every level tried NaN: Python's max keeps a NaN that comes first)
    highest = max((float(np.nanmax(m)) for m in maps if np.isfinite(m).any()), default=0.5)
    choices = REFINES[1:] if refine == "auto" else tuple(r for r in (refine,) if r != "none")
    refining = images is not None and bool(choices)
    best: tuple[float, BoxSettings, dict[str, float]] | None = None
    tried: list[tuple[BoxSettings, list[tuple[np.ndarray, np.ndarray]]]] = []  # kept only for refining
    key, grouped = None, []  # the groups of one level and merge, shared by its peak and area choices
    for settings in ([replace(first, refine="none")] if first is not None else []) + candidates(highest):
        settings = replace(settings, on_normal=on_normal)
        if (settings.threshold, settings.merge) != key:
            key = (settings.threshold, settings.merge)
            grouped = [_groups(m, *key) if label or on_normal else None for m, label in zip(maps, labels, strict=True)]
        found = [_boxes(groups, settings.peak, settings.min_area, settings.score) for groups in grouped]
        score, metrics = objective([b for b, _ in found], [s for _, s in found])
        if best is None or score > best[0]:
            best = (score, settings, metrics)
        if refining:
            tried.append((settings, found))
    assert best is not None
    if refining:
        # a refinement has to gain at least one ground-truth region's worth (1 / their number) over the
        # map's own boxes: on a few validation images, snapping to texture noise can win by chance
        regions = sum(len(np.asarray(b).reshape(-1, 4)) for b in gt_boxes)
        plain, bar = best, (best[0] + 1.0 / max(regions, 1) if refine == "auto" else -np.inf)
        assert images is not None  # (refining)
        refined = _refine_tried(tried, images, choices)
        for choice in choices:
            for (settings, found), boxes in zip(tried, refined[choice], strict=True):
                score, metrics = objective(boxes, [s for _, s in found])
                if score >= bar and (best is plain or score > best[0]):
                    best = (score, replace(settings, refine=choice), metrics)
    return best[1], best[2]


def _refine_tried(
    tried: list[tuple[BoxSettings, list[tuple[np.ndarray, np.ndarray]]]],
    images: Sequence[Callable[[], np.ndarray]],
    choices: Sequence[str],
) -> dict[str, list[list[np.ndarray]]]:
    """Every tried candidate's boxes refined each way in ``choices``, one image read at a time."""
    refined = {refine: [[b for b, _ in found] for _, found in tried] for refine in choices}
    for index, read in enumerate(images):
        if not any(len(found[index][0]) for _, found in tried):
            continue  # no candidate boxes this image: it is not read
        image = read()
        for refine in choices:
            done: dict[tuple[float, ...], np.ndarray] = {}  # candidates share most of their boxes
            for row, (_, found) in enumerate(tried):
                boxes = found[index][0]
                if not len(boxes):
                    continue
                keys = [tuple(box.tolist()) for box in boxes]
                todo = [k for k in dict.fromkeys(keys) if k not in done]
                if todo:
                    done.update(zip(todo, refine_boxes(image, np.array(todo, np.float32), refine), strict=True))
                refined[refine][row][index] = np.array([done[k] for k in keys], np.float32)
    return refined

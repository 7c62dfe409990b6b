"""Evaluation metrics: image and pixel AUROC / F1, AUPRO and COCO box AP.

Everything here is exact (no binning) and works on raw anomaly scores in any units: nothing
assumes scores in [0, 1] or applies a sigmoid, which is why ``torchmetrics``' ``binary_auroc``
(it squashes values outside [0, 1] and then loses resolution to float32 ties) is not used.
Inputs may be numpy arrays or torch tensors; they are used in place where possible so that
pixel-level metrics over tens of millions of pixels stay fast and light on memory.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from otx.data.dataset import GOOD
from otx.postprocess import mask_to_boxes

ArrayLike = torch.Tensor | np.ndarray

__all__ = [
    "aupro",
    "box_ap",
    "defect_recall",
    "f1_at",
    "gt_boxes_from_mask",
    "image_decisions",
    "image_metrics",
    "per_defect",
    "pixel_metrics",
    "roc_auc",
]


def _to_numpy(values: ArrayLike | Sequence[float]) -> np.ndarray:
    """Return a numpy view of ``values`` (CPU tensors and arrays are not copied)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.dtype == torch.bfloat16:
            values = values.float()
        return values.numpy()
    return np.asarray(values)


def _scores_array(values: ArrayLike | Sequence[float]) -> np.ndarray:
    """Return flat scores in a sortable dtype, without a lossy (or needless) conversion."""
    scores = _to_numpy(values).reshape(-1)
    if scores.dtype == np.bool_:
        return scores.view(np.uint8)
    if scores.dtype == np.float16:
        return scores.astype(np.float32)
    if not np.issubdtype(scores.dtype, np.number):
        raise ValueError(f"scores must be numeric, got {scores.dtype}")
    if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return scores


def _labels_array(values: ArrayLike | Sequence[float]) -> np.ndarray:
    """Return flat boolean labels (nonzero is positive)."""
    labels = _to_numpy(values).reshape(-1)
    return labels if labels.dtype == np.bool_ else labels != 0


def roc_auc(scores: ArrayLike | Sequence[float], labels: ArrayLike | Sequence[float]) -> float:
    """Exact area under the ROC curve of binary ``labels`` ranked by real-valued ``scores``.

    Ties are handled like ``sklearn.metrics.roc_auc_score`` (one curve point per distinct
    score, trapezoid rule), which is the Mann-Whitney statistic with a positive-negative tie
    counting one half. It is computed as such: both classes are sorted by value (numpy's
    vectorised sort, no index arrays) and the pairs are counted with ``searchsorted`` in int64,
    so the result is exact up to one final division and 20 M pixels take well under a second.

    Args:
        scores: anomaly scores of any shape and scale (higher means more anomalous).
        labels: binary ground truth of the same number of elements (nonzero is positive).

    Returns:
        The AUROC, or ``nan`` when only one class (or nothing) is present.

    Raises:
        ValueError: if the sizes differ or a score is NaN.
    """
    s = _scores_array(scores)
    y = _labels_array(labels)
    if s.size != y.size:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in size")
    pos = s[y]
    neg = s[~y]
    n_pos, n_neg = pos.size, neg.size
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    pos.sort()
    neg.sort()
    # Twice the count of (positive > negative) pairs plus the tied pairs; the smaller class is
    # looked up in the larger one.
    if n_pos <= n_neg:
        area2 = int(np.searchsorted(neg, pos, "left").sum()) + int(np.searchsorted(neg, pos, "right").sum())
    else:
        below = int(np.searchsorted(pos, neg, "left").sum()) + int(np.searchsorted(pos, neg, "right").sum())
        area2 = 2 * n_pos * n_neg - below
    return area2 / (2.0 * n_pos * n_neg)


def curves(scores: ArrayLike | Sequence[float], labels: ArrayLike | Sequence[float]) -> dict[str, np.ndarray]:
    """ROC and precision-recall curves of binary ``labels`` ranked by ``scores`` (for plots).

    Returns ``fpr``/``tpr`` (starting at 0, 0) and ``precision``/``recall`` (ending at recall 0,
    precision 1), one point per distinct score, as scikit-learn's ``roc_curve`` and
    ``precision_recall_curve`` define them (checked against them in the tests).
    """
    score = _scores_array(scores)
    label = _labels_array(labels)
    order = np.argsort(-score, kind="stable")
    sorted_scores, sorted_labels = score[order], label[order]
    last = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]  # last index of each run of equal scores
    tp = np.cumsum(sorted_labels)[last].astype(np.float64)
    fp = np.cumsum(~sorted_labels)[last].astype(np.float64)
    n_pos, n_neg = max(tp[-1], 1.0), max(fp[-1], 1.0)
    precision = tp / np.maximum(tp + fp, 1.0)
    recall = tp / n_pos
    return {
        "fpr": np.r_[0.0, fp / n_neg],
        "tpr": np.r_[0.0, recall],
        "precision": np.r_[precision[::-1], 1.0],
        "recall": np.r_[recall[::-1], 0.0],
    }


def f1_at(pred: ArrayLike | Sequence[float], labels: ArrayLike | Sequence[float]) -> float:
    """F1 score of binary predictions against binary labels.

    Follows ``sklearn.metrics.f1_score(labels, pred, zero_division=0)``: 0.0 when there is no
    positive prediction and no positive label.

    Args:
        pred: binary predictions (nonzero is positive), any shape.
        labels: binary ground truth with the same number of elements.

    Returns:
        ``2 TP / (2 TP + FP + FN)``, or 0.0 when that is 0 / 0.

    Raises:
        ValueError: if the sizes differ.
    """
    p = _labels_array(pred)
    y = _labels_array(labels)
    if p.size != y.size:
        raise ValueError(f"pred ({p.size}) and labels ({y.size}) differ in size")
    tp = int(np.count_nonzero(p & y))
    denom = int(np.count_nonzero(p)) + int(np.count_nonzero(y))  # = 2 TP + FP + FN
    return 0.0 if denom == 0 else 2.0 * tp / denom


Maps = ArrayLike | Sequence[ArrayLike]  # [N, H, W], or one [H, W] map per image (sizes may differ)


def _map_list(values: Maps) -> list[np.ndarray]:
    """Maps as a list of ``[H, W]`` arrays (views where possible), from ``[N, H, W]`` or a list of maps."""
    if isinstance(values, list | tuple):
        maps = [_to_numpy(v) for v in values]
        for m in maps:
            if m.ndim != 2:
                raise ValueError(f"expected one [H, W] map per image, got {m.shape}")
        return maps
    return list(_as_maps(values))


def _flat(values: Maps) -> ArrayLike:
    """All pixels of ``[N, H, W]`` maps (as they are) or of a list of maps (concatenated)."""
    if isinstance(values, list | tuple):
        return np.concatenate([_to_numpy(v).reshape(-1) for v in values]) if values else np.zeros(0)
    return values


def _as_maps(values: ArrayLike) -> np.ndarray:
    """Return an ``[N, H, W]`` view of maps given as ``[H, W]``, ``[N, H, W]`` or ``[N, 1, H, W]``."""
    arr = _to_numpy(values)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise ValueError(f"expected maps of shape [N, H, W], got {arr.shape}")
    return arr


def _region_labels(masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """The 8-connected regions of the masks: ``(background, region_ids, n_regions)``.

    ``background`` is every pixel in a row (True: mask 0), ``region_ids`` the region of each mask
    pixel in the same order (ids unique across images, from 1). One byte per pixel: an int32 id
    for every pixel was 117 MB on magnetic_tile's validation split at its own sizes.
    """
    background, ids = [], []
    offset = 0
    for mask in masks:
        foreground = mask != 0
        background.append(~foreground.reshape(-1))
        if foreground.any():
            n, lab = cv2.connectedComponents(foreground.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
            ids.append(lab[foreground] + offset)
            offset += n - 1
    flat = np.concatenate(background) if background else np.zeros(0, bool)
    return flat, (np.concatenate(ids) if ids else np.zeros(0, np.int32)), offset


_BLOCK = 1 << 20  # normal pixels per block of the AUPRO's curve lookups


def aupro(maps: Maps, masks: Maps, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region overlap (PRO) curve up to a false positive rate.

    Regions are the 8-connected components of each ground-truth mask. At a threshold ``t`` the
    FPR is the fraction of all normal pixels (mask 0, over all images) with score ``>= t`` and
    the PRO is the mean over all regions of the fraction of the region's pixels with score
    ``>= t``. The curve has one point per distinct score plus the origin, is integrated with
    the trapezoid rule from FPR 0 to ``fpr_limit`` (PRO interpolated linearly at the limit)
    and divided by ``fpr_limit``, so a perfect map gives 1.0.

    The computation is exact without a joint argsort of all pixels: only normal pixels move
    the FPR, and the curve segment that a normal pixel of score ``s`` opens has width
    ``1 / N_neg`` and heights ``PRO(> s)`` and ``PRO(>= s)``, which are looked up in the
    sorted region pixels' cumulative weights (each region pixel weighs
    ``1 / (|region| * n_regions)``). Normal pixels are sorted by value only.

    Args:
        maps: anomaly maps ``[N, H, W]`` (``[H, W]`` and ``[N, 1, H, W]`` are accepted too), or a
            list of ``[H, W]`` maps, one per image, of any sizes (e.g. each image's own).
        masks: ground-truth masks of the same shapes (nonzero is anomalous).
        fpr_limit: upper FPR bound of the integration, in ``(0, 1]``.

    Returns:
        The AUPRO, or ``nan`` when there is no region or no normal pixel.

    Raises:
        ValueError: on shape mismatch, an ``fpr_limit`` outside ``(0, 1]`` or NaN scores.
    """
    return _aupro(maps, masks, fpr_limit, _flat(maps))


def _aupro(maps: Maps, masks: Maps, fpr_limit: float, flat_maps: ArrayLike) -> float:
    """``aupro`` with the maps' pixels already in a row (``_flat(maps)``: a view, or one joined copy)."""
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must lie in (0, 1], got {fpr_limit}")
    map_list, mask_list = _map_list(maps), _map_list(masks)
    if len(map_list) != len(mask_list) or any(a.shape != b.shape for a, b in zip(map_list, mask_list, strict=False)):
        raise ValueError(
            f"maps {[a.shape for a in map_list[:3]]}... and masks {[b.shape for b in mask_list[:3]]}... differ in shape"
        )
    background, region_ids, n_regions = _region_labels(mask_list)
    n_neg = int(np.count_nonzero(background))
    if n_regions == 0 or n_neg == 0:
        return float("nan")
    scores = _scores_array(flat_maps)

    neg = scores[background]
    neg.sort()
    region_scores = scores[~background]
    sizes = np.bincount(region_ids, minlength=n_regions + 1).astype(np.float64)
    order = np.argsort(region_scores, kind="stable")
    region_scores = region_scores[order]
    weights = 1.0 / (sizes[region_ids[order]] * n_regions)
    # pro_from[i] = PRO contributed by the sorted region pixels i, i+1, ... (suffix sums).
    pro_from = np.zeros(weights.size + 1, dtype=np.float64)
    pro_from[:-1] = np.cumsum(weights[::-1])[::-1]

    def pro_above(values: np.ndarray) -> np.ndarray:  # PRO at a threshold just above each value
        return np.minimum(pro_from[np.searchsorted(region_scores, values, "right")], 1.0)

    def pro_at(values: np.ndarray) -> np.ndarray:  # PRO at each value as the threshold
        return np.minimum(pro_from[np.searchsorted(region_scores, values, "left")], 1.0)

    # The curve point at threshold t_lim (the m-th largest normal score) is the first with
    # FPR >= fpr_limit; m is the smallest count whose FPR, as a float, reaches the limit.
    m = max(1, math.ceil(fpr_limit * n_neg))
    while m > 1 and (m - 1) / n_neg >= fpr_limit:
        m -= 1
    while m / n_neg < fpr_limit:
        m += 1
    t_lim = neg[n_neg - m : n_neg - m + 1]
    first_above = int(np.searchsorted(neg, t_lim[0], "right"))
    x0 = (n_neg - first_above) / n_neg
    x1 = (n_neg - int(np.searchsorted(neg, t_lim[0], "left"))) / n_neg
    above = neg[first_above:]
    area = 0.0
    for start in range(0, above.size, _BLOCK):  # in blocks: a lookup of every normal pixel at once was 130 MB
        part = above[start : start + _BLOCK]
        area += float(pro_above(part).sum()) + float(pro_at(part).sum())
    area /= 2.0 * n_neg
    y0, y1 = float(pro_above(t_lim)[0]), float(pro_at(t_lim)[0])
    y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
    area += (fpr_limit - x0) * (y0 + y_lim) / 2.0
    return area / fpr_limit


def image_metrics(
    scores: ArrayLike | Sequence[float],
    labels: ArrayLike | Sequence[float],
    pred_labels: ArrayLike | Sequence[float],
) -> dict[str, float]:
    """Image-level AUROC (from scores) and F1 (from thresholded predictions).

    Args:
        scores: image anomaly scores ``[N]``.
        labels: ground-truth image labels ``[N]`` (1 anomalous).
        pred_labels: predicted image labels ``[N]``.

    Returns:
        ``{"image_AUROC": ..., "image_F1": ...}``; F1 is NaN when no label and no prediction is positive.
    """
    return {"image_AUROC": roc_auc(scores, labels), "image_F1": _reported_f1(pred_labels, labels)}


def image_decisions(
    scores: ArrayLike | Sequence[float], labels: ArrayLike | Sequence[float], threshold: float
) -> dict[str, float | int | None]:
    """The image decisions at ``threshold`` (a score at or above it is anomalous) against the labels.

    Returns the counts of the confusion matrix in an inspector's words, ``anomalous`` images
    (``found``, ``missed``) and ``normal`` ones (``passed``, ``flagged``), with ``recall``
    (found / anomalous), ``precision`` (found / labelled anomalous) and ``false_alarm_rate``
    (flagged / normal); a rate with nothing to divide by is None. ``threshold`` is returned too, in the
    scores' units.
    """
    truth = _labels_array(labels)
    flagged = _to_numpy(scores).reshape(-1) >= threshold
    found, missed = int((flagged & truth).sum()), int((~flagged & truth).sum())
    alarms, passed = int((flagged & ~truth).sum()), int((~flagged & ~truth).sum())

    def share(part: int, whole: int) -> float | None:
        return part / whole if whole else None

    return {
        "threshold": float(threshold),
        "anomalous": found + missed,
        "found": found,
        "missed": missed,
        "normal": alarms + passed,
        "passed": passed,
        "flagged": alarms,
        "recall": share(found, found + missed),
        "precision": share(found, found + alarms),
        "false_alarm_rate": share(alarms, alarms + passed),
    }


def _reported_f1(pred: ArrayLike, labels: ArrayLike) -> float:
    """``f1_at`` as a reported figure: NaN (n/a) for 0 / 0, where there is nothing to find and nothing is found.

    ``f1_at``'s 0.0 there (scikit-learn's ``zero_division=0``, which threshold searches need) read as
    a total failure in a report: a test split of good parts, every one passed, showed pixel F1 0.0.
    """
    if not np.any(_labels_array(pred)) and not np.any(_labels_array(labels)):
        return float("nan")
    return f1_at(pred, labels)


def pixel_metrics(
    maps: Maps, masks: Maps, pred_masks: Maps, flat: tuple[np.ndarray, np.ndarray] | None = None
) -> dict[str, float]:
    """Pixel-level AUROC, F1 and AUPRO (FPR limit 0.3).

    Args:
        maps: anomaly maps ``[N, H, W]``, or one ``[H, W]`` map per image (sizes may differ).
        masks: ground-truth masks of the same shapes.
        pred_masks: predicted binary masks of the same shapes (or all their pixels in one row).
        flat: the maps' and the masks' pixels in one row each, image after image, when the caller
            holds them (saves joining a copy of every pixel).

    Returns:
        ``{"pixel_AUROC": ..., "pixel_F1": ..., "AUPRO": ...}``; F1 is NaN when no pixel is positive,
        in the masks nor in the predictions.
    """
    flat_maps, flat_masks = flat if flat is not None else (_flat(maps), _flat(masks))
    if flat is not None and not flat_maps.size == flat_masks.size == sum(np.size(m) for m in _map_list(maps)):
        raise ValueError("flat must hold the pixels of maps and masks, one row each, image after image")
    return {
        "pixel_AUROC": roc_auc(flat_maps, flat_masks),
        "pixel_F1": _reported_f1(_flat(pred_masks), flat_masks),
        "AUPRO": _aupro(maps, masks, 0.3, flat_maps),
    }


def per_defect(
    defects: Sequence[str],
    scores: ArrayLike,
    pred_labels: ArrayLike,
    maps: Maps | None = None,
    masks: Maps | None = None,
    boxes: Sequence[ArrayLike] | None = None,
    box_scores: Sequence[ArrayLike] | None = None,
    box_masks: Sequence[ArrayLike] | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of each defect type against the normal (``good``) images.

    Pooled pixel metrics weigh every defect pixel alike, so a type with large regions can decide
    them (on magnetic_tile, "uneven" holds two thirds of the test set's defect pixels). Each
    type is scored here on its own images together with all normal ones.

    Args:
        defects: each image's type: ``good`` (``otx.data.dataset.GOOD``) for normal images, otherwise
            the defect's name (the folder names of ``test/``).
        scores: image anomaly scores ``[N]``.
        pred_labels: predicted image labels ``[N]`` (1 anomalous).
        maps: anomaly maps, one per image (any sizes), for the pixel metrics; optional.
        masks: ground-truth masks of the same shapes as ``maps``.
        boxes: predicted ``[M, 4]`` boxes per image, for the box metrics (with ``maps`` and ``masks``).
        box_scores: the boxes' scores, ``[M]`` per image.
        box_masks: the masks at the boxes' scale, indexed one at a time (default: ``masks``; the
            images' own size where ``masks`` are reduced for the pixel metrics).

    Returns:
        Per type: ``images``; for ``good`` the share ``flagged`` anomalous; for a defect type
        the share ``detected``, ``image_AUROC`` against the good images and, with maps,
        ``pixel_AUROC`` and ``AUPRO`` over its images and the good ones and
        ``defect_pixel_share`` (its share of all defect pixels); with boxes, ``box_AP50``,
        ``box_AP25`` and ``box_AP10`` over its images and the good ones (boxes on good images
        are false positives of every type) and its ``defect_recall``. ``image_AUROC`` is
        ``nan`` without good images (the pixel metrics then use the type's own normal pixels).

    Raises:
        ValueError: if an argument does not hold one entry per image.
    """
    kinds = np.asarray(list(defects), dtype=object)
    score_array = _scores_array(scores)
    predicted = _to_numpy(pred_labels).reshape(-1).astype(bool)
    map_list = _map_list(maps) if maps is not None else None
    mask_list = [(_to_numpy(m) != 0) for m in _map_list(masks)] if masks is not None else None
    counts = {
        "scores": score_array.size,
        "labels": predicted.size,
        **{
            name: len(value)
            for name, value in (("maps", map_list), ("masks", mask_list), ("boxes", boxes), ("box scores", box_scores))
            if value is not None
        },
    }
    if any(count != len(kinds) for count in counts.values()):
        raise ValueError(f"per_defect needs one entry per image ({len(kinds)} defect types); got {counts}")
    good = kinds == GOOD
    defect_pixels = sum(int(m.sum()) for m in mask_list) if mask_list is not None else 0
    out: dict[str, dict[str, float]] = {}
    for kind in sorted(set(kinds.tolist())):
        mine = kinds == kind
        row: dict[str, float] = {"images": int(mine.sum())}
        if kind == GOOD:
            row["flagged"] = float(predicted[mine].mean())
            out[kind] = row
            continue
        row["detected"] = float(predicted[mine].mean())
        both = mine | good
        row["image_AUROC"] = roc_auc(score_array[both], mine[both])
        if map_list is not None and mask_list is not None:
            chosen = np.flatnonzero(both)
            sub_maps = [map_list[i] for i in chosen]
            sub_masks = [mask_list[i] for i in chosen]
            flat_maps = _flat(sub_maps)
            row["pixel_AUROC"] = roc_auc(flat_maps, _flat(sub_masks))
            row["AUPRO"] = _aupro(sub_maps, sub_masks, 0.3, flat_maps)
            mine_pixels = sum(int(mask_list[i].sum()) for i in np.flatnonzero(mine))
            row["defect_pixel_share"] = mine_pixels / defect_pixels if defect_pixels else float("nan")
            if boxes is not None and box_scores is not None:
                scaled = box_masks if box_masks is not None else mask_list
                gt_boxes = [gt_boxes_from_mask(scaled[i]) for i in chosen]
                found = box_ap(gt_boxes, [boxes[i] for i in chosen], [box_scores[i] for i in chosen])
                row.update({key: found[key] for key in ("box_AP50", "box_AP25", "box_AP10")})
                row["defect_recall"] = defect_recall(
                    (scaled[i] for i in np.flatnonzero(mine)), [boxes[i] for i in np.flatnonzero(mine)]
                )
        out[kind] = row
    return out


def _xywh(boxes: np.ndarray) -> np.ndarray:
    return np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)


def _as_boxes(boxes: ArrayLike) -> np.ndarray:
    arr = np.asarray(_to_numpy(boxes), dtype=np.float64).reshape(-1, 4)
    return _xywh(arr)


def _coco_ann(ann_id: int, image_id: int, xywh: Sequence[float]) -> dict:
    x, y, w, h = (float(v) for v in xywh)
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}


def box_ap(
    gt_boxes: Sequence[ArrayLike],
    pred_boxes: Sequence[ArrayLike],
    pred_scores: Sequence[ArrayLike],
) -> dict[str, float]:
    """COCO box AP of a single "anomaly" category, computed by pycocotools.

    Args:
        gt_boxes: one ``[K, 4]`` array of ``x1, y1, x2, y2`` ground-truth boxes per image.
        pred_boxes: one ``[M, 4]`` array of predicted boxes per image.
        pred_scores: one ``[M]`` array of prediction scores per image.

    Returns:
        ``{"box_AP": AP@[.5:.95], "box_AP50": AP@.5, "box_AP25": AP@.25, "box_AP10": AP@.1}`` (up
        to 100 detections per image; the low IoUs suit anomaly boxes, whose extent is vaguer than
        an object's), all ``nan`` when there is no ground-truth box at all.

    Raises:
        ValueError: if the lists differ in length or boxes and scores disagree in count.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not len(gt_boxes) == len(pred_boxes) == len(pred_scores):
        raise ValueError("gt_boxes, pred_boxes and pred_scores need one entry per image")
    images = [{"id": i + 1} for i in range(len(gt_boxes))]
    categories = [{"id": 1, "name": "anomaly"}]
    gt_anns: list[dict] = []
    dt_anns: list[dict] = []
    for i, (gt, pb, ps) in enumerate(zip(gt_boxes, pred_boxes, pred_scores, strict=True)):
        for x, y, w, h in _as_boxes(gt):
            gt_anns.append(_coco_ann(len(gt_anns) + 1, i + 1, (x, y, w, h)))
        boxes = _as_boxes(pb)
        scores = np.asarray(_to_numpy(ps), dtype=np.float64).reshape(-1)
        if len(boxes) != len(scores):
            raise ValueError(f"image {i}: {len(boxes)} boxes but {len(scores)} scores")
        for (x, y, w, h), score in zip(boxes, scores, strict=True):
            dt_anns.append(_coco_ann(len(dt_anns) + 1, i + 1, (x, y, w, h)) | {"score": float(score)})
    names = ("box_AP", "box_AP50", "box_AP25", "box_AP10")
    if not gt_anns:
        return dict.fromkeys(names, float("nan"))

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "categories": categories, "annotations": gt_anns}
        coco_gt.createIndex()
        coco_dt = COCO()
        coco_dt.dataset = {"images": images, "categories": categories, "annotations": dt_anns}
        coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.maxDets = [1, 10, 100]
        # COCO's ten IoUs 0.50:0.95, then 0.25 and 0.10; every IoU is matched on its own.
        evaluator.params.iouThrs = np.r_[np.linspace(0.5, 0.95, 10), 0.25, 0.1]
        evaluator.evaluate()
        evaluator.accumulate()
    # precision [IoU, recall, category, area range, max detections]: all areas, 100 detections,
    # averaged over the recall points as COCOeval.summarize does (-1 marks undefined entries).
    precision = evaluator.eval["precision"][:, :, 0, 0, -1]

    def _mean(values: np.ndarray) -> float:
        valid = values[values > -1]
        return float(valid.mean()) if valid.size else float("nan")

    values = (_mean(precision[:10]), _mean(precision[0]), _mean(precision[10]), _mean(precision[11]))
    return dict(zip(names, values, strict=True))


def defect_recall(masks: Sequence[ArrayLike], boxes: Sequence[ArrayLike]) -> float:
    """Share of the ground-truth regions (8-connected components of the masks) that a box overlaps.

    A box overlaps a region when the region has a pixel inside the box (``x1 <= x < x2``,
    ``y1 <= y < y2``). Returns ``nan`` when the masks hold no region.
    """
    found = total = 0
    for mask, image_boxes in zip(masks, boxes, strict=True):
        mask_u8 = (_to_numpy(mask) != 0).astype(np.uint8)
        count, labels = cv2.connectedComponents(mask_u8, connectivity=8, ltype=cv2.CV_32S)
        total += count - 1
        hit: set[int] = set()
        for x1, y1, x2, y2 in np.asarray(_to_numpy(image_boxes), dtype=np.float64).reshape(-1, 4):
            top, left = max(int(np.floor(y1)), 0), max(int(np.floor(x1)), 0)
            window = labels[top : max(int(np.ceil(y2)), top), left : max(int(np.ceil(x2)), left)]  # (a box above or
            # left of the image is empty, not a slice from the other end)
            hit.update(np.unique(window).tolist())
        hit.discard(0)
        found += len(hit)
    return found / total if total else float("nan")


def gt_boxes_from_mask(mask: ArrayLike) -> np.ndarray:
    """Ground-truth boxes ``[K, 4]`` (``x1, y1, x2, y2``, exclusive ends) of a mask's 8-connected regions.

    Args:
        mask: binary mask ``[H, W]``.

    Returns:
        The boxes of :func:`otx.postprocess.mask_to_boxes`, without their scores.
    """
    return mask_to_boxes(_to_numpy(mask) != 0)[0]

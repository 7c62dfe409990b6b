"""Post-processing shared by every task, by torch inference and by exported models.

Raw model outputs (an anomaly map and an image score, in the model's own units) become
normalised scores in [0, 1] where 0.5 is the decision boundary: ``min-max`` normalisation
around the learned thresholds, as anomalib does it. The thresholds are F1-adaptive (the middle
of the F1-optimal interval, ``f1_adaptive_threshold``) on the validation split or set by
hand. ``PostProcessor`` is an ``nn.Module`` so that the
thresholds and statistics travel inside checkpoints and exported graphs.

The same ``normalize`` serves torch tensors and numpy arrays, so an OpenVINO output that
left the graph un-normalised is finished by exactly the same code.
"""

from __future__ import annotations

from typing import TypeVar

import cv2
import numpy as np
import torch
from torch import nn

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)

_EPS = 1e-12


def normalize(values: ArrayT, threshold: float, vmin: float, vmax: float) -> ArrayT:
    """Map raw scores to [0, 1] so that ``threshold`` lands on 0.5 (min-max around the threshold)."""
    span = max(float(vmax) - float(vmin), _EPS)
    return ((values - float(threshold)) / span + 0.5).clip(0.0, 1.0)


def known_pixel_rows(known: ArrayT | None, labels: ArrayT) -> ArrayT | None:
    """The images whose mask is their pixel truth, where that leaves some out; else None (all of them).

    ``known [N]``: False for an anomalous image without a mask file. Such images are left out of
    the pixel threshold and pixel metrics, unless no anomalous image has a mask at all (then every
    map counts, as before masks were checked per image). Used by the fit, otx train's pixel-level
    warnings and otx optimize's figures alike.
    """
    if known is None or bool(known.all()):
        return None
    return known if bool((known & (labels == 1)).any()) else None


def f1_adaptive_threshold(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Return a score threshold ``t`` that maximises F1 of ``scores >= t`` against binary ``labels``.

    F1 is constant while ``t`` moves between two adjacent distinct scores, so the optimum is an
    interval ``(s_below, s_best]``. anomalib returns its upper end ``s_best``: the lowest anomalous
    score the optimum keeps then sits exactly on the threshold, and the smallest shift (a new image
    a little less anomalous, FP16 or INT8 arithmetic) flips it to normal. This returns the middle
    of the interval, the threshold with the widest margin on both sides; its F1 on the validation
    scores is the same. (On the sample data, PADIM's F1-optimal interval on 14 validation images
    was 209-656 in raw score, and two defective test images scored 623 and 632: at the upper end
    they were "normal" and INT8 noise moved labels across; at the middle they are not.) When the
    optimum keeps every score (``s_best`` is the lowest), the threshold is just below ``s_best`` (by
    1 % of the finite scores' range, at least 1e-6 of ``s_best``), so no score sits on it and float
    noise cannot flip that image. With no
    positive label (nothing anomalous to separate) the threshold is just above the largest score
    (by 1 % of the scores' range), so every validation image counts as normal under ``>=``.

    The two classes are sorted apart (numpy, by value only) and F1 is evaluated at the distinct
    anomalous scores only (lowering the threshold to a normal score adds false positives and no
    true one, so the optimum is always at an anomalous score): on 19 M validation pixels the
    former argsort with float64 cumulative sums held about 0.9 GB at once, the process's peak.
    """
    values = torch.as_tensor(scores).detach().cpu().flatten()
    if values.dtype in (torch.float16, torch.bfloat16):
        values = values.float()
    s = values.numpy()
    truth = torch.as_tensor(labels).detach().cpu().flatten().numpy() != 0
    if s.size == 0:
        raise ValueError("cannot compute a threshold from zero scores")
    if s.size != truth.size:
        raise ValueError(f"scores ({s.size}) and labels ({truth.size}) differ in size")
    n_pos = int(np.count_nonzero(truth))
    if n_pos == 0:
        top, bottom = float(s.max()), float(s.min())
        return top + max(0.01 * (top - bottom), 1e-6 * max(abs(top), 1.0))
    pos, neg = np.sort(s[truth]), np.sort(s[~truth])
    candidates = np.unique(pos)  # ascending; "scores >= t" for each
    tp = n_pos - np.searchsorted(pos, candidates, "left")
    fp = neg.size - np.searchsorted(neg, candidates, "left")
    f1 = 2.0 * tp / (tp + fp + n_pos)  # 2 TP / (2 TP + FP + FN); equal ratios give equal floats
    best_index = f1.size - 1 - int(np.argmax(f1[::-1]))  # the highest threshold among equal F1s
    best = float(candidates[best_index])
    lower = [float(x[i - 1]) for x in (pos, neg) if (i := int(np.searchsorted(x, candidates[best_index], "left")))]
    below = max(lower) if lower else -np.inf
    finite = s[np.isfinite(s)]
    if not np.isfinite(below):  # every score is at or above it (or the one below is -inf): a margin below it
        top = float(finite.max()) if finite.size else best
        return stored_between(below, best, best - max(0.01 * (top - best), 1e-6 * max(abs(best), 1.0)))
    if not np.isfinite(best):  # only +inf scores above: a margin above the highest finite one
        bottom = float(finite.min())
        return stored_between(below, best, below + max(0.01 * (below - bottom), 1e-6 * max(abs(below), 1.0)))
    return stored_between(below, best, (best + below) / 2)


def stored_between(below: float, best: float, threshold: float) -> float:
    """``threshold`` as the float32 the post-processor stores, kept above ``below`` (at most ``best``).

    The post-processor's buffers are float32: a midpoint of two float32 scores a few units of the
    last place apart rounds onto one of them (validation F1 1.0 -> 0.67 on two adjacent scores).
    """
    stored = np.float32(threshold)
    if stored <= below:
        stored = np.nextafter(np.float32(below), np.float32(np.inf))
    return float(min(stored, np.float32(best)) if np.isfinite(best) else stored)


def threshold_origin(
    given: list[str] | None, recalibrated: list[str], trained: dict[str, float], precision: str = "FP32"
) -> dict[str, str]:
    """How each threshold was set, in words (metrics.json and the report of ``otx test``).

    Args:
        given: the thresholds set by hand (``image``, ``pixel``); None when the model does not
            record it (an export by an older otx).
        recalibrated: the thresholds moved on the validation split for an FP16 or INT8 model.
        trained: the trained model's thresholds (before any such move), raw: a pixel threshold
            equal to the image threshold was not learned but copied (``PostProcessor.fit``: no
            defect pixels to learn from).
        precision: the model's precision (``FP32``, ``FP16``, ``INT8``).
    """
    origin = {}
    copied = trained.get("pixel_threshold") == trained.get("image_threshold")
    for name in ("image", "pixel"):
        if given is None:
            how = "learned or given (this export does not record which)"
        elif name in given:
            how = f"given ({name}_threshold)"
        elif name == "pixel" and copied:
            how = "the image threshold's value: the validation split had no defect pixels to learn one from"
        elif trained.get(f"{name}_threshold", 0.0) > trained.get(f"{name}_max", float("inf")):
            # (f1_adaptive_threshold: above every validation value only when none is anomalous)
            how = (
                "not learned: just above the highest validation score, the validation split had no anomalous "
                f"{'images' if name == 'image' else 'pixels'} to learn one from"
            )
        else:
            how = "learned: the F1-best on the validation split"
        if name in recalibrated:
            how += f"; moved on the validation split to keep the decisions at {precision}"
        origin[name] = how
    return origin


# the post-processor's statistics, in its buffers' order: checkpoints, export metadata and recalibration name them so
STAT_KEYS = ("image_threshold", "pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max")


class PostProcessor(nn.Module):
    """Thresholds and normalisation statistics, fitted on the validation split.

    ``forward`` turns raw ``(anomaly_map, pred_score)`` into normalised score, label, map and
    mask; it is traced into exported graphs. All statistics are buffers, saved in checkpoints.
    """

    def __init__(self) -> None:
        super().__init__()
        for name in STAT_KEYS:
            self.register_buffer(name, torch.tensor(float("nan")))

    @property
    def is_fitted(self) -> bool:
        """True once thresholds and statistics hold numbers."""
        return bool(torch.isfinite(self.image_threshold)) and bool(torch.isfinite(self.pixel_max))

    def fit(
        self,
        scores: torch.Tensor,
        labels: torch.Tensor,
        maps: torch.Tensor,
        masks: torch.Tensor | None = None,
        image_threshold: float | None = None,
        pixel_threshold: float | None = None,
        pixel_known: torch.Tensor | None = None,
    ) -> None:
        """Learn thresholds (F1-adaptive unless given) and min/max from validation outputs.

        Args:
            scores: raw image scores, shape ``[N]``.
            labels: 1 for anomalous, 0 for normal images, shape ``[N]``.
            maps: raw anomaly maps, shape ``[N, H, W]``.
            masks: ground-truth masks at the maps' size, or None when the data has none; the
                pixel threshold then equals the image threshold (both are in the same units).
            image_threshold: manual raw image threshold, or None for F1-adaptive.
            pixel_threshold: manual raw pixel threshold, or None for F1-adaptive.
            pixel_known: ``[N]`` bool, the images whose mask is their truth (None: all); the
                F1-adaptive pixel threshold is fitted on those only, the min/max on every map.
        """
        img_t = image_threshold if image_threshold is not None else f1_adaptive_threshold(scores, labels)
        if pixel_threshold is not None:
            pix_t = pixel_threshold
        elif masks is not None and pixel_known is not None and bool(masks[pixel_known].any()):
            pix_t = f1_adaptive_threshold(maps[pixel_known], masks[pixel_known])
        elif masks is not None and bool(masks.any()):
            pix_t = f1_adaptive_threshold(maps, masks)
        else:
            pix_t = img_t
        self.image_threshold.fill_(img_t)
        self.pixel_threshold.fill_(pix_t)
        # the range of the finite values: one infinite score would make every normalised score 0.5
        for (low, high), values in (
            ((self.image_min, self.image_max), scores),
            ((self.pixel_min, self.pixel_max), maps),
        ):
            kept = torch.isfinite(values)
            finite = values if bool(kept.all()) else values[kept]  # (a copy only then: 76 MB of validation maps)
            low.fill_(float(finite.min()) if finite.numel() else float("nan"))
            high.fill_(float(finite.max()) if finite.numel() else float("nan"))

    def forward(self, anomaly_map: torch.Tensor, pred_score: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalise raw outputs; ``anomaly_map`` is ``[B, H, W]`` or ``[B, 1, H, W]``, ``pred_score`` ``[B]``."""
        if anomaly_map.dim() == 4:
            anomaly_map = anomaly_map[:, 0]
        score = self._normalize(pred_score, self.image_threshold, self.image_min, self.image_max)
        amap = self._normalize(anomaly_map, self.pixel_threshold, self.pixel_min, self.pixel_max)
        return {
            "pred_score": score,
            "pred_label": score >= 0.5,
            "anomaly_map": amap,
            "pred_mask": amap >= 0.5,
        }

    @staticmethod
    def _normalize(x: torch.Tensor, threshold: torch.Tensor, vmin: torch.Tensor, vmax: torch.Tensor) -> torch.Tensor:
        # Tensor arithmetic (not float()) so that tracing keeps the statistics as graph constants.
        return ((x - threshold) / (vmax - vmin).clamp_min(_EPS) + 0.5).clamp(0.0, 1.0)

    def stats(self) -> dict[str, float]:
        """The fitted statistics as plain floats (for metadata and metrics.json)."""
        return {name: float(buf) for name, buf in self.named_buffers()}


def mask_to_boxes(mask: np.ndarray, score_map: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Boxes around the 8-connected components of a binary mask.

    Returns ``(boxes, scores)``: boxes as ``[K, 4]`` float ``x1, y1, x2, y2`` with exclusive
    ends (a one-pixel component at (x, y) is ``[x, y, x+1, y+1]``), and each box's score, the
    maximum of ``score_map`` inside its component (1.0 for every box without a map).
    """
    mask_u8 = np.ascontiguousarray(mask, dtype=np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask_u8, connectivity=8)
    if n <= 1:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    x, y, w, h = (stats[1:, i].astype(np.float32) for i in range(4))
    boxes = np.stack([x, y, x + w, y + h], axis=1)
    if score_map is None:
        return boxes, np.ones(n - 1, np.float32)
    flat_labels = labels.ravel()
    maxima = np.full(n, -np.inf, dtype=np.float64)
    np.maximum.at(maxima, flat_labels, score_map.ravel().astype(np.float64))
    return boxes, maxima[1:].astype(np.float32)

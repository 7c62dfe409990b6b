"""Prediction objects and the task adapter base shared by torch and exported-model inference."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import cv2
import numpy as np

from otx.boxes import BoxSettings
from otx.preprocess import PreProcessor


class AnomalyTask(StrEnum):
    """The three anomaly tasks."""

    CLASSIFICATION = "classification"
    DETECTION = "detection"
    SEGMENTATION = "segmentation"


@dataclass
class Prediction:
    """What a model says about one image, at the image's original size.

    ``pred_score`` is normalised to [0, 1] with 0.5 the decision boundary, and clipped: images
    scored beyond the validation split's range all read 0.0 or 1.0, so rank images by the raw
    scores ``otx test``'s metrics use (``raw_score``), not by ``pred_score``. ``pred_label`` is True for anomalous.
    Maps, masks and boxes are filled by the tasks that produce them. ``raw_score`` is the model's own
    score, in the units of its raw image threshold, where the scorer gives it (a checkpoint; an
    exported model in ``otx test``); None where only the normalised score is known (``otx predict``
    with an exported model, whose graph normalises).

    An image that could not be read has no decision: ``failed`` is True, ``error`` holds the reason,
    ``pred_label`` is None, ``pred_score`` NaN and ``label_name`` ``"error"`` (never ``"normal"``).
    """

    image_path: str
    pred_score: float
    pred_label: bool | None
    anomaly_map: np.ndarray | None = None
    pred_mask: np.ndarray | None = None
    pred_boxes: np.ndarray | None = None
    box_scores: np.ndarray | None = None
    error: str = ""
    mask_file: str = ""  # where `otx predict` wrote the mask, relative to its predictions folder
    overlay_file: str = ""  # where `otx predict` wrote the overlay, relative to its predictions folder
    raw_score: float | None = None  # the score before normalisation (ranks images; not clipped)

    @classmethod
    def unreadable(cls, image_path: str, error: str) -> Prediction:
        """The record of an image that could not be read: no score, no label, the reason."""
        return cls(image_path, float("nan"), None, error=error or "unreadable image")

    @property
    def failed(self) -> bool:
        """True for an image that could not be read (no decision; ``error`` says why)."""
        return self.label_name == "error"

    @property
    def label_name(self) -> str:
        """``anomalous``, ``normal``, or ``error`` for an image that could not be read."""
        if self.error or self.pred_label is None:
            return "error"
        return "anomalous" if self.pred_label else "normal"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready record (maps and masks are written as files, not inline)."""
        record: dict[str, Any] = {
            "image": self.image_path,
            "score": None if self.label_name == "error" else round(float(self.pred_score), 6),
            "label": self.label_name,
        }
        if self.raw_score is not None and self.label_name != "error":
            record["raw_score"] = float(self.raw_score)
        if self.pred_boxes is not None and self.box_scores is not None:
            record["boxes"] = [
                {"xyxy": [round(float(v), 2) for v in box], "score": round(float(score), 6)}
                for box, score in zip(self.pred_boxes, self.box_scores, strict=True)
            ]
        if self.mask_file:
            record["mask"] = self.mask_file
        if self.overlay_file:  # (its name alone can look like another image's: x/c.png is x__c_png beside x/c_png.png)
            record["overlay"] = self.overlay_file
        if self.error:
            record["error"] = self.error
        return record


def resize_map(anomaly_map: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize a model-resolution map to an image's original ``(height, width)`` (bilinear)."""
    height, width = int(size_hw[0]), int(size_hw[1])
    if anomaly_map.shape == (height, width):
        return anomaly_map.astype(np.float32, copy=False)
    return cv2.resize(anomaly_map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


class TaskAdapter:
    """Turns normalised model outputs (numpy, any source) into ``Prediction`` objects for one task."""

    task: AnomalyTask = AnomalyTask.CLASSIFICATION
    pixel_level: bool = False
    box_level: bool = False

    def predictions(self, *args: Any, **kwargs: Any) -> list[Prediction]:
        """``iter_predictions`` (the same arguments), all at once."""
        return list(self.iter_predictions(*args, **kwargs))

    def iter_predictions(
        self,
        outputs: dict[str, np.ndarray],
        paths: list[str],
        orig_sizes: np.ndarray,
        preprocessor: PreProcessor | None = None,
        boxes: BoxSettings | None = None,
        images: Sequence[np.ndarray] | None = None,
    ) -> Iterator[Prediction]:
        """Predictions from a batch of normalised outputs, one at a time (``list()`` for all at once).

        Each map is restored to its image's size only when its turn comes, so a caller that writes
        each prediction's files and drops its map holds one full-size map, not a batch of them (16
        maps of 3000x4000 are 768 MB).

        Args:
            outputs: ``pred_score [B]``, ``pred_label [B]`` and, for pixel tasks, ``anomaly_map [B, h, w]``
                normalised so that 0.5 is the pixel threshold.
            paths: image path per item.
            orig_sizes: ``[B, 2]`` original ``(height, width)`` per item.
            preprocessor: the model's input mode, which ``restore`` s each map to its image's
                size (None: the maps were resized, the ``resize`` mode).
            boxes: how the detection task cuts boxes from the maps (None: ``BoxSettings()``).
            images: the images (``H x W x 3`` RGB ``uint8``) when the caller holds them, for boxes
                that are snapped to the image (``BoxSettings.refine``); otherwise they are read
                from ``paths`` when needed.
        """
        boxes = boxes or BoxSettings()
        restore = preprocessor.restore if preprocessor is not None else resize_map
        for i, path in enumerate(paths):
            pred = Prediction(path, float(outputs["pred_score"][i]), bool(outputs["pred_label"][i]))
            if "raw_score" in outputs:  # an exported model's raw outputs, when asked for
                pred.raw_score = float(outputs["raw_score"][i])
            if self.pixel_level:
                image = images[i] if images is not None else None
                self.finish(pred, restore(outputs["anomaly_map"][i], tuple(orig_sizes[i])), boxes, image)
            yield pred

    def finish(
        self, prediction: Prediction, anomaly_map: np.ndarray, boxes: BoxSettings, image: np.ndarray | None = None
    ) -> None:
        """Add the task's pixel-level outputs from the full-size normalised map (and the image, for boxes)."""

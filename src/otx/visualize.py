"""Overlays: what the model sees on each image, drawn with OpenCV.

One function, ``overlay``, serves ``otx predict`` (an image per prediction), the worst cases in
``otx test``'s report, and predictions from torch, exported and INT8 models alike (it reads only
``Prediction`` objects). Colours are for the RGB image; files are written as BGR by ``write_overlay``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from otx.tasks import Prediction

ANOMALOUS = (230, 40, 40)  # red
NORMAL = (40, 170, 60)  # green
MASK_OUTLINE = (255, 255, 255)  # white: predicted mask
GT_OUTLINE = (0, 255, 0)  # bright green: ground truth
BOX = (255, 220, 0)  # yellow: predicted boxes
HEAT_WEIGHT = 0.45  # share of the heat map in the blend


def _outline(canvas: np.ndarray, mask: np.ndarray, color: tuple[int, int, int], thickness: int) -> None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, color, thickness, lineType=cv2.LINE_AA)


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], color: tuple[int, int, int], scale: float) -> None:
    thickness = max(1, int(round(scale * 2)))
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x, y = origin
    cv2.rectangle(canvas, (x, y - height - baseline), (x + width + 4, y + baseline), (0, 0, 0), cv2.FILLED)
    cv2.putText(canvas, text, (x + 2, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)


def overlay(image: np.ndarray, prediction: Prediction, gt_mask: np.ndarray | None = None) -> np.ndarray:
    """The image (``H x W x 3`` RGB uint8) with the model's view of it drawn on top.

    - the anomaly map blended in as a heat map (JET: blue normal, red anomalous), when the task
      has one;
    - the predicted mask's outline in white (segmentation) or the boxes in yellow with their
      scores (detection);
    - the ground-truth outline in green, when ``gt_mask`` is given;
    - the label and normalised score as text, red for anomalous, green for normal, and a frame
      of the same colour.
    """
    canvas = np.ascontiguousarray(image[..., :3], dtype=np.uint8).copy()
    height, width = canvas.shape[:2]
    scale = max(0.4, min(height, width) / 600.0)
    line = max(1, int(round(min(height, width) / 200.0)))
    if prediction.anomaly_map is not None:
        heat_u8 = np.clip(prediction.anomaly_map * 255.0, 0, 255).astype(np.uint8)
        heat = cv2.cvtColor(cv2.applyColorMap(heat_u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
        canvas = cv2.addWeighted(canvas, 1.0 - HEAT_WEIGHT, heat, HEAT_WEIGHT, 0.0)
    if prediction.pred_boxes is not None:
        scores = prediction.box_scores if prediction.box_scores is not None else np.ones(len(prediction.pred_boxes))
        for box, score in zip(prediction.pred_boxes, scores, strict=True):
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            cv2.rectangle(canvas, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), BOX, line, cv2.LINE_AA)
            _text(canvas, f"{score:.2f}", (x1, max(y1 - 2, 12)), BOX, scale * 0.8)
    elif prediction.pred_mask is not None:
        _outline(canvas, prediction.pred_mask, MASK_OUTLINE, line)
    if gt_mask is not None and gt_mask.any():
        _outline(canvas, gt_mask, GT_OUTLINE, line)
    color = ANOMALOUS if prediction.pred_label else NORMAL
    cv2.rectangle(canvas, (0, 0), (width - 1, height - 1), color, line)
    _text(
        canvas, f"{prediction.label_name} {prediction.pred_score:.3f}", (line + 2, int(24 * scale) + line), color, scale
    )
    return canvas


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a grayscale or BGR image as a PNG, its folder created; OSError when OpenCV cannot (a full disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write '{path}'")


def write_overlay(path: Path, canvas: np.ndarray) -> None:
    """Write an RGB overlay as a PNG."""
    write_png(path, cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))

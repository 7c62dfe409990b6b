"""Overlays: what the model sees on each image, drawn with OpenCV.

One function, ``overlay``, serves ``otx predict`` (an image per prediction), the worst cases in
``otx test``'s report, and predictions from torch, exported and INT8 models alike (it reads only
``Prediction`` objects). Colours are for the RGB image; files are written as BGR by ``write_overlay``.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from otx.tasks import Prediction

ANOMALOUS = (230, 40, 40)  # red
NORMAL = (40, 170, 60)  # green
MASK_OUTLINE = (255, 255, 255)  # white: predicted mask
GT_OUTLINE = (0, 255, 0)  # bright green: ground truth
BOX = (255, 0, 255)  # magenta: predicted boxes (a colour the JET heat map has nowhere; its yellow hid them)
HEAT_WEIGHT = 0.45  # share of the heat map in the blend


def _outline(canvas: np.ndarray, mask: np.ndarray, color: tuple[int, int, int], thickness: int) -> None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, color, thickness, lineType=cv2.LINE_AA)


Rect = tuple[int, int, int, int]  # x1, y1, x2, y2 of a label's background


def _text_box(text: str, origin: tuple[int, int], scale: float) -> Rect:
    """Where ``_text`` would draw ``text`` with its baseline at ``origin``."""
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, _thickness(scale))
    x, y = origin
    return x, y - height - baseline, x + width + 4, y + baseline


def _thickness(scale: float) -> int:
    return max(1, int(round(scale * 2)))


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], color: tuple[int, int, int], scale: float) -> Rect:
    x1, y1, x2, y2 = rect = _text_box(text, origin, scale)
    cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 0, 0), cv2.FILLED)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(canvas, text, (origin[0] + 2, origin[1]), font, scale, color, _thickness(scale), cv2.LINE_AA)
    return rect


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _clearance(line: int) -> int:
    """How far a label keeps from the centre of a box's line ``line`` pixels wide (drawn centred)."""
    return line // 2 + 1


def _box_lines(box: Rect, line: int) -> list[Rect]:
    """A drawn box's four lines (``line`` pixels wide, centred on its edges), as rectangles."""
    x1, y1, x2, y2 = box
    pad = _clearance(line)
    return [
        (x1 - pad, y1 - pad, x2 + pad, y1 + pad),
        (x1 - pad, y2 - 1 - pad, x2 + pad, y2 - 1 + pad),
        (x1 - pad, y1 - pad, x1 + pad, y2 + pad),
        (x2 - 1 - pad, y1 - pad, x2 - 1 + pad, y2 + pad),
    ]


def _box_label_origin(
    text: str, box: Rect, scale: float, taken: list[Rect], size: tuple[int, int], line: int, lines: list[Rect]
) -> tuple[int, int]:
    """Where a box's score goes (its baseline's start).

    Above the box, else below it, else inside it in a corner where it fits (top left, top right,
    bottom left, bottom right): the first place that covers no box's line (``lines``: every box's,
    ``_box_lines``) and no label drawn before, and stays on the canvas; else the first that leaves
    this box's own lines uncovered; else the first that covers no label; else above, moved onto the
    canvas. Before, a score above a box sat on its top line, one inside a small box covered its
    right line, and one of a box filling the image lay under the image's label (a review).
    """
    x1, y1, x2, y2 = box
    height, width = size
    first = _text_box(text, (0, 0), scale)
    above, below = -first[1], first[3]  # the text's extent over and under its baseline
    pad = _clearance(line)
    right = x2 - pad - (first[2] - first[0])
    top, bottom = y1 + pad + above, y2 - pad - below
    candidates = [(x1, y1 - pad - below), (x1, y2 + pad + above), (x1 + pad, top), (right, top)]
    candidates += [(x1 + pad, bottom), (right, bottom)]
    own = _box_lines(box, line)
    for avoid in ((*taken, *lines), (*taken, *own), tuple(taken)):
        for origin in candidates:
            rect = _text_box(text, (min(origin[0], max(0, width - first[2])), origin[1]), scale)
            if rect[1] >= 0 and rect[3] <= height and not any(_overlaps(rect, other) for other in avoid):
                return rect[0], origin[1]
    return min(x1, max(0, width - first[2])), max(y1 - pad - below, above)


def overlay(image: np.ndarray, prediction: Prediction, gt_mask: np.ndarray | None = None) -> np.ndarray:
    """The image (``H x W x 3`` RGB uint8) with the model's view of it drawn on top.

    - the anomaly map blended in as a heat map (JET: blue normal, red anomalous), when the task
      has one;
    - the predicted mask's outline in white (segmentation) or the boxes in magenta with their
      scores (detection);
    - the ground-truth outline in green, when ``gt_mask`` is given;
    - the label and normalised score as text, red for anomalous, green for normal, and a frame
      of the same colour; the text in the corner where it hides the least of the above.
    """
    factor = upscale_factor(image.shape[:2])
    canvas = _enlarge(np.ascontiguousarray(image[..., :3], dtype=np.uint8), factor).copy()
    height, width = canvas.shape[:2]
    scale = max(0.4, min(height, width) / 600.0)
    line = max(1, int(round(min(height, width) / 200.0)))
    if prediction.anomaly_map is not None:
        heat_u8 = np.clip(_enlarge(prediction.anomaly_map, factor) * 255.0, 0, 255).astype(np.uint8)
        heat = cv2.cvtColor(cv2.applyColorMap(heat_u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
        canvas = cv2.addWeighted(canvas, 1.0 - HEAT_WEIGHT, heat, HEAT_WEIGHT, 0.0)
    color = ANOMALOUS if prediction.pred_label else NORMAL
    # The frame first: boxes and outlines along the image's edge are drawn over it, not hidden by
    # it (a box spanning a 40-pixel strip's height kept one line of four).
    cv2.rectangle(canvas, (0, 0), (width - 1, height - 1), color, line)
    label = f"{prediction.label_name} {prediction.pred_score:.3f}"
    room = width - 2 * line - 4
    if (wide := _text_box(label, (0, 0), scale)[2]) > room > 0:  # a thin image whose enlargement is capped
        scale = max(MIN_SCALE, scale * room / wide)
    label_origin = _label_origin(
        label, scale, line, (height, width), _busy(prediction, gt_mask, image.shape[:2], factor)
    )
    taken = [_text_box(label, label_origin, scale)]  # box scores keep off the image's label
    scores_at: list[tuple[str, tuple[int, int]]] = []
    if prediction.pred_boxes is not None:
        scores = prediction.box_scores if prediction.box_scores is not None else np.ones(len(prediction.pred_boxes))
        drawn: list[Rect] = [tuple(int(round(v * factor)) for v in box) for box in prediction.pred_boxes]  # type: ignore[misc]
        lines = [rect for box in drawn for rect in _box_lines(box, line)]
        for (x1, y1, x2, y2), score in zip(drawn, scores, strict=True):
            cv2.rectangle(canvas, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), BOX, line, cv2.LINE_AA)
            text = f"{score:.2f}"
            origin = _box_label_origin(text, (x1, y1, x2, y2), scale * 0.8, taken, (height, width), line, lines)
            taken.append(_text_box(text, origin, scale * 0.8))
            scores_at.append((text, origin))
    elif prediction.pred_mask is not None:
        _outline(canvas, _enlarge(prediction.pred_mask, factor), MASK_OUTLINE, line)
    if gt_mask is not None and gt_mask.any():
        _outline(canvas, _enlarge(gt_mask, factor), GT_OUTLINE, line)
    for text, origin in scores_at:  # text last, so no box or outline crosses it
        _text(canvas, text, origin, BOX, scale * 0.8)
    _text(canvas, label, label_origin, color, scale)
    return canvas


def _busy(prediction: Prediction, gt_mask: np.ndarray | None, size: tuple[int, int], factor: int) -> np.ndarray | None:
    """The pixels the image's label should not hide, at the overlay's size; None when there are none.

    The ground truth, the predicted mask and boxes, the map at or above the threshold (all at the
    image's own ``size``, then enlarged by ``factor`` as the overlay is).
    """
    busy = np.zeros(size, bool)
    for part in (
        gt_mask,
        prediction.pred_mask,
        None if prediction.anomaly_map is None else prediction.anomaly_map >= 0.5,
    ):
        if part is not None and part.shape == size:
            busy |= part.astype(bool)
    for x1, y1, x2, y2 in (
        np.asarray(prediction.pred_boxes if prediction.pred_boxes is not None else np.zeros((0, 4))).round().astype(int)
    ):
        busy[max(0, y1) : max(0, y2), max(0, x1) : max(0, x2)] = True
    return _enlarge(busy, factor) if busy.any() else None


def _label_origin(
    label: str, scale: float, line: int, size: tuple[int, int], busy: np.ndarray | None
) -> tuple[int, int]:
    """Where the image's label goes: the corner where it hides the fewest ``busy`` pixels.

    Top left, top right, bottom left, bottom right, the first of those that hide the fewest (top
    left when nothing is busy). Before, always top left, where it could cover the very defect the
    overlay shows (a break at the top left of a magnetic_tile image, helper-38).
    """
    height, width = size
    first = _text_box(label, (0, 0), scale)
    above, below, wide = -first[1], first[3], first[2]
    left, right = line + 2, max(line + 2, width - line - 2 - wide)
    top, bottom = above + line, max(above + line, height - line - below)
    corners = [(left, top), (right, top), (left, bottom), (right, bottom)]
    if busy is None:  # (else the overlay's size: _busy enlarges as the canvas is enlarged)
        return corners[0]

    def hidden(origin: tuple[int, int]) -> int:
        x1, y1, x2, y2 = _text_box(label, origin, scale)
        return int(np.count_nonzero(busy[max(0, y1) : max(0, y2), max(0, x1) : max(0, x2)]))

    return min(corners, key=hidden)  # ties: the earlier corner


# Overlays of images whose shorter side is below this are drawn on the image enlarged by a whole
# factor (each pixel a square block), so the label fits: at 40x40 "anomalous 0.873" was cut after
# "anom". The longer side stays within MAX_SIDE.
MIN_SIDE = 256
MAX_SIDE = 4096
MIN_SCALE = 0.25  # the smallest font: a label wider than a thin image (enlarged at most to MAX_SIDE) shrinks to fit


def upscale_factor(size: tuple[int, int]) -> int:
    """The whole factor ``overlay`` enlarges an image of ``size`` (height, width) by; 1 for most images."""
    short, long = min(size), max(size)
    if short >= MIN_SIDE or short == 0:
        return 1
    return max(1, min(math.ceil(MIN_SIDE / short), MAX_SIDE // max(1, long)))


def _enlarge(array: np.ndarray, factor: int) -> np.ndarray:
    """Each pixel as a ``factor`` x ``factor`` block (masks, maps and images alike)."""
    if factor == 1:
        return array
    return np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a grayscale or BGR image as a PNG, its folder created; OSError when OpenCV cannot (a full disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Encoded here and written by Python: cv2.imwrite crashes the process (SIGSEGV) on a path that is
    # not valid UTF-8 (a name from a Windows zip, such as b"Pr\xfcfteil.png"), which Python keeps as is.
    done, encoded = cv2.imencode(".png", image)
    if not done:
        raise OSError(f"could not write '{path}'")
    path.write_bytes(encoded.tobytes())


def thumbnail(canvas: np.ndarray, width: int, quality: int = 90) -> bytes:
    """An RGB overlay as JPEG bytes, at most ``width`` pixels wide (shrunk by area averaging)."""
    if canvas.shape[1] > width:
        height = max(1, round(canvas.shape[0] * width / canvas.shape[1]))
        canvas = cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA)
    done, encoded = cv2.imencode(".jpg", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not done:
        raise OSError("could not encode an overlay as JPEG")
    return encoded.tobytes()


def write_overlay(path: Path, canvas: np.ndarray) -> None:
    """Write an RGB overlay as a PNG."""
    write_png(path, cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))

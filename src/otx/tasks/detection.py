"""Anomaly detection: boxes around the defects, cut from the anomaly map by the model's box settings."""

import functools

import numpy as np

from otx.boxes import BoxSettings, boxes_from_map
from otx.data.io import read_image
from otx.tasks.base import AnomalyTask, Prediction, TaskAdapter


class DetectionAdapter(TaskAdapter):
    """Boxes by ``otx.boxes.boxes_from_map``: none on images labelled normal unless the settings ask.

    The map and its mask (>= 0.5) are kept too, for overlays (the heat map under the boxes). Boxes
    snapped to the image (``BoxSettings.refine``) use ``image``, or read it from the prediction's path
    when the map gives boxes.
    """

    task = AnomalyTask.DETECTION
    pixel_level = True
    box_level = True

    def finish(  # noqa: D102
        self, prediction: Prediction, anomaly_map: np.ndarray, boxes: BoxSettings, image: np.ndarray | None = None
    ) -> None:
        prediction.anomaly_map = anomaly_map
        prediction.pred_mask = anomaly_map >= 0.5
        source = image if image is not None else functools.partial(read_image, prediction.image_path)
        prediction.pred_boxes, prediction.box_scores = boxes_from_map(
            anomaly_map, prediction.pred_label, boxes, source if boxes.refine != "none" else None
        )

"""Anomaly segmentation: score, label, anomaly map and defect mask."""

import numpy as np

from otx.boxes import BoxSettings
from otx.tasks.base import AnomalyTask, Prediction, TaskAdapter


class SegmentationAdapter(TaskAdapter):
    """Keeps the full-size normalised anomaly map and its mask (map >= 0.5)."""

    task = AnomalyTask.SEGMENTATION
    pixel_level = True

    def finish(  # noqa: D102
        self, prediction: Prediction, anomaly_map: np.ndarray, boxes: BoxSettings, image: np.ndarray | None = None
    ) -> None:
        del boxes, image
        prediction.anomaly_map = anomaly_map
        prediction.pred_mask = anomaly_map >= 0.5

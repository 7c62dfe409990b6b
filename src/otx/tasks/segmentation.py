"""Anomaly segmentation: score, label, anomaly map and defect mask."""

import numpy as np

from otx.boxes import BoxSettings
from otx.tasks.base import AnomalyTask, Prediction, TaskAdapter


class SegmentationAdapter(TaskAdapter):
    """Keeps the full-size normalised anomaly map and its mask (map >= 0.5)."""

    task = AnomalyTask.SEGMENTATION
    pixel_level = True

    def finish(self, prediction: Prediction, anomaly_map: np.ndarray, boxes: BoxSettings) -> None:  # noqa: D102
        del boxes
        prediction.anomaly_map = anomaly_map
        prediction.pred_mask = anomaly_map >= 0.5

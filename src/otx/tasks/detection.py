"""Anomaly detection: boxes around the connected components of the thresholded anomaly map."""

import numpy as np

from otx.postprocess import mask_to_boxes
from otx.tasks.base import AnomalyTask, Prediction, TaskAdapter


class DetectionAdapter(TaskAdapter):
    """Each box is a connected component of (map >= 0.5), scored by the map's maximum inside it."""

    task = AnomalyTask.DETECTION
    pixel_level = True
    box_level = True

    def finish(self, prediction: Prediction, anomaly_map: np.ndarray) -> None:  # noqa: D102
        mask = anomaly_map >= 0.5
        prediction.pred_mask = mask
        prediction.pred_boxes, prediction.box_scores = mask_to_boxes(mask, anomaly_map)

"""Anomaly classification: an image score and a normal/anomalous label."""

from otx.tasks.base import AnomalyTask, TaskAdapter


class ClassificationAdapter(TaskAdapter):
    """Score and label only; no map is resized or kept."""

    task = AnomalyTask.CLASSIFICATION

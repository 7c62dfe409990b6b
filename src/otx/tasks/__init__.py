"""Task adapters: classification (score, label), detection (boxes), segmentation (mask)."""

from enum import Enum

from otx.errors import OTXConfigError
from otx.tasks.base import AnomalyTask, Prediction, TaskAdapter
from otx.tasks.classification import ClassificationAdapter
from otx.tasks.detection import DetectionAdapter
from otx.tasks.segmentation import SegmentationAdapter

ADAPTERS: dict[AnomalyTask, type[TaskAdapter]] = {
    AnomalyTask.CLASSIFICATION: ClassificationAdapter,
    AnomalyTask.DETECTION: DetectionAdapter,
    AnomalyTask.SEGMENTATION: SegmentationAdapter,
}


def get_adapter(task: str | AnomalyTask) -> TaskAdapter:
    """The adapter for a task name (case-insensitive; a text enum by its value, as anomalib's ``TaskType``)."""
    name = task.value if isinstance(task, Enum) else task
    try:
        return ADAPTERS[AnomalyTask(str(name).lower())]()
    except ValueError as exc:
        choices = ", ".join(t.value for t in AnomalyTask)
        raise OTXConfigError(f"unknown task '{task}'; choose one of {choices}") from exc


__all__ = ["ADAPTERS", "AnomalyTask", "Prediction", "TaskAdapter", "get_adapter"]

"""Model cores. Each is a LightningModule subclass of ``AnomalyModel``; recipes name them by class_path."""

from otx.models.base import AnomalyModel
from otx.models.padim import Padim
from otx.models.stfpm import Stfpm

__all__ = ["AnomalyModel", "Padim", "Stfpm"]

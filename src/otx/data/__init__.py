"""Data: MVTec-layout indexing (Datumaro), datasets, the datamodule and the sample-data generator."""

from otx.data.datamodule import AnomalyDataModule, AnomalyDataset
from otx.data.dataset import Sample, index_mvtec

__all__ = ["AnomalyDataModule", "AnomalyDataset", "Sample", "index_mvtec"]

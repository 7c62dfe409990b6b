"""Typed results of the verbs: what ``Engine.train/test/export/optimize/benchmark`` return.

Each is a dataclass (attribute access, type hints) that is also a read-only mapping over its
``metrics.json`` form, so ``result.checkpoint`` and ``result["checkpoint"]`` give the same value,
and a result equals the dict of its items (mapping equality). ``to_json()`` is exactly what the
verb writes to the run folder's ``metrics.json``: use it (not the result) with ``json.dumps``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from otx import __version__
from otx.tasks import Prediction
from otx.workdir import jsonable

# Field metadata: left out of metrics.json altogether, or only when None.
NOT_IN_JSON = {"json": False}
OMIT_NONE = {"omit_none": True}
# The model file a verb ran, as given: recorded absolute (the report and metrics.json are read from elsewhere).
ABSOLUTE = {"absolute": True}


def recorded_path(path: str | os.PathLike) -> str:
    """A path as otx records it (metrics.json, config.yaml, the report): absolute, with ``~`` expanded.

    Later verbs follow recorded paths from other directories; a path typed relative to where a
    command ran, or as ``~/...`` (whose absolute form would otherwise be ``<cwd>/~/...``), would not lead there.
    """
    return os.path.abspath(os.path.expanduser(path))


@dataclasses.dataclass(kw_only=True, eq=False)
class Result(Mapping[str, Any]):
    """Base of the verbs' results: ``command``, ``task``, the run folder and the otx version."""

    command: ClassVar[str] = ""
    task: str
    run_folder: Path | None = dataclasses.field(default=None, metadata=NOT_IN_JSON)
    otx_version: str = __version__

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.metadata.get("absolute") and getattr(self, f.name):
                setattr(self, f.name, recorded_path(getattr(self, f.name)))

    def to_json(self) -> dict[str, Any]:
        """The ``metrics.json`` record (JSON values only: NaN as None): ``command``, the fields, the version."""
        return jsonable(self._record())

    def _record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"command": self.command}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "otx_version" or not f.metadata.get("json", True):
                continue
            if value is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = value
        out["otx_version"] = self.otx_version
        return out

    def __getitem__(self, key: str) -> Any:
        return self._record()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._record())

    def __len__(self) -> int:
        return len(self._record())


@dataclasses.dataclass(kw_only=True, eq=False)
class TrainResult(Result):
    """``otx train``: the checkpoint, the training curve and the validation metrics at the thresholds."""

    command: ClassVar[str] = "train"
    model: str
    backbone: str
    weights: str
    epochs: int
    max_epochs: int
    stopped_early: bool
    stop_reason: str | None = None  # why, in words, when it stopped before max_epochs (otx.training.stop_reason)
    best_epoch: int | None
    validation_curve: list[dict[str, Any]]
    trainer: dict[str, Any]
    resumed_from: str | None
    checkpoint: str
    validation_metrics: dict[str, float]
    thresholds: dict[str, float]
    splits: dict[str, dict[str, Any]]
    timing_s: dict[str, float]
    peak_memory_mb: float
    warnings: list[str]
    boxes: dict[str, Any] | None = None  # detection: the box settings chosen on the validation split
    validation: dict[str, Any] | None = None  # how the validation split was formed (data.validation_record)
    seeds: dict[str, int | None] | None = None  # the global seed and the model's own (None: it has none)
    input: dict[str, Any] | None = None  # the pre-processing the model ran with (PreProcessor.config)


@dataclasses.dataclass(kw_only=True, eq=False)
class TestResult(Result):
    """``otx test``: metrics on the test split, unreadable images, the HTML report."""

    __test__ = False  # not a pytest test class
    command: ClassVar[str] = "test"
    model: str
    backbone: str
    checkpoint: str = dataclasses.field(metadata=ABSOLUTE)
    runtime: dict[str, str]
    metrics: dict[str, float]
    per_defect: dict[str, dict[str, float]]  # otx.metrics.per_defect: each defect type against the good images
    splits: dict[str, dict[str, Any]]
    thresholds: dict[str, float]
    counts: dict[str, int]
    errors: list[dict[str, str]]
    timing_s: dict[str, float]
    peak_memory_mb: float
    warnings: list[str]
    report: str
    threshold_origin: dict[str, str] = dataclasses.field(default_factory=dict)  # how each threshold was set
    boxes: dict[str, Any] | None = None  # detection: the box settings the boxes were cut with (otx.boxes)
    input: dict[str, Any] | None = None  # the pre-processing the model ran with (PreProcessor.config)
    validation: dict[str, Any] | None = None  # the validation split kept out of the test split (validation_record)
    decisions: dict[str, Any] | None = None  # the image decisions at the image threshold (metrics.image_decisions)


@dataclasses.dataclass(kw_only=True, eq=False)
class PredictResult(Result):
    """``otx predict``: the predictions (not in metrics.json: they go to predictions.json) and counts."""

    command: ClassVar[str] = "predict"
    predictions: list[Prediction] = dataclasses.field(default_factory=list, metadata=NOT_IN_JSON)
    model: str
    backbone: str
    checkpoint: str = dataclasses.field(metadata=ABSOLUTE)
    runtime: dict[str, str]
    source: str
    counts: dict[str, int]
    errors: list[dict[str, str]]
    timing_s: dict[str, float]
    images_per_s: float | None
    peak_memory_mb: float
    warnings: list[str]
    predictions_file: str
    overlays: str | None = dataclasses.field(default=None, metadata=OMIT_NONE)
    input: dict[str, Any] | None = None  # the pre-processing the model ran with (PreProcessor.config)
    thresholds: dict[str, float] | None = None  # raw units: what labelled the images (raw_score is in them)
    threshold_origin: dict[str, str] | None = None  # how each threshold was set, in words


@dataclasses.dataclass(kw_only=True, eq=False)
class ExportResult(Result):
    """``otx export``: the exported file and its check against torch (FP16: its decisions too)."""

    command: ClassVar[str] = "export"
    model: str
    backbone: str
    checkpoint: str = dataclasses.field(metadata=ABSOLUTE)
    format: str
    precision: str
    exported_model: str
    check_against_torch: dict[str, Any]
    timing_s: dict[str, float]
    decisions: dict[str, Any] | None = dataclasses.field(default=None, metadata=OMIT_NONE)
    thresholds: dict[str, float] | None = dataclasses.field(default=None, metadata=OMIT_NONE)
    demo_package: str | None = dataclasses.field(default=None, metadata=OMIT_NONE)
    warnings: list[str] = dataclasses.field(default_factory=list)  # e.g. the check ran on noise only


@dataclasses.dataclass(kw_only=True, eq=False)
class OptimizeResult(Result):
    """``otx optimize``: the INT8 model, the scheme used and its decisions against FP32."""

    command: ClassVar[str] = "optimize"
    model: str
    backbone: str
    source_model: str = dataclasses.field(metadata=ABSOLUTE)
    scheme: str
    scheme_summary: str
    calibration_images: int  # of train/good
    train_images: int
    validation_calibration_images: int  # validation images that calibrated too (Scheme.calibrate_with_validation)
    fake_quantize_nodes: int
    image_quantizers: int
    weight_bits: int
    decisions: dict[str, Any]
    thresholds: dict[str, float]
    timing_s: dict[str, float | None]
    nncf_version: str
    max_drop: float | None = dataclasses.field(default=None, metadata=OMIT_NONE)
    max_drop_met: bool | None = dataclasses.field(default=None, metadata=OMIT_NONE)
    # each scheme tried when the first did not keep the decisions (otx.deploy.optimize.attempt_record)
    attempts: list[dict[str, Any]] | None = dataclasses.field(default=None, metadata=OMIT_NONE)
    optimized_model: str = ""
    warnings: list[str] = dataclasses.field(default_factory=list)  # e.g. decisions not kept (decision_warning)
    # the training run's model.ckpt the INT8 model comes from (None: the run folders do not say; a bug bash:
    # from a checkpoint, only the IR exported into the optimize run was recorded)
    trained_checkpoint: str | None = dataclasses.field(default=None, metadata=ABSOLUTE)


@dataclasses.dataclass(kw_only=True, eq=False)
class BenchmarkResult(Result):
    """``otx benchmark``: one row per timed model (latency, throughput, precision actually used)."""

    command: ClassVar[str] = "benchmark"
    images: str
    device_requested: str
    inference_precision_requested: str
    warmup: int
    repeats: int
    rows: list[dict[str, Any]]
    machine: dict[str, Any]
    warnings: list[str] = dataclasses.field(default_factory=list)  # e.g. the recipe names another model
    # what was timed: the checkpoint (None: exported files only, each row's path), its model and input
    checkpoint: str | None = dataclasses.field(default=None, metadata=ABSOLUTE)
    model: str | None = None
    backbone: str | None = None
    input: dict[str, Any] | None = None  # the pre-processing (PreProcessor.config)
    reference: str | None = None  # the row the throughput_vs_fp32_ir ratios divide by

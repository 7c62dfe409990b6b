"""``Engine``: the one facade over training, testing and prediction (the CLI is a thin layer on it).

Example::

    from otx.data import AnomalyDataModule
    from otx.engine import Engine
    from otx.models import Padim

    engine = Engine(model=Padim(), data=AnomalyDataModule("datasets/bottle"), task="segmentation")
    engine.train()                  # fits, learns thresholds on the validation split, saves model.ckpt
    metrics = engine.test()         # metrics.json on the test split
    predictions = engine.predict()  # predictions.json and mask PNGs
    xml = engine.export()["exported_model"]        # OpenVINO IR with pre- and post-processing inside
    engine.test(checkpoint=xml)     # the same metrics from the exported model, through OpenVINO
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import re
import resource
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from torch.utils.data import DataLoader

from otx import __version__
from otx.checks import image_profile, profile_warnings, threshold_warnings
from otx.data.datamodule import AnomalyDataModule, raise_batch_errors, samples_from_source
from otx.data.dataset import Sample
from otx.data.io import read_image, read_mask
from otx.deploy.inferencer import PRECISION_HINTS, OpenVINOInferencer, is_exported_model
from otx.errors import OTXConfigError, OTXDataError, OTXError
from otx.metrics import box_ap, gt_boxes_from_mask, image_metrics, pixel_metrics
from otx.models.base import AnomalyModel
from otx.preprocess import PreProcessor
from otx.report import ReportInput, write_report
from otx.scoring import OpenVINOScorer, Scorer, TorchScorer, as_numpy
from otx.tasks import Prediction, TaskAdapter, get_adapter
from otx.training import build_trainer, describe_settings, merge_settings, resume_checkpoint
from otx.validate import check_bool, check_choice, check_int, check_path
from otx.visualize import overlay, write_overlay
from otx.workdir import Run, WorkDir, atomic_write_bytes

log = logging.getLogger("otx")

CHECKPOINT_NAME = "model.ckpt"
# Log records for the run's otx.log only: the console already shows the error line.
FILE_ONLY = {"file_only": True}


def _peak_memory_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024.0, 1)


def prediction_counts(predictions: list[Prediction]) -> dict[str, int]:
    """Images by label: ``images``, ``anomalous``, ``normal`` and ``error`` (could not be read)."""
    names = [p.label_name for p in predictions]
    return {"images": len(names), **{label: names.count(label) for label in ("anomalous", "normal", "error")}}


def _class_path(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


# Version of the model.ckpt layout; a reader refuses newer ones with one line. Files without the
# key were written before it existed, with the same layout as version 1.
CHECKPOINT_SCHEMA = 1


def load_checkpoint(path: str | Path) -> tuple[AnomalyModel, dict[str, Any]]:
    """Rebuild a trained model from an otx checkpoint; return it and the checkpoint's metadata.

    The file is read with ``torch.load(weights_only=True)``: tensors and plain values only, no
    code runs while loading.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise OTXError(f"checkpoint '{path}' is a folder; pass the model.ckpt file (or an exported .xml / .onnx)")
    if not path.is_file():
        raise OTXError(f"checkpoint '{path}' does not exist; pass --checkpoint PATH or run `otx train` first")
    hint = "pass the model.ckpt written by `otx train` (or an exported .xml / .onnx)"
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint becomes one line
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        reason = (
            f"it holds a Python object ({unsafe.group(1)}) that otx does not load, for safety"
            if unsafe
            else f"not a PyTorch checkpoint file: {exc.__class__.__name__}"
        )
        raise OTXError(f"'{path}' is not a readable otx checkpoint ({reason}); {hint}") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "state_dict" not in ckpt:
        what = "a Lightning training checkpoint" if isinstance(ckpt, dict) and "loops" in ckpt else "not otx's"
        raise OTXError(f"'{path}' is {what} (no model/state_dict entries); {hint}")
    schema = ckpt.get("schema", 1)
    if not isinstance(schema, int) or schema < 1:
        raise OTXError(f"'{path}' has an unknown checkpoint schema {schema!r}; {hint}")
    if schema > CHECKPOINT_SCHEMA:
        raise OTXError(
            f"'{path}' was written by a newer otx ({ckpt.get('otx_version', '?')}, checkpoint schema {schema}; this "
            f"otx {__version__} reads up to {CHECKPOINT_SCHEMA}); upgrade otx (pip install -U otx)"
        )
    try:
        module_name, _, class_name = ckpt["model"]["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        model = cls.without_weights(**ckpt["model"]["init_args"])
        model.load_state_dict(ckpt["state_dict"])
    except OTXError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint becomes one line
        raise OTXError(f"'{path}' is not a readable otx checkpoint ({exc.__class__.__name__}: {exc}); {hint}") from exc
    model.eval()
    return model, ckpt


class Engine:
    """Train, test and predict with one model on one dataset for one task.

    Args:
        model: the model core (``Padim``, ``Stfpm``, ...); optional for test/predict from a checkpoint.
        data: an ``AnomalyDataModule`` or a data root path.
        task: ``classification``, ``detection`` or ``segmentation``; None trains for segmentation
            and otherwise takes the task the checkpoint or exported model was made for.
        work_dir: where run folders, checkpoints and results go.
        max_epochs: training epochs; None takes ``trainer``'s, else the model's default (a shortcut
            for ``trainer={"max_epochs": n}``).
        seed: global seed for training.
        config: the resolved configuration to save with each run (the CLI passes it).
        console: where summaries and progress go (a ``rich`` console).
        device: OpenVINO device for exported models (``AUTO``, ``CPU``, ``GPU``, ``NPU``).
        inference_precision: OpenVINO inference precision for exported models: ``f32`` (reproduces
            the trained model), ``bf16``, ``f16`` or ``default`` (the device's choice).
        trainer: ``lightning.Trainer`` arguments for training (a recipe's ``trainer:`` section:
            accelerator, devices, precision, max_epochs, callbacks ...) over the model's defaults
            (``default_trainer``); the accelerator defaults to ``auto``.
    """

    def __init__(
        self,
        model: AnomalyModel | None = None,
        data: AnomalyDataModule | str | Path | None = None,
        task: str | None = None,
        work_dir: str | Path = "otx-workspace",
        max_epochs: int | None = None,
        seed: int = 42,
        config: dict[str, Any] | None = None,
        console: Console | None = None,
        device: str = "AUTO",
        inference_precision: str = "f32",
        trainer: dict[str, Any] | None = None,
    ) -> None:
        if model is not None and not isinstance(model, AnomalyModel):
            what = (
                f"the class {model.__name__}; pass an instance, e.g. {model.__name__}()"
                if isinstance(model, type)
                else f"{model!r}"
            )
            raise OTXConfigError(f"model must be an otx model such as otx.models.Padim() (got {what})")
        self.model = model
        if data is not None and not isinstance(data, AnomalyDataModule | str | Path):
            raise OTXConfigError(f"data must be an AnomalyDataModule or a data root path (got {data!r})")
        self.data = data if isinstance(data, AnomalyDataModule) else AnomalyDataModule(str(data) if data else None)
        if task is not None and not isinstance(task, str):
            raise OTXConfigError(f"task must be one of classification, detection, segmentation (got {task!r})")
        self._task_given = task is not None
        self._use_task(task or "segmentation")
        if not isinstance(device, str) or not device.strip():
            raise OTXConfigError(f"device must be an OpenVINO device name such as CPU, GPU or AUTO (got {device!r})")
        self.device = device
        self.inference_precision = check_choice("inference_precision", inference_precision, PRECISION_HINTS)
        self.workdir = WorkDir(check_path("work_dir", work_dir))
        self.max_epochs = check_int("max_epochs", max_epochs, minimum=1, optional=True)
        if trainer is not None and not isinstance(trainer, dict):
            raise OTXConfigError(f"trainer must be a dict of lightning.Trainer arguments (got {trainer!r})")
        self.trainer = dict(trainer or {})
        self.seed = check_int("seed", seed, minimum=0)
        self.config = config or {}
        self.console = console or Console(stderr=True)
        self._warned_no_masks = False
        self._warnings: list[str] = []

    def _use_task(self, task: str) -> None:
        self.adapter: TaskAdapter = get_adapter(task)
        self.task = self.adapter.task

    # --- verbs -------------------------------------------------------------------------------
    def train(self, resume: bool | str | Path = False) -> dict[str, Any]:
        """Fit the model on ``train/good``, learn thresholds on the validation split, save the checkpoint.

        Thresholds and normalisation statistics are fitted in Lightning's validation loop (after
        every validated epoch; with a monitored ``ModelCheckpoint`` in ``trainer.callbacks``, for
        the best epoch's weights). ``resume`` continues an interrupted multi-epoch training: True
        takes the newest interrupted run in ``work_dir``, a path names its folder or ``last.ckpt``.
        Returns the training summary (also written as ``metrics.json`` in the run folder), with
        the checkpoint path under ``checkpoint``.
        """
        if self.model is None:
            raise OTXConfigError("no model given; pass a model (e.g. --config recipe/anomaly_segmentation/padim.yaml)")
        if not isinstance(resume, bool | str | Path):
            raise OTXConfigError(f"resume must be True, False or a path (got {resume!r})")
        model = self.model
        start = resume_checkpoint(resume, self.workdir.root) if resume is not False else None
        return self._run("train", lambda run: self._train(run, model, start))

    def test(self, checkpoint: str | Path | None = None) -> dict[str, Any]:
        """Evaluate on the test split; returns (and writes) the metrics.

        Images that cannot be read are listed under ``errors`` (label ``error``), not scored.
        """
        check_path("checkpoint", checkpoint, optional=True)
        return self._run("test", lambda run: self._test(run, checkpoint))

    def predict(
        self, source: str | Path | None = None, checkpoint: str | Path | None = None, visualize: bool = True
    ) -> list[Prediction]:
        """Predict on ``source`` (file, folder or glob) or, without it, on the data's test images.

        ``checkpoint`` may be a ``model.ckpt`` or an exported ``.xml`` / ``.onnx`` (run by OpenVINO
        on ``device``); the default is the latest training run's checkpoint. The same holds for ``test``.
        With ``visualize``, an overlay per image goes to ``predictions/overlays/`` (heat map, mask
        outline or boxes, label and score, and the ground-truth outline where the data has one).
        """
        check_path("source", source, optional=True)
        check_path("checkpoint", checkpoint, optional=True)
        check_bool("visualize", visualize)
        return self._run("predict", lambda run: self._predict(run, source, checkpoint, visualize))

    def export(
        self,
        checkpoint: str | Path | None = None,
        export_format: str = "OPENVINO",
        precision: str = "FP32",
        demo_package: bool = False,
    ) -> dict[str, Any]:
        """Export a checkpoint (default: the latest training run's) to OpenVINO IR or ONNX.

        Writes ``exported_model.xml/.bin`` or ``exported_model.onnx`` into a new run folder, checks
        the export against torch on one image, and with ``demo_package`` adds a zip that predicts
        on a folder with only openvino, numpy and opencv installed. Returns the export summary.
        """
        from otx.deploy.export import check_export_args

        check_path("checkpoint", checkpoint, optional=True)
        check_bool("demo_package", demo_package)
        fmt, prec = check_export_args(export_format, precision)  # before any run folder exists
        if demo_package and fmt != "OPENVINO":
            raise OTXConfigError("the demo package holds an OpenVINO IR; export with --format OPENVINO")
        return self._run("export", lambda run: self._export(run, checkpoint, fmt, prec, demo_package))

    def optimize(
        self,
        checkpoint: str | Path | None = None,
        subset_size: int = 300,
        max_drop: float | None = None,
    ) -> dict[str, Any]:
        """Quantise a model to INT8 with NNCF, calibrated on training images only; keeps its accuracy.

        ``checkpoint`` is an exported ``.xml`` / ``.onnx`` or a ``model.ckpt`` (exported to an FP32
        IR first); the default is the newest of the latest export and the latest training run.
        ``subset_size`` training images (``train/good``, all if fewer) calibrate the quantisers.
        With ``max_drop``, NNCF's accuracy control keeps the validation AUROC within ``max_drop``
        of the FP32 model's. Writes ``optimized_model.xml/.bin`` (with the source's metadata and
        post-processing, marked INT8) into a new run folder; returns the summary.
        """
        from otx.deploy.optimize import check_max_drop

        check_path("checkpoint", checkpoint, optional=True)
        check_max_drop(max_drop)
        check_int("subset_size", subset_size, minimum=1)
        return self._run("optimize", lambda run: self._optimize(run, checkpoint, subset_size, max_drop))

    def benchmark(
        self,
        checkpoint: str | Path | None = None,
        models: list[str | Path] | None = None,
        num_images: int = 100,
        warmup: int = 10,
        repeats: int = 3,
    ) -> dict[str, Any]:
        """Latency (batch 1, median and p95) and throughput of a model in torch and in OpenVINO.

        With a ``model.ckpt`` (default: the latest training run's), it times the checkpoint in
        torch, exports and times an FP32 and an FP16 IR, and times the latest ``otx optimize``
        result when it comes from the same trained model. ``models`` adds (or, without a
        checkpoint, gives) exported ``.xml`` / ``.onnx`` files. Images are the data's test
        images (``num_images`` of them) or synthetic ones when no data is given. OpenVINO runs
        on ``device`` at ``inference_precision``; each row reports the precision actually used.
        Prints one table and writes it to ``metrics.json``; returns it.
        """
        for name, value, least in (("num_images", num_images, 1), ("warmup", warmup, 0), ("repeats", repeats, 1)):
            check_int(name, value, minimum=least)
        check_path("checkpoint", checkpoint, optional=True)
        if models is not None and (isinstance(models, str | Path) or not isinstance(models, list | tuple)):
            raise OTXConfigError(f"models must be a list of exported model paths (got {models!r})")
        for model_path in models or []:
            check_path("models", model_path)
        return self._run("benchmark", lambda run: self._benchmark(run, checkpoint, models, num_images, warmup, repeats))

    # --- plumbing ------------------------------------------------------------------------------
    def _warn(self, message: str) -> None:
        """A warning where the numbers would mislead: logged now, and listed in the run's metrics.json."""
        if message not in self._warnings:
            self._warnings.append(message)
            log.warning(message)

    def _run(self, command: str, body: Any) -> Any:
        self._warnings = []
        run = self.workdir.new_run(command)
        log.info("otx %s %s: task %s, work_dir %s", command, __version__, self.task.value, self.workdir.root)
        ok = False
        try:
            result = body(run)
            ok = True
            return result
        except KeyboardInterrupt as exc:
            log.error(
                "%s failed: interrupted (%s); earlier runs are unchanged", command, exc or "SIGINT", extra=FILE_ONLY
            )
            raise
        except OTXError as exc:
            log.error("%s failed: %s", command, exc, extra=FILE_ONLY)
            raise
        except Exception as exc:
            log.exception("%s failed: internal error (%s: %s)", command, type(exc).__name__, exc, extra=FILE_ONLY)
            raise
        finally:
            log.info("%s %s; run folder %s", command, "finished" if ok else "failed", run.path)
            run.close(ok)

    def _save_config(self, run: Run, model_entry: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
        config = dict(self.config)
        config["task"] = self.task.value
        config["model"] = model_entry  # what actually ran
        config.setdefault("data", {k: getattr(self.data, k) for k in ("data_root", "val_split", "seed", "batch_size")})
        config.update(extra or {})
        run.write_config(config)

    def _train(self, run: Run, model: AnomalyModel, resume: Path | None) -> dict[str, Any]:
        L.seed_everything(self.seed, verbose=False)
        scorer = TorchScorer(model)
        self.data.setup()
        settings = merge_settings(model.default_trainer, self.trainer, {"max_epochs": self.max_epochs})
        self._save_config(run, scorer.model_entry(), extra={"trainer": describe_settings(settings)})
        splits = self.data.splits
        if not splits["val"]:  # checked before training, not after it
            raise OTXError(
                "no validation images: thresholds need test/ (or val/) images; add test/good and test/<defect> folders"
            )
        steps = max(1, min(50, len(splits["train"]) // max(self.data.batch_size, 1)))
        trainer, roles = build_trainer(settings, run.path, steps)
        epochs = trainer.max_epochs
        self.console.print(
            f"[bold]otx train[/]: {type(model).__name__} ({model.spec.name}, {model.weights_source}) on "
            f"{len(splits['train'])} normal images, up to {epochs} epoch(s), task {self.task.value}, "
            f"{type(trainer.accelerator).__name__.removesuffix('Accelerator').lower()} x{trainer.num_devices}"
            + (f", resuming {resume}" if resume else "")
        )
        timings: dict[str, float] = {}
        start = time.perf_counter()
        train_loader = self.data.dataloader("train", model.preprocessor, shuffle=True)
        val_loader = self.data.dataloader("val", model.preprocessor)
        model.validation_outputs = None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*configure_optimizers.*")
            try:
                trainer.fit(model, train_loader, val_loader, ckpt_path=resume, weights_only=True)
            except SystemExit as exc:  # Lightning ends an interrupted fit with sys.exit(1) after its clean-up
                interrupt = exc.__context__ if isinstance(exc.__context__, KeyboardInterrupt) else None
                raise KeyboardInterrupt(str(interrupt or "") or "SIGINT") from exc
            if trainer.interrupted:
                raise OTXError("training was interrupted; no checkpoint was written")
            best = roles["best"]
            best_epoch = None
            if best is not None and best.best_model_path:  # the best epoch's weights, then its thresholds
                state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
                model.load_state_dict(state["state_dict"])
                best_epoch = int(state["epoch"]) + 1
                model.validation_outputs = None
            if model.validation_outputs is None or model.validated_step != trainer.global_step:
                trainer.validate(model, val_loader, verbose=False)
        timings["fit_s"] = time.perf_counter() - start
        log.info("fit (with validation) took %.1f s; thresholds: %s", timings["fit_s"], model.postprocessor.stats())
        outputs = model.validation_outputs
        masks = outputs["masks"] if self.data.has_masks else None
        for logger in trainer.loggers:  # timings for every model, also those without a loss
            logger.log_metrics({f"time/{k}": v for k, v in timings.items()}, step=trainer.global_step)
            logger.save()
        val_metrics = self._evaluate(scorer, outputs, splits["val"], with_boxes=False)
        stats = model.postprocessor.stats()
        labels = outputs["labels"].numpy() == 1
        found = threshold_warnings(outputs["scores"].numpy(), labels, stats["image_threshold"], "image", "validation")
        pixel_truth = outputs["masks"].numpy() if masks is not None else None
        found += threshold_warnings(
            outputs["maps"].numpy(), pixel_truth, stats["pixel_threshold"], "pixel", "validation"
        )
        for message in found:
            self._warn(message)
        checkpoint = run.path / CHECKPOINT_NAME
        self._save_checkpoint(model, checkpoint, image_profile(s.path for s in splits["train"]))
        summary = {
            "command": "train",
            "task": self.task.value,
            "model": type(model).__name__,
            "backbone": model.spec.name,
            "weights": model.weights_source,
            "epochs": trainer.current_epoch,
            "max_epochs": epochs,
            "stopped_early": trainer.current_epoch < epochs,
            "best_epoch": best_epoch,
            "validation_curve": roles["curve"].epochs,
            "trainer": {
                "accelerator": type(trainer.accelerator).__name__,
                "devices": trainer.num_devices,
                "precision": trainer.precision,
            },
            "resumed_from": str(resume) if resume else None,
            "checkpoint": str(checkpoint),
            "validation_metrics": val_metrics,
            "thresholds": model.postprocessor.stats(),
            "splits": self.data.split_summary(),
            "timing_s": {k: round(v, 2) for k, v in timings.items()},
            "peak_memory_mb": _peak_memory_mb(),
            "warnings": list(self._warnings),
            "otx_version": __version__,
        }
        run.write_json("metrics.json", summary)
        self._print_summary("train", run, val_metrics, "validation", extra={"checkpoint": str(checkpoint)})
        return summary

    def _save_checkpoint(self, model: AnomalyModel, path: Path, profile: dict[str, Any]) -> None:
        ckpt = {
            "schema": CHECKPOINT_SCHEMA,
            "otx_version": __version__,
            "task": self.task.value,
            "model": {"class_path": _class_path(model), "init_args": dict(model.hparams)},
            "state_dict": model.state_dict(),
            "data": {
                "data_root": str(Path(self.data.data_root).resolve()) if self.data.data_root else None,
                "val_split": self.data.val_split,
                "seed": self.data.seed,
                "fingerprint": self.data.index.fingerprint() if self.data.index else None,
                "has_masks": self.data.has_masks,
                "profile": profile,
            },
            "thresholds": model.postprocessor.stats(),
            "weights_source": model.weights_source,
        }
        buffer = io.BytesIO()
        torch.save(ckpt, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def _latest_checkpoint(self) -> Path:
        latest = self.workdir.latest("train")
        if latest is None or not (latest / CHECKPOINT_NAME).exists():
            raise OTXError(
                f"no trained model in '{self.workdir.root}'; run `otx train` there first or pass --checkpoint PATH"
            )
        return latest / CHECKPOINT_NAME

    def _load(self, checkpoint: str | Path | None) -> Scorer:
        """A scorer for a checkpoint or an exported model; sets the task from it unless one was given."""
        checkpoint = Path(checkpoint) if checkpoint is not None else self._latest_checkpoint()
        if is_exported_model(checkpoint):
            scorer: Scorer = OpenVINOScorer(
                OpenVINOInferencer(
                    checkpoint,
                    device=self.device,
                    precision_hint=self.inference_precision,
                    task=self.task.value if self._task_given else None,
                )
            )
            self.console.print(
                f"exported model: {checkpoint} (OpenVINO {scorer.inferencer.device}, "
                f"{scorer.inferencer.inference_precision})"
            )
        else:
            model, ckpt = load_checkpoint(checkpoint)
            scorer = TorchScorer(model, checkpoint, ckpt.get("task"), ckpt.get("data"))
            if self.data.data_root is None:
                self.data.data_root = scorer.data_info.get("data_root")
            self.console.print(f"checkpoint: {checkpoint}")
        if not self._task_given and scorer.task:
            self._use_task(scorer.task)
        recipe = self.config.get("model") if isinstance(self.config.get("model"), dict) else None
        if recipe and recipe.get("class_path"):
            name = str(recipe["class_path"]).rpartition(".")[2]
            backbone = (recipe.get("init_args") or {}).get("backbone")
            if name != scorer.name or (backbone and backbone != scorer.backbone):
                self._warn(
                    f"the recipe's model is {name} ({backbone or 'default backbone'}) but {checkpoint} holds "
                    f"{scorer.name} ({scorer.backbone}); using the model in the file"
                )
        return scorer

    def _setup_eval_data(self, info: dict[str, Any]) -> None:
        """Index the data with the validation split the model was calibrated with, so test images stay unseen.

        ``info`` is the model's data record (a scorer's ``data_info``): validation split, seed,
        data root and fingerprint of the training files.
        """
        self.data.setup()
        stored = (info.get("val_split"), info.get("seed"))
        if None in stored or self.data.index is None:
            return
        stored = (float(stored[0]), int(stored[1]))
        root = info.get("data_root")
        same = (root and str(Path(self.data.data_root).resolve()) == root) or (
            info.get("fingerprint") and info.get("fingerprint") == self.data.index.fingerprint()
        )
        if same and (self.data.val_split, self.data.seed) != stored:
            log.warning("using the model's validation split (val_split/seed) so that test images stay unseen")
            self.data.val_split, self.data.seed = stored
            self.data.setup()
        fingerprint = info.get("fingerprint")
        if not same and fingerprint not in (None, "unknown"):
            self._warn(
                f"the data at {self.data.data_root} is not the data the model was trained on (its train/good files "
                f"differ: fingerprint {self.data.index.fingerprint()}, the model's {fingerprint}); thresholds were "
                "learned on other images, and test images may include some the model was fitted on"
            )

    def _test(self, run: Run, checkpoint: str | Path | None) -> dict[str, Any]:
        scorer = self._load(checkpoint)
        if self.data.data_root is None:
            raise OTXError("no data to test on; pass --data_root DIR (a folder in MVTec AD layout)")
        self._setup_eval_data(scorer.data_info)
        self._save_config(run, scorer.model_entry(), {"checkpoint": str(scorer.source)})
        test = self.data.splits["test"]
        if not any(s.label >= 0 for s in test):
            raise OTXError("no labelled test images (test/good, test/<defect>); nothing to evaluate")
        start = time.perf_counter()
        outputs, errors = self._collect(scorer, test, "test", skip_errors=True)
        infer_s = time.perf_counter() - start
        predictions = self._to_predictions(scorer, outputs, test)
        for i, error in enumerate(errors):
            if error:  # no decision, and left out of the metrics (listed in metrics.json and the report)
                log.warning("not scored: %s", error)
                predictions[i] = Prediction.failed(predictions[i].image_path, error)
        for message in profile_warnings(scorer.data_info.get("profile"), [s.path for s in test], "test"):
            self._warn(message)
        keep = np.array([s.label >= 0 and not e for s, e in zip(test, errors, strict=True)])
        if not keep.any():
            raise OTXDataError(
                f"none of the labelled test images could be read (first: {next(e for e in errors if e)}); "
                "replace or remove the files"
            )
        scored = [s for s, k in zip(test, keep, strict=True) if k]
        start = time.perf_counter()
        scored_outputs = {k: v[torch.from_numpy(keep)] for k, v in outputs.items()}
        metrics = self._evaluate(
            scorer,
            scored_outputs,
            scored,
            with_boxes=True,
            predictions=[p for p, k in zip(predictions, keep, strict=True) if k],
        )
        metrics_s = time.perf_counter() - start
        image_threshold, pixel_threshold = scorer.thresholds
        labels = scored_outputs["labels"].numpy() == 1
        for message in threshold_warnings(scored_outputs["scores"].numpy(), labels, image_threshold, "image", "test"):
            self._warn(message)
        result = {
            "command": "test",
            "task": self.task.value,
            "model": scorer.name,
            "backbone": scorer.backbone,
            "checkpoint": str(scorer.source),
            "runtime": scorer.runtime_info(),
            "metrics": metrics,
            "splits": self.data.split_summary(),
            "thresholds": scorer.stats(),
            "counts": prediction_counts(predictions),
            "errors": [{"image": p.image_path, "error": p.error} for p in predictions if p.error],
            "timing_s": {"inference_s": round(infer_s, 2), "metrics_s": round(metrics_s, 2)},
            "peak_memory_mb": _peak_memory_mb(),
            "warnings": list(self._warnings),
            "otx_version": __version__,
        }
        scored_predictions = [p for p, k in zip(predictions, keep, strict=True) if k]
        report = write_report(
            run.path,
            ReportInput(
                task=self.task.value,
                model=scorer.name,
                backbone=scorer.backbone,
                source=str(scorer.source),
                runtime=result["runtime"],
                metrics=metrics,
                splits=result["splits"],
                samples=scored,
                predictions=scored_predictions,
                scores=scored_outputs["scores"].numpy(),
                errors=result["errors"],
                warnings=result["warnings"],
            ),
        )
        result["report"] = str(report)
        run.write_json("metrics.json", result)
        run.write_json("predictions.json", [p.to_json() for p in predictions])
        self._print_summary("test", run, metrics, "test", extra={"report": str(report)})
        return result

    def _predict(
        self, run: Run, source: str | Path | None, checkpoint: str | Path | None, visualize: bool = True
    ) -> list[Prediction]:
        scorer = self._load(checkpoint)
        if source is not None:
            samples = samples_from_source(source)
        elif self.data.data_root is None:
            raise OTXError("nothing to predict; pass --source (an image, folder or glob) or --data_root DIR")
        else:
            self._setup_eval_data(scorer.data_info)
            samples = self.data.splits["test"]
        self._save_config(
            run, scorer.model_entry(), {"checkpoint": str(scorer.source), "source": str(source) if source else None}
        )
        for message in profile_warnings(scorer.data_info.get("profile"), [s.path for s in samples], "input"):
            self._warn(message)
        root = Path(os.path.commonpath([str(Path(s.path).parent) for s in samples]))
        out_dir = run.path / "predictions"
        (out_dir / "masks").mkdir(parents=True, exist_ok=True)
        predictions: list[Prediction] = []
        start = time.perf_counter()
        for batch_outputs, batch_samples, errors in self._batches(scorer, samples, "predict", skip_errors=True):
            batch_preds = self._to_predictions(scorer, batch_outputs, batch_samples)
            for i, (pred, sample, error) in enumerate(zip(batch_preds, batch_samples, errors, strict=True)):
                if error:  # no decision for an unreadable image; the rest of the folder is predicted
                    log.warning("not predicted: %s", error)
                    batch_preds[i] = Prediction.failed(pred.image_path, error)
                    continue
                stem = "__".join(Path(pred.image_path).relative_to(root).with_suffix("").parts)
                if pred.pred_mask is not None:
                    cv2.imwrite(str(out_dir / "masks" / f"{stem}_mask.png"), pred.pred_mask.astype(np.uint8) * 255)
                if visualize:
                    gt = read_mask(sample.mask_path) if sample.mask_path else None
                    write_overlay(out_dir / "overlays" / f"{stem}.png", overlay(read_image(pred.image_path), pred, gt))
                pred.anomaly_map = None  # maps are large; keep the mask and boxes only
            predictions.extend(batch_preds)
        predict_s = time.perf_counter() - start
        run.write_json("predictions/predictions.json", [p.to_json() for p in predictions])
        counts = prediction_counts(predictions)
        failed = [p for p in predictions if p.label_name == "error"]
        summary = {
            "command": "predict",
            "task": self.task.value,
            "model": scorer.name,
            "backbone": scorer.backbone,
            "checkpoint": str(scorer.source),
            "runtime": scorer.runtime_info(),
            "source": str(source) if source is not None else str(self.data.data_root),
            "counts": counts,
            "errors": [{"image": p.image_path, "error": p.error} for p in failed],
            "timing_s": {"predict_s": round(predict_s, 2)},
            "images_per_s": round(len(predictions) / predict_s, 2) if predict_s > 0 else None,
            "peak_memory_mb": _peak_memory_mb(),
            "warnings": list(self._warnings),
            "otx_version": __version__,
        }
        run.write_json("metrics.json", summary)
        if len(failed) == len(predictions):
            raise OTXDataError(
                f"none of the {len(predictions)} image(s) could be read (first: {failed[0].error}); "
                f"nothing was predicted, latest.json is unchanged (details: {out_dir / 'predictions.json'})"
            )
        extra = {"predictions": str(out_dir / "predictions.json")}
        if visualize:
            extra["overlays"] = str(out_dir / "overlays")
        self._print_summary("predict", run, counts, "predictions", extra=extra)
        return predictions

    def _export(
        self, run: Run, checkpoint: str | Path | None, export_format: str, precision: str, demo_package: bool
    ) -> dict[str, Any]:
        from otx.deploy.export import compare_with_torch, export_model
        from otx.deploy.package import write_demo_package

        checkpoint = Path(checkpoint) if checkpoint is not None else self._latest_checkpoint()
        if is_exported_model(checkpoint):
            raise OTXError(f"'{checkpoint}' is already exported; pass the model.ckpt it came from")
        model, ckpt = load_checkpoint(checkpoint)
        if not self._task_given and ckpt.get("task"):
            self._use_task(ckpt["task"])
        scorer = TorchScorer(model, checkpoint, ckpt.get("task"))
        self._save_config(
            run, scorer.model_entry(), {"checkpoint": str(checkpoint), "format": export_format, "precision": precision}
        )
        self.console.print(f"checkpoint: {checkpoint}")
        start = time.perf_counter()
        path = export_model(model, run.path, self.task.value, export_format, precision, data=ckpt.get("data"))
        export_s = time.perf_counter() - start
        decisions = self._check_fp16(model, ckpt, path) if precision == "FP16" else None
        # Check the file that was written, through OpenVINO, against torch on one image of another size.
        height, width = model.input_size
        probe = np.random.default_rng(0).random((3, height + 37, width + 21), dtype=np.float32)
        check = compare_with_torch(model, OpenVINOInferencer(path, device="CPU"), probe)
        summary: dict[str, Any] = {
            "command": "export",
            "task": self.task.value,
            "model": type(model).__name__,
            "backbone": model.spec.name,
            "checkpoint": str(checkpoint),
            "format": export_format,
            "precision": precision,
            "exported_model": str(path),
            "check_against_torch": check,
            "timing_s": {"export_s": round(export_s, 2)},
            "otx_version": __version__,
        }
        if decisions is not None:
            summary["decisions"] = decisions
            summary["thresholds"] = decisions["stats"]
        if demo_package:
            summary["demo_package"] = str(write_demo_package(path, run.path / "demo_package.zip"))
        run.write_json("metrics.json", summary)
        shown = {k: f"{v:.2e}" if k.startswith("max_") else v for k, v in check.items()}
        extra = {k: summary[k] for k in ("exported_model", "demo_package") if k in summary}
        if decisions is not None:
            self._print_decisions("export", "FP16", run, summary, {})
        self._print_summary("export", run, shown, f"{export_format} {precision} vs torch", extra=extra)
        return summary

    def _validation_data(self, data_info: dict[str, Any], preprocess: PreProcessor) -> Any:
        """The labelled validation split the model's thresholds were learned on, as ``ValidationData``.

        None when the data has no validation images. ``data_info`` is the model's data record.
        """
        from otx.data.datamodule import AnomalyDataset
        from otx.deploy.optimize import ValidationData

        self._setup_eval_data(data_info)
        val = [s for s in self.data.splits["val"] if s.label >= 0]
        if not val:
            return None
        use_masks = self.data.has_masks and self.adapter.pixel_level
        return ValidationData(AnomalyDataset(val, preprocess, resize_images=False), use_masks)

    def _check_fp16(self, model: AnomalyModel, ckpt: dict[str, Any], path: Path) -> dict[str, Any]:
        """Check an FP16 IR's decisions against the FP32 model's on the validation split; recalibrate it."""
        import openvino as ov

        from otx.deploy.calibrate import with_raw_outputs
        from otx.deploy.export import save_ir, to_openvino
        from otx.deploy.metadata import read_ir_info, with_stats
        from otx.deploy.optimize import keep_decisions

        data_info = ckpt.get("data") or {}
        if self.data.data_root is None:
            self.data.data_root = data_info.get("data_root")
        if self.data.data_root is None or not Path(self.data.data_root).is_dir():
            log.warning("the FP16 model's decisions were not checked: the training data is not at hand (--data_root)")
            return {"checked": False, "reason": "no data", "stats": model.postprocessor.stats()}
        validation = self._validation_data(data_info, model.preprocessor)
        stats = model.postprocessor.stats()
        if validation is not None:
            validation.set_reference(with_raw_outputs(to_openvino(model)), stats)
        fp16 = ov.Core().read_model(str(path))
        info = read_ir_info(fp16)
        final, record = keep_decisions(with_raw_outputs(fp16), validation, stats)
        if record.get("recalibrated"):  # rewrite the IR with the recalibrated post-processor
            meta = with_stats(info, record["stats"])
            meta["otx_recalibrated"] = ",".join(record["recalibrated"])
            save_ir(final, meta, path, fp16=True)
        return record

    def _optimize_source(self, checkpoint: str | Path | None) -> Path:
        """The model to quantise: the given one, else the newer of the latest IR export and training run.

        ONNX exports are passed over (INT8 takes the OpenVINO IR): the latest export folder that
        holds an ``exported_model.xml`` counts, whether or not it is the latest export.
        """
        if checkpoint is not None:
            return Path(checkpoint)
        train = self.workdir.latest("train")
        exports = sorted(self.workdir.root.glob("*-export*/exported_model.xml"), key=lambda p: p.parent.name)
        if exports and exports[-1].with_suffix(".bin").is_file():
            export = exports[-1]
            if train is None or export.parent.name > train.name:
                return export
        return self._latest_checkpoint()

    def _optimize(self, run: Run, checkpoint: str | Path | None, subset_size: int, max_drop: float | None) -> dict:
        import nncf

        from otx.data.datamodule import AnomalyDataset
        from otx.deploy.calibrate import with_raw_outputs
        from otx.deploy.export import export_model
        from otx.deploy.optimize import (
            choose_calibration,
            keep_decisions,
            quantize,
            read_exported,
            save_optimized,
        )

        source = self._optimize_source(checkpoint)
        data_record: dict[str, Any] = {}
        if not is_exported_model(source):  # a checkpoint: export the FP32 IR first, into this run
            model, ckpt = load_checkpoint(source)
            data_record = ckpt.get("data") or {}
            task = self.task.value if self._task_given else ckpt.get("task", self.task.value)
            self.console.print(f"checkpoint: {source} (exporting an FP32 IR first)")
            source = export_model(model, run.path, task, data=data_record)
        ov_model, info, source = read_exported(source)
        if not self._task_given:
            self._use_task(info.task)
        if self.data.data_root is None:
            self.data.data_root = data_record.get("data_root")
        if self.data.data_root is None:
            raise OTXDataError(
                "INT8 calibration needs the training images; pass --data_root DIR (the folder with train/good)"
            )
        raw = info.raw
        fingerprint = raw.get("data_fingerprint")
        data_info = {
            "val_split": raw.get("data_val_split"),
            "seed": raw.get("data_seed"),
            "fingerprint": fingerprint,
            "data_root": data_record.get("data_root"),
        }
        preprocess = PreProcessor(info.input_size)  # masks at the map size; the graph resizes the images
        validation = self._validation_data(data_info, preprocess)
        if self.data.index and fingerprint not in (None, "unknown") and fingerprint != self.data.index.fingerprint():
            log.warning(
                "the model was trained on other files than '%s' holds; calibrating on them anyway", self.data.data_root
            )
        train = self.data.splits["train"]
        chosen = choose_calibration(train, subset_size, self.seed)
        calibration = AnomalyDataset(chosen, preprocess, resize_images=False)
        val_labels = {s.label for s in validation.items.samples} if validation is not None else set()
        if max_drop is not None and not {0, 1} <= val_labels:
            raise OTXDataError(
                "accuracy control needs normal and anomalous validation images; add test/good and test/<defect> "
                "folders (or val/), or leave out --max_drop"
            )
        self._save_config(
            run,
            {"exported_model": str(source), "model_info": dict(info.raw)},
            {"checkpoint": str(source), "subset_size": subset_size, "max_drop": max_drop},
        )
        n_val = len(validation.items) if validation is not None else 0
        self.console.print(
            f"[bold]otx optimize[/]: {info.model_name} ({info.backbone}) from {source}, calibrating on "
            f"{len(chosen)} of {len(train)} train/good images"
            + (f", accuracy control (max drop {max_drop}) on {n_val} validation images" if max_drop else "")
        )
        reference = with_raw_outputs(ov_model)
        if validation is not None:
            start = time.perf_counter()
            validation.set_reference(reference, info.stats())
            log.info("FP32 outputs on %d validation images in %.1f s", n_val, time.perf_counter() - start)
        quantized, record = quantize(reference, info, calibration, validation, max_drop)
        quantized, decisions = keep_decisions(quantized, validation, info.stats())
        quantization = record["scheme"] + ("+accuracy-control" if max_drop is not None else "")
        summary: dict[str, Any] = {
            "command": "optimize",
            "task": self.task.value,
            "model": info.model_name,
            "backbone": info.backbone,
            "source_model": str(source),
            "scheme": quantization,
            "scheme_summary": record["scheme_summary"]
            + (f"; NNCF accuracy control, max drop {max_drop}" if max_drop is not None else ""),
            "calibration_images": len(chosen),
            "train_images": len(train),
            "fake_quantize_nodes": record["fake_quantize_nodes"],
            "image_quantizers": record["image_quantizers"],
            "decisions": decisions,
            "thresholds": decisions["stats"],
            "timing_s": {"quantize_s": record["quantize_s"], "check_s": decisions.get("check_s")},
            "nncf_version": nncf.__version__,
            "otx_version": __version__,
        }
        if max_drop is not None:
            summary["max_drop"] = max_drop
            summary["max_drop_met"] = decisions["drop"] <= max_drop
        path = save_optimized(
            quantized,
            info,
            run.path,
            {
                "otx_quantization": quantization,
                "otx_quantization_summary": summary["scheme_summary"],
                "otx_calibration": f"{len(chosen)} of {len(train)} train/good images (seed {self.seed})",
                "otx_nncf_version": nncf.__version__,
                "otx_quantized_from": Path(source).name,
                "otx_recalibrated": ",".join(decisions.get("recalibrated", [])) or "none",
                **({"otx_max_drop": str(max_drop)} if max_drop is not None else {}),
            },
            stats=decisions["stats"],
        )
        summary["optimized_model"] = str(path)
        run.write_json("metrics.json", summary)
        self._print_decisions("optimize", "INT8", run, summary, extra={"optimized_model": str(path)})
        if max_drop is not None and not summary["max_drop_met"]:
            log.warning(
                "the INT8 model drops %.4f on the validation split, more than --max_drop %s (written anyway)",
                decisions["drop"],
                max_drop,
            )
        return summary

    def _print_decisions(
        self, command: str, name: str, run: Run, summary: dict[str, Any], extra: dict[str, str]
    ) -> None:
        """The scheme, and FP32 against the converted model on the validation split.

        Before and after recalibration: AUROC, F1 at the thresholds and label agreement with FP32.
        """
        decisions = summary["decisions"]
        if "scheme" in summary:
            self.console.print(f"scheme: {summary['scheme']} ({summary['scheme_summary']})")
        if not decisions.get("checked"):
            self.console.print(
                f"[yellow]warning[/]: no validation images; {name}'s decisions were not checked against FP32"
            )
            self._print_summary(command, run, {}, name, extra=extra)
            return
        table = Table(title=f"otx {command}: {name} vs FP32 on {decisions['images']} validation images")
        rows = decisions["table"]
        columns = {"fp32": "FP32", "candidate_fp32_thresholds": f"{name}, FP32 thresholds", "candidate": name}
        table.add_column("metric")
        for title in columns.values():
            table.add_column(title, justify="right")
        for key in rows["fp32"]:
            table.add_row(key, *(f"{rows[c].get(key, float('nan')):.4f}" for c in columns))
        self.console.print(table)
        recalibrated = ", ".join(decisions["recalibrated"]) or "none (the FP32 thresholds keep the decisions)"
        self.console.print(f"recalibrated thresholds: {recalibrated}")
        for key, value in extra.items():
            self.console.print(f"{key}: {value}")
        self.console.print(f"run folder: {run.path}")

    def _benchmark_plan(
        self, run: Run, checkpoint: str | Path | None, models: list[str | Path] | None
    ) -> tuple[list[tuple[str, Any]], AnomalyModel | None, dict[str, Any]]:
        """``(label, model or path)`` to time, the torch model (if any) and its checkpoint record."""
        from otx.deploy.export import export_model
        from otx.deploy.inferencer import check_model_path
        from otx.deploy.metadata import read_model_info

        exported = [check_model_path(m) for m in models or []]
        if checkpoint is not None and is_exported_model(checkpoint):
            exported.insert(0, check_model_path(checkpoint))
            checkpoint = None
        elif checkpoint is None and not exported:
            checkpoint = self._latest_checkpoint()
        plan: list[tuple[str, Any]] = []
        model, ckpt = None, {}
        if checkpoint is not None:
            model, ckpt = load_checkpoint(checkpoint)
            if not self._task_given and ckpt.get("task"):
                self._use_task(ckpt["task"])
            self.console.print(f"checkpoint: {checkpoint} (exporting FP32 and FP16 IRs to time them)")
            plan.append(("torch FP32", model))
            for precision in ("FP32", "FP16"):
                out = run.path / f"exported_{precision.lower()}"
                path = export_model(model, out, self.task.value, "OPENVINO", precision, data=ckpt.get("data"))
                plan.append((f"OpenVINO {precision}", path))
            latest = self.workdir.latest("optimize")
            int8 = latest / "optimized_model.xml" if latest is not None else None
            if not models and int8 is not None and int8.is_file():
                stats, mine = read_model_info(int8).source_stats(), ckpt.get("thresholds", {})
                if all(
                    np.isclose(stats.get(k, np.nan), mine.get(k, np.inf))
                    for k in ("image_threshold", "pixel_threshold")
                ):
                    plan.append(("OpenVINO INT8", int8))
                else:
                    log.warning("the latest optimized model (%s) comes from another trained model; not timed", int8)
            elif not models:
                self.console.print("no INT8 model: run `otx optimize` first (or pass --models optimized_model.xml)")
        plan.extend((f"({path.name})", path) for path in exported)  # labelled with the precision once timed
        return plan, model, ckpt

    def _benchmark_images(self, ckpt: dict[str, Any], input_size: tuple[int, int], count: int) -> tuple[list, str]:
        """``count`` test images spread over the test split (decoded), or synthetic ones without data."""
        from otx.deploy.benchmark import synthetic_images

        if self.data.data_root is None:
            self.data.data_root = (ckpt.get("data") or {}).get("data_root")
        if self.data.data_root is None or not Path(self.data.data_root).is_dir():
            return synthetic_images(count, input_size), f"{count} synthetic images at {input_size[0]}x{input_size[1]}"
        self.data.setup()
        test = self.data.splits["test"] or self.data.splits["train"]
        picks = np.linspace(0, len(test) - 1, num=min(count, len(test))).round().astype(int)
        images = [read_image(test[i].path) for i in sorted(set(picks.tolist()))]
        return images, f"{len(images)} images of {self.data.data_root} at their own sizes"

    def _benchmark(
        self,
        run: Run,
        checkpoint: str | Path | None,
        models: list[str | Path] | None,
        num_images: int,
        warmup: int,
        repeats: int,
    ) -> dict[str, Any]:
        import platform

        from otx.deploy.benchmark import benchmark_openvino, benchmark_torch
        from otx.deploy.metadata import read_model_info

        plan, model, ckpt = self._benchmark_plan(run, checkpoint, models)
        first = plan[0][1]
        input_size = first.input_size if model is not None else read_model_info(first).input_size
        images, described = self._benchmark_images(ckpt, input_size, num_images)
        self._save_config(
            run,
            {"timed": [str(target) if isinstance(target, Path) else label for label, target in plan]},
            {"num_images": num_images, "warmup": warmup, "repeats": repeats},
        )
        self.console.print(
            f"[bold]otx benchmark[/]: {len(plan)} model(s) on {described}; OpenVINO on {self.device} at "
            f"{self.inference_precision}, warm-up {warmup}, {repeats} throughput repeats"
        )
        rows = []
        for label, target in plan:
            self.console.print(f"  timing {label} ...")
            if isinstance(target, Path):
                row = benchmark_openvino(target, images, self.device, self.inference_precision, warmup, repeats)
                row["path"] = str(target)
                if label.startswith("("):  # a given model file: its precision comes from its metadata
                    label = f"OpenVINO {row['model_precision']} {label}"
            else:
                row = benchmark_torch(target, images, warmup, repeats)
            rows.append({"model": label, **row})
        reference = next((r for r in rows if r["model"] == "OpenVINO FP32"), None)
        for row in rows:
            if reference is not None:
                row["throughput_vs_fp32_ir"] = row["throughput_img_s"] / reference["throughput_img_s"]
        result = {
            "command": "benchmark",
            "task": self.task.value,
            "images": described,
            "device_requested": self.device,
            "inference_precision_requested": self.inference_precision,
            "warmup": warmup,
            "repeats": repeats,
            "rows": rows,
            "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
            "otx_version": __version__,
        }
        run.write_json("metrics.json", result)
        self._print_benchmark(rows, run)
        return result

    def _print_benchmark(self, rows: list[dict[str, Any]], run: Run) -> None:
        table = Table(title=f"otx benchmark ({self.task.value}; latency batch 1, throughput with parallel requests)")
        for column in ("model", "device", "precision", "median ms", "p95 ms", "images/s"):
            table.add_column(column, justify="left" if column in ("model", "device") else "right")
        if any("throughput_vs_fp32_ir" in r for r in rows):
            table.add_column("x FP32 IR", justify="right")
        for r in rows:
            cells = [r["model"], r["device"], r["inference_precision"]]
            cells += [f"{r['latency_ms_median']:.2f}", f"{r['latency_ms_p95']:.2f}", f"{r['throughput_img_s']:.1f}"]
            if "throughput_vs_fp32_ir" in r:
                cells.append(f"{r['throughput_vs_fp32_ir']:.2f}x")
            table.add_row(*cells)
        self.console.print(table)
        self.console.print(f"run folder: {run.path}")

    # --- inference ----------------------------------------------------------------------------
    def _progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )

    def _batches(
        self, scorer: Scorer, samples: list[Sample], desc: str, skip_errors: bool = False
    ) -> Iterator[tuple[dict[str, torch.Tensor], list[Sample], list[str]]]:
        """Raw outputs batch by batch: ``maps``, ``scores``, ``labels``, ``masks``, ``orig_sizes``.

        An image that fails to decode stops with one ``OTXDataError`` line, or, with
        ``skip_errors``, comes back with its error message (and meaningless outputs).
        """
        loader: DataLoader = self.data.loader(samples, scorer.preprocessor, resize=scorer.resize_in_loader)
        with self._progress() as progress:
            bar = progress.add_task(f"{desc:<10}", total=len(samples))
            for batch in loader:
                if not skip_errors:
                    raise_batch_errors(batch)
                maps, scores = scorer.run(batch["image"])
                indices = batch["index"].tolist()
                yield (
                    {
                        "maps": maps,
                        "scores": scores,
                        "labels": batch["label"],
                        "masks": batch["mask"],
                        "orig_sizes": batch["orig_size"],
                    },
                    [samples[i] for i in indices],
                    list(batch["error"]),
                )
                progress.advance(bar, len(indices))

    def _collect(
        self, scorer: Scorer, samples: list[Sample], desc: str, skip_errors: bool = False
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        """All raw outputs of ``samples`` and, per sample, its decode error ("" when read)."""
        parts: dict[str, list[torch.Tensor]] = {}
        errors: list[str] = []
        for outputs, _, batch_errors in self._batches(scorer, samples, desc, skip_errors=skip_errors):
            for key, value in outputs.items():
                parts.setdefault(key, []).append(value)
            errors.extend(batch_errors)
        return {key: torch.cat(values) for key, values in parts.items()}, errors

    def _to_predictions(
        self, scorer: Scorer, outputs: dict[str, torch.Tensor], samples: list[Sample]
    ) -> list[Prediction]:
        normalized = as_numpy(scorer.normalize(outputs["maps"], outputs["scores"]))
        return self.adapter.predictions(normalized, [s.path for s in samples], outputs["orig_sizes"].numpy())

    def _evaluate(
        self,
        scorer: Scorer,
        outputs: dict[str, torch.Tensor],
        samples: list[Sample],
        with_boxes: bool,
        predictions: list[Prediction] | None = None,
    ) -> dict[str, float]:
        labels = outputs["labels"].numpy()
        image_threshold, pixel_threshold = scorer.thresholds
        pred_labels = (outputs["scores"] >= image_threshold).numpy()
        metrics = image_metrics(outputs["scores"].numpy(), labels, pred_labels)
        if not self.adapter.pixel_level:
            return metrics
        if not self.data.has_masks:
            if not self._warned_no_masks:
                self.console.print(
                    "[yellow]note[/]: the data has no ground_truth/ folder: pixel and box metrics are unavailable"
                )
                self._warned_no_masks = True
            return metrics
        # Anomalous images without a mask file cannot be scored per pixel: leave them out.
        usable = torch.tensor([s.label == 0 or s.mask_path is not None for s in samples])
        maps, masks = outputs["maps"][usable], outputs["masks"][usable]
        metrics.update(pixel_metrics(maps, masks, maps >= pixel_threshold))
        if with_boxes and self.adapter.box_level and predictions is not None:
            gt_boxes, pred_boxes, box_scores = [], [], []
            for sample, pred, use in zip(samples, predictions, usable.tolist(), strict=True):
                if not use:
                    continue
                gt = read_mask(sample.mask_path) if sample.mask_path else None
                gt_boxes.append(gt_boxes_from_mask(gt) if gt is not None else np.zeros((0, 4), np.float32))
                pred_boxes.append(pred.pred_boxes)
                box_scores.append(pred.box_scores)
            metrics.update(box_ap(gt_boxes, pred_boxes, box_scores))
        return metrics

    def _print_summary(
        self, command: str, run: Run, metrics: dict[str, Any], title: str, extra: dict[str, str] | None = None
    ) -> None:
        table = Table(title=f"otx {command}: {title} ({self.task.value})", show_lines=False)
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in metrics.items():
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
        self.console.print(table)
        for key, value in (extra or {}).items():
            self.console.print(f"{key}: {value}")
        self.console.print(f"run folder: {run.path}")

"""``Engine``: the facade over the verbs (the CLI is a thin layer on it).

Example::

    from otx.data import AnomalyDataModule
    from otx.engine import Engine
    from otx.models import Padim

    engine = Engine(model=Padim(), data=AnomalyDataModule("datasets/bottle"), task="segmentation")
    engine.train()                  # fits, learns thresholds on the validation split, saves model.ckpt
    metrics = engine.test()         # metrics.json on the test split
    predictions = engine.predict()  # predictions.json and mask PNGs
    xml = engine.export().exported_model      # OpenVINO IR with pre- and post-processing inside
    engine.test(checkpoint=xml)     # the same metrics from the exported model, through OpenVINO

The engine checks its arguments and hands each verb to its module in ``otx.verbs`` with a fresh
``VerbContext``; the verb returns a typed result (``otx.results``) that ``otx.render`` prints.
No verb changes the engine's task or data: those a loaded model brings stay inside the call. The
engine remembers what it wrote itself (its last ``model.ckpt`` and IR), which later verbs take
when no checkpoint is given.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from rich.console import Console

from otx import distributed
from otx.checkpoint import CHECKPOINT_NAME, CHECKPOINT_SCHEMA, class_path, latest_checkpoint, load_checkpoint
from otx.data.datamodule import AnomalyDataModule
from otx.deploy.inferencer import PRECISION_HINTS
from otx.distributed import alone, secondary
from otx.errors import COMMAND_LINE, OTXConfigError, OTXError, python_spelling
from otx.logs import make_console, warnings_shown
from otx.models.base import AnomalyModel
from otx.render import render
from otx.results import BenchmarkResult, ExportResult, OptimizeResult, Result, TestResult, TrainResult
from otx.tasks import AnomalyTask, Prediction, get_adapter
from otx.training import check_callback_entries, check_max_time, resume_checkpoints
from otx.validate import SEED_MAX, check_bool, check_choice, check_int, check_path, got
from otx.verbs import benchmark as benchmark_verb
from otx.verbs import export as export_verb
from otx.verbs import optimize as optimize_verb
from otx.verbs import predict as predict_verb
from otx.verbs import test as test_verb
from otx.verbs import train as train_verb
from otx.verbs.context import VerbContext, run_verb
from otx.verbs.inference import prediction_counts
from otx.workdir import Run, WorkDir

__all__ = ["CHECKPOINT_NAME", "CHECKPOINT_SCHEMA", "Engine", "load_checkpoint", "prediction_counts"]

log = logging.getLogger("otx")

R = TypeVar("R", bound=Result)
F = TypeVar("F", bound=Callable[..., Any])


def _python_names(method: F) -> F:
    """Errors raised through ``method`` name the Python arguments (``checkpoint=PATH``), not the CLI's options.

    The command line calls the same methods; its messages keep its own spellings (``COMMAND_LINE``).
    """

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except OTXError as exc:
            if not COMMAND_LINE.get() and len(exc.args) == 1 and isinstance(exc.args[0], str):
                exc.args = (python_spelling(exc.args[0]),)
            raise

    return wrapper  # type: ignore[return-value]


def _plain_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with paths as text, checked to be what a run's config.yaml can hold (one line if not)."""
    import yaml

    def plain(value: Any) -> Any:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
            return value.item()  # a NumPy (or torch) scalar
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [plain(item) for item in value]
        return value

    config = plain(config)
    try:
        yaml.safe_dump(config)
    except yaml.YAMLError as exc:  # before: yaml's RepresenterError, after a run folder was made
        bad = exc.args[1] if len(exc.args) > 1 else exc
        raise OTXConfigError(
            "config must hold plain values (text, numbers, lists, dicts), as a run's config.yaml does "
            f"(got {type(bad).__name__}: {str(bad)[:80]})"
        ) from None
    return config


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
        seed: global seed for training: ``train()`` seeds Python's, NumPy's and torch's random
            generators with it (Lightning's ``seed_everything``), so the caller's are reseeded too.
        config: the resolved configuration to save with each run (the CLI passes it).
        console: where summaries and progress go (a ``rich`` console).
        device: OpenVINO device for exported models (``AUTO``, ``CPU``, ``GPU``, ``NPU``).
        inference_precision: OpenVINO inference precision for exported models: ``f32`` (reproduces
            the trained model), ``bf16``, ``f16`` or ``default`` (the device's choice).
        trainer: ``lightning.Trainer`` arguments for training (a recipe's ``trainer:`` section:
            accelerator, devices, precision, max_epochs, callbacks ...) over the model's defaults
            (``default_trainer``, its recipes' trainer section), key by key: callbacks given here
            replace the model's (STFPM's early stopping and best-epoch checkpoint, PatchFlow's
            best-epoch checkpoint); the accelerator defaults to ``auto``.
    """

    @_python_names
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
            if isinstance(model, type):
                what = f"got the class {model.__name__}; pass an instance, e.g. {model.__name__}()"
            elif type(model).__module__.split(".")[0] == "anomalib":  # anomalib's habit: Engine().fit(Padim())
                from otx.models import available_models

                name, known = type(model).__name__, sorted(available_models())
                own = next((k for k in known if k.lower() == name.lower()), None)
                what = f"got anomalib's {name}; otx wraps anomalib's torch models in its own: pass " + (
                    f"otx.models.{own}(...)" if own else f"one of otx.models' {', '.join(known)}"
                )
            else:
                what = got(model)
            raise OTXConfigError(f"model must be an otx model such as otx.models.Padim() ({what})")
        self.model = model
        self.data = data  # (checked and converted by the property, as a later assignment is)
        self.task = task
        if not isinstance(device, str) or not device.strip():
            raise OTXConfigError(f"device must be an OpenVINO device name such as CPU, GPU or AUTO (got {device!r})")
        self.device = device
        self.inference_precision = check_choice("inference_precision", inference_precision, PRECISION_HINTS)
        self.workdir = WorkDir(check_path("work_dir", work_dir))
        self.max_epochs = check_int("max_epochs", max_epochs, minimum=1, optional=True)
        if trainer is not None and not isinstance(trainer, dict):
            raise OTXConfigError(f"trainer must be a dict of lightning.Trainer arguments ({got(trainer)})")
        self.trainer = dict(trainer or {})
        for key in ("max_epochs", "check_val_every_n_epoch", "num_nodes", "accumulate_grad_batches"):
            # before the first run folder: Lightning's own errors for these came after one was made
            if key in self.trainer:  # NumPy integers become ints (Lightning refuses some of them)
                self.trainer[key] = check_int(f"--trainer.{key}", self.trainer[key], minimum=1, optional=True)
        if self.max_epochs is not None and self.trainer.get("max_epochs") not in (None, self.max_epochs):
            raise OTXConfigError(
                f"max_epochs={self.max_epochs} and trainer['max_epochs']={self.trainer['max_epochs']!r} disagree: "
                "give the number of epochs once"
            )
        check_max_time(self.trainer.get("max_time"))
        check_callback_entries(self.trainer.get("callbacks"))  # before a run folder, and before config.yaml holds them
        self.seed = check_int("seed", seed, minimum=0, maximum=SEED_MAX)
        if config is not None and not isinstance(config, dict):
            raise OTXConfigError(
                f"config must be a dict (the resolved configuration a run's config.yaml holds; {got(config)})"
            )
        self.config = _plain_config(config or {})
        if console is not None and not isinstance(console, Console):
            if not callable(getattr(console, "write", None)):  # before: AttributeError '...' has no 'print'
                raise OTXConfigError(
                    f"console must be a rich Console or a text stream such as sys.stdout (got {type(console).__name__})"
                )
            console = Console(file=console)  # a text stream: summaries and progress written to it
        self.console = console or make_console(stderr=True, quiet=secondary())  # rank > 0 prints nothing
        self._pristine: AnomalyModel | None = None  # a gradient-trained model as given, before this engine trained it
        self._trained: AnomalyModel | None = None  # the model the last train() trained
        self._own: dict[str, Path] = {}  # the checkpoint ("train") and export ("export") this engine wrote last

    @property
    def data(self) -> AnomalyDataModule:
        """The data module the verbs use; set it to an ``AnomalyDataModule``, a data root path, or None."""
        return self._data

    @data.setter
    def data(self, data: AnomalyDataModule | str | Path | None) -> None:
        # (before: a path assigned after construction stayed a str, and the next verb stopped with AttributeError)
        if data is not None and not isinstance(data, AnomalyDataModule | str | Path):
            raise OTXConfigError(f"data must be an AnomalyDataModule or a data root path ({got(data)})")
        self._data = data if isinstance(data, AnomalyDataModule) else AnomalyDataModule(str(data) if data else None)

    @property
    def task(self) -> AnomalyTask | None:
        """The task given (None: each model's own); set it to ``classification``, ``detection`` or ``segmentation``."""
        return self._task

    @task.setter
    def task(self, task: str | AnomalyTask | None) -> None:
        if task is not None and not isinstance(task, str):  # (an AnomalyTask is a str)
            raise OTXConfigError(f"task must be one of classification, detection, segmentation (got {task!r})")
        self._task = get_adapter(task).task if task is not None else None

    @property
    def work_dir(self) -> Path:
        """The work directory (run folders, ``latest.json``); set it to write later runs elsewhere."""
        return self.workdir.root

    @work_dir.setter
    def work_dir(self, value: str | Path) -> None:
        self.workdir = WorkDir(check_path("work_dir", value))

    # --- verbs -------------------------------------------------------------------------------
    @_python_names
    def train(self, resume: bool | str | Path = False) -> TrainResult | None:
        """Fit the model on ``train/good``, learn thresholds on the validation split, save the checkpoint.

        Thresholds and normalisation statistics are fitted in Lightning's validation loop (after
        every validated epoch; with a monitored ``ModelCheckpoint`` in ``trainer.callbacks``, for
        the best epoch's weights). ``resume`` continues an interrupted multi-epoch training: True
        takes the newest interrupted run in ``work_dir``, a path names its folder or ``last.ckpt``.
        Returns a ``TrainResult`` (also the run folder's ``metrics.json``); ``.checkpoint`` is
        the written ``model.ckpt``, which this engine's test, predict, export and benchmark then
        take by default. Each call trains the model as it was given (a gradient-trained model from a
        copy kept when it was first trained), not the weights of an earlier call; ``engine.model``
        is the model the last call trained. With ``trainer={"devices": N, "strategy": "ddp"}`` (or
        ``num_nodes``) the fit runs in several processes (``docs/scale.md``); processes of rank > 0
        return None, and take rank 0's checkpoint as this engine's own.
        """
        if self.model is None:
            raise OTXConfigError(
                "no model given; pass --config recipe/anomaly_segmentation/padim.yaml (or another recipe)"
                if COMMAND_LINE.get()
                else "no model given; pass model=, e.g. Engine(model=Padim(), data=...) with Padim from otx.models"
            )
        if isinstance(resume, torch.nn.Module):  # anomalib's habit: engine.fit(model)
            raise OTXConfigError(
                f"train() takes no model ({got(resume)}): pass it to the engine, Engine(model=..., data=...).train()"
            )
        if not isinstance(resume, bool | str | Path):
            raise OTXConfigError(f"resume must be True, False or a path ({got(resume)})")
        starts = resume_checkpoints(resume, self.workdir.root, class_path(self.model)) if resume is not False else []
        if self.model is not self._trained:  # a model this engine has not trained yet (as given, or swapped in)
            self._pristine = None
            if any(p.requires_grad for p in self.model.parameters()):  # one-pass models re-fit from scratch anyway
                self._pristine = copy.deepcopy(self.model)
        elif self._pristine is not None:  # trains afresh: STFPM's student would go on from the last call's weights
            self.model = copy.deepcopy(self._pristine)
        model = self._trained = self.model
        contexts: list[VerbContext] = []

        def body(ctx: VerbContext, run: Run) -> TrainResult:
            contexts.append(ctx)
            return train_verb.run(ctx, run, model, self.trainer, self.max_epochs, starts)

        try:
            result = self._run("train", body, distributed=True)
        finally:
            # Past the fit's last collective (primary_output set, in every process alike), the processes
            # meet once more when rank 0 has written its files, failed or not, so that the others do not
            # read the checkpoint before it exists. A failure before that point adds no collective.
            if contexts and contexts[-1].primary_output is not None:
                with contextlib.suppress(Exception):
                    distributed.barrier()
        # A process of rank > 0 takes the checkpoint rank 0 wrote as its own (it learnt the path after the
        # fit, with the best epoch), so engine.test() and the other verbs of the same script find it there too.
        checkpoint = result.checkpoint if result is not None else contexts[-1].primary_output if contexts else None
        if checkpoint is not None:
            self._own = {"train": Path(checkpoint)}
        return result

    def _default(self, checkpoint: str | Path | None, *kinds: str) -> str | Path | None:
        """``checkpoint``, else the newest of this engine's own runs of ``kinds`` (None: the work_dir's latest).

        Where that would be the latest run of a work_dir that does not exist (a mistyped
        ``--work_dir``), one ``OTXError`` line before any run folder (or the work_dir) is created.
        """
        if checkpoint is not None:
            return checkpoint
        own = next((self._own[kind] for kind in kinds if kind in self._own), None)
        if own is None and not self.workdir.root.exists():
            latest_checkpoint(self.workdir)  # raises: no trained model there
        return own

    @_python_names
    def test(self, checkpoint: str | Path | None = None, devices: int = 1, num_nodes: int = 1) -> TestResult | None:
        """Evaluate on the test split; returns a ``TestResult`` (``.metrics``; also metrics.json and a report).

        Images that cannot be read are listed under ``errors`` (label ``error``), not scored.
        ``devices`` x ``num_nodes`` > 1 splits the images between processes (``docs/scale.md``; the
        first starts the others by running the same command, so call it from a script or the CLI);
        the result is the one of a single process. Processes of rank > 0 return None.
        """
        check_path("checkpoint", checkpoint, optional=True)
        devices = check_int("devices", devices, minimum=1)
        num_nodes = check_int("num_nodes", num_nodes, minimum=1)
        checkpoint = self._default(checkpoint, "train")
        return self._run(
            "test", lambda ctx, run: test_verb.run(ctx, run, checkpoint, devices, num_nodes), distributed=True
        )

    @_python_names
    def predict(
        self,
        source: str | Path | None = None,
        checkpoint: str | Path | None = None,
        visualize: bool = True,
        devices: int = 1,
        num_nodes: int = 1,
        keep_masks: bool = True,
        keep_maps: bool = False,
    ) -> list[Prediction] | None:
        """Predict on ``source`` (file, folder or glob) or, without it, on the data's test images.

        ``checkpoint`` may be a ``model.ckpt`` or an exported ``.xml`` / ``.onnx`` (run by OpenVINO
        on ``device``); the default is the checkpoint this engine trained last, else the latest training
        run's in ``work_dir``. The same holds for ``test``, ``export`` and ``benchmark``.
        With ``visualize``, an overlay per image goes to ``predictions/overlays/`` (heat map, mask
        outline or boxes, label and score, and the ground-truth outline where the data has one).
        Returns the predictions; counts and unreadable images are in the run's ``metrics.json``.
        ``devices`` and ``num_nodes`` split the images between processes as in ``test`` (rank > 0
        returns None). Every mask is written to ``predictions/masks/`` (its record in
        ``predictions.json`` names the file); with ``keep_masks=False`` the returned predictions
        drop their masks once written (``pred_mask`` None), so that a large folder does not hold
        every mask in memory (``otx predict`` does this). With ``keep_maps`` each
        prediction of a segmentation or detection model keeps its ``anomaly_map`` (float, normalised:
        0.5 is the pixel threshold, at the image's size); by default it is dropped (``None``), as a map
        takes four bytes a pixel.
        """
        if isinstance(source, list | tuple) and source and all(isinstance(item, str | Path) for item in source):
            raise OTXConfigError(
                f"source must be one image path, folder or glob (got a list of {len(source)} paths); put the "
                "images in one folder, or pass a glob such as 'images/*.png'"
            )
        in_memory = hasattr(source, "shape") or type(source).__module__.startswith("PIL.")  # arrays, tensors, images
        if isinstance(source, list | tuple) or in_memory:
            raise OTXConfigError(
                f"source must be an image path, a folder or a glob (got {type(source).__name__}); for images in "
                "memory, export the model and use otx.deploy.OpenVINOInferencer(path).predict(images)"
            )
        check_path("source", source, optional=True)
        check_path("checkpoint", checkpoint, optional=True)
        check_bool("visualize", visualize)
        check_bool("keep_masks", keep_masks)
        check_bool("keep_maps", keep_maps)
        devices = check_int("devices", devices, minimum=1)
        num_nodes = check_int("num_nodes", num_nodes, minimum=1)
        checkpoint = self._default(checkpoint, "train")
        result = self._run(
            "predict",
            lambda ctx, run: predict_verb.run(
                ctx, run, source, checkpoint, visualize, devices, num_nodes, keep_masks, keep_maps
            ),
            distributed=True,
        )
        return result.predictions if result is not None else None

    @_python_names
    def export(
        self,
        checkpoint: str | Path | None = None,
        export_format: str = "OPENVINO",
        precision: str = "FP32",
        demo_package: bool = False,
    ) -> ExportResult | None:
        """Export a checkpoint (default: as for ``predict``) to OpenVINO IR or ONNX.

        Writes ``exported_model.xml/.bin`` or ``exported_model.onnx`` into a new run folder, checks
        the export against torch on validation images and one noise image, and with ``demo_package``
        adds a zip that predicts on a folder with only openvino, numpy and opencv installed. Returns
        an ``ExportResult``.
        """
        from otx.deploy.export import check_export_args

        check_path("checkpoint", checkpoint, optional=True)
        check_bool("demo_package", demo_package)
        fmt, prec = check_export_args(export_format, precision)  # before any run folder exists
        if demo_package and fmt != "OPENVINO":
            raise OTXConfigError("the demo package holds an OpenVINO IR; export with --format OPENVINO")
        checkpoint = self._default(checkpoint, "train")
        result = self._run("export", lambda ctx, run: export_verb.run(ctx, run, checkpoint, fmt, prec, demo_package))
        if result is not None and Path(result.exported_model).suffix == ".xml":  # what optimize takes
            self._own["export"] = Path(result.exported_model)
        return result

    @_python_names
    def optimize(
        self,
        checkpoint: str | Path | None = None,
        subset_size: int | None = None,
        max_drop: float | None = None,
        weight_bits: str | int = "auto",
        fallback: bool = True,
    ) -> OptimizeResult | None:
        """Quantise a model to INT8 with NNCF, calibrated on training images (PADIM: validation too), keeping accuracy.

        ``checkpoint`` is an exported OpenVINO ``.xml`` (ONNX is refused) or a ``model.ckpt``
        (exported to an FP32 IR first); the default is this engine's last export, else the checkpoint it trained last,
        else the newest of the work_dir's latest export and latest training run.
        ``subset_size`` training images (``train/good``, all if fewer; a scheme may add the validation
        images, ``Scheme.calibrate_with_validation``) calibrate the quantisers; None
        takes the model's default (its INT8 scheme's ``calibration_images``: 300 for PADIM and
        PatchFlow, 1,000 for PatchCore and STFPM). With ``max_drop``, NNCF's accuracy control keeps
        the validation AUROC and F1 (image, and pixel with masks) within ``max_drop`` of the FP32
        model's. ``weight_bits`` 7 runs on every CPU; 8 is more accurate but only for CPUs with
        VNNI or AMX (without VNNI, int16 sums saturate); ``auto``: 8 where this CPU has VNNI or
        AMX, else 7. ``fallback``: when the model's INT8 scheme does not keep the FP32
        model's validation decisions, quantise again with the schemes that keep more of it in
        float (PatchFlow's: its backbone) and keep the first that does, else the closest (the
        tries are in the result's ``attempts``); False keeps the first scheme's model, and
        ``max_drop`` leaves the choice to NNCF. Writes ``optimized_model.xml/.bin`` (with the source's metadata and
        post-processing, marked INT8) into a new run folder; returns an ``OptimizeResult``.
        """
        from otx.deploy.optimize import check_max_drop, resolve_weight_bits

        check_path("checkpoint", checkpoint, optional=True)
        check_max_drop(max_drop)
        subset_size = check_int("subset_size", subset_size, minimum=1, optional=True)
        resolve_weight_bits(weight_bits)  # one line for a bad value, before any run folder exists
        fallback = check_bool("fallback", fallback)
        checkpoint = self._default(checkpoint, "export", "train")
        return self._run(
            "optimize",
            lambda ctx, run: optimize_verb.run(ctx, run, checkpoint, subset_size, max_drop, weight_bits, fallback),
        )

    @_python_names
    def benchmark(
        self,
        checkpoint: str | Path | None = None,
        models: list[str | Path] | None = None,
        num_images: int = 100,
        warmup: int = 10,
        repeats: int = 3,
    ) -> BenchmarkResult | None:
        """Latency (batch 1, median and p95) and throughput of a model in torch and in OpenVINO.

        With a ``model.ckpt`` (default: the latest training run's), it times the checkpoint in
        torch, exports and times an FP32 and an FP16 IR, and times the latest ``otx optimize``
        result when it comes from the same trained model. ``models`` adds (or, without a
        checkpoint, gives) exported ``.xml`` / ``.onnx`` files. Images are the data's test
        images (``num_images`` of them) or synthetic ones when no data is given. OpenVINO runs
        on ``device`` at ``inference_precision``; each row reports the precision actually used.
        Prints one table and writes it to ``metrics.json``; returns a ``BenchmarkResult``.
        """
        num_images = check_int("num_images", num_images, minimum=1)
        warmup = check_int("warmup", warmup, minimum=0)
        repeats = check_int("repeats", repeats, minimum=1)
        check_path("checkpoint", checkpoint, optional=True)
        if models is not None and (isinstance(models, str | Path) or not isinstance(models, list | tuple)):
            raise OTXConfigError(f"models must be a list of exported model paths ({got(models)})")
        for model_path in models or []:
            check_path("models", model_path)
        if not models:
            checkpoint = self._default(checkpoint, "train")
        return self._run(
            "benchmark",
            lambda ctx, run: benchmark_verb.run(ctx, run, checkpoint, models, num_images, warmup, repeats),
        )

    # --- plumbing ------------------------------------------------------------------------------
    def _context(self) -> VerbContext:
        return VerbContext(
            console=self.console,
            workdir=self.workdir,
            data=self.data,
            task=self.task,
            device=self.device,
            inference_precision=self.inference_precision,
            seed=self.seed,
            config=self.config,
            model=self.model,
        )

    def _run(self, command: str, body: Callable[[VerbContext, Run], R], distributed: bool = False) -> R | None:
        """Run a verb with a fresh context in a new run folder; print its result.

        In a process of rank > 0 of a distributed run, only the verbs that take part (train, test,
        predict: ``distributed``) run, and return None; rank 0 returns the result.
        """
        if secondary() and not distributed:
            log.info("otx %s: skipped in a process of rank > 0 (rank 0 runs it)", command)
            return None
        ctx = self._context()
        with (
            quiet_lightning(),
            torch_flags_kept(),
            warnings_shown(logging.ERROR if secondary() else logging.WARNING),
            contextlib.nullcontext() if distributed else alone(),  # export, optimize, benchmark: rank 0 alone
        ):
            return run_verb(ctx, command, lambda run: body(ctx, run), lambda result: render(self.console, result))


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's start-up notes (devices found, modules in eval mode) at WARNING level during a verb.

    otx prints what ran (device, epochs, the summary) itself; the levels are restored afterwards.
    """
    names = (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.pytorch",
        "lightning.fabric.utilities.distributed",  # "Initializing distributed: GLOBAL_RANK ..." from every process
    )
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def torch_flags_kept() -> Iterator[None]:
    """Torch's process-wide algorithm flags as they were before a verb.

    ``trainer={"deterministic": True}`` is for its run: Lightning switches
    ``torch.use_deterministic_algorithms`` (and cuBLAS's workspace variable) on when it builds the
    trainer and leaves it on, which made later runs and the caller's own torch code deterministic
    (on a GPU, an error for operations that have no deterministic version).
    """
    import torch

    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace

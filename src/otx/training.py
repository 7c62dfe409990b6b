"""How `otx train` drives Lightning: the recipe's ``trainer:`` section, callbacks, resuming.

A recipe's ``trainer:`` section holds ``lightning.Trainer`` arguments (accelerator, devices,
precision, max_epochs, callbacks by ``class_path`` ...). The model class gives the defaults
(``AnomalyModel.default_trainer``), the recipe and the command line override them
(``--trainer.accelerator gpu``). otx adds what every run needs: its loggers in the run folder,
the epoch timer and a checkpoint of the last epoch for ``--resume`` (multi-epoch models; the
training loader's ``EpochShuffleSampler`` makes a resumed training see the batches an
uninterrupted one sees).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import importlib
import inspect
import logging
import os
import re
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, ProgressBar, RichProgressBar, Timer
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO

try:  # why an EarlyStopping stopped (Lightning 2.6); before, a count that reached the patience
    from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
except ImportError:
    EarlyStoppingReason = None  # type: ignore[assignment,misc]

from otx.checkpoint import CHECKPOINT_NAME, atomic_torch_save, class_path
from otx.distributed import (
    SUPPORTED_STRATEGIES,
    check_cpu_processes,
    check_launched_world,
    check_nodes,
    check_relaunchable,
    check_strategy,
    ddp_strategy,
    met,
    spare_this_process,
)
from otx.errors import OTXConfigError, OTXError, OTXInstallError
from otx.validate import close_matches
from otx.workdir import CHECKPOINT_DIR


class _NoAdvert(logging.Filter):
    """Drops Lightning's advert for a hosted logging service, printed at every ``Trainer()``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdvert())

log = logging.getLogger(__name__)
LAST_CHECKPOINT = "last.ckpt"
# Trainer arguments otx sets itself: a recipe that gives them would break the run folder's layout.
_OWNED = ("logger", "default_root_dir", "enable_checkpointing", "num_sanity_val_steps", "use_distributed_sampler")
# Lightning's debugging arguments that fit or calibrate on part of the splits: the summary and metrics.json
# would count images the model never saw (limit_train_batches 1: PADIM fitted on 16 of the 40 it named)
_PARTIAL = ("limit_train_batches", "limit_val_batches", "fast_dev_run", "overfit_batches")
# Lightning's short precision names, as its Trainer spells them once built
SHORT_PRECISION = {"16": "16-mixed", "bf16": "bf16-mixed", "32": "32-true", "64": "64-true"}


class TrainerSettings:
    """The ``trainer:`` section of a recipe (``lightning.Trainer`` arguments; None keeps the model's default).

    Args:
        accelerator: ``auto`` (a GPU when there is one, else the CPU), ``cpu``, ``gpu``, ``cuda``,
            ``xpu``, ``mps``.
        devices: how many devices (or which: ``[0, 1]``); ``auto`` for all.
        strategy: ``auto`` or ``ddp`` (several processes: each runs the whole command; docs/scale.md).
        num_nodes: machines in a distributed run (each started by torchrun, SLURM or by hand; docs/scale.md).
        precision: ``32-true``, ``16-mixed``, ``bf16-mixed`` ...
        max_epochs: cap on training epochs.
        max_time: cap on training time, ``DD:HH:MM:SS`` (``00:02:00:00``: two hours); the fit stops
            at the first batch past it and keeps its best epoch so far.
        check_val_every_n_epoch: validate (and refit thresholds) every n epochs.
        callbacks: Lightning callbacks as ``{class_path: ..., init_args: {...}}`` (early stopping,
            a monitored ``ModelCheckpoint`` that keeps the best epoch ...).
        deterministic: ``torch.use_deterministic_algorithms`` for the run.
        gradient_clip_val: clip gradients at this norm.
        accumulate_grad_batches: batches per optimiser step.
    """

    def __init__(
        self,
        accelerator: str | None = None,
        devices: int | str | list[int] | None = None,
        strategy: str | None = None,
        num_nodes: int | None = None,
        precision: str | int | None = None,
        max_epochs: int | None = None,
        max_time: str | None = None,
        check_val_every_n_epoch: int | None = None,
        callbacks: list[dict[str, Any]] | None = None,
        deterministic: bool | None = None,
        gradient_clip_val: float | None = None,
        accumulate_grad_batches: int | None = None,
    ) -> None:
        # Only the signature is used: it types the CLI's --trainer.* options; the parsed section
        # reaches Engine(trainer=...) as a dict.
        del accelerator, devices, strategy, num_nodes, precision, max_epochs, max_time, check_val_every_n_epoch
        del callbacks, deterministic, gradient_clip_val, accumulate_grad_batches


def merge_settings(*layers: dict[str, Any] | None) -> dict[str, Any]:
    """Trainer settings, later layers overriding earlier ones (None values are not set)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if value is not None:
                merged[key] = value
    return merged


def _raised_in_loggers(exc: BaseException) -> bool:
    """Whether Lightning's loggers raised ``exc`` (their package missing), not an accelerator's check."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and "loggers" in Path(frames[-1].filename).parts


def describe_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Trainer settings as plain data for config.yaml (callback instances as ``{class_path, init_args}``)."""
    described = dict(settings)
    if described.get("callbacks"):
        described["callbacks"] = [
            spec if not isinstance(spec, L.Callback) else callback_entry(spec) for spec in described["callbacks"]
        ]
    return described


def callback_entry(callback: L.Callback) -> dict[str, Any]:
    """``{class_path, init_args}`` that rebuilds ``callback``: its constructor's arguments read back from it.

    Lightning's callbacks keep their arguments as attributes of the same name (or with a leading
    underscore), some changed on the way (``EarlyStopping`` stores ``min_delta`` with the sign of its
    mode). So each argument that differs from its default is read back, the callback is rebuilt from
    them, and an argument counts only when the rebuilt callback stores what the given one does (a
    number stored negated is taken negated). Before, config.yaml held the class path alone, and a
    run made again from it lost the callback's monitor and patience. Arguments the rebuilt callback
    does not reproduce, or that the object keeps under no attribute of their name, are named in a
    warning, not recorded. The class is constructed again for the check (a few times per callback).
    """
    cls = type(callback)
    try:
        parameters = [p for p in inspect.signature(cls).parameters.values() if p.kind != p.VAR_POSITIONAL]
    except (TypeError, ValueError):  # a class without a signature Python can read
        parameters = []
    missing = object()

    def stored(obj: Any, name: str) -> Any:
        attributes = vars(obj)
        return attributes.get(name, attributes.get(f"_{name}", missing))

    def rebuilt(init_args: dict[str, Any]) -> Any:
        try:
            return cls(**init_args)
        except Exception:  # noqa: BLE001 - any failure means these arguments do not rebuild it
            return None

    init_args: dict[str, Any] = {}
    unread = [p.name for p in parameters if stored(callback, p.name) is missing and p.kind != p.VAR_KEYWORD]
    for parameter in parameters:
        value = stored(callback, parameter.name)
        value = os.fspath(value) if isinstance(value, os.PathLike) else value
        if parameter.kind == parameter.VAR_KEYWORD:  # e.g. ModelSummary's **summarize_kwargs, kept as a dict
            if isinstance(value, dict) and value and _plain(value):
                init_args.update(value)
            elif value is not missing and value:
                unread.append(f"**{parameter.name}")
        elif value is not missing and _plain(value):
            if not (parameter.default is not parameter.empty and _same(value, parameter.default)):
                init_args[parameter.name] = value
    copy_ = rebuilt(init_args)
    for name, value in list(init_args.items()):
        if copy_ is not None and _same(stored(copy_, name), stored(callback, name)):
            continue
        flipped = rebuilt({**init_args, name: -value}) if isinstance(value, int | float) and value else None
        if flipped is not None and _same(stored(flipped, name), stored(callback, name)):
            init_args[name], copy_ = -value, flipped
        elif name in (p.name for p in parameters):
            del init_args[name]
            copy_ = rebuilt(init_args)
    lost = unread + [
        p.name
        for p in parameters
        if p.name not in unread and (copy_ is None or not _same(stored(copy_, p.name), stored(callback, p.name)))
    ]
    if lost:
        shown = ", ".join(lost[:5]) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
        log.warning(
            "config.yaml records %s without %s (not read back from the object); give it as {class_path: %s, "
            "init_args: {...}} to record every setting",
            cls.__name__,
            shown,
            class_path(callback),
        )
    entry: dict[str, Any] = {"class_path": class_path(callback)}
    if init_args:
        entry["init_args"] = init_args
    return entry


def _plain(value: Any) -> bool:
    """Whether config.yaml can hold ``value`` as it is (text, numbers, lists and mappings of them)."""
    if isinstance(value, list | tuple):
        return all(_plain(item) for item in value)
    if isinstance(value, dict):
        return all(_plain(key) and _plain(item) for key, item in value.items())
    return isinstance(value, str | int | float | bool | type(None))


def _same(first: Any, second: Any) -> bool:
    """Whether two stored values are equal (False for values that cannot be compared)."""
    try:
        return type(first) is type(second) and bool(first == second)
    except Exception:  # noqa: BLE001 - tensors and the like
        return False


_CALLBACK_EXAMPLE = (
    "{class_path: lightning.pytorch.callbacks.EarlyStopping, init_args: {monitor: val/image_AUROC, mode: max}}, "
    "or a Lightning callback object"
)


def check_callback_entries(specs: Any) -> None:
    """One line unless ``specs`` is a list of callback instances and ``{class_path, init_args}`` entries."""
    if specs is None:
        return
    if not isinstance(specs, list | tuple):
        raise OTXConfigError(
            f"trainer.callbacks must be a list of callbacks, e.g. [{_CALLBACK_EXAMPLE}] (got {specs!r})"
        )
    for spec in specs:
        if not isinstance(spec, L.Callback):
            _entry_class(spec)


def _entry_class(spec: Any) -> type[L.Callback]:
    """The Lightning callback class a ``{class_path, init_args}`` entry names; one line for a bad entry."""
    if isinstance(spec, type) and issubclass(spec, L.Callback):
        raise OTXConfigError(
            f"trainer.callbacks: the class {spec.__name__}; pass an instance, e.g. {spec.__name__}(...), "
            f"or {{class_path: {spec.__module__}.{spec.__qualname__}, init_args: {{...}}}}"
        )
    if not isinstance(spec, dict) or not isinstance(spec.get("class_path"), str):
        raise OTXConfigError(f"trainer.callbacks entries need a class_path, e.g. {_CALLBACK_EXAMPLE} (got {spec!r})")
    if not isinstance(spec.get("init_args") or {}, dict):
        raise OTXConfigError(
            f"trainer.callbacks: init_args of {spec['class_path']} must be a mapping of its arguments "
            f"(got {spec['init_args']!r})"
        )
    path = spec["class_path"]
    # before: other keys were passed over, the callback made with its defaults (init_arg: an unmonitored BestEpoch)
    if extra := sorted(str(key) for key in spec if key not in ("class_path", "init_args")):
        if any(key.isdigit() for key in extra):  # --trainer.callbacks.0.init_args.patience 2
            raise OTXConfigError(
                "trainer.callbacks: a callback's settings cannot be changed by its place in the list "
                f"(trainer.callbacks.{next(key for key in extra if key.isdigit())}...); give the whole list: "
                "--trainer.callbacks '[{class_path: ..., init_args: {...}}, ...]' (otx train --print_config shows "
                "the recipe's)"
            )
        hint = _nearest_name(extra[0], ["class_path", "init_args"], "")
        raise OTXConfigError(
            f"trainer.callbacks: {path} has key(s) {', '.join(repr(key) for key in extra)} besides class_path and "
            "init_args" + (f"; {hint}" if hint else "")
        )
    module_name, class_name = _module_and_class(path)
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        hint = _nearest_name(class_name, _callback_names(module_name), "")
        raise OTXConfigError(f"trainer.callbacks: no class '{path}' ({exc})" + (f"; {hint}" if hint else "")) from exc
    if not (isinstance(cls, type) and issubclass(cls, L.Callback)):
        raise OTXConfigError(
            f"trainer.callbacks: {path} is not a Lightning callback (a subclass of "
            "lightning.pytorch.callbacks.Callback, such as EarlyStopping or ModelCheckpoint)"
        )
    return cls


def instantiate_callbacks(specs: list[Any]) -> list[L.Callback]:
    """Callbacks from ``{class_path, init_args}`` entries; one line per mistake.

    A callback instance is copied (as it was given) for each run: Lightning keeps a run's state on
    its callbacks (a ``ModelCheckpoint``'s folder and best file, ``EarlyStopping``'s wait count),
    which would carry the first run's best weights and stopping point into a second ``train()``.
    """
    callbacks = []
    for spec in specs:
        if isinstance(spec, L.Callback):
            try:
                callbacks.append(copy.deepcopy(spec))
            except Exception as exc:  # a callback holding something that cannot be copied (a lock, a file)
                log.warning(
                    "trainer.callbacks: %s cannot be copied (%s), so this run uses it as given and its state "
                    "carries over into later runs; give it as {class_path: %s, init_args: {...}} for a fresh one",
                    type(spec).__name__,
                    exc,
                    class_path(spec),
                )
                callbacks.append(spec)
            continue
        cls = _entry_class(spec)
        class_name = cls.__name__
        try:
            callbacks.append(cls(**(spec.get("init_args") or {})))
        except Exception as exc:  # noqa: BLE001 - Lightning's MisconfigurationException too ("internal error" before)
            unknown = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
            hint = ""
            if unknown:
                try:
                    known = [name for name in inspect.signature(cls).parameters if name not in ("args", "kwargs")]
                except (TypeError, ValueError):  # a class without a signature Python can read
                    known = []
                hint = _nearest_name(unknown.group(1), known, "init_args.")
            problem = _own_words(exc) if hint else exc
            raise OTXConfigError(f"trainer.callbacks: {class_name}: {problem}" + (f"; {hint}" if hint else "")) from exc
    return callbacks


def _module_and_class(path: str) -> tuple[str, str]:
    """The module and class a callback's ``class_path`` names (a bare name: one of Lightning's callbacks)."""
    if "." not in path:
        path = f"lightning.pytorch.callbacks.{path}"
    module_name, _, class_name = path.rpartition(".")
    return module_name, class_name


def _callback_names(module_name: str) -> list[str]:
    """The callback classes a module offers (Lightning's callbacks for a short or misspelt name)."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        module = importlib.import_module("lightning.pytorch.callbacks")
    return [name for name, value in vars(module).items() if isinstance(value, type) and issubclass(value, L.Callback)]


def _own_words(exc: BaseException) -> str:
    """``exc``'s message without Python's own "Did you mean 'x'?" (3.13 adds it to a misspelt keyword's TypeError).

    otx's line gives its own suggestion, in the option's name where the user writes it
    (``init_args.patience``); the two read as one suggestion said twice.
    """
    return re.sub(r"\. Did you mean '[^']*'\?$", "", str(exc))


def _nearest_name(name: str, known: list[str], prefix: str) -> str:
    """``did you mean 'patience'?`` when a known name is close to ``name``; empty otherwise."""
    near = close_matches(name, known)
    return f"did you mean {' or '.join(repr(prefix + n) for n in near)}?" if near else ""


class EpochProgressBar(RichProgressBar):
    """Lightning's rich progress bar counting epochs from 1, as otx's summaries, logs and curve do.

    Lightning's own shows the epoch index over the last index ("Epoch 1/1" in the second of two).
    """

    def _get_train_description(self, current_epoch: int) -> str:
        description = f"Epoch {current_epoch + 1}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
            description += f"/{self.trainer.max_epochs}"
        return f"{description:{len(self.validation_description)}}"  # as wide as "Validation": no flicker

    @contextlib.contextmanager
    def phase(self, description: str) -> Iterator[Callable[[int, int], None]]:
        """A bar of its own for a long step of the fit between batches, hidden when it ends.

        Yields ``update(done, total)``. A model finds it through ``AnomalyModel.fit_progress``;
        before, PatchCore's memory bank selection ran minutes after the epoch's bar had finished,
        without a word (a bug bash: 282 s at 1,500 training images).
        """
        progress = self.progress
        if self.is_disabled or progress is None:
            yield lambda done, total: None
            return
        task = progress.add_task(f"{description:{len(self.validation_description)}}", total=1)  # (its total: below)
        try:
            yield lambda done, total: progress.update(task, completed=done, total=total)
        finally:
            progress.update(task, visible=False)


class EpochLines(ProgressBar):
    """The progress as plain lines, for output that is not a terminal (a log file, a CI job's log).

    One line per finished epoch, and a long step of the fit (``phase``: PatchCore's coreset) at each
    quarter. Rich draws its bar only when the run ends where it cannot redraw a line: a piped
    training printed nothing from its first line to its last (a bug bash: a CI system that stops
    jobs after minutes without output would stop a long one), then the bar laid out over several
    lines. ``print_line`` is the console's (``VerbContext.console``).
    """

    SHOWN = ("train_loss", "val/image_AUROC", "val/pixel_AUROC")  # the logged figures a line names, when there

    def __init__(self, print_line: Callable[[str], None]) -> None:
        super().__init__()
        self.print_line = print_line
        self._start = time.perf_counter()
        self._enabled = True
        self._validated = -1  # the epoch the last validation ran in

    def disable(self) -> None:  # noqa: D102
        self._enabled = False

    def enable(self) -> None:  # noqa: D102
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        """Whether lines are printed (``LightningModule.print`` asks a progress bar)."""
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        """Whether lines are left out (a process of rank > 0)."""
        return not self._enabled

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        """A model's ``self.print`` as one more line."""
        if self._enabled:
            self.print_line(sep.join(map(str, args)))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        if not trainer.sanity_checking:
            self._validated = trainer.current_epoch  # (an epoch without validation keeps the last one's figures)

    @contextlib.contextmanager
    def phase(self, description: str) -> Iterator[Callable[[int, int], None]]:
        """``update(done, total)`` of a long step of the fit: a line at each quarter (``EpochProgressBar.phase``)."""
        start, said = time.perf_counter(), [0]

        def update(done: int, total: int) -> None:
            quarter = 4 * done // max(total, 1)
            if self._enabled and quarter > said[0]:
                said[0] = quarter
                self.print_line(f"{description}: {done} of {total} ({time.perf_counter() - start:.0f} s)")

        yield update

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        # (after the epoch's validation: its figures are in callback_metrics)
        if trainer.global_rank != 0 or not self._enabled:
            return
        figures = {}
        for name in self.SHOWN:
            if name.startswith("val/") and self._validated != trainer.current_epoch:
                continue  # not validated this epoch (check_val_every_n_epoch): no figures of an earlier one
            value = trainer.callback_metrics.get(name, trainer.callback_metrics.get(f"{name}_epoch"))
            if value is not None:
                figures[name] = float(value)
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        said = "".join(f", {name} {value:.4f}" for name, value in figures.items())
        self.print_line(f"epoch {trainer.current_epoch + 1}{epochs}: {time.perf_counter() - self._start:.1f} s{said}")


class EpochTimer(L.Callback):
    """Log each training epoch's wall time (``time/epoch_s``) to the CSV and TensorBoard logs.

    With several processes, their mean (``sync_dist``; without it Lightning warned each Python
    caller's run, and the CLI hid the warning).
    """

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        elapsed = time.perf_counter() - self._start
        pl_module.log("time/epoch_s", elapsed, on_step=False, on_epoch=True, sync_dist=True)


class StopSignalKept(L.Callback):
    """SIGTERM stops a training as SIGINT does: the handler the process had before the fit is put back.

    Lightning installs its own SIGTERM handler as the training loop starts. In a run of several
    processes it broadcasts from inside that handler, a collective the other processes are not in,
    so SIGTERM (``timeout``, ``docker stop``, a scheduler's preemption) hung every process for good,
    and otx's handler, its one line and its watchdog never ran.

    A stop also frees at once what only its traceback holds (``on_exception``).
    """

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """A stop: clear the local variables of the frames it unwound, so what they alone held is freed now.

        A stop that lands while an epoch's data loader starts its workers leaves that loader's iterator
        held by the stop's traceback only, in a reference cycle (Lightning's handler frame keeps the
        exception). Python's cyclic collector closes the iterator's queues before the iterator's
        ``__del__`` tells its workers to end, so torch waited 5 s for each worker, then killed it: 10
        to 20 s after the stop's line, past otx's 20 s watchdog in a slow CI run (the run ended without
        its resume line). Freed here by reference count, the iterator ends its workers in milliseconds
        (measured: ``docs/architecture.md``, "Errors").
        """
        del trainer, pl_module
        if isinstance(exception, KeyboardInterrupt):
            traceback.clear_frames(exception.__traceback__)  # the frame still running (Lightning's) is skipped

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:  # noqa: D102
        self.handler = signal.getsignal(signal.SIGTERM)  # otx's in the CLI, the caller's in Python
        spare_this_process(trainer)  # a started process that dies does not take this one with it
        met()  # after Lightning's "pre_setup" barrier: every process is there (distributed.meeting)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        if threading.current_thread() is threading.main_thread() and self.handler is not None:
            signal.signal(signal.SIGTERM, self.handler)  # Lightning puts its snapshot back when the fit ends


CURVE_NAMES = {"pixel_AUROC": "pixel_AUROC_input"}  # logged names -> the curve's (ValidationCurve)


class ValidationCurve(L.Callback):
    """The validation metrics of every validated epoch, for the training summary.

    Saved with each epoch's training state, so a resumed run's curve starts at epoch 1, not at the
    first epoch it trained itself. The per-epoch pixel AUROC is taken at the model's input size
    (logged as ``val/pixel_AUROC``, which callbacks monitor): its rows name it ``pixel_AUROC_input``,
    as the summary's ``validation_metrics`` do, whose ``pixel_AUROC`` is at each image's own size
    (before: one name for both; a bug bash).
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"epochs": [dict(row) for row in self.epochs]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        self.epochs = [{CURVE_NAMES.get(k, k): v for k, v in row.items()} for row in state_dict.get("epochs", [])]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        # Lightning validates before on_train_epoch_end, after the module has logged its metrics
        if pl_module.validated_epoch != trainer.current_epoch:
            return
        row: dict[str, float] = {"epoch": trainer.current_epoch + 1}
        for key, value in trainer.callback_metrics.items():
            if key.startswith("val/"):
                row[CURVE_NAMES.get(key[4:], key[4:])] = round(float(value), 6)
        self.epochs.append(row)


class BestAcrossResume(L.Callback):
    """The best epoch before an interruption still counts after ``--resume`` in a new run folder.

    Lightning's ``ModelCheckpoint`` reloads its best score and files only when the checkpoint
    folder is unchanged (else it warns and keeps only the path), and a resumed otx run writes into
    a run folder of its own: without this, the first resumed epoch counted as the best whatever its
    score, and the run ended with a worse epoch than an uninterrupted one. When training starts
    from a saved state, the interrupted run's best files are copied into the new folder (that run's
    files stay as they were) and the callback's best score, paths and k-th value are restored.
    """

    def __init__(self, best: ModelCheckpoint) -> None:
        self.best = best
        self._saved: dict[str, Any] | None = None

    def on_load_checkpoint(  # noqa: D102
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._saved = (checkpoint.get("callbacks") or {}).get(self.best.state_key)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        import shutil

        saved, self._saved = self._saved, None
        if not saved or saved.get("best_model_score") is None or saved.get("dirpath") == self.best.dirpath:
            return  # nothing saved, or Lightning restored it itself (the same folder)
        kept = {Path(path): score for path, score in (saved.get("best_k_models") or {}).items()}
        missing = [path for path in kept if not path.is_file()]
        if missing or not kept:
            log.warning(
                "the earlier run's best checkpoint %s is gone; the resumed run keeps the best of its own epochs",
                saved.get("best_model_path") or missing[0],
            )
            self.best.best_model_path = ""  # Lightning reloaded the gone file's path
            return
        moved = {path: Path(str(self.best.dirpath)) / path.name for path in kept}
        if trainer.is_global_zero:
            for source, target in moved.items():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        trainer.strategy.barrier()
        self.best.best_k_models = {str(moved[path]): score for path, score in kept.items()}
        self.best.best_model_score = saved["best_model_score"]
        self.best.best_model_path = str(moved.get(Path(saved["best_model_path"]), saved["best_model_path"]))
        kth = Path(saved.get("kth_best_model_path") or "")
        self.best.kth_best_model_path = str(moved.get(kth, self.best.best_model_path))
        self.best.kth_value = saved.get("kth_value", saved["best_model_score"])
        log.info(
            "resumed with the earlier run's best epoch: %s (%s %.6g)",
            self.best.best_model_path,
            self.best.monitor,
            float(saved["best_model_score"]),
        )


class FreshPatienceOnResume(L.Callback):
    """A run whose patience ran out, resumed to train longer, gets the stopper's patience anew.

    Lightning restores an ``EarlyStopping``'s count of checks without improvement (and its patience)
    with the state, so a finished run resumed with a higher ``--max_epochs`` stopped again after one
    epoch and kept the same best epoch. Its best score stays: it stops again after ``patience`` checks
    that do not beat it, with the patience it is given now. A stop for another reason (a stopping
    threshold reached, a diverging or non-finite score) stays as it was. ``note`` says what was
    reset (for the console), empty when nothing was.
    """

    def __init__(self) -> None:
        self.note = ""
        self._patience: dict[int, int] = {}  # each stopper's patience as configured (the restore overwrites it)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:  # noqa: D102
        # (Lightning calls setup before it restores the callbacks' states from a checkpoint)
        self._patience = {id(c): c.patience for c in trainer.callbacks if isinstance(c, EarlyStopping)}  # type: ignore[attr-defined]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        notes = []
        for stopper in trainer.callbacks:  # type: ignore[attr-defined]
            if not isinstance(stopper, EarlyStopping):
                continue
            ran_out = (
                stopper.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED
                if EarlyStoppingReason is not None
                else stopper.stopped_epoch > 0 and stopper.wait_count >= stopper.patience
            )
            stopper.patience = self._patience.get(id(stopper), stopper.patience)
            if not ran_out:
                continue
            notes.append(
                f"the resumed run had stopped early after epoch {stopper.stopped_epoch + 1} ({stopper.monitor} not "
                f"better for its patience); early stopping counts its patience ({stopper.patience}) afresh from here"
            )
            stopper.wait_count = 0
            stopper.stopped_epoch = 0
            if EarlyStoppingReason is not None:
                stopper.stopping_reason = EarlyStoppingReason.NOT_STOPPED
                stopper.stopping_reason_message = None
        self.note = "; ".join(notes)
        if self.note:
            log.info(self.note)


def check_max_time(value: Any) -> None:
    """One line for a ``max_time`` Lightning would not read (it takes ``DD:HH:MM:SS``, a dict or a timedelta)."""
    if value is None or isinstance(value, datetime.timedelta | dict):
        return
    if not isinstance(value, str) or not re.fullmatch(r"\d+:\d+:\d+:\d+", value.strip()):
        raise OTXConfigError(
            f"--trainer.max_time takes days:hours:minutes:seconds, e.g. 00:02:00:00 for two hours (got {value!r})"
        )


def stop_reason(trainer: L.Trainer, max_epochs: int) -> str | None:
    """Why a fit ended before ``max_epochs``, in words for the summary; None when it ran them all.

    An early stopper that fired names its monitor and what it saw (Lightning 2.6 records the reason;
    before, a stopper with a stop epoch counts as patience run out); otherwise ``max_time`` or
    ``max_steps`` reached, or a callback that set ``should_stop``.
    """
    if trainer.current_epoch >= max_epochs:
        return None
    for cb in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(cb, EarlyStopping):
            reason = getattr(cb, "stopping_reason", None)
            if EarlyStoppingReason is None or reason is None:
                if cb.stopped_epoch > 0:
                    return f"stopped early: {cb.monitor} not better for {cb.patience} validations"
                continue
            if reason == EarlyStoppingReason.PATIENCE_EXHAUSTED:
                return f"stopped early: {cb.monitor} not better for {cb.patience} validations"
            if reason == EarlyStoppingReason.STOPPING_THRESHOLD:
                return f"stopped early: {cb.monitor} reached the stopping threshold {cb.stopping_threshold}"
            if reason == EarlyStoppingReason.DIVERGENCE_THRESHOLD:
                return f"stopped early: {cb.monitor} crossed the divergence threshold {cb.divergence_threshold}"
            if reason == EarlyStoppingReason.NON_FINITE_METRIC:
                return f"stopped early: {cb.monitor} was not a finite number"
        if isinstance(cb, Timer) and (left := cb.time_remaining()) is not None and left <= 0:
            return f"stopped at max_time ({datetime.timedelta(seconds=round(cb.time_elapsed() + left))})"
    if trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps:
        return f"stopped at max_steps ({trainer.max_steps})"
    return "stopped early by a callback"


class SameFolderCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint files (epoch states, best epoch) written beside themselves, then renamed.

    Lightning's writer stages each file in the system's temporary folder and moves it into place.
    Where that folder is on another file system (a tmpfs ``/tmp``; a container whose work dir is a
    mounted volume) the move is a copy: ``/tmp`` needed room for each epoch's state (STFPM's
    weights alone are 17 MB), and a stop or crash mid-copy left a truncated epoch file where ``--resume``
    looks. Here each file goes through a temporary file in its own folder and an atomic rename, as
    otx writes its model (``checkpoint.atomic_torch_save``).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to a local ``path`` through a temporary file in its folder (others: Lightning's)."""
        if storage_options is not None or "://" in str(path):  # s3://, memory://, file://
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, Path(path))


class EpochStates(ModelCheckpoint):
    """The training state at the end of each epoch (for ``--resume``), named by the epochs it has finished.

    ``epoch3.ckpt`` holds the state after the third epoch, as metrics.json and the progress bar
    count; Lightning's ``{epoch}`` is the 0-based index (before: the third epoch's file was
    ``epoch2.ckpt``). Runs saved before still resume: only the numbers' order is read.
    """

    def format_checkpoint_name(
        self, metrics: dict[str, Any], filename: str | None = None, ver: int | None = None, prefix: str | None = None
    ) -> str:
        """Lightning's name with ``epoch`` counted from 1."""
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, filename, ver, prefix)


class BestEpoch(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` that keeps the latest of the epochs tied at the best score.

    Lightning keeps the first epoch that reached the best score, so where the validation image
    AUROC saturates (1.0 on small validation splits of clean data) the model of the first perfect
    epoch was kept and the epochs trained after it were thrown away. With this class a later
    epoch that equals the best replaces it: in the 6 of 12 PatchFlow and STFPM runs on small
    datasets where epochs tied, the later epoch's test AUPRO was higher in all 6 and its pixel
    AUROC in 5 (``docs/models.md``, "Best epoch on ties"). Scores within ``TIE`` of each other tie.
    With ``save_top_k`` other than 1 it is Lightning's.
    """

    TIE = 1e-6

    @property
    def state_key(self) -> str:
        """Lightning's key for ``ModelCheckpoint`` with these settings: runs saved before resume with it."""
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def check_monitor_top_k(self, trainer: L.Trainer, current: Any = None) -> bool:
        """Whether ``current`` goes in: Lightning's rule, and a tie with the kept epoch replaces it."""
        if current is None or self.save_top_k != 1 or not self.best_k_models:
            return super().check_monitor_top_k(trainer, current)
        kept = float(self.best_k_models[self.kth_best_model_path])
        now = float(current)
        tied_or_better = now >= kept - self.TIE if self.mode == "max" else now <= kept + self.TIE
        return trainer.strategy.reduce_boolean_decision(tied_or_better)


def monitor_of(spec: Any) -> str | None:
    """The metric a callback entry (an instance or ``{class_path, init_args}``) monitors, if any."""
    if isinstance(spec, dict):
        return (spec.get("init_args") or {}).get("monitor")
    return getattr(spec, "monitor", None)


def callback_name(spec: Any) -> str:
    """A callback entry's class name (an instance's, or the last part of its ``class_path``)."""
    if isinstance(spec, dict):
        return str(spec.get("class_path", "")).rpartition(".")[2]
    return type(spec).__name__


def keeps_best_epoch(spec: Any) -> bool:
    """Whether a callback entry (an instance or ``{class_path, init_args}``) is a monitored ``ModelCheckpoint``.

    Subclasses count (``BestEpoch``); an entry whose class cannot be imported does not (building
    the callbacks says what is wrong with it).
    """
    if not monitor_of(spec):
        return False
    if not isinstance(spec, dict):
        return isinstance(spec, ModelCheckpoint)
    module_name, class_name = _module_and_class(str(spec.get("class_path", "")))
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, ModelCheckpoint)


def without_unlogged_monitors(
    specs: list[Any], logged: set[str], known: set[str], training: set[str] = frozenset()
) -> tuple[list[Any], list[Any]]:
    """The callback entries without those that monitor a validation metric this run cannot log.

    Validation metrics need both kinds of images (``val/image_AUROC``), defective ones
    (``val/image_F1``) or defect pixels (``val/pixel_AUROC``). A recipe's early stopping on a
    metric that is never logged stopped the fit after its first epoch with Lightning's RuntimeError
    ("internal error"). ``logged``: the ``val/...`` names this run logs; ``known``: all that otx
    can log (a monitor of another ``val/`` name is refused in one line); ``training``: the training
    metrics the model logs (``train_loss`` of a model trained by gradient; none for one-pass
    models), the only other names a callback may monitor (before: another name stopped the fit
    with Lightning's RuntimeError, "internal error"). Returns the kept entries and those left out.
    """
    kept, dropped = [], []
    for spec in specs:
        monitor = monitor_of(spec)
        validation = isinstance(monitor, str) and monitor.startswith("val/")
        if validation and monitor not in known:
            raise OTXConfigError(
                f"trainer.callbacks: {callback_name(spec)} monitors '{monitor}', which otx does not log; monitor one "
                f"of {', '.join(sorted(known))}"
            )
        if isinstance(monitor, str) and not validation and monitor not in training:
            why = "" if training else " (this model fits in one pass: it has no training loss)"
            raise OTXConfigError(
                f"trainer.callbacks: {callback_name(spec)} monitors '{monitor}', which otx does not log{why}; monitor "
                f"one of {', '.join(sorted(known | training))}"
            )
        if validation:
            spec = _higher_is_better(spec, monitor)
        (dropped if validation and monitor not in logged else kept).append(spec)
    return kept, dropped


def _higher_is_better(spec: Any, monitor: str) -> Any:
    """A callback entry monitoring a ``val/`` metric (AUROC, F1: higher is better) with ``mode: max``.

    Lightning's ``EarlyStopping`` and ``ModelCheckpoint`` default to ``mode: min``: an entry that
    named no mode kept the worst epoch, or stopped while the metric rose (a review; otx's own error
    line suggested such an entry). An entry without a mode gets ``max``; ``min`` is refused.
    """
    given = (spec.get("init_args") or {}).get("mode") if isinstance(spec, dict) else getattr(spec, "mode", None)
    if isinstance(spec, dict) and given is None and _takes_mode(spec):
        return {**spec, "init_args": {**(spec.get("init_args") or {}), "mode": "max"}}
    if given == "min":
        raise OTXConfigError(
            f"trainer.callbacks: {callback_name(spec)} monitors '{monitor}' with mode min, which keeps the worst epoch "
            f"(otx's validation metrics are better when higher); pass mode: max"
            + ("" if isinstance(spec, dict) else f" ({type(spec).__name__}(monitor=..., mode='max'))")
        )
    return spec


def _takes_mode(spec: dict[str, Any]) -> bool:
    """Whether the class of a ``{class_path, init_args}`` entry takes a ``mode`` argument (EarlyStopping does)."""
    try:
        return "mode" in inspect.signature(_entry_class(spec)).parameters
    except (OTXConfigError, TypeError, ValueError):  # a class otx cannot import or read: left as it is
        return False


def monitored_checkpoint(callbacks: list[L.Callback]) -> ModelCheckpoint | None:
    """The recipe's ``ModelCheckpoint`` that keeps the best epoch by a monitored metric, if any."""
    return next((callback for callback in callbacks if keeps_best_epoch(callback)), None)


def build_trainer(
    settings: dict[str, Any],
    run_path: Path,
    log_every_n_steps: int,
    unused_parameters: bool = True,
    bar: bool = True,
    lines: Callable[[str], None] | None = None,
) -> tuple[L.Trainer, dict]:
    """A ``lightning.Trainer`` for one training run; returns it and the helper callbacks by role.

    ``unused_parameters``: the model's ``ddp_unused_parameters``, for strategy ``ddp`` on several devices.
    ``bar`` False (a quiet console): no progress bar unless the settings name one. ``lines``: where the
    progress goes into output that is not a terminal, one line per epoch (``EpochLines``), in place
    of the bar.

    Raises one ``OTXConfigError`` line for arguments Lightning refuses (an accelerator the machine
    does not have, an unknown strategy, more devices than there are).
    """
    settings = dict(settings)
    owned = [key for key in _OWNED if key in settings]
    if owned:
        raise OTXConfigError(f"trainer.{owned[0]} is set by otx (run folder logs and checkpoints); remove it")
    if partial := [key for key in _PARTIAL if key in settings]:
        raise OTXConfigError(
            f"trainer.{partial[0]}: otx fits on every training image and learns its thresholds on every validation "
            "image, which its summary counts; remove it, and train on a smaller data root for a quicker run"
        )
    given = str(settings.get("precision") or "32").lower()
    if (precision := SHORT_PRECISION.get(given, given)).endswith("-true") and precision != "32-true":
        # (Lightning casts the model to it, otx feeds float32 batches: "internal error (... Float but found Double)")
        raise OTXConfigError(
            f"trainer.precision {settings['precision']}: otx feeds its models float32 images, so the weights stay "
            "float32; pass 32-true, 16-mixed or bf16-mixed (mixed precision computes in 16 bits where it is safe)"
        )
    callbacks = [*instantiate_callbacks(settings.pop("callbacks", None) or []), StopSignalKept()]
    checkpoints = run_path / CHECKPOINT_DIR
    best = monitored_checkpoint(callbacks)
    if best is not None and best.dirpath is None:  # absolute, as Lightning makes a dirpath it is given
        best.dirpath = str(checkpoints.resolve())  # (BestAcrossResume finds the files from any directory)
    if int(settings.get("max_epochs") or 1) > 1:
        # The state at the end of each epoch, for --resume. Saved after the epoch has ended (not
        # at validation end, which Lightning counts as mid-epoch and would replay on resuming).
        callbacks.append(
            EpochStates(
                dirpath=str(checkpoints),
                filename="epoch{epoch}",
                auto_insert_metric_name=False,
                save_last="link",  # last.ckpt links to the newest epoch's file (one copy on disk)
                save_top_k=1,
                save_on_train_epoch_end=True,
            )
        )
    curve = ValidationCurve()
    callbacks += [EpochTimer(), curve]
    if not any(isinstance(c, ProgressBar) for c in callbacks):
        if not bar:
            settings.setdefault("enable_progress_bar", False)  # (with a bar among the callbacks, Lightning refuses it)
        if settings.get("enable_progress_bar", True) and lines is not None:  # not a terminal: lines, not a bar
            callbacks.append(EpochLines(lines))
        elif settings.get("enable_progress_bar", True):
            callbacks.append(EpochProgressBar())  # where Lightning would add its own
    if best is not None:
        callbacks.append(BestAcrossResume(best))
    patience = FreshPatienceOnResume()
    callbacks.append(patience)
    settings.setdefault("accelerator", "auto")
    settings.setdefault("devices", 1)
    strategy = settings.get("strategy")
    devices = settings["devices"]  # a count, a list of device ids, or "auto" / -1 (possibly several)
    one_device = len(devices) == 1 if isinstance(devices, list | tuple) else str(devices) == "1"
    nodes = int(settings.get("num_nodes") or 1)
    several = not one_device or nodes > 1
    check_nodes(nodes, "trainer.num_nodes")
    if several and isinstance(strategy, str) and strategy not in SUPPORTED_STRATEGIES:
        # before Lightning builds it: its own refusal of fsdp on the CPU ("set accelerator='cuda'") or
        # deepspeed's "pip install" would come first, and point away from what otx can run
        counted = devices if isinstance(devices, int) else len(devices) if isinstance(devices, list | tuple) else None
        if counted is None and str(devices).isdigit():
            counted = int(str(devices))
        if counted is not None and counted > 0:
            check_strategy(strategy, counted * nodes)
    if several and (strategy is None or strategy in SUPPORTED_STRATEGIES):
        # DDP without per-forward collectives (otx.distributed)
        settings["strategy"] = ddp_strategy(strategy, unused_parameters)
    plugins = settings.pop("plugins", None)
    plugins = list(plugins) if isinstance(plugins, list | tuple) else [] if plugins is None else [plugins]
    own_io = getattr(settings.get("strategy"), "_checkpoint_io", None)  # a Strategy instance's own writer
    if own_io is None and not any(isinstance(plugin, CheckpointIO) for plugin in plugins):  # a caller's is kept
        plugins.append(SameFolderCheckpointIO())
    try:
        trainer = L.Trainer(
            plugins=plugins,
            logger=[
                L.pytorch.loggers.CSVLogger(str(run_path), name="logs", version=""),
                L.pytorch.loggers.TensorBoardLogger(str(run_path), name="logs", version="", default_hp_metric=False),
            ],
            callbacks=callbacks,
            enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
            enable_model_summary=settings.pop("enable_model_summary", False),
            num_sanity_val_steps=0,
            log_every_n_steps=settings.pop("log_every_n_steps", log_every_n_steps),
            default_root_dir=str(run_path),
            use_distributed_sampler=False,  # otx shards the loaders itself (exact splits, otx.distributed)
            **settings,
        )
    except TypeError as exc:
        hint = _nearest_trainer_argument(str(exc))
        if "`devices`" in str(exc):  # Lightning's type check of a count it cannot use (-1 or "abc" on the CPU)
            hint = f"--trainer.devices takes a count of at least 1, a list of device indices or auto (got {devices!r})"
        raise OTXConfigError(f"trainer: {_own_words(exc) if hint.startswith('did you mean') else exc}; {hint}") from exc
    except Exception as exc:  # Lightning's MisconfigurationException and ValueError: one line
        if (
            not isinstance(exc, ValueError | RuntimeError | ImportError)
            and "Misconfiguration" not in type(exc).__name__
        ):
            raise
        message = " ".join(str(exc).split())
        if isinstance(exc, ModuleNotFoundError) and _raised_in_loggers(exc):  # TensorBoard missing for the logs
            raise OTXInstallError(
                f"{message}; a package otx needs is missing from this environment: install it, or reinstall otx"
            ) from exc
        if any(word in message for word in ("accelerator", "backend", "device", "Requirement")):
            devices = settings.get("devices")
            message += f" (accelerator {settings.get('accelerator')!r}, devices {devices!r}); "
            if devices in (0, "0") or (isinstance(devices, list) and not devices):
                message += "--trainer.devices takes a count of at least 1, a list of device indices or auto"
            elif isinstance(strategy, str) and strategy not in SUPPORTED_STRATEGIES:
                message += f"otx runs strategy ddp or auto, not {strategy}: pass --trainer.strategy ddp or leave it out"
            else:
                message += "--trainer.accelerator cpu runs anywhere"
        raise OTXConfigError(f"trainer: {message}") from exc
    check_strategy(strategy, trainer.world_size)
    check_launched_world(trainer.world_size, "--trainer.devices x --trainer.num_nodes")
    if isinstance(trainer.accelerator, CPUAccelerator):
        check_cpu_processes(trainer.num_devices)
    check_relaunchable(trainer.num_devices)
    return trainer, {"best": best, "curve": curve, "patience": patience}


def newest_state(run: Path) -> Path | None:
    """A run folder's ``last.ckpt``, or its newest ``epoch{N}.ckpt`` (if stopped before the link was made)."""
    folder = run / CHECKPOINT_DIR
    if (folder / LAST_CHECKPOINT).is_file():
        return folder / LAST_CHECKPOINT
    epochs = [(int(p.stem[5:]), p) for p in folder.glob("epoch*.ckpt") if p.stem[5:].isdigit()]
    return max(epochs)[1] if epochs else None


def interrupted_states(workdir_root: Path) -> list[Path]:
    """The saved epochs (oldest first) of the work dir's interrupted trainings that no later run continued."""
    runs = sorted(p for p in workdir_root.glob("*-train*") if p.is_dir() and not (p / CHECKPOINT_NAME).exists())
    resumed = _resumed_states(workdir_root)  # finished since, by a resumed run: nothing left to resume
    return [state for state in map(newest_state, runs) if state is not None and state.resolve() not in resumed]


def _trained_class(state: Path) -> str | None:
    """The model class an interrupted run trains, from the config.yaml beside its saved epochs (None: unknown)."""
    import yaml

    try:
        config = yaml.safe_load((state.parent.parent / "config.yaml").read_text()) or {}
        return str(config["model"]["class_path"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def resume_checkpoints(resume: bool | str | Path, workdir_root: Path, class_path: str | None = None) -> list[Path]:
    """The training states to resume from, newest first: ``True`` takes the work dir's interrupted trainings.

    With ``class_path`` (the model this command trains), ``True`` takes those of that model
    (before: the newest of any, refused when it was another model's, though an older interrupted
    run of this model was there); ``otx train`` continues the newest that its options fit
    (``resumable``). A path (a ``.ckpt`` file or a training run folder) gives that one state.
    """
    if resume is True:
        states = interrupted_states(workdir_root)
        if not states:
            raise OTXError(
                f"nothing to resume in '{workdir_root}': no interrupted training run with a saved epoch "
                f"({CHECKPOINT_DIR}/{LAST_CHECKPOINT}; only multi-epoch trainings save one); pass --resume PATH"
            )
        if class_path is not None:
            classes = {state: _trained_class(state) for state in states}
            same = [state for state in states if classes[state] in (class_path, None)]
            if not same:
                others = ", ".join(f"{state.parent.parent.name} ({classes[state]})" for state in states[-3:])
                raise OTXError(
                    f"nothing to resume for {class_path} in '{workdir_root}': its interrupted trainings train other "
                    f"models ({others}); resume one with its recipe, or pass --resume PATH"
                )
            return same[::-1]
        return states[::-1]
    path = Path(resume).expanduser()
    if path.is_dir():
        state = newest_state(path)
        if state is None:
            raise OTXError(f"cannot resume: '{path}' has no saved epoch ({CHECKPOINT_DIR}/{LAST_CHECKPOINT})")
        path = state
    if not path.is_file():
        raise OTXError(f"cannot resume: '{path}' does not exist; pass a run folder with {CHECKPOINT_DIR}/ or a .ckpt")
    return [path]


def resumable(states: list[Path], check: Callable[[Path], int]) -> tuple[Path, int]:
    """The first of ``states`` (newest first) that ``check`` (``check_resume``) lets this command continue.

    ``(state, epochs it finished)``. When none fits, the newest one's refusal, naming how many older
    ones were tried (before: ``--resume true`` tried the newest interrupted run of the model only,
    and pointed to its options though an older run of this data was there to continue; a bug bash).
    """
    refusals = []
    for state in states:
        try:
            return state, check(state)
        except OTXError as exc:
            refusals.append(exc)
    if len(refusals) > 1:
        raise OTXError(
            f"{refusals[0]} (the {len(refusals) - 1} older interrupted run(s) of this model here do not fit this "
            "command either)"
        ) from None
    raise refusals[0]


RESUMED_FROM = "resumed_from.txt"  # in a resumed run's checkpoints/: the state it continues (absolute path)


SPLIT_RECORD = "split.json"  # in a run's checkpoints/: the images its epochs are trained and chosen on


def record_split(run_path: Path, split: dict[str, Any]) -> None:
    """Note in the run folder the images its epochs train and validate on (``split``: see ``check_resume``)."""
    import json

    folder = run_path / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPLIT_RECORD).write_text(json.dumps(split, indent=1) + "\n", encoding="utf-8")


def _split_changes(state_path: Path, split: dict[str, Any] | None) -> list[str]:
    """How ``split`` differs from the one recorded beside ``state_path`` (nothing to compare: none)."""
    import json

    try:
        was = json.loads((state_path.parent / SPLIT_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # a state from before the record, or copied away from its run folder
        return []
    if not split or not isinstance(was, dict):
        return []
    changes = []
    if was.get("train_fingerprint") not in (None, split["train_fingerprint"]):
        changes.append(
            f"train/ files {was['train_fingerprint']} there, {split['train_fingerprint']} here (fingerprints of "
            "the training file names and sizes)"
        )
    if isinstance(was.get("val_files"), list):
        old, new = set(was["val_files"]), set(split["val_files"])
        if old != new:
            changes.append(
                f"validation images: {len(new - old)} here that were not there, {len(old - new)} there that are not "
                f"here (e.g. {min(new ^ old)}; images added to or removed from the test or val folders change the "
                "validation split its epochs were chosen on)"
            )
    return changes


def record_resumed_from(run_path: Path, state: Path) -> None:
    """Note in the run folder which state it continues, so that ``--resume true`` passes that state over."""
    from otx.results import recorded_path

    folder = run_path / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RESUMED_FROM).write_text(recorded_path(state) + "\n", encoding="utf-8")


def _resumed_states(workdir_root: Path) -> set[Path]:
    """The training states that later runs of the work dir continued: nothing left to resume in them.

    A run continues its state once it has finished or saved an epoch of its own (an interrupted
    resumed run is resumed in turn, not the state before it). Read from ``RESUMED_FROM``, or the
    ``resumed_from`` of a finished run's metrics.json (runs from before the file).
    """
    import json

    found = set()
    for run in workdir_root.glob("*-train*"):
        source = None
        try:
            if (run / CHECKPOINT_DIR / RESUMED_FROM).is_file():
                source = (run / CHECKPOINT_DIR / RESUMED_FROM).read_text(encoding="utf-8").strip()
            elif (run / "metrics.json").is_file():
                source = json.loads((run / "metrics.json").read_text()).get("resumed_from")
        except (OSError, ValueError, AttributeError):
            continue
        if source and ((run / CHECKPOINT_NAME).is_file() or newest_state(run) is not None):
            found.add(Path(source).resolve())
    return found


def check_resume(
    state_path: Path,
    model: Any,
    entry: dict[str, Any],
    data_root: str | None,
    max_epochs: int | None = None,
    data_settings: dict[str, Any] | None = None,
    split: dict[str, Any] | None = None,
) -> int:
    """One line (``OTXError``) when ``state_path`` cannot continue this training; else the epochs it finished.

    It must be a Lightning training state (what an interrupted multi-epoch ``otx train`` leaves in
    ``checkpoints/``) of the same model: the same tensors, and, where the interrupted run's
    config.yaml is beside it, the same model settings (``entry``, ``model_entry``), data root and
    ``data_settings`` (validation split, seed, batch size: the split the epochs were chosen on and
    the order the images came in), and, where its ``SPLIT_RECORD`` is beside the state, the same
    images (``split``: ``val_files``, the validation images' paths under the data root, and
    ``train_fingerprint``, the index's). Trainer settings (epochs, devices) may differ, but not below the
    epochs the state has trained; a finished run's saved epochs continue only to train it longer
    (``max_epochs`` above the epochs it trained).
    """
    import torch

    how = (
        f"pass the {CHECKPOINT_DIR}/{LAST_CHECKPOINT} of an interrupted multi-epoch `otx train` run, "
        "or its run folder, or --resume true"
    )
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any file torch cannot read as a checkpoint: an IR, an image, a truncated file
        raise OTXError(
            f"cannot resume from '{state_path}': not a training state ({type(exc).__name__}); {how}"
        ) from None
    if not isinstance(state, dict) or "state_dict" not in state or "pytorch-lightning_version" not in state:
        if isinstance(state, dict) and "schema" in state and "model" in state:
            raise OTXError(
                f"cannot resume from '{state_path}': it is a finished training's model.ckpt, with nothing left to "
                f"resume; to train longer, train again with more epochs ({how})"
            )
        raise OTXError(f"cannot resume from '{state_path}': not a training state; {how}")
    finished = state_path.parent.parent / CHECKPOINT_NAME if state_path.parent.name == CHECKPOINT_DIR else None
    trained = int(state.get("epoch", -1)) + 1  # the epochs the state has finished
    if finished is not None and finished.is_file() and (max_epochs is None or max_epochs <= trained):
        raise OTXError(
            f"cannot resume from '{state_path}': its run finished training ({finished} is there) after {trained} "
            f"epoch(s), with nothing left to resume; to train it longer, resume with --max_epochs above {trained}"
        )
    if max_epochs is not None and max_epochs < trained:  # Lightning would train nothing and keep all of them
        raise OTXError(
            f"cannot resume from '{state_path}' with --max_epochs {max_epochs}: it has trained {trained} epoch(s) "
            f"already; resume with --max_epochs {trained} or more"
        )
    # the settings first: they say which options to pass (the tensors below only that the model differs)
    if isinstance(entry.get("init_args"), dict) and hasattr(model, "layers"):  # resolved, as _as_built_here's
        entry = {**entry, "init_args": {**entry["init_args"], "layers": list(model.layers)}}
    changes, config_path = _config_changes(state_path, entry, data_root, data_settings)
    if changes:
        options = " ".join(option for _, option in changes if option)
        raise OTXError(
            f"cannot resume from '{state_path}': this command trains otherwise than the interrupted run "
            f"({'; '.join(change for change, _ in changes)}); resume with its options"
            + (f": add {options} to the command" if options else f" ({config_path})")
        )
    theirs = {k: tuple(v.shape) for k, v in state["state_dict"].items() if hasattr(v, "shape")}
    # buffers a fresh model holds empty (PADIM's Gaussian, PatchCore's bank) take their shape when fitted
    ours = {k: tuple(v.shape) if v.numel() else None for k, v in model.state_dict().items()}
    differ = sorted(set(theirs) ^ set(ours)) or sorted(k for k, shape in ours.items() if shape not in (None, theirs[k]))
    if differ:
        raise OTXError(
            f"cannot resume from '{state_path}': it holds another model or backbone ({len(differ)} tensor(s) differ "
            f"in name or shape, e.g. {differ[0]}); resume with the interrupted run's recipe and options"
        )
    moved = _split_changes(state_path, split)
    if moved:  # the epochs so far were trained and chosen on other images
        raise OTXError(
            f"cannot resume from '{state_path}': the data changed since the interrupted run ({'; '.join(moved)}); "
            "put the images back as they were, or train anew without --resume"
        )
    return trained


def _as_built_here(class_path: str, init_args: dict[str, Any]) -> dict[str, Any] | None:
    """An interrupted run's model settings as this otx builds them: upgraded, defaults filled in, layers resolved.

    A run started by an earlier otx lacks the settings added since and holds ``layers: null``;
    compared as written, no command could match it, and the advice was to pass the options it
    already had (a bug bash of older artifacts). Its ``input_mode`` stays as written (``auto`` is
    settled later in a run; before the modes, ``resize``). None when the model cannot be built.
    """
    from otx.models import model_class
    from otx.preprocess import saved_settings

    try:
        cls = model_class(class_path.rpartition(".")[2])
        upgraded = cls.upgrade_init_args(dict(init_args))
        upgraded["input_mode"] = init_args.get("input_mode", "resize")
        with saved_settings():
            built = cls.without_weights(**upgraded)
        return {**dict(built.hparams), "layers": list(built.layers)}
    except Exception:  # noqa: BLE001 - e.g. a setting this otx refuses: compared as written
        return None


def _option(key: str, value: Any) -> str:
    """``--model.init_args.layers '[blocks.1,blocks.2]'``: the option that sets ``key`` to ``value`` (shell-quoted)."""
    import shlex

    if value is None:
        text = "null"
    elif isinstance(value, list | tuple):
        text = "[" + ",".join(str(v) for v in value) + "]"
    else:
        text = str(value).lower() if isinstance(value, bool) else str(value)
    return f"--model.init_args.{key} {shlex.quote(text)}"


def _config_changes(
    state_path: Path, entry: dict[str, Any], data_root: str | None, data_settings: dict[str, Any] | None
) -> tuple[list[tuple[str, str]], Path | None]:
    """How this command's model and data settings differ from the config.yaml of the run ``state_path`` is in.

    Each difference in words, with the option that makes the command's setting the run's (empty for
    another model class: then the run's config.yaml is the advice).
    """
    import json
    import shlex

    import yaml

    config_path = state_path.parent.parent / "config.yaml" if state_path.parent.name == CHECKPOINT_DIR else None
    if config_path is None or not config_path.is_file():
        return [], config_path
    try:
        config = yaml.safe_load(config_path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return [], config_path

    def plain(value: Any) -> Any:
        return json.loads(json.dumps(value, default=str))

    was, now = plain(config.get("model") or {}), plain(entry)
    changes: list[tuple[str, str]] = []
    if was.get("class_path") != now.get("class_path"):  # another model: its settings are not this one's options
        return [(f"model class_path {was.get('class_path')!r} there, {now.get('class_path')!r} here", "")], config_path
    written = was.get("init_args") or {}
    built = _as_built_here(str(now.get("class_path")), written)
    old_args = plain(built) if built is not None else written
    new_args = now.get("init_args") or {}
    changes += [
        (
            f"model.init_args.{key} {old_args.get(key)!r} there, {new_args.get(key)!r} here",
            _option(key, old_args.get(key)),
        )
        for key in sorted(set(old_args) | set(new_args))
        if old_args.get(key) != new_args.get(key) and (key in old_args or built is None)
    ]
    old_data = config.get("data") or {}
    old_root = old_data.get("data_root")
    if old_root and data_root and Path(old_root).resolve() != Path(data_root).resolve():
        changes.append(
            (f"data_root {old_root} there, {Path(data_root).resolve()} here", f"--data_root {shlex.quote(old_root)}")
        )
    changes += [
        (f"data.{key} {old_data[key]!r} there, {value!r} here", f"--data.{key} {shlex.quote(str(old_data[key]))}")
        for key, value in (data_settings or {}).items()
        if key in old_data and old_data[key] is not None and plain(old_data[key]) != plain(value)
    ]
    return changes, config_path


def _nearest_trainer_argument(problem: str) -> str:
    """``did you mean 'max_epochs'?`` for Lightning's "unexpected keyword argument 'max_epoch'", else where to look."""
    import inspect
    import re

    unknown = re.search(r"unexpected keyword argument '(\w+)'", problem)
    known = list(inspect.signature(L.Trainer).parameters)
    near = close_matches(unknown.group(1), known) if unknown else []
    if near:
        return f"did you mean {' or '.join(repr(name) for name in near)}?"
    return "the trainer takes lightning.Trainer's arguments"

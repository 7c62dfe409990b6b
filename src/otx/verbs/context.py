"""What a verb runs with (``VerbContext``) and the run-folder plumbing every verb shares."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import resource
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

from otx import __version__, distributed
from otx._signal_stack import repair_signal_stack
from otx.data.datamodule import AnomalyDataModule
from otx.distributed import SecondaryRankDone
from otx.errors import OTXError, broken_install, for_caller, out_of_memory, out_of_space, shared_memory
from otx.results import Result, recorded_path
from otx.tasks import AnomalyTask, TaskAdapter, get_adapter
from otx.workdir import STOPS, Run, WorkDir, check_outside_data, stop_name

log = logging.getLogger("otx")

# Log records for the run's otx.log only: the console already shows the error line.
FILE_ONLY = {"file_only": True}

R = TypeVar("R", bound=Result)


@dataclasses.dataclass
class VerbContext:
    """The settings one verb call runs with, and the warnings it gathers.

    A fresh context is made for every call, so nothing a verb learns (the task of a loaded
    model, the data the model was trained on) outlives it.

    Args:
        console: where progress and summaries go.
        workdir: the work directory (run folders, ``latest.json``).
        data: the data module given by the user (a verb that needs other settings makes a copy).
        task: the task given by the user, or None to take the model's.
        device: OpenVINO device for exported models.
        inference_precision: OpenVINO inference precision for exported models.
        seed: seed for training and calibration subsets.
        config: the resolved configuration to save with the run (the CLI's).
        model: the engine's model, compared with the model a verb loads from a file (None: the
            engine has none, or the file is its own training's checkpoint).
    """

    console: Console
    workdir: WorkDir
    data: AnomalyDataModule
    task: AnomalyTask | None
    device: str
    inference_precision: str
    seed: int
    config: dict[str, Any]
    model: Any = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    notes: set[str] = dataclasses.field(default_factory=set)
    # The pixel metrics' memory budget (``otx.verbs.inference.verb_pixel_budget``), read once per verb
    # call, so that every model a verb scores (optimize: FP32 and INT8) is measured at the same size.
    metric_pixels: int | None = None
    # In a process of rank > 0: the file rank 0 writes for this verb (train: its model.ckpt), so that
    # the caller's engine can take it as its own; the verb itself returns None there.
    primary_output: Path | None = None

    def adapter(self, model_task: str | None = None) -> TaskAdapter:
        """The task adapter: the given task, else the model's, else segmentation."""
        return get_adapter(self.task or model_task or AnomalyTask.SEGMENTATION)

    def warn(self, message: str) -> None:
        """A warning where the numbers would mislead: logged now, and listed in the run's metrics.json."""
        message = for_caller(message)  # `data=DIR` in the Python API, as its errors say
        if message not in self.warnings:
            self.warnings.append(message)
            log.warning(message)

    @contextlib.contextmanager
    def working(self, what: str) -> Iterator[None]:
        """A spinner naming a long step without a bar of its own (metrics at each image's size), on a terminal.

        Before, a test of large images sat for 18 s after its bar had reached the end, without a word
        (a bug bash). Nothing where the console is no terminal, or where another live display runs.
        """
        from rich.errors import LiveError

        status = self.console.status(what) if self.console.is_terminal else None
        try:
            if status is not None:
                status.start()
        except LiveError:
            status = None
        try:
            yield
        finally:
            if status is not None:
                status.stop()

    def note_once(self, key: str, message: str) -> None:
        """A console note shown once per verb call."""
        if key not in self.notes:
            self.notes.add(key)
            self.console.print(message)

    def save_config(
        self,
        run: Run,
        task: str,
        model_entry: dict[str, Any],
        extra: dict[str, Any] | None = None,
        data: AnomalyDataModule | None = None,
    ) -> None:
        """config.yaml of the run: the given configuration with what actually ran."""
        config = dict(self.config)
        config["task"] = task
        config["model"] = model_entry  # what actually ran
        data = data or self.data
        recorded = dict(config.get("data") or {})  # the data that ran (a model's own root and split), not the request
        recorded.update({"data_root": data.data_root, **data.run_settings()})
        config["data"] = recorded
        config.update(extra or {})
        # Absolute paths: later verbs follow them from another directory (workdir.training_data_root).
        for section, key in ((recorded, "data_root"), (config, "checkpoint"), (config, "work_dir")):
            if section.get(key):
                section[key] = recorded_path(section[key])
        # The shortcuts are folded into their sections (data.data_root, trainer.max_epochs): written once, so
        # that the key a user edits in a reused config.yaml is the one that counts (before: the file held
        # both, and an edited data.data_root lost to the top-level copy without a word).
        config["data_root"] = None
        if config.get("max_epochs") is not None and isinstance(config.get("trainer"), dict):
            config["trainer"] = {**config["trainer"], "max_epochs": config["max_epochs"]}
            config["max_epochs"] = None
        if config.get("resume"):  # the run as a fresh one when its config.yaml is reused (resumed_from: metrics.json)
            config["resume"] = False
        run.write_config(config)


def peak_memory_mb() -> float:
    """Peak resident memory of this process and its children, in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024.0, 1)


def run_verb(ctx: VerbContext, command: str, body: Callable[[Run], R], render: Callable[[R], None]) -> R | None:
    """Run ``body`` in a new run folder; log it; render the result; close the run (latest.json on success).

    A failure is logged to the run's otx.log (the console gets the one-line error from the CLI)
    and re-raised; the run folder is closed as failed, so ``latest.json`` keeps the last good run.
    In a secondary process of a distributed run (rank > 0) the verb ends with its share of the
    work done (``SecondaryRankDone``) and returns None: rank 0 writes and returns the result.
    """
    check_outside_data(ctx.workdir.root, ctx.data.data_root if ctx.data is not None else None)
    run = ctx.workdir.new_run(command)
    log.info("otx %s %s: task %s, work_dir %s", command, __version__, ctx.task or "from the model", ctx.workdir.root)
    ok = said_why = False
    gathered = DataWarnings(ctx.warnings)
    logging.getLogger("otx.data").addHandler(gathered)
    try:
        result = body(run)
        result.run_folder = run.path
        render(result)
        ok = True
        return result
    except SecondaryRankDone:
        ok = True
        return None
    except KeyboardInterrupt as exc:
        log.error("%s failed: %s", command, _interrupted(exc), extra=FILE_ONLY)
        said_why = True
        raise
    except OTXError as exc:
        log.error("%s failed: %s", command, exc, extra=FILE_ONLY)
        said_why = True
        raise
    except Exception as exc:
        if STOPS or _stop_inside(exc):  # a library turned the stop into an error of its own (OpenVINO's converter)
            stop = KeyboardInterrupt(STOPS[0]) if STOPS else KeyboardInterrupt()
            log.error(
                "%s failed: %s (seen as %s: %s)", command, _interrupted(stop), type(exc).__name__, exc, extra=FILE_ONLY
            )
            said_why = True
            raise stop from exc
        # the user's sizes or machine, not a bug: one line, also for Python callers
        if (memory := shared_memory(exc) or out_of_memory(exc)) is not None:
            log.error("%s failed: %s", command, memory, exc_info=True, extra=FILE_ONLY)
            said_why = True
            raise memory from exc
        if (full := out_of_space(exc, str(run.path))) is not None:  # a full disk: the same
            log.error("%s failed: %s", command, full, exc_info=True, extra=FILE_ONLY)
            said_why = True
            raise full from exc
        if (gone := distributed.peer_gone(exc)) is not None:  # another process's failure, not a bug here
            log.error("%s failed: %s", command, gone, exc_info=True, extra=FILE_ONLY)
            said_why = True
            raise gone from exc
        if (broken := broken_install(exc)) is not None:  # the environment, not a bug in otx
            log.error("%s failed: %s", command, broken, exc_info=True, extra=FILE_ONLY)
            said_why = True
            raise broken from exc
        log.exception("%s failed: internal error (%s: %s)", command, type(exc).__name__, exc, extra=FILE_ONLY)
        with contextlib.suppress(AttributeError, TypeError):  # for the command line's line: where the traceback is
            exc.otx_log = run.path / "otx.log"  # type: ignore[attr-defined]
        said_why = True
        raise
    finally:
        try:
            if not ok:  # the evaluation processes this one launched stop with it (they would go on alone)
                distributed.stop_launched()
            if not ok and not said_why:  # a stop that arrived while the reason was being logged, or a SystemExit
                stopped = sys.exc_info()[1]
                why = _interrupted(stopped) if isinstance(stopped, KeyboardInterrupt) else repr(stopped)
                log.error("%s failed: %s", command, why, extra=FILE_ONLY)
            logging.getLogger("otx.data").removeHandler(gathered)
            repair_signal_stack()  # where OpenVINO left it unmapped: the next signal would end the process
            log.info("%s %s; run folder %s", command, "finished" if ok else "failed", run.path)
        except KeyboardInterrupt as exc:  # a stop here: said "latest.json stays as it was", so the run is no result
            if ok:
                log.error("%s failed: %s", command, _interrupted(exc), extra=FILE_ONLY)
            ok = False
            raise
        finally:  # always closed (before: a stop in the lines above skipped it, and the run looked finished)
            run.close(ok)


def _stop_inside(exc: BaseException) -> bool:
    """Whether ``exc`` is a library's error for a Ctrl-C it caught (OpenVINO's converter: ``KeyboardInterrupt:``).

    The command line knows a stop by its handler (``STOPS``); a Python caller's Ctrl-C during
    ``Engine.export()`` reached the caller as OpenVINO's RuntimeError, logged as an internal error
    (a bug bash). Also a ``KeyboardInterrupt`` in the exception's chain.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt) or re.search(r"^KeyboardInterrupt\b", str(seen), re.MULTILINE):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class DataWarnings(logging.Handler):
    """The data's warnings during a verb (a layout, file or mask problem), for its metrics.json and report.

    The data module logs them where it finds them (indexing, loading), without a verb's context;
    the console has shown them, and the run's results list them with the verb's own warnings.
    """

    def __init__(self, warnings: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.warnings = warnings
        self.thread = threading.get_ident()  # the verb's: another thread's verb (Python API) keeps its own

    def emit(self, record: logging.LogRecord) -> None:
        """Add the record's message once, if the verb's thread logged it."""
        message = record.getMessage()
        if record.thread == self.thread and message not in self.warnings:
            self.warnings.append(message)


def _interrupted(stop: KeyboardInterrupt) -> str:
    """Why an interrupted run failed, for its log (the signal's name, or SIGINT for Ctrl+C)."""
    return f"interrupted ({stop_name(stop)}); earlier runs are unchanged"


def write_result(run: Run, result: Result) -> None:
    """The result as the run's metrics.json."""
    run.write_json("metrics.json", result.to_json())


def as_path(value: str | Path | None) -> Path | None:
    """``Path(value)`` or None."""
    return Path(value) if value is not None else None

"""The work directory: one run folder per command, atomic writes, pointers to the latest runs.

Layout::

    <work_dir>/
      latest.json                       {"train": "<run folder>", "test": ..., ...}
      20261121-231502-train/
        config.yaml  model.ckpt  metrics.json  otx.log  logs/
      20261121-231733-test/
        config.yaml  metrics.json  predictions/predictions.json  otx.log

A run never touches another run's folder; ``latest.json`` is replaced atomically and only
after a command succeeds, so a failed or interrupted run leaves earlier results as they were.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from otx.distributed import secondary
from otx.errors import OTXConfigError, OTXError

LATEST = "latest.json"
# A run folder's name (``WorkDir.new_run``): its stamp, the command, and a count when two start in one second
RUN_FOLDER = re.compile(r"^\d{8}-\d{6}-(train|test|predict|export|optimize|benchmark)(-\d+)?$")
FAILED = "FAILED"  # written into a run folder that did not finish: its files are not a result
# temporary files of otx's writes, named as tempfile names them (8 random characters): atomic_write_bytes' in a run
# folder (and latest.json's in the work dir), the export's folders; and how old one is before it is litter
LEFTOVER_IN_ROOT = re.compile(r"^\.latest\.json\.[a-z0-9_]{8}\.tmp$")
LEFTOVER_IN_RUN = re.compile(r"^(\..+\.[a-z0-9_]{8}\.tmp|\.(save|export)-[a-z0-9_]{8})$")
LEFTOVER_AGE_S = 3600.0
CHECKPOINT_DIR = "checkpoints"  # a training run's epoch states (``training.SameFolderCheckpointIO`` writes them)
DATA_FOLDERS = ("train", "val", "test", "ground_truth")  # the folders of a data root otx reads images from
LATEST_LOCK = ".latest.lock"  # held while latest.json is read and replaced (``WorkDir.mark_latest``)
LOCK_WAIT_S = 10.0
log = logging.getLogger(__name__)
_LOGGER_BEFORE: list[Any] = []  # [level, _ToAncestors] while runs are open: the otx logger as the first run found it
OPEN_RUNS: list[Run] = []  # the run folders whose log is attached now (the CLI's stop watchdog writes to them)
STOPS: list[str] = []  # the name of the stop signal the CLI received (``otx.cli``), once one arrived
FINISHED: list[Path] = []  # the run folder last made the latest of its command (a stop after that finds it written)
STOPPED: list[Run] = []  # the run that last ended without finishing (the CLI names what it kept)
# While a finished run is made the latest (latest.json written, FINISHED set), the CLI's stop handler holds a
# stop here instead of raising it; ``Run.close`` sends it again once both are done, so that what the stop's
# line says about latest.json is true (before: a stop between the two said "latest.json stays" after it changed).
MARKING: list[bool] = []
HELD_STOPS: list[int] = []


def stop_name(stop: BaseException | None) -> str:
    """The signal behind an interruption: the stop's own message, else the signal the CLI received, else SIGINT.

    A library can end an interrupted call in its own way (Lightning: ``sys.exit(1)`` after its clean-up),
    and the exception that reaches otx may then not carry the signal's name.
    """
    return str(stop or "") or (STOPS[0] if STOPS else "SIGINT")


def _umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never a half-written file).

    The file gets the permissions a plain ``open`` would give (``0o666`` less the umask), not the
    private ``0o600`` of the temporary file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (NaN becomes null)."""
    atomic_write_bytes(path, json.dumps(jsonable(obj), indent=2).encode())


def jsonable(obj: Any) -> Any:
    """``obj`` with only JSON values: NaN and infinities as None, numpy scalars as Python numbers."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item"):
        return jsonable(obj.item())
    return obj


SCRATCH_PREFIX = "otx-rank-"  # a secondary process's run folder in the temp dir: otx-rank-<command>-<pid>-<random>


def _sweep_scratch() -> None:
    """Remove the scratch folders of secondary processes that ended without their clean-up.

    A process killed outright (Lightning's launcher ends the others with SIGKILL when the first
    fails; a kill -9) leaves its folder (its config.yaml and otx.log) in the temp dir. A folder
    whose process is gone is removed; others' (another user's, a live process's) are left alone.
    """
    try:
        entries = list(Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"))
    except OSError:
        return
    for entry in entries:
        pid = entry.name.removeprefix(SCRATCH_PREFIX).split("-")[1:2]
        if not pid or not pid[0].isdigit() or int(pid[0]) == os.getpid():
            continue
        try:
            os.kill(int(pid[0]), 0)
        except ProcessLookupError:  # gone: its folder is litter
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:  # alive but not ours (PermissionError), or unknown: leave it
            continue


def run_order(name: str) -> tuple[str, int]:
    """A run folder's place in time from its name: its stamp, then its count (``-10`` after ``-9``)."""
    match = RUN_FOLDER.match(name)
    if match is None:
        return name, 0
    return name[:15], int(match.group(2)[1:]) if match.group(2) else 0


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` is a run folder otx wrote (its name, and its ``otx.log``)."""
    path = Path(path)
    return bool(RUN_FOLDER.match(path.name)) and (path / "otx.log").is_file()


def check_outside_data(work_dir: Path, data_root: str | Path | None) -> None:
    """One line when ``work_dir`` lies in a data root's folder of images, where its outputs would be read as data.

    (Before: ``--work_dir DATA/test/runs`` made ``runs`` a defect type, and once ``otx predict`` had
    written masks there, every later ``otx train`` and ``otx test`` failed, advising to remove it.)
    """
    if not data_root:
        return
    root, here = Path(data_root).expanduser().resolve(), work_dir.resolve()
    for split in DATA_FOLDERS:
        if here.is_relative_to(root / split):
            raise OTXConfigError(
                f"work_dir '{work_dir}' is inside the data root's {split}/ folder, where otx reads images: its run "
                f"folders would be read as data; pass a work_dir outside '{root / split}'"
            )


class WorkDir:
    """The work directory shared by all commands."""

    def __init__(self, root: str | Path = "otx-workspace") -> None:
        # absolute from the start: a script that changes its current folder keeps its work directory
        # (before: an Engine's later verbs looked for its checkpoint, and made run folders, in the new one)
        self.root = Path(root).expanduser().absolute()

    def new_run(self, command: str) -> Run:
        """Create a new, empty run folder for ``command``; one ``OTXError`` line when it cannot."""
        if secondary():  # a process of rank > 0 in a distributed run: rank 0 writes the run folder
            _sweep_scratch()
            scratch = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{command}-{os.getpid()}-")
            return Run(self, Path(scratch), command, scratch=True)
        hint = "pass --work_dir a folder you can write to"
        if self.root.exists() and not self.root.is_dir():
            raise OTXError(f"work_dir '{self.root}' is a file, not a folder; {hint}")
        if is_run_folder(self.root):  # (before: runs made inside another run's folder, which a run never touches)
            model = self.root / "model.ckpt"
            by_path = f", or --checkpoint '{model}' for its model" if model.is_file() else ""
            raise OTXError(
                f"work_dir '{self.root}' is a run folder of otx, not a work dir: pass --work_dir '{self.root.parent}'"
                f"{by_path}"
            )
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.sweep_leftovers()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for attempt in range(1000):
                name = f"{stamp}-{command}" + (f"-{attempt}" if attempt else "")
                try:
                    (self.root / name).mkdir()
                except FileExistsError:
                    continue
                return Run(self, self.root / name, command)
        except OSError as exc:
            raise OTXError(f"cannot create a run folder in work_dir '{self.root}' ({exc.strerror}); {hint}") from exc
        raise OTXError(f"cannot create a run folder in '{self.root}'")

    def sweep_leftovers(self, age_s: float = LEFTOVER_AGE_S) -> list[Path]:
        """Remove the temporary files of writes that a killed process never finished; return what was removed.

        ``atomic_write_bytes``'s ``.<name>.<random>.tmp`` (a PADIM model.ckpt's is 177 MB), the
        export's ``.save-*`` and ``.export-*`` folders, in the work dir, its run folders and their
        ``checkpoints`` (the epoch states): a kill -9, the OOM killer or a second stop leaves them,
        and nothing removed them (a bug bash). Only those untouched for ``age_s`` seconds: a write
        in progress (another otx) renames its own in seconds.
        """
        if not self.root.is_dir():
            return []
        now, removed = time.time(), []
        try:  # only names otx writes: a work dir can be any folder, with a user's own hidden files (a review)
            entries = list(self.root.iterdir())
            runs = [p for p in entries if RUN_FOLDER.match(p.name) and p.is_dir()]
            candidates = [p for p in entries if LEFTOVER_IN_ROOT.match(p.name)]
            candidates += [p for run in runs for p in run.iterdir() if LEFTOVER_IN_RUN.match(p.name)]
        except OSError:
            return []
        for folder in [run / CHECKPOINT_DIR for run in runs]:  # the epoch states' folders
            with contextlib.suppress(OSError):  # none, or one that cannot be read: the others are swept
                candidates += [p for p in folder.iterdir() if LEFTOVER_IN_RUN.match(p.name)]
        for path in candidates:
            try:
                if now - path.stat().st_mtime < age_s:
                    continue
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
            except OSError:  # another process removed it first, or it is not ours to remove
                continue
        if removed:
            log.info("removed %d temporary file(s) of writes that never finished: %s", len(removed), removed[0])
        return removed

    def latest(self, command: str) -> Path | None:
        """The folder of the latest successful run of ``command``, if any."""
        pointers = self._pointers()
        name = pointers.get(command)
        # a run folder of this work dir by its name alone (a hand-edited 5 or list, '../other/run', '/abs': none;
        # before, a path was followed to another work dir's model without a word, a bug bash)
        if isinstance(name, str) and RUN_FOLDER.match(name) and (self.root / name).is_dir():
            return self.root / name
        return None

    def finished(self, command: str) -> list[Path]:
        """The run folders of ``command`` that finished (a result, no ``FAILED`` marker), oldest first.

        Only folders named as otx names them (a user's ``old-export/`` copy is not a run), in the
        order they were made (``run_order``).
        """
        if not self.root.is_dir():
            return []
        runs = [
            p
            for p in self.root.iterdir()
            if p.is_dir()
            and (m := RUN_FOLDER.match(p.name)) is not None
            and m.group(1) == command
            and (p / "metrics.json").is_file()
            and not (p / FAILED).exists()
        ]
        return sorted(runs, key=lambda p: run_order(p.name))

    def pointer_problem(self, command: str) -> str | None:
        """Why ``latest.json`` names no usable run of ``command``, when it exists but cannot serve; else None."""
        pointers = self._read_pointers()
        if pointers is None:
            return f"{LATEST} is not valid JSON, or not a mapping of commands to runs"
        name = pointers.get(command)
        if name is not None and (not isinstance(name, str) or not RUN_FOLDER.match(name)):  # (a TypeError before)
            return f"{LATEST} names {json.dumps(name)} as the {command} run, not a run folder's name"
        if name and not (self.root / name).is_dir():
            return f"{LATEST} names the run '{name}', which is gone"
        if name and command == "train" and not (self.root / name / "model.ckpt").is_file():
            return f"{LATEST} names the run '{name}', which has no model.ckpt"
        return None

    def _pointers(self) -> dict[str, str]:
        return self._read_pointers() or {}

    def _read_pointers(self) -> dict[str, str] | None:
        """``latest.json`` as a mapping: empty when there is none, None when it is not a JSON object."""
        path = self.root / LATEST
        if not path.exists():
            return {}
        try:
            pointers = json.loads(path.read_text())
        except (OSError, ValueError):  # (ValueError: not JSON, or bytes that are not UTF-8, a traceback before)
            return None
        return pointers if isinstance(pointers, dict) else None

    def mark_latest(self, run: Run) -> None:
        """Point ``latest.json`` at ``run`` for its command (atomic).

        Read, changed and replaced under a lock file (``.latest.lock``): two commands finishing
        together in one work dir each kept the other's pointers as they read them, so one
        update could be lost. Where the lock cannot be taken within seconds (a file system
        without locks) the update goes ahead without it, as before.
        """
        from filelock import FileLock, Timeout

        lock = FileLock(self.root / LATEST_LOCK, timeout=LOCK_WAIT_S)
        try:
            lock.acquire()
        except (Timeout, OSError) as exc:
            log.info("updating %s without its lock (%s)", LATEST, exc)
            lock = None
        try:
            pointers = self._read_pointers()
            if pointers is None and (self.root / LATEST).is_file():  # said, not dropped in silence (a bug bash)
                log.warning(
                    "%s in %s could not be read as a mapping of commands to runs: it is replaced by one naming "
                    "this %s run only; the other commands' latest runs are no longer named (pass their files by path)",
                    LATEST,
                    self.root,
                    run.command,
                )
            pointers = pointers or {}
            pointers[run.command] = run.path.name
            atomic_write_json(self.root / LATEST, pointers)
        finally:
            if lock is not None:
                lock.release()


class _ToAncestors(logging.Handler):
    """The ``otx`` logger's records for its ancestors' handlers, from the level it had before a run.

    A run raises the logger to INFO for its log file; its records reach the handlers of the
    logger's ancestors (a user's ``logging.basicConfig``) only from the level it had before.
    Without this, a script's root handler showed every INFO line of every run, whatever level the
    script had set. The ancestors' handlers are called as propagation calls them.
    """

    forwards_to_ancestors = True  # (otx.logs.shows_warnings looks through it)

    def __init__(self, logger: logging.Logger, level_before: int) -> None:
        super().__init__()
        self.logger = logger
        self.level_before = level_before

    def emit(self, record: logging.LogRecord) -> None:  # noqa: D102
        parent = self.logger.parent
        threshold = self.level_before or (parent.getEffectiveLevel() if parent else logging.WARNING)
        if record.levelno < threshold or getattr(record, "file_only", False):  # file-only: the run's log alone
            return
        current = parent
        while current is not None:
            for handler in current.handlers:
                if record.levelno >= handler.level:
                    handler.handle(record)
            current = current.parent if current.propagate else None


class RunLogHandler(logging.FileHandler):
    """A run's ``otx.log``; a record it cannot write (a full disk) is dropped without a word.

    logging's default prints a "--- Logging error ---" traceback on stderr for each such record
    (six of them around one failed ``otx test`` on a full disk); the command's own error says
    what went wrong.
    """

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: D102, N802 - logging's name
        del record


class Run:
    """One command's run folder, with a log file handler attached while it is open.

    The ``otx`` logger is at INFO while it is open (the log file's level); its level, and what
    reaches the handlers of its ancestors, are as they were before (``_ToAncestors``) and come back when the
    last open run closes.
    """

    def __init__(self, workdir: WorkDir, path: Path, command: str, scratch: bool = False) -> None:
        self.workdir = workdir
        self.path = path
        self.command = command
        self.scratch = scratch  # a secondary process's folder, removed on close
        # UTF-8 whatever the locale; a file name that is not valid UTF-8 is written escaped, not a logging error
        self._handler = RunLogHandler(path / "otx.log", encoding="utf-8", errors="backslashreplace")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._handler.setLevel(logging.INFO)
        logger = logging.getLogger("otx")
        if not OPEN_RUNS and logger.propagate:  # the first run to open (runs may close in any order: threads)
            forward = _ToAncestors(logger, logger.level)
            _LOGGER_BEFORE[:] = [logger.level, forward]
            logger.addHandler(forward)
            logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(self._handler)
        OPEN_RUNS.append(self)

    @property
    def log_path(self) -> Path:
        """The run's ``otx.log``."""
        return self.path / "otx.log"

    def write_config(self, config: dict[str, Any]) -> Path:
        """Save the resolved configuration of this run."""
        path = self.path / "config.yaml"
        atomic_write_bytes(path, yaml.safe_dump(jsonable(config), sort_keys=False).encode())
        return path

    def write_json(self, name: str, obj: Any) -> Path:
        """Write a JSON file into the run folder."""
        path = self.path / name
        atomic_write_json(path, obj)
        return path

    def close(self, success: bool) -> None:
        """Detach the log, restore the ``otx`` logger, and, on success, make this the latest run of its command.

        A stop that arrives while a successful run is made the latest is held until it is
        (``MARKING``), then sent again: it finds the run finished and ``latest.json`` written.
        """
        marking = success and not self.scratch
        if marking:
            MARKING.append(True)
        try:
            self._close(success)
        finally:
            if marking:
                MARKING.pop()
            if not MARKING and HELD_STOPS:
                import signal

                signal.raise_signal(HELD_STOPS.pop())
                HELD_STOPS.clear()

    def _close(self, success: bool) -> None:
        unmarked = None  # latest.json not updated: said (otx.log too, its handler still attached), then raised
        if success and not self.scratch:
            try:
                self.workdir.mark_latest(self)
            except OSError as exc:  # before: "internal error ...; a bug in otx: no run folder was made" (a bug bash)
                unmarked = OTXError(
                    f"the {self.command} run finished and its files are written ({self.path}), but {LATEST} could not "
                    f"be updated ({exc.strerror or exc}): later commands do not take this run by default; free some "
                    f"space in or fix the permissions of '{self.workdir.root}', or pass this run's files by path"
                )
                unmarked.__cause__ = exc
                log.error("%s", unmarked, extra={"file_only": True})
        logger = logging.getLogger("otx")
        logger.removeHandler(self._handler)
        self._handler.close()
        if self in OPEN_RUNS:
            OPEN_RUNS.remove(self)
        if not OPEN_RUNS and _LOGGER_BEFORE:  # the last open run: the logger as the first one found it
            level, forward = _LOGGER_BEFORE
            _LOGGER_BEFORE.clear()
            logger.setLevel(level)
            logger.removeHandler(forward)
            logger.propagate = True
        if self.scratch:
            shutil.rmtree(self.path, ignore_errors=True)
        elif success:
            if unmarked is not None:
                raise unmarked
            FINISHED[:] = [self.path]  # the latest only (a Python session runs many)
        else:  # before: an interrupted export or optimize left files that looked like a result (bug bash)
            STOPPED[:] = [self]
            self.mark_failed()

    def mark_failed(self) -> None:
        """Write the ``FAILED`` marker: the run did not finish, its files are not a result (silent if it cannot)."""
        try:
            (self.path / FAILED).write_text(
                f"this otx {self.command} run did not finish (its otx.log says why): its files are not a result\n",
                encoding="utf-8",
            )
        except OSError:  # a full disk, the folder gone: the log says it failed
            pass


def training_data_root(exported: str | Path, hops: int = 3) -> str | None:
    """The data root of the training run an exported model comes from, read from the run folders.

    An export run's ``config.yaml`` names the ``checkpoint`` it exported, and the training run
    beside that checkpoint records its ``data.data_root``. An optimize run's ``checkpoint`` is the
    IR it quantised, whose run folder is read the same way (at most ``hops`` folders). None when a
    file is missing or says nothing (a model copied out of its work directory): then the data root
    must be given.
    """
    folder = Path(exported).parent
    for _ in range(hops):
        config = _read_config(folder) or {}
        source = config.get("checkpoint")
        if not source:
            return None
        source = Path(source)
        if source.suffix == ".ckpt":
            return _data_root(_read_config(source.parent))
        if source.parent.resolve() == folder.resolve():  # an optimize run that exported the model itself first
            return _data_root(config)
        folder = source.parent
    return None


def training_checkpoint(exported: str | Path) -> Path | None:
    """The training run's ``model.ckpt`` an exported model was exported from (its export run's ``config.yaml``).

    None when the run folder beside the model does not name one (a model copied out of its work dir).
    """
    config = _read_config(Path(exported).parent) or {}
    for source in (config.get("checkpoint"), config.get("trained_checkpoint")):  # (an optimize run's own IR: its
        if isinstance(source, str) and source.endswith(".ckpt"):  # checkpoint is recorded as trained_checkpoint)
            return Path(source)
    return None


def _data_root(config: dict[str, Any] | None) -> str | None:
    """A run's ``data.data_root`` from its ``config.yaml`` mapping, or None."""
    data = (config or {}).get("data")
    root = data.get("data_root") if isinstance(data, dict) else None
    return str(root) if root else None


def _read_config(folder: Path) -> dict[str, Any] | None:
    """A run folder's ``config.yaml`` as a mapping; None when it is missing or not one.

    Paths an earlier otx recorded relative to where it ran (``work_dir: ws``, ``checkpoint:
    ws/<run>/model.ckpt``, ``data_root: ../d``; otx before 2026-12-03) are made absolute from
    the run folder's place: read from another directory they named nothing (a bug bash of older
    artifacts: "no data to test on" for an export whose training data was there).
    """
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):  # (ValueError: bytes that are not UTF-8)
        return None
    if not isinstance(config, dict):
        return None
    base = _made_from(folder, config.get("work_dir"))
    if base is None:
        return config
    config = dict(config)
    for key in ("checkpoint", "trained_checkpoint"):
        if isinstance(config.get(key), str) and not Path(config[key]).is_absolute():
            config[key] = str(base / config[key])
    data = config.get("data")
    if isinstance(data, dict) and isinstance(data.get("data_root"), str) and not Path(data["data_root"]).is_absolute():
        config["data"] = {**data, "data_root": str(base / data["data_root"])}
    return config


def _made_from(folder: Path, work_dir: Any) -> Path | None:
    """The directory a run was made from, where its config.yaml records a relative ``work_dir``; else None."""
    if not isinstance(work_dir, str) or not work_dir or Path(work_dir).is_absolute():
        return None
    parts = Path(work_dir).parts
    if ".." in parts:
        return None
    base = folder.resolve().parent  # the work dir
    for _ in parts:
        base = base.parent
    return base

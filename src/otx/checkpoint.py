"""The ``model.ckpt`` file: a versioned, weights-only record of a trained model.

Written by ``otx train`` (``save_checkpoint``), read by every other verb (``load_checkpoint``).
It holds the model's class path and constructor arguments, its state dict (weights, fitted
statistics, post-processor), the task it was trained for and a record of its training data
(root, validation split, fingerprint, image profile). It is not a Lightning training checkpoint:
those (``last.ckpt``, ``epochN.ckpt``) only serve ``otx train --resume``.
"""

from __future__ import annotations

import importlib
import io
import re
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from otx import __version__, newer_otx
from otx.boxes import LEGACY_SCORE, BoxSettings, unknown_saved
from otx.errors import OTXError
from otx.preprocess import saved_settings
from otx.workdir import CHECKPOINT_DIR, WorkDir, atomic_write_bytes

if TYPE_CHECKING:  # the models import this module's users; kept light for training.py and scoring.py
    from otx.models.base import AnomalyModel

CHECKPOINT_NAME = "model.ckpt"
# Version of the model.ckpt layout; a reader refuses newer ones with one line. Files without the
# key were written before it existed, with the same layout as version 1.
CHECKPOINT_SCHEMA = 1

_HINT = "pass the model.ckpt written by `otx train` (or an exported .xml / .onnx)"


def class_path(obj: object) -> str:
    """``module.Class`` of an object (how checkpoints, export metadata and config.yaml name classes)."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def model_entry(model: AnomalyModel) -> dict[str, Any]:
    """``{class_path, init_args}``: what rebuilds ``model`` (the checkpoint's and config.yaml's ``model``)."""
    return {"class_path": class_path(model), "init_args": dict(model.hparams)}


def save_checkpoint(model: AnomalyModel, path: Path, task: str, data: dict[str, Any]) -> None:
    """Write ``model`` (weights and fitted post-processor) atomically, with its task and data record."""
    ckpt = {
        "schema": CHECKPOINT_SCHEMA,
        "otx_version": __version__,
        "task": task,
        "model": model_entry(model),
        "state_dict": model.state_dict(),
        "data": data,
        "thresholds": model.postprocessor.stats(),
        "boxes": model.box_settings.as_dict(),
        "weights_source": model.weights_source,
    }
    atomic_torch_save(ckpt, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` of ``obj`` to ``path`` through a temporary file beside it and a rename (never half a file)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> tuple[AnomalyModel, dict[str, Any]]:
    """Rebuild a trained model from an otx checkpoint; return it and the checkpoint's metadata.

    The file is read with ``torch.load(weights_only=True)``: tensors and plain values only, no
    code runs while loading.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        inside = [path / CHECKPOINT_NAME, *sorted(path.glob("*.xml")), *sorted(path.glob("*.onnx"))]
        found = next((p for p in inside if p.is_file()), None)  # a run folder's model (before: not named)
        what = f"the model file in it: {found}" if found else "the model.ckpt file (or an exported .xml / .onnx)"
        raise OTXError(f"checkpoint '{path}' is a folder; pass {what}")
    if not path.is_file():
        raise OTXError(f"checkpoint '{path}' {missing_file(path)}; pass --checkpoint PATH or run `otx train` first")
    if path.suffix.lower() == ".bin":  # (before: "not a readable otx checkpoint ... a truncated one", of a sound IR)
        xml = path.with_suffix(".xml")
        raise OTXError(
            f"'{path}' is the weights file of an OpenVINO IR; pass "
            + (f"its .xml: {xml}" if xml.is_file() else "the IR's .xml file (its .bin is read from beside it)")
        )
    if path.suffix.lower() in (".yaml", ".yml", ".json"):  # (before: "a truncated one: IndexError / UnpicklingError")
        what = "latest.json, the work dir's pointers to its runs" if path.name == "latest.json" else "a text file"
        model = path.parent / CHECKPOINT_NAME
        raise OTXError(
            f"'{path}' is {what}, not a checkpoint; pass "
            + (f"the model beside it: {model}" if model.is_file() else "a model.ckpt (or an exported .xml / .onnx)")
        )
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint becomes one line
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        reason = (
            f"it holds a Python object ({unsafe.group(1)}) that otx does not load, for safety"
            if unsafe
            else f"not a PyTorch checkpoint file, or a truncated one: {exc.__class__.__name__}"
        )
        raise OTXError(f"'{path}' is not a readable otx checkpoint ({reason}); {_HINT}") from exc
    saved_by = ckpt.get("callbacks") if isinstance(ckpt, dict) and "loops" in ckpt else {}
    saved_by = saved_by if isinstance(saved_by, dict) else {}  # (an edited file's callbacks: 5, a TypeError before)
    if any(str(key).startswith("EpochStates") for key in saved_by) and "model" not in ckpt:  # otx's epoch state
        run = path.parent.parent if path.parent.name == CHECKPOINT_DIR else path.parent
        what = f"'{path}' is a training state saved after an epoch (for --resume), not a trained model"
        if (run / "model.ckpt").is_file():  # its training finished: the model it wrote
            raise OTXError(f"{what}; pass the model its training wrote: {run / 'model.ckpt'}")
        raise OTXError(
            f"{what}; finish that training with `otx train --config {run / 'config.yaml'} --resume {run}` (it writes "
            "model.ckpt, with thresholds), or pass the model.ckpt of a finished training"
        )
    if not isinstance(ckpt, dict) or "model" not in ckpt or "state_dict" not in ckpt:
        if isinstance(ckpt, dict) and "pytorch-lightning_version" in ckpt:  # anomalib's .ckpt, another tool's
            raise OTXError(
                f"'{path}' is a Lightning training checkpoint (anomalib's or another tool's: no otx model record), "
                "which otx cannot use; train the model with otx train (e.g. --config recipe/anomaly_segmentation/"
                "padim.yaml) and pass its model.ckpt, or pass an exported .xml / .onnx"
            )
        raise OTXError(f"'{path}' is not otx's (no model/state_dict entries); {_HINT}")
    schema = ckpt.get("schema", 1)
    if not isinstance(schema, int) or schema < 1:
        raise OTXError(f"'{path}' has an unknown checkpoint schema {schema!r}; {_HINT}")
    if schema > CHECKPOINT_SCHEMA:
        raise OTXError(
            f"'{path}' was written by a newer otx ({ckpt.get('otx_version', '?')}, checkpoint schema {schema}; this "
            f"otx {__version__} reads up to {CHECKPOINT_SCHEMA}); upgrade otx to the version that wrote it"
        )
    try:
        if (problem := _data_problem(ckpt.get("data"))) is not None:  # before: "internal error (ValueError ...)"
            raise OTXError(
                f"'{path}' has a damaged data record ({problem}): the file was edited or damaged; pass the model.ckpt "
                "of another run, or train again"
            )
        cls = _model_class(path, ckpt["model"]["class_path"])
        with saved_settings():  # as trained, also settings new models may no longer take
            model = cls.without_weights(**cls.upgrade_init_args(dict(ckpt["model"]["init_args"])))
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as exc:  # before: torch's list of every key, 600 characters cut mid-word (a bug bash)
            raise OTXError(
                f"'{path}' holds weights that do not fit the model its settings describe ("
                f"{_mismatch(model.state_dict(), ckpt['state_dict'])}): the file was edited or damaged; pass the "
                "model.ckpt of another run, or train again"
            ) from exc
        if (problem := model.fitted_state_problem()) is not None:  # before: "internal error" at prediction
            raise OTXError(
                f"'{path}' {problem}; the file was edited or damaged: pass the model.ckpt of another run, or train "
                "again with the input settings you want"
            )
        if damaged := non_finite(model):  # before: a NaN threshold labelled every image "normal" (a bug bash)
            raise OTXError(
                f"'{path}' cannot be used: its {damaged} holds NaN or infinite values (a damaged file, or a training "
                "that diverged); train again, or pass the model.ckpt of another run"
            )
        # checkpoints before box tuning keep the default settings; those before the box score scored
        # boxes by their maximum (and their settings were tuned so): they keep it
        if isinstance(ckpt.get("boxes"), dict):
            saved = {"score": LEGACY_SCORE} | ckpt["boxes"]
        else:
            saved = model.box_settings.as_dict() | {"score": LEGACY_SCORE}
        unknown = unknown_saved(saved)
        if unknown:
            raise OTXError(f"'{path}' asks for {unknown}")
        model.box_settings = BoxSettings(**saved)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint becomes one line
        if newer_otx(ckpt.get("otx_version")):  # e.g. a model setting (or a value of one) this otx does not know yet
            reason = str(exc) if isinstance(exc, OTXError) else f"{exc.__class__.__name__}: {exc}"
            raise OTXError(
                f"'{path}' was written by a newer otx ({ckpt['otx_version']}) than this one ({__version__}), which "
                f"cannot read it ({reason}); upgrade otx to the version that wrote it"
            ) from exc
        if isinstance(exc, OTXError):
            raise
        raise OTXError(f"'{path}' is not a readable otx checkpoint ({exc.__class__.__name__}: {exc}); {_HINT}") from exc
    model.eval()
    return model, ckpt


def _model_class(path: Path, named: Any) -> type[AnomalyModel]:
    """The model class a checkpoint names, imported only from otx's models or a module already imported.

    A checkpoint is data from anyone: importing the module it names runs that module's code (a
    bug bash made one print the Zen of Python, and one beside the file write to disk, before
    "not a readable otx checkpoint"). otx's own models (``otx.models.*``) are imported; a model
    class of the caller's (a candidate's module, a notebook's) must be imported first.
    """
    from otx.models.base import AnomalyModel

    if not isinstance(named, str) or "." not in named:
        raise OTXError(f"'{path}' names no model class ({named!r} as its class_path); {_HINT}")
    module_name, _, class_name = named.rpartition(".")
    if not (module_name == "otx.models" or module_name.startswith("otx.models.") or module_name in sys.modules):
        raise OTXError(
            f"'{path}' names the model class {named}, from a module that is not imported; otx does not import "
            f"what a checkpoint names (its code would run): import {module_name} first (from Python, before the "
            "Engine loads the file), or pass the model.ckpt of an otx model"
        )
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, AnomalyModel)):
        raise OTXError(f"'{path}' names {named} as its model, which is not an otx model (AnomalyModel); {_HINT}")
    return cls


def _mismatch(own: dict[str, Any], saved: Any) -> str:
    """``N missing, M unexpected, K of another shape, e.g. <key>``: how a state dict differs from a model's."""
    saved = saved if isinstance(saved, dict) else {}
    missing = [key for key in own if key not in saved]
    unexpected = [key for key in saved if key not in own]
    shaped = [
        key for key in own if key in saved and getattr(saved[key], "shape", None) != getattr(own[key], "shape", None)
    ]
    parts = [
        f"{len(keys)} {what}"
        for keys, what in ((missing, "missing"), (unexpected, "unexpected"), (shaped, "of another shape"))
        if keys
    ]
    first = (missing or unexpected or shaped or ["?"])[0]
    return f"{', '.join(parts) or 'other values'}, e.g. {first}"


def _data_problem(data: Any) -> str | None:
    """The first entry of a checkpoint's data record that the verbs cannot use, as ``key=value``; else None."""
    if data is None:
        return None
    if not isinstance(data, dict):
        return f"data={str(data)[:40]!r}"

    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    def pair(value: Any) -> bool:
        return isinstance(value, list) and len(value) == 2 and all(number(v) for v in value) and value[0] <= value[1]

    def profile(value: Any) -> bool:
        return not value or (
            isinstance(value, dict)
            and isinstance(value.get("channels"), str)
            and pair(value.get("height"))
            and pair(value.get("width"))
            and number(value.get("aspect", 1.0))
        )

    valid = {
        "data_root": lambda v: isinstance(v, str),
        "val_split": lambda v: number(v) and 0.0 < v < 1.0,
        "seed": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "fingerprint": lambda v: isinstance(v, str),
        "val_files": lambda v: isinstance(v, list) and all(isinstance(name, str) for name in v),
        "has_masks": lambda v: isinstance(v, bool),
        "profile": profile,
    }
    for key, check in valid.items():
        if data.get(key) is not None and not check(data[key]):
            return f"data.{key}={str(data[key])[:40]!r}"
    return None


def missing_file(path: Path) -> str:
    """Why ``path`` (not a regular file) is no model file, in words: it does not exist, or what it is instead.

    ``/dev/null``, a pipe or a symbolic link in a loop read "does not exist" (a bug bash).
    """
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if path.is_symlink():  # a link to nothing, or in a loop
            return f"is a symbolic link to no file ({exc.strerror})"
        return "does not exist"
    kind = "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a pipe" if stat.S_ISFIFO(mode) else "a socket"
    return f"is {kind}, not a regular file"


def non_finite(model: torch.nn.Module) -> str | None:
    """The first weight or statistic (thresholds, normalisation, PADIM's Gaussians) of ``model`` that is not finite.

    A post-processor that was never fitted (all its statistics NaN, as a model saved before its
    training's validation) is left to the verbs that need it; one NaN among fitted ones is damage.
    """
    state = model.state_dict()
    post = [name for name in state if name.startswith("postprocessor.")]
    unfitted = bool(post) and all(bool(torch.isnan(state[name]).all()) for name in post)
    for name, tensor in state.items():
        if unfitted and name in post:
            continue
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def latest_checkpoint(workdir: WorkDir) -> Path:
    """The latest training run's ``model.ckpt`` in ``workdir``; one line when there is none."""
    latest = workdir.latest("train")
    if latest is None or not (latest / CHECKPOINT_NAME).exists():
        why = workdir.pointer_problem("train") if workdir.root.exists() else "no such folder"
        from otx.training import interrupted_states

        states = interrupted_states(workdir.root) if workdir.root.is_dir() else []
        # finished trainings that latest.json does not name (it names a run deleted since, or none)
        # finished runs by their own names and order (before: every "*-train*" folder by name, a renamed old one
        # as newest, a failed one too)
        trained = [run / CHECKPOINT_NAME for run in workdir.finished("train") if (run / CHECKPOINT_NAME).is_file()]
        hints = [f"the newest model trained there is {trained[-1]}: pass it with --checkpoint"] if trained else []
        if states:
            hints.append(
                f"an interrupted training saved epochs in {states[-1].parent.parent.name}: `otx train` with its "
                "options and --resume true continues it"
            )
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise OTXError(
            f"no trained model in '{workdir.root}'{f' ({why})' if why else ''}; run `otx train` there first "
            f"or pass --checkpoint PATH{hint}"
        )
    return latest / CHECKPOINT_NAME

"""A model from a checkpoint or an exported file, and the data to evaluate it on, resolved as values.

Nothing here changes the engine or the user's data module: the task a verb runs for comes
from ``VerbContext.adapter(scorer.task)``, and a verb that needs the model's own data settings
(its data root, its validation split) gets a new ``AnomalyDataModule``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from otx.boxes import UNTUNED
from otx.checkpoint import latest_checkpoint, load_checkpoint
from otx.data.datamodule import AnomalyDataModule, AnomalyDataset
from otx.deploy.inferencer import OpenVINOInferencer, is_exported_model
from otx.errors import OTXDataError, OTXError
from otx.preprocess import AUTO, PreProcessor, auto_chose
from otx.render import describe_loaded
from otx.scoring import OpenVINOScorer, Scorer, TorchScorer
from otx.tasks import AnomalyTask, TaskAdapter
from otx.verbs.context import VerbContext
from otx.workdir import FAILED, training_data_root

log = logging.getLogger("otx")


def warn_other_model(ctx: VerbContext, path: str | Path, name: str, backbone: str) -> None:
    """Warn when the recipe's or the engine's model is not the one in ``path`` (``name`` on ``backbone``).

    Every verb that takes a trained model (test, predict, export, optimize, benchmark) runs the
    model in the file; a recipe or ``Engine(model=...)`` naming another one is said, not obeyed.
    """
    recipe = ctx.config.get("model") if isinstance(ctx.config.get("model"), dict) else None
    given: tuple[str, str, str | None] | None = None  # whose, class name, backbone
    if ctx.model is not None:  # Engine(model=...) that has not trained this checkpoint
        given = ("the engine's model", type(ctx.model).__name__, ctx.model.spec.name)
    elif recipe and recipe.get("class_path") and not str(recipe["class_path"]).endswith(".AnomalyModel"):
        wanted = (recipe.get("init_args") or {}).get("backbone")
        given = ("the recipe's model", str(recipe["class_path"]).rpartition(".")[2], wanted)
    if given is not None:
        whose, wanted_name, wanted_backbone = given
        if wanted_name != name or (wanted_backbone and wanted_backbone != backbone):
            ctx.warn(
                f"{whose} is {wanted_name} ({wanted_backbone or 'default backbone'}) but {path} holds "
                f"{name} ({backbone}); using the model in the file"
            )


def resolve_model(ctx: VerbContext, checkpoint: str | Path | None, raw_outputs: bool = False) -> Scorer:
    """A scorer for a checkpoint or an exported model (default: the latest training run's checkpoint).

    ``raw_outputs``: an exported model gives the raw outputs its post-processor normalises (what
    metrics are computed on, as for a checkpoint), where its graph and metadata allow.
    """
    path = Path(checkpoint).expanduser() if checkpoint is not None else latest_checkpoint(ctx.workdir)
    if is_exported_model(path):
        task = ctx.task.value if ctx.task else None
        inferencer = OpenVINOInferencer(
            path, ctx.device, ctx.inference_precision, task=task, raw_outputs=raw_outputs
        )  # raw outputs where the export has them (an older one's normalised outputs otherwise)
        scorer: Scorer = OpenVINOScorer(inferencer)
        scorer.data_info["data_root"] = training_data_root(path)  # from its run folders, where they are
    else:
        model, ckpt = load_checkpoint(path)
        scorer = TorchScorer(model, path, ckpt.get("task"), ckpt.get("data"))
        given = [
            f"{name} {value}"
            for name, value, default in (
                ("--device", ctx.device, "AUTO"),
                ("--inference_precision", ctx.inference_precision, "f32"),
            )
            if str(value).upper() != default.upper()
        ]
        if given:  # (before: ignored without a word, where an export on that device is refused when it lacks it)
            ctx.warn(
                f"{' and '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to exported models (.xml, .onnx); "
                f"the checkpoint {path} runs in "
                f"torch on {scorer.runtime_info().get('device', 'cpu')}: export it to run it with OpenVINO"
            )
    ctx.console.print(describe_loaded(scorer))
    config_notes(ctx, path, scorer)
    return scorer


def unfinished_run(path: str | Path) -> str | None:
    """A warning when the model file at ``path`` lies in a run folder that did not finish (its ``FAILED`` marker).

    An export stopped during its check against torch leaves a whole-looking IR; the defaults skip
    such runs, but a file named by path was used without a word (a bug bash).
    """
    folder = Path(path).expanduser().parent  # (``--checkpoint=~/ws/...``: the shell leaves that ~ as it is)
    if not (folder / FAILED).exists():
        return None
    return (
        f"{path} lies in a run that did not finish ({folder.name} holds a {FAILED} marker; its otx.log says why): "
        "the file may be incomplete or unchecked; make it again (otx train or otx export)"
    )


def config_notes(ctx: VerbContext, path: Path, scorer: Scorer) -> None:
    """What a config file or ``Engine(model=...)`` asks for that the trained model at ``path`` does not do.

    A model run after training keeps its own pre-processing and thresholds: another model class, input
    settings or thresholds given beside it are said (test, predict and export alike; before, export said
    nothing of a config's thresholds).
    """
    recipe = ctx.config.get("model") if isinstance(ctx.config.get("model"), dict) else None
    if message := unfinished_run(path):
        ctx.warn(message)
    warn_other_model(ctx, path, scorer.name, scorer.backbone)
    own = scorer.preprocessor.config()
    if recipe and (differ := _preprocessing_differs(recipe.get("init_args") or {}, own)):
        # A note, not a warning: the numbers are the model's as trained (a recipe beside a model trained with
        # another --model.init_args.input_size is the README's own workflow), the user may have expected others.
        ctx.note_once(
            "preprocessing",
            f"[yellow]note[/]: the recipe's {', '.join(differ)} {'differs' if len(differ) == 1 else 'differ'} from "
            f"the model's ({', '.join(_setting(k, own.get(_PRE_KEYS[k])) for k in differ)}):"
            f" the pre-processing is part of the model, so it runs as trained; train again for other settings",
        )
    if ctx.model is not None and type(ctx.model).__name__ == scorer.name:
        if differ := _engine_model_differs(dict(ctx.model.hparams), scorer, own):
            ctx.warn(  # before: Engine(model=Padim(input_size=(96, 96))).test() ran a 128x128 checkpoint silently
                f"the engine's model has other settings than {path} ({'; '.join(differ)}): the model in the file "
                "runs as trained; train again for other settings"
            )
    if recipe and (unused := _thresholds_differ(recipe.get("init_args") or {}, scorer.thresholds)):
        ctx.note_once(  # before: a config file's thresholds were dropped without a word (the option is refused)
            "thresholds",
            f"[yellow]note[/]: the config's {' and '.join(unused)} {'is' if len(unused) == 1 else 'are'} not used: "
            f"thresholds are part of the trained model (image {scorer.thresholds[0]:.6g}, pixel "
            f"{scorer.thresholds[1]:.6g}, raw); give them to otx train for a model that uses them",
        )


_NOT_COMPARED = ("pretrained", "weights", "seed")  # how it was trained, not what it computes


def _engine_model_differs(given: dict[str, Any], scorer: Scorer, own: dict[str, Any]) -> list[str]:
    """The settings of ``Engine(model=...)`` (not None) that the loaded model does not have, as ``key given (file's)``.

    Input settings as a recipe's are compared (``_preprocessing_differs``: ``auto`` agrees with its
    choice); with a checkpoint, the other init arguments too (an export keeps the input settings only).
    """
    said = [
        f"{_setting(key, given[key])} (the file's: {_setting(key, own.get(_PRE_KEYS[key]))})"
        for key in _preprocessing_differs(given, own)
    ]
    trained = getattr(getattr(scorer, "model", None), "hparams", None)
    if trained is None:
        return said
    for key, value in given.items():
        if key in _PRE_KEYS or key in _NOT_COMPARED or value is None:
            continue
        value = list(value) if isinstance(value, tuple) else value
        theirs = trained.get(key)
        theirs = list(theirs) if isinstance(theirs, tuple) else theirs
        if value != theirs:
            said.append(f"{key} {value} (the file's: {'default' if theirs is None else theirs})")
    return said


def _thresholds_differ(init_args: dict[str, Any], thresholds: tuple[float, float]) -> list[str]:
    """A config's ``image_threshold`` / ``pixel_threshold`` (not None) that the model's own raw thresholds are not."""
    differ = []
    for key, own in zip(("image_threshold", "pixel_threshold"), thresholds, strict=True):
        value = init_args.get(key)
        try:
            if value is not None and not math.isclose(float(value), float(own), rel_tol=1e-6, abs_tol=1e-9):
                differ.append(f"{key} {float(value):g}")
        except (TypeError, ValueError):  # not a number: the model's own check says so where it is read
            differ.append(f"{key} {value!r}")
    return differ


_PRE_KEYS = {"input_mode": "mode", "input_size": "input_size", "tile_size": "tile_size", "tile_stride": "tile_stride"}


def _setting(key: str, value: Any) -> str:
    """``input_size [256, 256]``, ``tile_size null``: a setting as the command line and recipes write it."""
    return f"{key} {list(value) if isinstance(value, (list, tuple)) else 'null' if value is None else value}"


def _preprocessing_differs(init_args: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """The input-mode settings a recipe gives (not None) that the model's pre-processor does not have.

    A config file given to the verbs that run a trained model is read for its data and compared with
    the model; before, a recipe's other input mode or size was ignored without a word. A recipe's
    ``input_mode auto`` agrees with a model trained as ``resize``, or as ``keep_aspect`` at an input
    of the recipe's number of pixels in the model's own shape (what ``auto`` chose).
    """
    differ = []
    for key, own in _PRE_KEYS.items():
        value = init_args.get(key)
        if value is None:
            continue
        if isinstance(value, tuple):  # a Python caller's (256, 256) is the config's [256, 256]
            value = list(value)
        if key == "input_mode" and value == AUTO and config.get(own) in ("resize", "keep_aspect"):
            continue
        if key == "input_size" and init_args.get("input_mode") == AUTO and config.get("mode") == "keep_aspect":
            if auto_chose(config["input_size"], value):
                continue
        if value != config.get(own):
            differ.append(key)
    return differ


def untuned_boxes(scorer: Scorer, adapter: TaskAdapter) -> str | None:
    """A warning when detection boxes have untuned settings: a model trained for another task, or without masks.

    Before, a detection model trained on data without ground_truth/ masks (its training warned) was
    tested on data with them without a word: box AP50 0.010 against 0.513 tuned, and a report whose
    box settings read as chosen on the validation split (a bug bash).
    """
    trained_task = getattr(scorer, "trained_task", None) or scorer.task
    return untuned_boxes_of(trained_task, adapter, scorer.data_info.get("has_masks"))


def untuned_boxes_of(trained_task: str | None, adapter: TaskAdapter, has_masks: bool | None = None) -> str | None:
    """``untuned_boxes`` for a model trained for ``trained_task`` on data with or without masks (None: not known)."""
    if not adapter.box_level:
        return None
    if trained_task == AnomalyTask.DETECTION.value and has_masks is False:
        return (
            f"the model was trained on data without ground_truth/ masks, so its detection boxes use {UNTUNED}; for "
            "tuned boxes train on data with masks of the validation split's defects"
        )
    if trained_task in (None, AnomalyTask.DETECTION.value):
        return None
    return (
        f"the model was trained for {trained_task}, so its detection boxes use {UNTUNED}; for tuned boxes "
        "train with a recipe/anomaly_detection/ recipe (or --task detection)"
    )


def data_root_for(
    ctx: VerbContext, info: dict[str, Any], must_exist: bool = False, purpose: str = "test"
) -> str | None:
    """The data to use: the given data root, else the one the model was trained on.

    None when there is neither, or, with ``must_exist``, when the recorded folder is not there
    (callers that can do without data). Otherwise a recorded folder that is gone is one line
    naming it as the training data (before: "data root ... does not exist", of a data root the
    user never passed), and a folder the user gave that is missing fails later with its own line:
    a mistyped ``--data_root`` is not passed over in silence. ``purpose``: as ``eval_data``'s.
    """
    given = ctx.data.data_root is not None
    root = ctx.data.data_root if given else info.get("data_root")
    if root is None:
        return None
    if not given and not Path(root).expanduser().is_dir():
        if must_exist:
            return None
        instead = ", or --source (an image, folder or glob) to predict on other images" if purpose == "predict" else ""
        raise OTXDataError(
            f"the model's training data '{root}' is gone (moved, renamed or on another machine); pass --data_root "
            f"DIR (the folder in MVTec AD layout the model was trained on, wherever it is now){instead}"
        )
    if ctx.data.data_root is None:
        log.info("data root %s: the one the model was trained on", root)
    return str(root)


def eval_data(
    ctx: VerbContext, info: dict[str, Any], must_exist: bool = False, purpose: str = "test"
) -> AnomalyDataModule | None:
    """The data set up with the validation split the model was calibrated with, so test images stay unseen.

    ``info`` is the model's data record (a scorer's ``data_info``: validation split, seed, data
    root and fingerprint of the training files). None when there is no data to use (see
    ``data_root_for``). A new data module is returned; the one in ``ctx`` is left as it is.
    ``purpose``: what the caller does with the splits, for the warnings about changed folders:
    ``test`` (metrics on the test split), ``predict`` (the test split predicted) or ``check``
    (export, optimize: the validation split alone is used).
    """
    root = data_root_for(ctx, info, must_exist, purpose)
    if root is None:
        return None
    data = ctx.data.replace(data_root=root)
    data.setup()
    stored = (info.get("val_split"), info.get("seed"))
    if None in stored or data.index is None:
        return data
    stored = (float(stored[0]), int(stored[1]))
    recorded = info.get("data_root")
    fingerprint = info.get("fingerprint")
    same = (recorded and str(Path(root).resolve()) == recorded) or (
        fingerprint and fingerprint == data.index.fingerprint()
    )
    if same and (data.val_split, data.seed) != stored:  # (in metrics.json and the report: before, the console only)
        ctx.warn(
            f"using the model's validation split (val_split {stored[0]}, seed {stored[1]}; this command's: val_split "
            f"{data.val_split}, seed {data.seed}) so that the test images stay ones it was not fitted or calibrated on"
        )
        data = data.replace(val_split=stored[0], seed=stored[1])
        data.setup()
    if same and info.get("val_files") is not None:
        data.val_files = list(info["val_files"])
        data.split()  # the data's own val/ folder, if any, is the validation split now
        changes = data.split_changes
        unreadable = data.index.unreadable if data.index is not None else {}
        scored = [s for s in data.splits["test"] if s.label >= 0 and s.path not in unreadable]  # not unknown/
        gone = changes.get("validation_images_gone", 0)
        still = f" that are still there ({gone} {'is' if gone == 1 else 'are'} gone)" if gone else ""
        # (with no test images left there is nothing to warn about: the caller says so in one line)
        if purpose == "check":  # optimize, export: the validation split alone is used
            if "val_folder_added" in changes:
                ctx.warn(
                    f"{root} has a val/ folder now: the decisions are checked on its {len(data.splits['val'])} "
                    f"images, not on the {len(data.val_files)} of the test folders the model was calibrated on"
                )
            elif gone:
                ctx.warn(
                    f"{gone} of the {len(data.val_files)} validation images the model was calibrated on are gone "
                    f"from {root}: the decisions are checked on the {len(data.splits['val'])} left"
                )
        else:
            uses = (
                f"the test metrics are on the {len(scored)} others"
                if purpose == "test"
                else f"the {len(data.splits['test'])} others are predicted"
            )
            if "val_folder_added" in changes and data.splits["test"]:
                ctx.warn(
                    f"{root} has a val/ folder now, which sets the validation split, but the model was calibrated "
                    f"on {len(data.val_files)} images of its test folders: the {changes['val_folder_added']}{still} "
                    f"stay out of the test split, so {uses}"
                )
            elif (changes.get("seeded_split_moves") or gone) and data.splits["test"]:
                ctx.warn(
                    f"the test folders of {root} changed since training: the {len(data.splits['val'])} validation "
                    f"images the model was calibrated on{still} stay out of the test split, so {uses} "
                    f"(val_split/seed alone would now put {changes['seeded_split_moves']} images on the other side)"
                )
    now = data.index.fingerprint()
    if same and fingerprint not in (None, "unknown", now):  # the same folder, other training images in it
        # (before: the same path counted as the same data, and replaced train/good images went without a word)
        ctx.warn(
            f"the training images at {root} changed since the model was trained (train/good fingerprint {now}, the "
            f"model's {fingerprint}): it was fitted on other images than those there now; train again on them"
        )
    if not same and fingerprint not in (None, "unknown"):
        ctx.warn(
            f"the data at {root} is not the data the model was trained on (its train/good files "
            f"differ: fingerprint {now}, the model's {fingerprint}); thresholds were "
            "learned on other images, and test images may include some the model was fitted on"
        )
    return data


def require_data(data: AnomalyDataModule | None, what: str) -> AnomalyDataModule:
    """``data``, or one line saying that ``what`` needs a data root."""
    if data is None:
        raise OTXError(f"{what}; pass --data_root DIR (a folder in MVTec AD layout)")
    return data


def one_sided_warning(validation: Any, converted: str, root: str | None) -> str | None:
    """One line when a decision check (``ValidationData``) has one kind of image only: no AUROC or F1 then."""
    labels = {s.label for s in validation.items.samples} if validation is not None else set()
    if not labels or {0, 1} <= labels:
        return None
    missing = "anomalous" if 1 not in labels else "normal"
    return (
        f"the validation split of {root} has no {missing} images, so the {converted} model's decisions are "
        f"checked on {'normal' if missing == 'anomalous' else 'anomalous'} images only (no AUROC or F1): "
        f"whether it still {'flags defects' if missing == 'anomalous' else 'passes normal parts'} is "
        "unchecked; use the training data's test folders (--data_root)"
    )


def validation_set(data: AnomalyDataModule | None, pixel_level: bool, preprocess: PreProcessor) -> Any:
    """The labelled validation split the model's thresholds were learned on, as ``ValidationData``.

    None without data or validation images. Images stay at their own size (exported graphs
    resize them); masks come at the pre-processor's map size when ``pixel_level`` and the data has them.
    """
    from otx.deploy.optimize import ValidationData

    if data is None:
        return None
    data.check_validation_readable()
    val = [s for s in data.splits["val"] if s.label >= 0]
    if not val:
        return None
    return ValidationData(
        AnomalyDataset(val, preprocess, resize_images=False), data.has_masks and pixel_level, pixel_level=pixel_level
    )

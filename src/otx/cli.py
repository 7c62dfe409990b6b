"""``otx`` command line: a thin jsonargparse layer over ``otx.engine.Engine``.

Every recipe key is a constructor argument (``--model.init_args.backbone resnet18``,
``--data.batch_size 8``); ``--config recipe/<task>/<model>.yaml`` resolves to the recipes
shipped with otx, any other path to that file. Errors end in one line and a non-zero exit.
"""

from __future__ import annotations

import _thread
import atexit
import contextlib
import faulthandler
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from otx import __version__, env_flag
from otx.distributed import STOP_LISTENER, STOP_SIGNALS, end_meeting, meeting_now, secondary
from otx.errors import (
    COMMAND_LINE,
    STOP_LINE,
    OTXConfigError,
    OTXError,
    broken_install,
    out_of_memory,
    out_of_space,
    shared_memory,
)
from otx.logs import StderrHandler, make_console, pipe_safe_stdout
from otx.validate import close_matches
from otx.workdir import FINISHED, HELD_STOPS, MARKING, OPEN_RUNS, STOPPED, STOPS

RECIPE_PREFIXES = ("recipe/", "recipes/")
VERB_HELP = {
    "train": "train a model on train/good; learn thresholds on the validation split",
    "test": "evaluate a checkpoint or exported model on the test split (metrics, report)",
    "predict": "predict on images (masks, boxes, overlays)",
    "export": "export a checkpoint to OpenVINO IR or ONNX",
    "optimize": "quantise to INT8 with NNCF, calibrated on training images",
    "benchmark": "latency and throughput in torch and OpenVINO (FP32, FP16, INT8)",
}
TASKS = ("classification", "detection", "segmentation")
VERBS = ("train", "test", "predict", "export", "optimize", "benchmark")


def recipes_dir() -> Path:
    """The folder of the recipes shipped with otx."""
    return Path(__file__).parent / "recipes"


def list_recipes() -> list[str]:
    """Shipped recipes as ``recipe/<task>/<model>.yaml`` names."""
    root = recipes_dir()
    return sorted(f"recipe/{p.relative_to(root).as_posix()}" for p in root.rglob("*.yaml"))


def resolve_recipe(path: str) -> str:
    """Map ``recipe/...`` (or ``recipes/...``) to a shipped recipe unless such a local file exists."""
    if not path.strip():  # (``--config=``: "is a folder" before)
        raise OTXError("--config is empty; pass a recipe YAML file (`otx find recipes` lists them)")
    path = os.path.expanduser(path)  # (``--config=~/r.yaml``: the shell leaves that ~ as it is)
    if Path(path).exists():
        return path
    for prefix in RECIPE_PREFIXES:
        if path.startswith(prefix):
            candidate = recipes_dir() / path[len(prefix) :]
            if candidate.exists():
                return str(candidate)
            near = close_matches(path, list_recipes(), cutoff=0.6, n=1)
            hint = f"did you mean {' or '.join(near)}?" if near else "`otx find recipes` lists them"
            raise OTXError(f"no recipe '{path}'; {hint}")
    raise OTXError(f"config file '{path}' does not exist")


def _resolve_config_args(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = _checked_yaml(_recipe_file(out[i + 1]))
        elif arg.startswith("--config="):
            out[i] = "--config=" + _checked_yaml(_recipe_file(arg.split("=", 1)[1]))
    return out


def _recipe_file(given: str) -> str:
    """``resolve_recipe(given)``; one line for a folder (before: jsonargparse's 'Path is not a file')."""
    path = resolve_recipe(given)
    if Path(path).is_dir():
        raise OTXError(f"--config {given} is a folder; pass a recipe YAML file in it (`otx find recipes` lists them)")
    return path


class _DuplicateKey(Exception):
    """A mapping key given twice in a YAML file: ``(key, first line, second line)``."""


def _unique_key_loader() -> type:
    """A ``yaml.SafeLoader`` that raises ``_DuplicateKey`` for a key given twice in one mapping."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`, YAML's own merge
                    continue
                key = self.construct_object(key_node, deep=deep)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKey(key, seen[key], line)
                    seen[key] = line
                except TypeError:  # an unhashable key: the parser reports it
                    continue
            return super().construct_mapping(node, deep=deep)

    return Loader


MAX_CONFIG_VALUES = 100_000  # values a --config file may expand to (a recipe holds about a hundred)


class _SelfReference(Exception):
    """A YAML value that holds itself through an alias (``_expanded_size``)."""


def _expanded_size(node: Any, memo: dict[int, int]) -> int:
    """How many values ``node`` holds once its YAML aliases are written out (shared objects counted per use).

    A 294-byte file of nested aliases ("billion laughs") took 38 s and 1 GB to refuse, one level more
    over 2 minutes (a bug bash): the YAML loader shares aliased objects, the configuration parser
    copies them out. Counted with a memo, in time linear in the file.
    """
    key = id(node)
    if key in memo:
        if memo[key] < 0:  # still being counted: the node holds itself (a: &a [1, *a])
            raise _SelfReference
        return memo[key]
    memo[key] = -1
    if isinstance(node, dict):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.items())
    elif isinstance(node, list | tuple):
        size = 1 + sum(_expanded_size(item, memo) for item in node)
    else:
        size = 1
    memo[key] = size
    return size


def _checked_yaml(path: str) -> str:
    """``path``; one line naming the file, line and column when it is a file that is not valid YAML."""
    import yaml

    file = Path(path)
    if not file.is_file():
        return path  # the parser says what is wrong with it
    try:
        content = yaml.load(file.read_text(), Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader
    except _DuplicateKey as exc:  # before: YAML kept the last, and the first block's settings were dropped
        key, first, second = exc.args
        raise OTXError(
            f"--config {path} has the key '{key}' twice (lines {first} and {second}): YAML keeps the second and drops "
            "the first with its settings; merge them into one"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise OTXError(f"--config {path} is not valid YAML ({problem}{where}); fix the file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OTXError(f"--config {path} cannot be read ({exc}); pass a YAML recipe") from None
    try:
        size = _expanded_size(content, {})
    except _SelfReference:  # before: "internal error (RecursionError)" (a review)
        raise OTXError(f"--config {path} holds a value that refers to itself through a YAML alias; fix it") from None
    if size > MAX_CONFIG_VALUES:  # before: minutes and GBs, then "unknown key"
        raise OTXError(
            f"--config {path} expands to {size:,} values through its YAML aliases (&name / *name), more than a recipe "
            f"holds ({MAX_CONFIG_VALUES:,} at most); write the values out, or use fewer aliases"
        )
    if not isinstance(content, dict):  # before: jsonargparse's "Unexpected config: ..." with the file's text
        what = "is empty" if content is None else f"holds a {type(content).__name__}, not a recipe's keys"
        raise OTXError(f"--config {path} {what}; pass a recipe YAML (task, model, data, trainer; `otx find recipes`)")
    model = content.get("model")
    beside = [str(k) for k in model if k not in ("class_path", "init_args")] if isinstance(model, dict) else []
    if any(close_matches(key, ["init_args"]) for key in beside):  # init_arg: the parser's "did you mean" says it
        beside = []
    if beside and "class_path" in model:  # before: "otx.models.AnomalyModel: unknown option 'class_path'"
        raise OTXError(
            f"--config {path}: the model's settings go under init_args (model: {{class_path: {model['class_path']}, "
            f"init_args: {{{beside[0]}: ...}}}}); got {', '.join(beside)} beside class_path"
        )
    return path


def _known_options(verb: str) -> list[str]:
    """The long options of ``otx <verb>``'s parser, without their dashes (``data.batch_size``)."""
    if verb in VERBS:
        parser = _verb_parser(verb)
    else:  # find, data (its one command, make-sample)
        parser = build_parser((verb,))._subcommands_action._name_parser_map[verb]
        if verb == "data":
            parser = parser._subcommands_action._name_parser_map["make-sample"]
    return [name[2:] for name in parser._option_string_actions if name.startswith("--")]


def _not_a_recipe(argv: list[str], verb: str) -> str | None:
    """One line for a ``--config`` file none of whose keys a recipe has (e.g. a run's metrics.json)."""
    import yaml

    top = {name for name in _known_options(verb) if "." not in name}
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg == "--config" and i + 1 < len(argv) else arg.partition("=")[2]
        if not (arg == "--config" or arg.startswith("--config=")):
            continue
        try:
            content = yaml.safe_load(Path(_recipe_file(path)).read_text())
        except Exception:  # noqa: BLE001 - the parser's own message stands
            continue
        result = isinstance(content, dict) and ("otx_version" in content or "command" in content)  # a run's json
        if isinstance(content, dict) and content and (result or not top & set(map(str, content))):
            keys = ", ".join(map(str, list(content)[:4]))
            return (
                f"--config {path} is not a recipe (its keys: {keys}); "
                "pass a recipe YAML (task, model, data, trainer; `otx find recipes`)"
            )
    return None


def _other_runs_config(argv: list[str], verb: str) -> str | None:
    """One line for a ``--config`` that is the config.yaml of another verb's run (its keys are that verb's).

    Before: "unknown key 'format' (misspelled?)" for an export run's config.yaml given to otx test, and
    the like (a bug bash); a training run's config.yaml is read by every verb.
    """
    from otx.workdir import RUN_FOLDER

    for i, arg in enumerate(argv):
        if not (arg == "--config" or arg.startswith("--config=")):
            continue
        path = Path(argv[i + 1] if arg == "--config" and i + 1 < len(argv) else arg.partition("=")[2])
        match = RUN_FOLDER.match(path.parent.name)
        if path.name != "config.yaml" or match is None or match.group(1) == "train":
            continue  # (only where the file failed to parse: a test run's config given back to otx test reads)
        made = {"export": "exported_model.xml", "optimize": "optimized_model.xml"}.get(match.group(1))
        model = path.parent / made if made and (path.parent / made).is_file() else None
        hint = f"pass --checkpoint {model}" if model else "pass the training run's config.yaml, or --checkpoint"
        return (
            f"--config {path} is the config.yaml of an otx {match.group(1)} run, whose settings otx {verb} cannot "
            f"read back; {hint}"
        )
    return None


def _verb_parser(verb: str) -> ArgumentParser:
    from otx.data.datamodule import AnomalyDataModule
    from otx.models.base import AnomalyModel

    description = f"otx {verb}: {VERB_HELP[verb]}"
    if verb != "train":
        description += (
            " (the model comes from the checkpoint or exported model; a recipe's model and trainer sections are "
            "for otx train)"
        )
    parser = ArgumentParser(description=description, exit_on_error=False, allow_abbrev=False)
    parser.add_argument("--config", action=ActionConfigFile, help="recipe: recipe/<task>/<model>.yaml or a YAML path")
    parser.add_argument(
        "--task",
        type=Literal["classification", "detection", "segmentation"] | None,
        default=None,
        help="task; default: the recipe's, else the checkpoint's / exported model's (segmentation for train)",
    )
    parser.add_subclass_arguments(AnomalyModel, "model", required=False, help="the model core (class_path/init_args)")
    parser.add_class_arguments(AnomalyDataModule, "data", help="data settings")
    parser.add_argument("--data_root", type=str | None, default=None, help="MVTec-layout folder (sets data.data_root)")
    parser.add_argument("--work_dir", type=str, default="otx-workspace", help="where run folders go")
    parser.add_argument(
        "--max_epochs", type=int | None, default=None, help="training epochs (shortcut for --trainer.max_epochs)"
    )
    from otx.training import TrainerSettings

    parser.add_class_arguments(  # every verb reads recipes; only train uses this section
        TrainerSettings, "trainer", help="lightning.Trainer arguments for otx train (--trainer.accelerator gpu ...)"
    )
    parser.add_argument(  # every verb reads a run's config.yaml (resume: false); only train uses it
        "--resume",
        type=bool | str,
        nargs="?",
        const=True,  # --resume alone: the newest in --work_dir
        default=False,
        help="continue an interrupted training: true (the newest in --work_dir) or its run folder / last.ckpt",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=42,
        help="global seed (Lightning's seed_everything)"
        + (
            "; also the model's seed (its random initialisation and draws) unless --model.init_args.seed is given; "
            "the validation split and the training order follow --data.seed"
            if verb == "train"
            else ""
        ),
    )
    if verb != "train":
        what = {"export": "model.ckpt", "optimize": "model.ckpt, or an exported OpenVINO .xml (not ONNX)"}.get(
            verb, "model.ckpt, or an exported .xml / .onnx"
        )
        default = "latest export or train" if verb == "optimize" else "latest train"
        parser.add_argument("--checkpoint", type=str | None, default=None, help=f"{what} (default: {default})")
    if verb in ("test", "predict", "benchmark"):
        parser.add_argument("--device", type=str, default="AUTO", help="OpenVINO device for exported models")
        parser.add_argument(
            "--inference_precision",
            type=Literal["f32", "bf16", "f16", "default"],
            default="f32",
            help="OpenVINO inference precision for exported models (f32 reproduces the trained model)",
        )
    if verb == "optimize":
        parser.add_argument(
            "--subset_size",
            type=int | None,
            default=None,
            help="train/good images that calibrate INT8 (all if fewer); default: the model's (PADIM and PatchFlow "
            "300, PatchCore and STFPM 1000)",
        )
        parser.add_argument(
            "--max_drop",
            type=float | None,
            default=None,
            help="accuracy control: largest allowed drop of the validation AUROC and F1 (image, and pixel with "
            "masks), e.g. 0.01; default: none (the model's INT8 scheme, its decisions checked)",
        )
        parser.add_argument(
            "--weight_bits",
            type=str,
            default="auto",
            help="INT8 weights: 7 runs on every CPU, 8 is more accurate on CPUs with VNNI or AMX (without VNNI "
            "int16 sums saturate); auto: 8 where this CPU has VNNI or AMX",
        )
        parser.add_argument(
            "--fallback",
            type=bool,
            nargs="?",
            const=True,
            default=True,
            help="when the INT8 model does not keep the source model's validation decisions, quantise again with "
            "more of the model in float (PatchFlow: its backbone) and keep the first model that does, else the "
            "closest; false writes the first scheme's model whatever its decisions (warned when they move)",
        )
    if verb == "benchmark":
        parser.add_argument(
            "--models",
            type=str,
            nargs="+",
            default=None,
            help="exported .xml/.onnx files to time: --models a.xml b.onnx (with --checkpoint model.ckpt: "
            "besides it; without: only these)",
        )
        parser.add_argument("--num_images", type=int, default=100, help="test images to time (synthetic if no data)")
        parser.add_argument("--warmup", type=int, default=10, help="untimed runs first")
        parser.add_argument("--repeats", type=int, default=3, help="throughput passes (the median is reported)")
    if verb in ("test", "predict"):
        parser.add_argument(
            "--devices", type=int, default=1, help="processes that share the images (docs/scale.md; CPU, gloo)"
        )
        parser.add_argument(
            "--num_nodes", type=int, default=1, help="machines, each started by torchrun / SLURM (docs/scale.md)"
        )
        parser.add_argument(
            "--allow_errors",
            type=bool,
            nargs="?",
            const=True,  # --allow_errors alone, as the demo package's predict.py takes it
            default=False,
            help="exit 0 even when some images cannot be read (they are labelled 'error'; default: exit 1)",
        )
    if verb == "predict":
        parser.add_argument(
            "--source",
            type=str | None,
            default=None,
            help="image file, folder or glob to predict; without it, the test/ images of --data_root or of the "
            "data the model was trained on",
        )
        parser.add_argument(
            "--visualize",
            type=bool,
            nargs="?",
            const=True,
            default=True,
            help="write an overlay per image (false to skip)",
        )
    if verb == "export":
        parser.add_argument("--format", type=Literal["OPENVINO", "ONNX"], default="OPENVINO", help="OPENVINO or ONNX")
        parser.add_argument("--precision", type=Literal["FP32", "FP16"], default="FP32", help="FP32 or FP16 (IR)")
        parser.add_argument(
            "--export_demo_package",
            type=bool,
            nargs="?",
            const=True,
            default=False,
            help="also write demo_package.zip (model + script)",
        )
    if verb != "train":  # parsed from recipes, refused on the command line (_refuse_train_options): not listed
        _hide_from_help(parser, ("model", "trainer", "max_epochs", "resume"))
    return parser


def _hide_from_help(parser: ArgumentParser, sections: tuple[str, ...]) -> None:
    """Leave ``sections``' options (and their groups' headings) out of ``--help``; they still parse.

    Only while the help is formatted: the parser's actions stay as they are, so a recipe's sections
    still parse and dump into the run's config (which the recipe-versus-checkpoint warning reads).
    """
    import argparse

    def hidden(dest: str) -> bool:
        return any(dest == name or dest.startswith(f"{name}.") for name in sections)

    original = parser.format_help

    def format_help() -> str:
        actions = [action for action in parser._actions if hidden(action.dest)]
        helps = [action.help for action in actions]
        groups = parser._action_groups
        try:
            for action in actions:
                action.help = argparse.SUPPRESS
            parser._action_groups = [
                group
                for group in groups
                if not group._group_actions or not all(hidden(action.dest) for action in group._group_actions)
            ]
            return original()
        finally:
            parser._action_groups = groups
            for action, text in zip(actions, helps, strict=True):
                action.help = text

    parser.format_help = format_help  # type: ignore[method-assign]


def build_parser(verbs: tuple[str, ...] | None = None) -> ArgumentParser:
    """The ``otx`` parser with its sub-commands.

    ``verbs``: the verbs whose options are built (default: all). The others are listed by name and help
    only: a verb's options come from the model and data classes, whose imports (torch, Lightning,
    anomalib) take most of a command's start-up, so ``otx --help``, ``otx --version``, ``otx data``
    and a mistyped verb answer without them.
    """
    parser = ArgumentParser(
        prog="otx", description="otx: anomaly detection training toolkit", exit_on_error=False, allow_abbrev=False
    )
    parser.add_argument("--version", action="version", version=f"otx {__version__}")
    commands = parser.add_subcommands(dest="command", required=True)
    for verb in VERBS:
        if verbs is None or verb in verbs:
            verb_parser = _verb_parser(verb)
        else:
            verb_parser = ArgumentParser(description=f"otx {verb}", exit_on_error=False, allow_abbrev=False)
        commands.add_subcommand(verb, verb_parser, help=VERB_HELP[verb])
    find = ArgumentParser(
        description="list recipes, models and backbones (`otx find recipes` is `otx find --what recipes`)",
        exit_on_error=False,
        allow_abbrev=False,
    )
    find.add_argument(
        "--what",
        type=Literal["all", "recipes", "models", "backbones"],
        default="all",
        help="what to list, also given as a word: otx find recipes",
    )
    commands.add_subcommand("find", find, help="list recipes, models and backbones")
    data = ArgumentParser(description="dataset utilities", exit_on_error=False, allow_abbrev=False)
    commands.add_subcommand("data", data, help="dataset utilities")
    data_commands = data.add_subcommands(dest="data_command", required=True)
    sample = ArgumentParser(
        description="write the built-in synthetic MVTec-format dataset; over an earlier one (its folders carry a "
        ".otx-sample file) it rewrites the category folders in place, removing files named like its own (NNN.png, "
        "NNN_mask.png) that this run does not write; a category folder it did not write, or files named like its "
        "own that it did not write, are refused (other files are left alone)",
        exit_on_error=False,
        allow_abbrev=False,
    )
    sample.add_argument("out_dir", type=str, help="folder to write (one sub-folder per category)")
    sample.add_argument(
        "--categories",
        type=list[str] | str | None,
        default=None,
        help="one or a list ([a,b]) of bottle_like, carpet_like, tile_like (the default: all three) and strip_like "
        "(128x512 strips with thin scratches and pits, for the input modes)",
    )
    sample.add_argument("--seed", type=int, default=0)
    data_commands.add_subcommand("make-sample", sample, help="write the synthetic sample dataset")
    return parser


_QUIETED = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "lightning.pytorch.utilities.rank_zero",
    "lightning.pytorch.trainer.connectors.signal_connector",  # "Received SIGTERM" (otx says it once)
    "anomalib",
    "timm",
    "nncf",
    "datumaro",
)


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    for name in _QUIETED:
        logging.getLogger(name).setLevel(logging.ERROR)
    # OpenCV's own "[ WARN:0@5.3] ... PNG input buffer is incomplete", or its "[ERROR:0@0.2] ... imdecode_
    # ... Unsupported number of channels" block (a 5-channel TIFF), before otx's line about the file: otx
    # says what is wrong with every file it cannot read (read when OpenCV is first imported, after this;
    # a user's own setting wins). libjpeg's and libpng's own lines are not OpenCV's log.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "FATAL")


# The top-level shortcuts a --config file may hold, and the full keys they stand for
_SHORTCUTS = {"data_root": ("data", "data_root"), "max_epochs": ("trainer", "max_epochs")}


def _shortcut_states(argv: list[str]) -> dict[str, str | None]:
    """Where each shortcut of ``_SHORTCUTS`` stands after ``argv``'s ``--config`` files, each read once.

    None: no file sets it (a value came from the command line); "shortcut": it wins (in one file
    the shortcut wins over its full key); "overridden": a later file sets the full key, which wins
    (before: the shortcut won, ``--config a.yaml --config b.yaml``: a.yaml's ``max_epochs 1`` beat
    b.yaml's ``trainer.max_epochs 2``, and the warning blamed old config.yaml files).
    """
    import yaml

    states: dict[str, str | None] = dict.fromkeys(_SHORTCUTS)
    for _, path in sorted(_option_values(argv, "--config")):
        try:
            content = yaml.safe_load(Path(resolve_recipe(path)).read_text())
        except Exception:  # noqa: BLE001 - the parser read it; nothing to compare here
            continue
        if not isinstance(content, dict):
            continue
        for shortcut, (section, key) in _SHORTCUTS.items():
            if states[shortcut] and isinstance(content.get(section), dict) and key in content[section]:
                states[shortcut] = "overridden"
            if shortcut in content:
                states[shortcut] = "shortcut"
    return states


def _run_verb(verb: str, cfg: Namespace, parser: ArgumentParser, console: Console, argv: list[str] = ()) -> int:
    """Run one verb; return the exit code (1 when test or predict met unreadable images)."""
    from otx.data.datamodule import AnomalyDataModule
    from otx.engine import Engine

    # a shortcut from a --config file, with a later file's full key: that one wins (the command line's
    # shortcuts are folded into the full keys, but for values the parser or Engine refuses, such as 0)
    states = _shortcut_states(list(argv))
    if cfg.data_root and cfg.data.data_root and states["data_root"] == "overridden":
        cfg.data_root = None
    if cfg.max_epochs is not None and states["max_epochs"] == "overridden":
        cfg.max_epochs = None
    if cfg.data_root:
        given = cfg.data.data_root
        if given and os.path.abspath(os.path.expanduser(str(given))) != os.path.abspath(
            os.path.expanduser(str(cfg.data_root))
        ):  # both from one --config file (the command line's are folded to agree)
            console.print(
                f"[yellow]warning[/]: the config's data_root {escape(str(cfg.data_root))} wins over its data.data_root "
                f"{escape(str(given))} "
                "(set in that --config file or an earlier one, as config.yaml files written before 2026-12-06 hold "
                "both: edit data_root, or pass --data_root DIR)"
            )
        cfg.data.data_root = cfg.data_root
    if verb == "train" and cfg.model is not None:
        _seed_the_model(cfg, list(argv), console)
        _earlier_runs_settings(cfg, list(argv), console)
    data = AnomalyDataModule(**cfg.data.as_dict())
    config = parser.dump(cfg, skip_none=False, format="parser_mode")  # validated, resolved
    import yaml

    resolved: dict[str, Any] = yaml.safe_load(config)
    model = None
    if verb == "train":
        no_model = "no model: pass --config recipe/<task>/<model>.yaml or --model otx.models.Padim"
        if cfg.model is None:
            raise OTXError(no_model)
        if str(cfg.model.class_path).rpartition(".")[2] == "AnomalyModel":  # --model.init_args.X alone: the base
            raise OTXError(
                f"{no_model} (--model.init_args options set the arguments of the model that --config or --model names)"
            )
        model = _instantiate_model(cfg.model)
    trainer = None
    if verb == "train" and cfg.get("trainer") is not None:
        trainer = {k: v for k, v in cfg.trainer.as_dict().items() if v is not None}
    if trainer is not None and cfg.max_epochs is not None:  # from a --config file (the command line's is folded)
        from otx.validate import check_int

        if trainer.get("max_epochs") not in (None, cfg.max_epochs) and states["max_epochs"]:  # (not --max_epochs 0)
            console.print(
                f"[yellow]warning[/]: the config's max_epochs {cfg.max_epochs} wins over its trainer.max_epochs "
                f"{trainer['max_epochs']} (set in that --config file or an earlier one, as config.yaml files written "
                "before 2026-12-06 hold both: edit max_epochs, or pass --max_epochs N)"
            )

        # the shortcut wins over the trainer section, as documented
        trainer["max_epochs"] = check_int("max_epochs", cfg.max_epochs, minimum=1)
    engine = Engine(
        model=model,
        trainer=trainer,
        data=data,
        task=cfg.task,
        work_dir=cfg.work_dir,
        max_epochs=None if trainer is not None else cfg.max_epochs,
        seed=cfg.seed,
        config=resolved,
        console=console,
        device=cfg.get("device", "AUTO"),
        inference_precision=cfg.get("inference_precision", "f32"),
    )
    failed = 0
    if verb == "train":
        engine.train(resume=cfg.resume)
    elif verb == "test":
        tested = engine.test(checkpoint=cfg.checkpoint, devices=cfg.devices, num_nodes=cfg.num_nodes)
        failed = len(tested["errors"]) if tested is not None else 0  # None: a process of rank > 0
    elif verb == "optimize":
        engine.optimize(
            checkpoint=cfg.checkpoint,
            subset_size=cfg.subset_size,
            max_drop=cfg.max_drop,
            weight_bits=cfg.weight_bits,
            fallback=cfg.fallback,
        )
    elif verb == "benchmark":
        engine.benchmark(
            checkpoint=cfg.checkpoint,
            models=cfg.models,
            num_images=cfg.num_images,
            warmup=cfg.warmup,
            repeats=cfg.repeats,
        )
    elif verb == "export":
        engine.export(
            checkpoint=cfg.checkpoint,
            export_format=cfg.format,
            precision=cfg.precision,
            demo_package=cfg.export_demo_package,
        )
    else:
        predictions = engine.predict(
            source=cfg.source,
            checkpoint=cfg.checkpoint,
            visualize=cfg.visualize,
            devices=cfg.devices,
            num_nodes=cfg.num_nodes,
            keep_masks=False,  # written to predictions/masks: a large folder does not hold every mask
        )
        failed = sum(p.label_name == "error" for p in predictions or [])
    if failed and not cfg.allow_errors:
        where = "predictions.json" if verb == "test" else "predictions/predictions.json"
        make_console(stderr=True).print(
            f"[bold red]error[/]: {failed} image(s) could not be read; they are labelled 'error' in {where} of the "
            "run folder, the others were written (--allow_errors true exits 0)",
            highlight=False,
            soft_wrap=True,
        )
        return 1
    return 0


def _warnings_to_stderr() -> None:
    """Show otx's warnings on stderr, once per process however often ``main`` runs."""
    logger = logging.getLogger("otx")
    if not any(getattr(handler, "otx_cli", False) for handler in logger.handlers):
        handler = StderrHandler(logging.ERROR if secondary() else logging.WARNING)  # rank 0 gives the warnings
        handler.otx_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


def _seed_the_model(cfg: Namespace, argv: list[str], console: Console) -> None:
    """``otx train --seed N`` seeds the model's own draws too, unless its seed is given.

    Each model reseeds its random initialisation and draws from its ``seed`` setting, so ``--seed``
    alone (Lightning's ``seed_everything``) changed nothing: five seeds gave five equal runs, each
    recording its own seed (a bug bash). Given on the command line, ``--seed`` now sets the model's
    ``seed`` where ``--model.init_args.seed`` is not given and no --config file changed it from the
    model's default (then it stays, said in one line); a model without one (PatchCore, whose fit is
    the same for every seed) is said in one line. The validation split stays ``--data.seed``'s, so
    that runs of several seeds are tested on the same images.
    """
    import inspect

    given = _option_values(argv, "--seed")
    if not given or _option_values(argv, "--model.init_args.seed"):
        return
    class_name = str(cfg.model.class_path).rpartition(".")[2]
    parameter = inspect.signature(_class_at(str(cfg.model.class_path))).parameters.get("seed")
    init_args = cfg.model.init_args
    if parameter is None:
        console.print(
            f"[yellow]warning[/]: --seed {cfg.seed} changes nothing in {class_name}'s fit: the model has no seed "
            "setting and fits the same for every seed (the validation split follows --data.seed)"
        )
        return
    current = init_args.get("seed") if init_args is not None else None
    if current not in (None, parameter.default, cfg.seed):
        console.print(
            f"[yellow]warning[/]: --seed {cfg.seed} leaves the model's seed at {current}, set in a --config file: "
            f"pass --model.init_args.seed {cfg.seed} to change it"
        )
        return
    if init_args is None:
        cfg.model.init_args = init_args = Namespace()
    init_args["seed"] = cfg.seed  # (a Namespace or a dict)


def _earlier_runs_settings(cfg: Namespace, argv: list[str], console: Console) -> None:
    """A training run's config.yaml given as --config trains as that run did, also when an earlier otx wrote it.

    The README says a run's config.yaml trains the same again; a file an earlier otx wrote lacks
    the settings added since, which took this otx's defaults without a word (an STFPM run of
    anomalib's student by SGD came back as the small student by Adam, a PatchCore run's nearest map
    as the bilinear one; a bug bash of older artifacts). Those settings take the values the model
    gives a checkpoint of that otx (``upgrade_init_args``), unless the command line gives them; one
    line names them.
    """
    given = [Path(value) for _, value in _option_values(argv, "--config")]
    runs = [p for p in given if p.name == "config.yaml" and p.parent.name.endswith("-train") and p.is_file()]
    if not runs or cfg.model.init_args is None:
        return
    import yaml

    try:
        written = (yaml.safe_load(runs[-1].read_text()) or {}).get("model") or {}
        if written.get("class_path") != str(cfg.model.class_path) or not isinstance(written.get("init_args"), dict):
            return
        cls = _class_at(str(cfg.model.class_path))
        upgraded = cls.upgrade_init_args(dict(written["init_args"]))
    except Exception:  # noqa: BLE001 - an unreadable file is said by the parser, a model without the hook has none
        return
    added = {
        key: value
        for key, value in upgraded.items()
        if key not in written["init_args"] and not _option_values(argv, f"--model.init_args.{key}")
    }
    for key, value in added.items():
        cfg.model.init_args[key] = value
    if added:
        console.print(
            f"note: {escape(str(runs[-1]))} was written by an earlier otx; it trains as that run did with "
            + ", ".join(f"{key} {'null' if value is None else value}" for key, value in added.items())
            + " (settings this otx added since, at that otx's values; give them on the command line for others)"
        )


def _class_at(class_path: str) -> type:
    """The class a ``class_path`` names (``otx.models.Padim``); ImportError or AttributeError when none."""
    import importlib

    module_name, _, class_name = class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


def _instantiate_model(spec: Namespace) -> Any:
    """Build the model from its class_path/init_args (errors stay one-line ``OTXError``)."""
    init_args = spec.init_args.as_dict() if isinstance(spec.init_args, Namespace) else dict(spec.init_args or {})
    return _class_at(spec.class_path)(**init_args)


def _find(what: str, console: Console) -> None:
    from otx.models import available_models
    from otx.models.backbones import BACKBONES, weight_status

    if what in ("all", "recipes"):
        console.print("[bold]recipes[/] (use with --config):")
        for name in list_recipes():
            console.print(f"  {name}")
    if what in ("all", "models"):
        console.print("[bold]models[/] (--model CLASS_PATH):")
        models = available_models()
        width = max(map(len, models), default=0)  # one column for every name (Patchcore is 9 letters)
        for name, cls in models.items():
            summary = (cls.__doc__ or "").strip().splitlines()[0]
            console.print(f"  otx.models.{name:<{width}} {summary}")
        console.print(f"[bold]tasks[/] (--task): {', '.join(TASKS)}")
    if what in ("all", "backbones"):
        table = Table(title="backbones (--model.init_args.backbone NAME)")
        table.add_column("name", no_wrap=True)
        for column in ("timm model", "ImageNet weights", "default layers (--model.init_args.layers)"):
            table.add_column(column, overflow="fold")  # a narrow terminal wraps names instead of cutting them
        models = available_models()
        for spec in BACKBONES.values():
            table.add_row(spec.name, spec.timm_name, weight_status(spec), _default_layers(spec, models))
        console.print(table)


def _default_layers(spec: Any, models: dict[str, Any]) -> str:
    """Each model's default layers on ``spec``, models with the same layers together."""
    by_layers: dict[str, list[str]] = {}
    for name, cls in models.items():
        if spec.name in cls.layers_by_backbone:
            by_layers.setdefault(", ".join(cls.layers_by_backbone[spec.name]), []).append(name)
    return "\n".join(f"{'/'.join(names)}: {layers}" for layers, names in by_layers.items())


def _make_sample(cfg: Namespace, console: Console) -> None:
    from otx.data.sample import CATEGORIES, make_sample_dataset
    from otx.data.strip import make_strip_dataset

    out_dir = Path(cfg.out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise OTXError(f"'{out_dir}' is a file; pass a folder for the sample data (created if missing)")
    categories = [cfg.categories] if isinstance(cfg.categories, str) else cfg.categories
    requested = list(categories) if categories is not None else list(CATEGORIES)
    if not requested:
        raise OTXError(
            f"--categories is empty, so nothing would be written; name some of {', '.join(CATEGORIES)}, strip_like, "
            "or leave it out for all but strip_like"
        )
    for name in requested:
        if name not in (*CATEGORIES, "strip_like"):
            raise OTXError(f"Unknown sample category '{name}'; choose from {', '.join(CATEGORIES)}, strip_like.")
    squares = [name for name in requested if name != "strip_like"]
    try:
        roots = make_sample_dataset(out_dir, categories=squares, seed=cfg.seed) if squares else []
        if "strip_like" in requested:
            roots.append(make_strip_dataset(out_dir / "strip_like", seed=cfg.seed))
    except ValueError as exc:
        raise OTXError(str(exc)) from exc
    except OSError as exc:
        raise OTXError(f"cannot write the sample data to '{out_dir}' ({exc.strerror}); pass a writable folder") from exc
    for root in roots:
        console.print(f"wrote {escape(str(root))}")


_PARSER_PATTERNS = (
    (re.compile(r"class_path '([\w.]+)': Option '(\w+)' is not accepted"), "{1}: unknown option '{2}'"),
    (re.compile(r"does not accept option '([\w.]+)'"), "unknown key '{1}'"),
    (re.compile(r"Key '([\w.]+)' is not expected"), "unknown key '{1}'"),
    (re.compile(r"No action for key \"?'?([\w.]+)"), "unknown key '{1}'"),
)
# Messages of otx data's parser said as they are (no key to correct).
_DATA_PATTERNS = (
    (
        re.compile(r'expected "data_command" to be one of \{(.*?)\}, but it was not provided'),
        "otx data needs a subcommand: {1} (e.g. otx data make-sample DIR); `otx data --help` lists them",
    ),
    (
        re.compile(r"Option 'data\.make-sample\.out_dir' is required"),
        "otx data make-sample needs the folder to write: otx data make-sample DIR",
    ),
)
# anomalib's --data MVTecAD, OTX 2.x's `data: ../_base_/data.yaml` (before: jsonargparse's line, twice)
_DATA_NOT_A_FILE = re.compile(r"Parser key \"(data|trainer)\": Unable to load config [\'\"]([^\'\"]*)[\'\"]")


_TYPE_WORDS = {
    "NoneType": "null",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a text",
    "list": "a list such as [a,b]",
    "tuple": "a list such as [a,b]",
}
_PARSER_KEY = re.compile(r'Parser key "([\w.\-]+)"')
_GIVEN = re.compile(r"(?:Got value|Given value):\s?(.*?)(?: Given value type:|$)")


def _expected(text: str) -> str:
    """What jsonargparse's message says the key accepts, in words (``null or an integer``)."""
    words: list[str] = []
    for literal in re.findall(r"Literal\[([^\]]*)\]", text):
        words.append("one of " + ", ".join(v.strip(" '\"") for v in literal.split(",")))
    for name in re.findall(r"<class '(\w+)'>", text):
        words.append(_TYPE_WORDS.get(name, name))
    if "list[" in text:
        words.append(_TYPE_WORDS["list"])
    if "tuple[int, int]" in text:
        words.append("a pair of integers such as [256,256] (height, width)")
        # the pair says it better than a list, and its items' "an integer" is not a value of its own
        words = [word for word in words if word not in (_TYPE_WORDS["list"], _TYPE_WORDS["int"])]
    words = list(dict.fromkeys(words))
    return " or ".join(words) if words else "another value"


def _bad_value_line(text: str) -> str | None:
    """``--key expects ... (got 'value')`` from a type error, also one nested in a model's init_args."""
    keys = list(_PARSER_KEY.finditer(text))
    if not keys:
        return None
    key = keys[-1].group(1)
    if len(keys) > 1 and "class_path" in text:
        key = f"{keys[0].group(1)}.init_args.{key}"
    segment = text[keys[-1].end() :]
    given = _GIVEN.search(segment)
    if given is None:
        return None
    if key == "model" and "AnomalyModel" in segment:  # no model class of that name
        return _not_a_model(given.group(1).strip())
    expected = _expected(re.split(r"Given value type:|Got value:|Given value:", segment)[0])
    value = given.group(1).split(" - Expected")[0].strip()  # "True - Expected a <class 'int'>. Got value: True"
    return f"--{key} expects {expected} (got {value!r}); `otx <command> --help` lists the options"


def _not_a_model(given: str) -> str:
    """The model value names no model: from the command line a name, from a recipe its ``model`` section."""
    import ast

    from otx.models import available_models

    names = available_models()
    if nested := re.fullmatch(r"NestedArg\(key='(\w+)', val='(.*)'\)", given):  # --model.class_path X
        if nested.group(1) == "init_args":  # --model.init_args FILE: the settings, not the model
            return (
                f"--model.init_args takes the model's settings as a mapping such as '{{backbone: resnet18}}' (got "
                f"'{nested.group(2)}'); settings in a file go under model: init_args: of a --config file; "
                "`otx train --model.help <Model>` lists them"
            )
        given = nested.group(2)
    try:
        section = ast.literal_eval(given)  # a recipe's section arrives as the repr of a dict
    except Exception:  # noqa: BLE001 - any text that is not a literal (or an unhashable key) stays text
        section = given
    key = "model"
    if isinstance(section, dict):
        unknown = sorted(set(section) - {"class_path", "init_args"})
        if unknown or "class_path" not in section:
            near = close_matches(unknown[0], ["class_path", "init_args"], cutoff=0.6, n=1) if unknown else []
            what = f"unknown key 'model.{unknown[0]}'" if unknown else "the model section has no class_path"
            return what + (f"; did you mean 'model.{near[0]}'?" if near else "; it takes class_path and init_args")
        key, given = "model.class_path", str(section["class_path"])
    choices = [*names, *(f"otx.models.{name}" for name in names)]
    near = close_matches(given, choices, n=1)
    hint = f"did you mean {near[0]}?" if near else "or pass --config recipe/<task>/<model>.yaml (`otx find recipes`)"
    return (
        f"--{key} expects a model: {', '.join(names)}, or a class path such as otx.models.Padim (got {given!r}); {hint}"
    )


def _from_config(line: str, argv: list[str]) -> str:
    """A value the user wrote in a recipe, not on the command line, named as the recipe's key.

    ``--data.batch_size expects ... (got 'sixteen')`` becomes ``data.batch_size in my.yaml expects
    ...`` when a ``--config`` file holds that value there (the last such file); otherwise the line
    stays as it is (the value was typed on the command line).
    """
    match = re.match(r"--([\w.]+) expects .*\(got (['\"])(.*?)\2\)", line)
    if match is None:
        return line
    key, given = match.group(1), match.group(3)
    parts = [part for part in key.split(".") if part != "init_args"]
    configs = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"]
    configs += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
    source = next((path for path in reversed(configs) if _recipe_value(path, parts) == given), None)
    if source is None:
        return line
    rest = line[len(f"--{key} expects ") :]
    rest = re.sub(r"; (`otx [\w<>]+ --help` lists the options|or pass --config .*)$", "", rest)
    return f"{key} in {source} expects {rest}"


def _recipe_value(path: str, parts: list[str]) -> str | None:
    """The text of the value the recipe at ``path`` sets for the key ``parts`` (``init_args`` looked through)."""
    import yaml

    try:
        node: Any = yaml.safe_load(Path(resolve_recipe(path)).read_text())
    except Exception:  # noqa: BLE001 - unreadable: not the file to name
        return None
    for part in parts:
        if isinstance(node, dict) and part not in node and isinstance(node.get("init_args"), dict):
            node = node["init_args"]
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return str(node)


# Other tools' names of otx's options (anomalib's command line, OTX 1.x / 2.x), for "did you mean".
_THEIR_NAMES: dict[str, tuple[str, ...]] = {
    "export_format": ("--format",),
    "export_type": ("--format",),
    "ckpt_path": ("--checkpoint",),
    "load_weights": ("--checkpoint",),
    "input": ("--source",),
    "data_path": ("--source", "--data_root"),
    "train_data_roots": ("--data_root",),
    "val_data_roots": ("--data_root",),
    "test_data_roots": ("--data_root",),
    "engine.device": ("--trainer.accelerator",),
    "engine.work_dir": ("--work_dir",),
    "output": ("--work_dir",),
}


def _did_you_mean(line: str, verb: str, argv: list[str] | None = None) -> str | None:
    """For ``Unrecognized arguments: --opt ...``: one line naming the option and the nearest real ones.

    ``argv``: the command line, for ``otx data``: its subcommand is named only when it was given.
    """
    match = re.match(r"Unrecognized arguments: (--[\w.\-]+)", line)
    if match is None:
        return None
    option = match.group(1)
    known = [f"--{name}" for name in _known_options(verb) if not name.endswith("+")]  # (jsonargparse's list append)
    if verb != "train":  # model and trainer options are refused by the other verbs (_refuse_train_options)
        known = [name for name in known if not (_is_model_option(name) or _is_trainer_option(name))]
    leaf = option.rsplit(".", 1)[-1].lstrip("-")
    same_leaf = [name for name in known if name != option and name.rsplit(".", 1)[-1].lstrip("-") == leaf]
    theirs = [name for name in _THEIR_NAMES.get(option.replace("-", "_").lstrip("_"), ()) if name in known]
    near = (theirs or same_leaf or close_matches(option, known))[:2]  # --devices: --trainer.devices
    hint = f"did you mean {' or '.join(near)}?" if near else "`otx <command> --help` lists the options"
    command = "data make-sample" if verb == "data" and "make-sample" in (argv or []) else verb
    return f"unknown option {option} for otx {command}; {hint}"


_COMMANDS = (*VERBS, "find", "data")
_NO_COMMAND = re.compile(r'expected "command" to be one of \{.*?\}, but it was not provided')
_BAD_COMMAND = re.compile(r"argument command: invalid choice: '([^']*)'")
_NO_VALUE = re.compile(r"argument (--[\w.\-]+): expected one argument")
_EXTRA = re.compile(r"Unrecognized arguments: (.*)")


def _command_line(text: str, verb: str | None) -> str | None:
    """A missing or misspelled command, or an option given without its value, in words; else None."""
    if _NO_COMMAND.search(text):
        return f"no command given: otx COMMAND, one of {', '.join(_COMMANDS)}; `otx --help` says what each does"
    if bad := _BAD_COMMAND.search(text):
        near = close_matches(bad[1], _COMMANDS, cutoff=0.6, n=1)
        guess = f"did you mean '{near[0]}'? " if near else ""
        return f"unknown command '{bad[1]}'; {guess}the commands are {', '.join(_COMMANDS)}"
    where = f"otx {verb} --help" if verb in _COMMANDS else "otx --help"
    if missing := _NO_VALUE.search(text):
        return f"{missing[1]} needs a value after it; `{where}` lists the options"
    extra = _EXTRA.search(text)
    if extra and not extra[1].startswith("-"):  # a value without its option (an unknown option: _did_you_mean)
        return f"unexpected argument(s): {extra[1]} (options are --name value); `{where}` lists the options"
    return None


def _parser_error_line(exc: BaseException, verb: str | None = None) -> str:
    """Condense jsonargparse's multi-line messages to what is wrong and how to fix it."""
    text = " ".join(str(exc).split())
    if line := _command_line(text, verb):
        return line
    if callbacks := re.search(r"Parser key \"trainer\.callbacks\".*Given value: (.*)$", text):
        # (before: "expects null or dict or a list" of a list, and "null or a list" of a dict: either way no entry form)
        return (
            "--trainer.callbacks takes a list of {class_path: ..., init_args: {...}} entries, e.g. "
            "'[{class_path: EarlyStopping, init_args: {monitor: val/image_AUROC, mode: max, patience: 4}}]' "
            f"(got {callbacks[1][:200]})"
        )
    null_args = re.search(
        r"Parser key \"([\w.]+)\".*Problem with given class_path '([\w.]+)': 'NoneType' object has no attribute", text
    )
    if null_args:  # (before: "expects a model ... (got 'otx.models.Padim'); did you mean otx.models.Padim?")
        return (
            f"{null_args[1]}.init_args of {null_args[2]} is null; give the settings as a mapping "
            f"(init_args: {{backbone: efficientnet_lite0}}) or leave init_args out for the model's defaults"
        )
    # with --print_config jsonargparse names the section apart: the key as the other messages give it
    text = re.sub(r"Group '([\w.]+)' does not accept option '([\w.]+)'", r"does not accept option '\1.\2'", text)
    for pattern, template in _DATA_PATTERNS:
        match = pattern.search(text)
        if match:
            return template.format(*([match.group(0)] + list(match.groups())))
    if (named := _DATA_NOT_A_FILE.search(text)) and not Path(named[2]).expanduser().exists():
        if named[1] == "trainer":  # (before: jsonargparse's line twice over, with no fix; a review)
            return (
                f"--trainer takes lightning.Trainer settings as a mapping or a YAML file of them; '{named[2]}' is "
                "neither (no such file): e.g. --trainer.max_epochs 5, or --trainer '{max_epochs: 5}'"
            )
        return (  # a file that is there but not valid YAML keeps jsonargparse's line (it says where)
            f"--data takes its settings as a mapping or a YAML file of them; '{named[2]}' is neither (no such "
            "file): otx names no data classes, its data section is data_root, batch_size, ... (`otx <command> "
            "--help` lists them)"
        )
    for pattern, template in _PARSER_PATTERNS:
        match = pattern.search(text)
        if match:
            what = template.format(*([match.group(0)] + list(match.groups())))
            key = match.groups()[-1]
            theirs = [v for v in VERBS if v != verb and key in _known_options(v)] if verb in VERBS else []
            if theirs and key not in _known_options(verb):  # before: "(misspelled?)" for predict's source
                others = " and otx ".join(theirs)
                return f"{what}: an option of otx {others}, not of otx {verb} (a config for another verb?)"
            near = _near_keys(match, verb)
            if near:
                return f"{what}; did you mean {' or '.join(repr(key) for key in near)}?"
            if match.re is _PARSER_PATTERNS[0][0]:  # a class's argument: its own help lists them
                option, name = match.group(2), match.group(1).rpartition(".")[2]
                if option in _ANOMALIB_PARTS:  # anomalib's model arguments that otx models own as settings
                    return f"{what}: {_ANOMALIB_PARTS[option]}; `otx train --model.help {name}` lists the settings"
                return f"{what} (misspelled?); `otx train --model.help {name}` lists its settings"
            return f"{what} (misspelled?); `otx <command> --help` lists the valid keys"
    return _bad_value_line(text) or text[:400]


# anomalib's model arguments for parts that an otx model holds as settings of its own.
_ANOMALIB_PARTS = {
    "pre_processor": "anomalib's; an otx model's pre-processing is its input_size, input_mode and tile settings",
    "post_processor": "anomalib's; an otx model's post-processing is its image_threshold and pixel_threshold "
    "(fitted on the validation split when not given)",
    "evaluator": "anomalib's; otx test computes the metrics",
    "visualizer": "anomalib's; otx predict writes the overlays",
}


def _near_keys(match: re.Match[str], verb: str | None) -> list[str]:
    """The valid keys nearest to an unknown recipe key (``data.batchsize``: ``data.batch_size``)."""
    import inspect

    if match.re is _PARSER_PATTERNS[0][0]:  # an init argument of a class_path
        try:
            cls = _class_at(match.group(1))
            known = [
                param.name
                for param in inspect.signature(cls).parameters.values()
                if param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
            ]
        except (ImportError, AttributeError, TypeError, ValueError):
            return []
        renamed = getattr(cls, "anomalib_names", {}).get(match.group(2))  # anomalib's name of the setting
        return [renamed] if renamed else close_matches(match.group(2), known)
    if verb not in VERBS:
        return []
    key = match.group(1)
    known = _known_options(verb)
    section = key.rpartition(".")[0]
    if section:  # data.batchsize: among data's keys; dta.val_split: among the sections' keys
        leaf = key.rpartition(".")[2]
        in_section = [name for name in known if name.rpartition(".")[0] == section]
        same_leaf = [name for name in known if name.rpartition(".")[2] == leaf]
        near = close_matches(key, in_section) or same_leaf
        return near[:2]
    return close_matches(key, [name for name in known if "." not in name], cutoff=0.6)


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines) if lines else exc.__class__.__name__
    return text[:600]


STOP_GRACE_S = 20.0  # clean-up time a stop gets before the process ends without it
_WATCHDOG: list[threading.Timer] = []  # armed by a stop (see _stop_without_cleanup)
_REDELIVERED: list[int] = []  # [pending, attempts]: a stop Python swallowed, sent again


def _on_signal(signum: int, frame: Any) -> None:
    """SIGINT / SIGTERM / SIGHUP: say so at once, then unwind (a second signal ends the process at once)."""
    del frame
    if _HANDLER_PID and os.getpid() != _HANDLER_PID[0]:
        # a child forked with this handler: the process otx runs in says it once and unwinds (before:
        # the line once per process, and the telemetry child's traceback). A data-loading worker ends
        # as PyTorch expects of it (its loop takes KeyboardInterrupt and exits 0: any other exit code
        # is "worker exited unexpectedly" in the main process); others (OpenVINO's telemetry) at once.
        data = sys.modules.get("torch.utils.data")
        if data is not None and data.get_worker_info() is not None:
            raise KeyboardInterrupt(signal.Signals(signum).name)
        os._exit(128 + signum)
    name = signal.Signals(signum).name
    if MARKING and not STOPS:  # a finished run is being made the latest: Run.close sends this stop again after
        HELD_STOPS.append(signum)
        return
    with _STOP_LOCK:
        if _HEARD:  # the listener announced this stop while this thread was held inside a library call
            _HEARD.clear()
            raise KeyboardInterrupt(STOPS[0] if STOPS else name)
        if _REDELIVERED and _REDELIVERED[0] and signum == signal.SIGINT:  # our own delivery (see _unraisable)
            _REDELIVERED[0] = 0
            raise KeyboardInterrupt(STOPS[0])
        if STOPS:
            _stop_without_cleanup(signum, "by a second stop, without its clean-up")
        STOPS.append(name)
        _announce_stop(signum)
    raise KeyboardInterrupt(name)


_HINTED: list[bool] = []  # the resume hint was said (the watchdog does not say it again)


def _resume_hint(run: Any = None) -> str | None:
    """How to continue a training the stop ended, where it saved an epoch (before: its files were "not a result").

    ``run``: that run (the watchdog names the run still open); by default the run the stop ended.
    """
    run = run if run is not None else (STOPPED[-1] if STOPPED else None)
    if run is None or run.command != "train" or run.scratch:
        return None
    # loaded by every training; not imported here, where the watchdog's thread would wait on the import lock
    # of a main thread that hangs while it imports
    training = sys.modules.get("otx.training")
    if training is None or training.newest_state(run.path) is None:
        return None
    return f"its saved epochs are kept: continue it with the same command and --resume {run.path}"


def _announce_stop(signum: int) -> None:
    """Say once (from the first process) that a stop arrived, and arm the clean-up's watchdog."""
    name = signal.Signals(signum).name
    watchdog = threading.Timer(STOP_GRACE_S, _stop_without_cleanup, args=(signum,))  # first: the line may fail
    watchdog.daemon = True
    watchdog.start()
    _WATCHDOG.append(watchdog)
    if not secondary():  # once, from the first process (before: once per process of a multi-process run)
        if FINISHED and not OPEN_RUNS:  # the run had finished (before: "latest.json stay as they were", untrue)
            said = f"otx: {name} received after the run finished; {FINISHED[-1]} and latest.json are written\n"
        else:
            said = STOP_LINE.format(signal=name) + "\n"
        try:
            sys.stderr.write(said)
            sys.stderr.flush()
        except (OSError, ValueError):  # a terminal that hung up (EIO; a review): the stop goes on without its line
            pass


LISTENER_WAIT_S = 1.0  # how long the main thread gets to take a stop itself before the listener does
_STOP_LOCK = threading.RLock()  # the main thread's handler and the listener decide who announces a stop
_HEARD: list[str] = []  # a stop the listener announced while the main thread was held (its handler says nothing)
_LISTENER: list[Any] = []  # [reader, writer, the previous wakeup fd] while the listener runs


def _listen(reader: socket.socket) -> None:
    """Hear SIGINT / SIGTERM while the main thread is held inside a library call (the console script only).

    Python runs a signal's handler in the main thread between two bytecodes: a stop that arrived
    while torch set up a distributed run's process group (waiting for a machine that never came up)
    was never seen, for torch's 30-minute timeout, and SIGTERM did not end it either. The signal's
    number reaches this thread through ``signal.set_wakeup_fd`` at once; when the main thread has
    not taken the stop within ``LISTENER_WAIT_S``, this thread announces it and arms the watchdog
    (the process ends ``STOP_GRACE_S`` later unless the clean-up ends it first), and a further stop
    while the main thread is still held ends the process, like the handler's second stop. While
    the processes of a distributed run wait to meet (``otx.distributed.meeting``) the process ends
    then, without the 20 s, with the processes it started: nothing has been computed or written there.
    """
    while True:
        try:
            data = reader.recv(64)
        except OSError:
            return
        if not data:  # the writer was closed: another listener took over
            reader.close()
            return
        stops = [int(b) for b in data if b in STOP_SIGNALS]  # others (a loader's SIGCHLD) are not stops
        if not stops:
            continue
        time.sleep(LISTENER_WAIT_S)
        try:  # stops that came in the meantime
            while more := reader.recv(64, socket.MSG_DONTWAIT):
                stops += [int(b) for b in more if b in STOP_SIGNALS]
        except OSError:
            pass
        with _STOP_LOCK:
            if not _LISTENER or _LISTENER[0] is not reader:  # stopped while this thread slept
                reader.close()
                return
            if STOPS:  # the main thread took it (or is cleaning up after an earlier stop: its watchdog runs)
                if _HEARD:  # a further stop while the main thread is still held
                    _stop_without_cleanup(stops[-1], "by a second stop, without its clean-up")
                continue
            if MARKING or HELD_STOPS:  # held on purpose while a finished run is made the latest (Run.close sends
                continue  # it again after; before: announced here as "stopping ... stay as they were", untrue)
            STOPS.append(signal.Signals(stops[0]).name)
            _HEARD.append(STOPS[0])
            _announce_stop(stops[0])
        if meeting_now():
            end_meeting()  # the processes Lightning started here, which would wait for this one
            _stop_without_cleanup(stops[0], "while the run's processes waited to meet; nothing was computed")
        if len(stops) > 1:  # a second stop already, the main thread still held
            _stop_without_cleanup(stops[-1], "by a second stop, without its clean-up")


def _start_listener() -> None:
    """Start ``_listen`` (main thread only); ``_stop_listener`` puts the previous wakeup fd back."""
    _stop_listener()
    reader, writer = socket.socketpair()
    writer.setblocking(False)  # the C signal handler must never block on it
    try:
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except ValueError:  # not the main thread of the main interpreter
        reader.close()
        writer.close()
        return
    with _STOP_LOCK:
        _LISTENER[:] = [reader, writer, previous]
    threading.Thread(target=_listen, args=(reader,), name="otx-stop-listener", daemon=True).start()
    STOP_LISTENER[:] = [True]
    if not _FORK_HOOK:  # a forked child (a data-loading worker) must not write its signals to this process's
        os.register_at_fork(after_in_child=_forget_listener)
        _FORK_HOOK.append(True)


def _stop_listener() -> None:
    with _STOP_LOCK:
        if not _LISTENER:
            return
        _reader, writer, previous = _LISTENER
        _LISTENER.clear()
        STOP_LISTENER.clear()
    try:
        signal.set_wakeup_fd(previous)
    except ValueError:
        pass
    writer.close()  # the listener reads the end and returns


def _forget_listener() -> None:
    _LISTENER.clear()
    STOP_LISTENER.clear()
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass


_FORK_HOOK: list[bool] = []


def _stop_without_cleanup(signum: int, why: str | None = None) -> None:
    """The clean-up after a stop has not ended in ``STOP_GRACE_S``: say so in each open run's log, then exit.

    Each open run folder gets its ``FAILED`` marker and a terminal its cursor back (a progress bar
    hides it), as the clean-up would have done; a second stop ends the process here too. A stop
    raised at an unlucky instant can leave a lock held (a library's, a logging handler's) and the
    unwinding waits on it for ever. Nothing is lost by exiting: ``latest.json`` and earlier runs
    were never touched, and the epochs a training had saved are whole files (the line says how to
    resume from them, as the clean-up would). The log gets where each thread was, so the hang can
    be found. ``why``: the process ends at once, for that reason (``_listen``).
    """
    name = signal.Signals(signum).name
    for run in list(OPEN_RUNS):  # imported at start: an import here could wait on a lock the hang holds
        try:
            # its files are no result (before: no marker after a second Ctrl-C, a bug bash), unless it is being made
            # the latest (it finished)
            if not run.scratch and not MARKING:
                run.mark_failed()
            with open(run.log_path, "a") as log:
                if why:
                    log.write(f"{run.command} failed: interrupted ({name}) {why}; earlier runs are unchanged\n")
                    continue
                log.write(
                    f"{run.command} failed: interrupted ({name}); the clean-up did not end within {STOP_GRACE_S:g} s, "
                    "so otx stopped without it; earlier runs are unchanged. Where each thread was:\n"
                )
                log.flush()
                faulthandler.dump_traceback(file=log, all_threads=True)
        except OSError:
            pass
    # how to go on from the epochs it saved, as the clean-up would have said (before: not said, a CI run where
    # the clean-up waited on data-loading workers)
    try:  # whatever fails here, the process still ends below
        trainings = [run for run in OPEN_RUNS if run.command == "train"] or STOPPED[-1:]
        if trainings and not (_HINTED or MARKING) and not secondary() and (hint := _resume_hint(trainings[-1])):
            os.write(2, f"{hint}\n".encode())
    except Exception:  # noqa: BLE001 - a half-imported module, a process group being torn down, a closed stderr
        pass
    for fd in (1, 2):  # a progress bar's hidden cursor (rich shows it again when it stops, which this skips)
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                os.write(fd, b"\x1b[?25h")
    os._exit(128 + signum)  # as an interrupted command that cleaned up (130 for SIGINT, 143 for SIGTERM)


def _unraisable(unraisable: Any) -> None:
    """A stop raised inside a finaliser or an at-fork callback is swallowed by Python: send it again.

    Python prints such exceptions ("Exception ignored in ...") and carries on, so the stop would be
    lost behind a traceback. It is delivered once more, from a timer thread so that it arrives after
    this hook has returned, and then unwinds from ordinary code.
    """
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and STOPS:
        if not _REDELIVERED:
            _REDELIVERED.extend([0, 0])
        _REDELIVERED[0], _REDELIVERED[1] = 1, _REDELIVERED[1] + 1
        if _REDELIVERED[1] > 50:  # swallowed every time: stop without unwinding
            os._exit(stop_exit_code())
        threading.Timer(0.05, _redeliver).start()
        return
    if STOPS:  # the stop broke a library's hook half-way (filelock's at-fork state: a KeyError next): to the log
        logging.getLogger("otx").info(
            "after the stop, an exception in %r was ignored: %s: %s",
            unraisable.object,
            type(unraisable.exc_value).__name__,
            unraisable.exc_value,
            extra={"file_only": True},
        )
        return
    _DEFAULT_UNRAISABLE(unraisable)


_DEFAULT_UNRAISABLE = sys.unraisablehook


def _redeliver() -> None:
    """Send the swallowed stop again (``_unraisable``), unless the main thread has taken one meanwhile.

    Before, the timer sent it whatever happened since: after a stop taken by the main thread, a
    "SIGINT received after the command ended" line followed a SIGTERM no one had doubled (a bug bash).
    """
    if _REDELIVERED and _REDELIVERED[0] and not _ENDED.is_set():
        _thread.interrupt_main(signal.SIGINT)


def _stop_taken() -> None:
    """The main thread has taken the stop: a redelivery still pending is not needed."""
    if _REDELIVERED:
        _REDELIVERED[0] = 0


def _disarm_watchdog() -> None:
    while _WATCHDOG:
        _WATCHDOG.pop().cancel()


def _install_signal_handlers(listen: bool = False) -> None:
    """Install the stop handling; ``listen``: also ``_listen`` (the console script, whose process otx is)."""
    _disarm_watchdog()
    STOPS.clear()
    FINISHED.clear()  # this command's runs only
    STOPPED.clear()
    _REDELIVERED.clear()
    _HEARD.clear()
    _HINTED.clear()
    if threading.current_thread() is threading.main_thread():
        _HANDLER_PID[:] = [os.getpid()]
        for sig in _stop_signals():
            signal.signal(sig, _on_signal)
        sys.unraisablehook = _unraisable
        if not _CHILD_HOOK:
            import multiprocessing.util

            multiprocessing.util.register_after_fork(_CHILD_STOPS, _system_stops_in_child)
            _CHILD_HOOK.append(True)
        if listen:
            if hasattr(signal, "pthread_sigmask"):  # a process Lightning started while its parent held them
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # (distributed.meeting)
            _start_listener()  # after the unblocking: the listener's thread is the one that must take stops


def _stop_signals() -> list[int]:
    """The stops otx takes: SIGTERM, and SIGINT and SIGHUP where this process does not ignore them.

    SIGHUP (a dropped terminal or SSH session) is a stop like the others since 2026-12-06: before,
    it ended the process with no line, no ``FAILED`` marker and orphaned data-loading workers (a
    bug bash). Under ``nohup`` (SIGHUP ignored) it stays ignored, and a background job of a script
    (SIGINT ignored) is not stopped by the script's Ctrl-C, as the shell intends.
    """
    return sorted(sig for sig in STOP_SIGNALS if sig == signal.SIGTERM or signal.getsignal(sig) is not signal.SIG_IGN)


_HANDLER_PID: list[int] = []  # the process whose stop _on_signal reports (forked children inherit the handler)
_CHILD_HOOK: list[bool] = []


class _ChildStops:
    """The key of ``_system_stops_in_child`` in multiprocessing's after-fork registry (it keeps a weak reference)."""


_CHILD_STOPS = _ChildStops()


def _system_stops_in_child(_: object) -> None:
    """In a multiprocessing child other than a data-loading worker, SIGINT and SIGTERM end it as the OS does.

    A Python handler runs only between bytecodes: OpenVINO's telemetry child, forked from a thread
    while another held the dynamic loader's lock, waited in ``getaddrinfo`` for ever, and the
    ``terminate()`` (SIGTERM) its parent sent after 3 s never reached ``_on_signal``; the orphan
    held the terminal's pipe, so ``otx export | tail`` never returned (bug bash). Data-loading
    workers keep ``_on_signal``: PyTorch expects them to take a stop as KeyboardInterrupt.
    """
    import multiprocessing

    target = getattr(multiprocessing.current_process(), "_target", None)
    if str(getattr(target, "__module__", "")).startswith("torch.utils.data"):
        return
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is _on_signal:  # (one ignored stays ignored)
            signal.signal(sig, signal.SIG_DFL)


class _CallerState:
    """What ``_main`` changes in the process, saved for ``main(argv)`` called from Python to put back.

    Signal handlers, warnings filters, library log levels, otx's stderr handler and
    ``OPENCV_LOG_LEVEL``: without this, the CLI's Ctrl+C handler ended the caller's process 20 s
    after a later Ctrl+C, and the caller's own warnings were silenced.
    """

    def __init__(self) -> None:
        main_thread = threading.current_thread() is threading.main_thread()
        self.handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} if main_thread else {}
        self.unraisablehook = sys.unraisablehook
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        self.levels = {name: logging.getLogger(name).level for name in _QUIETED}
        self.otx_handlers = list(logging.getLogger("otx").handlers)
        self.opencv_log_level = os.environ.get("OPENCV_LOG_LEVEL")

    def restore(self) -> None:
        """Put back what was saved; forget a stop that arrived during the call."""
        _disarm_watchdog()
        STOPS.clear()
        _REDELIVERED.clear()
        _HEARD.clear()
        for sig, handler in self.handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
        sys.unraisablehook = self.unraisablehook
        self.warnings.__exit__(None, None, None)
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
        logger = logging.getLogger("otx")
        for handler in [h for h in logger.handlers if h not in self.otx_handlers]:
            logger.removeHandler(handler)
        if self.opencv_log_level is None:
            os.environ.pop("OPENCV_LOG_LEVEL", None)
        else:
            os.environ["OPENCV_LOG_LEVEL"] = self.opencv_log_level


def main(argv: list[str | os.PathLike[str]] | None = None) -> int:
    """Entry point of the ``otx`` console script; returns the exit code.

    ``argv`` items may be paths (``pathlib.Path``) as well as strings (before: a Path was "a bug in otx").

    Called without ``argv`` (the console script, ``python -m otx.cli``) it is the whole process: after
    a stop, the process ends within ``STOP_GRACE_S`` even if the clean-up or the interpreter's exit
    hangs. Called with ``argv`` from Python, the caller's process is left running and as it was:
    its signal handlers, warnings filters and log levels are put back on return.
    """
    caller = None if argv is None else _CallerState()
    command_line = COMMAND_LINE.set(True)  # messages name the command line's options
    try:
        given = sys.argv[1:] if argv is None else argv
        try:
            args = [os.fspath(a) if isinstance(a, os.PathLike) else a for a in given]
            code = _main(args, whole_process=caller is None)
            if caller is None:
                _ended(code)
        except KeyboardInterrupt:  # a stop as _main returned, or while it said an error (before: a traceback, exit 1)
            _stop_taken()
            code = 0 if FINISHED and not OPEN_RUNS else stop_exit_code()
            if caller is None:
                _ended(code)
        if caller is None:
            _exit_now(code)
        return code
    finally:
        COMMAND_LINE.reset(command_line)
        if caller is not None:
            caller.restore()


def _exit_now(code: int) -> None:
    """End the console script's process with ``code`` once the exit hooks have run, without the teardown after them.

    Python's teardown after the exit hooks (collecting torch's, OpenVINO's and Lightning's modules)
    took 1.7-2.9 s after the last line of every command (a bug bash; measured: 1.9 s against 0.2 s
    for `otx predict` of one image). The exit hooks run as before (logging's flush, multiprocessing's
    children and temporary folders, ``weakref.finalize``), then stdout and stderr are flushed. Not
    when a thread that Python would wait for is still running: then the ordinary exit.
    """
    import atexit

    main = threading.main_thread()
    if threading.current_thread() is not main or any(
        t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()
    ):
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)


def stop_exit_code() -> int:
    """The exit code of a stopped command: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + (signal.Signals[STOPS[0]].value if STOPS and STOPS[0] in signal.Signals.__members__ else 2)


def _ended(code: int) -> None:
    """The command has ended with ``code`` (the console script): a stop now ends the process at once, with it.

    The interpreter's exit still takes a second or so (its threads, libraries' exit hooks); a stop
    in it had ended the process with 130 and no word, after a run that was written. While Python
    code runs (the libraries' exit hooks too), the stop is said and the process ends with ``code``
    at once; after the last exit hook (where Python puts the default handlers back, and torch and
    OpenVINO tear down) stops are ignored, so the process still ends with ``code``
    (``_ignore_stops_once_ended``; a teardown stuck there then needs SIGKILL).
    """
    if threading.current_thread() is not threading.main_thread():
        _stop_listener()
        return

    quiet = secondary()  # a process of rank > 0: the first one reports (its stop line is out already)

    def at_once(signum: int, frame: Any) -> None:
        del frame
        sys.stdout.flush()
        if not quiet:
            name = signal.Signals(signum).name
            sys.stderr.write(f"otx: {name} received after the command ended (exit code {code})\n")
        sys.stderr.flush()
        os._exit(code)

    for sig in STOP_SIGNALS:  # first: a stop from here on cannot raise (before: during _stop_listener below,
        if signal.getsignal(sig) is not signal.SIG_IGN:  # a traceback and exit 1 after a finished run, a bug bash)
            signal.signal(sig, at_once)
    _ENDED.set()
    _stop_listener()


_ENDED = threading.Event()  # set by `_ended`: the console script's command has ended


def _ignore_stops_once_ended() -> None:
    """After the other exit hooks, ignore SIGINT and SIGTERM for the rest of the exit (``_ended`` only).

    Registered when this module is imported, before torch, Lightning or OpenVINO register theirs, so
    it runs after them (last in, first out): while they run (joining processes, flushing logs) a stop
    still ends the process at once with the command's code (``_ended``'s handler); from here on Python
    puts the default handlers back and tears down, and it keeps ignored signals ignored.
    """
    if _ENDED.is_set() and threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


atexit.register(_ignore_stops_once_ended)


def _is_model_option(arg: str) -> bool:
    """``--model``, ``--model.*`` or ``--model=...``: a setting of the model that otx train builds."""
    return arg == "--model" or arg.startswith(("--model.", "--model="))


def _is_trainer_option(arg: str) -> bool:
    """``--trainer``, ``--trainer.*``, ``--trainer=...``, ``--max_epochs`` or ``--resume``: otx train's alone."""
    return arg == "--trainer" or arg.startswith(("--trainer.", "--trainer=", "--max_epochs", "--resume"))


def _refuse_train_options(argv: list[str]) -> None:
    """One line for training options given to a verb that runs a trained model (they would be ignored).

    The model and its settings (thresholds, input size, input mode) come from the checkpoint or the
    exported model; a recipe given with ``--config`` is only compared with it (``resolve_model``), and
    its trainer section is read by otx train alone.
    """
    verb = next((arg for arg in argv if not arg.startswith("-")), None)
    if verb not in VERBS or verb == "train":
        return
    given = [arg.split("=")[0] for arg in argv if _is_model_option(arg)]
    if given:
        models = verb == "benchmark" and given[0] == "--model"
        hint = "; to time exported models: --models a.xml b.xml" if models else ""
        raise OTXError(
            f"{given[0]} has no effect on otx {verb}: the model and its settings (thresholds, input size and mode) "
            f"come from the checkpoint or exported model; give model settings to otx train{hint}"
        )
    split = _given(argv, "--data.val_split", "--data.seed")
    if verb in ("test", "predict", "export", "benchmark") and _option_values(argv, "--seed"):
        # (before: accepted and passed over; these verbs draw nothing at random, a review)
        raise OTXError(
            f"--seed has no effect on otx {verb}: it draws nothing at random (the validation split follows the "
            "model's recorded one, or --data.seed); --seed seeds otx train and otx optimize's calibration images"
        )
    batches = _given(argv, "--data.batch_size", "--data.num_workers")
    if verb == "benchmark" and batches:  # (before: passed over; a review)
        raise OTXError(
            f"{batches[0]} has no effect on otx benchmark: it times the model on one image per request (latency and "
            "throughput), the images read before timing starts"
        )
    roots = _given(argv, "--data_root", "--data.data_root")
    if verb == "predict" and roots and _option_values(argv, "--source"):  # before: passed over, even a missing one
        raise OTXError(
            f"{roots[0]} has no effect on otx predict --source: the images come from --source; give one of them "
            "(without --source, the data root's test/ images are predicted)"
        )
    if verb == "predict" and split and _option_values(argv, "--source"):  # before: passed over without a word
        raise OTXError(
            f"{split[0]} has no effect on otx predict --source: the validation split matters only for predicting a "
            "data root's test/ images (without --source)"
        )
    given = [arg.split("=")[0] for arg in argv if _is_trainer_option(arg) and arg != "--trainer"]
    if given or "--trainer" in argv:
        where = " (it takes --devices and --num_nodes)" if verb in ("test", "predict") else ""
        raise OTXError(
            f"{(given or ['--trainer'])[0]} has no effect on otx {verb}{where}: trainer settings apply to otx train"
        )


def _given(argv: list[str], *options: str) -> list[str]:
    """Which of ``options`` ``argv`` gives (as ``--option VALUE`` or ``--option=VALUE``), in its order."""
    return [arg.split("=")[0] for arg in argv if arg.split("=")[0] in options]


def _option_values(argv: list[str], option: str) -> list[tuple[int, str]]:
    """``(position, value)`` of each ``option VALUE`` / ``option=VALUE`` in ``argv``."""
    found = []
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            found.append((i, argv[i + 1]))
        elif arg.startswith(option + "="):
            found.append((i, arg.split("=", 1)[1]))
    return found


def _without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without any ``option VALUE`` / ``option=VALUE`` (a shortcut about to be folded)."""
    found = _option_values(argv, option)
    drop = {i for i, _ in found} | {i + 1 for i, _ in found if argv[i] == option}
    return [arg for i, arg in enumerate(argv) if i not in drop]


def _epochs(text: str) -> int | None:
    """A whole number of epochs of at least 1 as Python reads it (``40``, ``1_000``); None for anything else."""
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if value >= 1 else None


def _fold_max_epochs(argv: list[str]) -> list[str]:
    """``--max_epochs N`` as ``--trainer.max_epochs N`` after every other option.

    So the shortcut wins over the recipe's ``trainer.max_epochs`` wherever it stands, and
    ``--print_config`` and the run's config.yaml show the epochs the run will train. Given with a
    different ``--trainer.max_epochs``: one line (before: the shortcut won silently). A value that is
    not a whole number of at least 1 stays where it is, for the parser's or Engine's message.
    """
    shortcut = _option_values(argv, "--max_epochs")
    if not argv or argv[0] != "train":
        return argv
    if not shortcut:  # a --trainer.max_epochs given here beats a config file's top-level max_epochs as well
        explicit = _option_values(argv, "--trainer.max_epochs")
        epochs = _epochs(explicit[-1][1]) if explicit else None
        return argv + ["--max_epochs", str(epochs)] if epochs else argv
    value = shortcut[-1][1]  # a repeated option: the last one counts, as for every other option
    if not (epochs := _epochs(value)):
        return argv
    value = str(epochs)  # (1_000 as 1000: compared as a number, before as text, and another value won silently)
    explicit = _option_values(argv, "--trainer.max_epochs")
    if explicit and _epochs(explicit[-1][1]) != epochs:
        raise OTXError(
            f"--max_epochs {value} and --trainer.max_epochs {explicit[-1][1]} disagree: give the number of epochs once"
        )
    # --max_epochs too: _run_verb lets a top-level max_epochs (from a --config file) win over the trainer section
    return _without_option(argv, "--max_epochs") + ["--trainer.max_epochs", value, "--max_epochs", value]


def _configs_first(argv: list[str]) -> list[str]:
    """Every ``--config FILE`` right after the verb, in its order, so that the command line beats the files.

    The parser applies a config file where it stands: an option before it was overridden by the
    file without a word (``--work_dir X --config run/config.yaml`` wrote into the file's work dir).
    """
    if not argv or argv[0] not in VERBS:
        return argv
    found = _option_values(argv, "--config")
    if not found:
        return argv
    configs = [arg for i, value in found for arg in (["--config", value] if argv[i] == "--config" else [argv[i]])]
    return [argv[0], *configs, *_without_option(argv[1:], "--config")]


def _export_choice_hint(line: str) -> str:
    """Where otx has what another tool's export choice asks for (OTX's INT8 export, its exportable code)."""
    if line.startswith("--precision expects one of") and "'INT8'" in line:
        return line.replace("; `otx", "; INT8 comes from otx optimize (of the export or the checkpoint); `otx", 1)
    if line.startswith("--format expects one of") and "EXPORTABLE_CODE" in line:
        demo = "the demo package (OTX's exportable code) is --export_demo_package true"
        return line.replace("; `otx", f"; {demo}; `otx", 1)
    return line


def _fold_choice_case(argv: list[str]) -> list[str]:
    """Choices in any letter case, as the ``Engine`` takes them.

    ``otx export --format onnx`` as ``--format ONNX`` (and ``--precision fp16``), ``--task
    SEGMENTATION`` (OTX's spelling) as ``--task segmentation``.
    """
    if not argv or argv[0] not in VERBS:
        return argv
    options: dict[str, Callable[[str], str]] = {"--task": str.lower}
    if argv[0] == "export":
        options.update({"--format": str.upper, "--precision": str.upper})
    folded = list(argv)
    for i, arg in enumerate(folded):
        for option, fold in options.items():
            if arg == option and i + 1 < len(folded):
                folded[i + 1] = fold(folded[i + 1])
            elif arg.startswith(f"{option}="):
                folded[i] = f"{option}={fold(arg.partition('=')[2])}"
    return folded


def _fold_data_root(argv: list[str]) -> list[str]:
    """``--data_root DIR`` as ``--data.data_root DIR`` after every other option, as ``--max_epochs`` is folded.

    So ``--print_config`` shows the folder the run will read (before: ``data.data_root: null``); the
    shortcut still wins over a recipe's ``data.data_root`` wherever it stands, and a different
    ``--data.data_root`` on the same command line is one line.
    """
    shortcut = _option_values(argv, "--data_root")
    explicit = _option_values(argv, "--data.data_root")
    if not argv or argv[0] not in VERBS:
        return argv
    if not shortcut and explicit and explicit[-1][1]:  # beats a config file's top-level data_root as well
        return argv + ["--data_root", explicit[-1][1]]
    if shortcut and not shortcut[-1][1].strip():  # (an unset shell variable: the training data was taken silently)
        raise OTXError("--data_root is empty; pass a data folder (MVTec AD layout), or leave the option out")
    if not shortcut:
        return argv
    value = shortcut[-1][1]
    if explicit and os.path.abspath(os.path.expanduser(explicit[-1][1])) != os.path.abspath(os.path.expanduser(value)):
        raise OTXError(
            f"--data_root {value} and --data.data_root {explicit[-1][1]} disagree: give the data folder once"
        )
    # --data_root too: _run_verb copies a top-level data_root (from a --config file) over the data section
    return _without_option(argv, "--data_root") + ["--data_root", value, "--data.data_root", value]


def _run_checkpoint(argv: list[str]) -> str | None:
    """The ``model.ckpt`` beside the last ``--config`` when that file is a training run's ``config.yaml``.

    ``otx test --config <run>/config.yaml`` tests that run's model (before: the work dir's latest
    training, another model when a later run had trained one, with a "recipe's model" warning).
    """
    found = _option_values(argv, "--config")
    if not found:
        return None
    from otx.checkpoint import CHECKPOINT_NAME

    path = Path(found[-1][1]).expanduser()
    beside = path.parent / CHECKPOINT_NAME
    return str(beside) if path.name == "config.yaml" and beside.is_file() else None


def _model_swap_note(argv: list[str], cfg: Namespace) -> str | None:
    """A warning when ``--model`` names another class than the ``--config`` file's model, whose settings it keeps.

    jsonargparse carries the file's ``init_args`` over to the new class where it takes them (STFPM's
    ``input_size [128, 128]`` and ``score_top_share`` on a Padim), and the file's trainer section stays.
    """
    import inspect
    import json

    import yaml

    if cfg.get("model") is None or not _option_values(argv, "--model") + _option_values(argv, "--model.class_path"):
        return None
    source, theirs = None, None
    for _, path in reversed(_option_values(argv, "--config")):
        try:
            model = (yaml.safe_load(Path(resolve_recipe(path)).read_text()) or {}).get("model")
        except Exception:  # noqa: BLE001 - the parser read it; nothing to compare with here
            continue
        if isinstance(model, dict) and model.get("class_path"):
            source, theirs = path, model
            break
    ours = cfg.model.class_path
    if source is None or str(theirs["class_path"]).rpartition(".")[2] == ours.rpartition(".")[2]:
        return None
    name = ours.rpartition(".")[2]
    takes = inspect.signature(_class_at(ours)).parameters
    defaults = {k: p.default for k, p in takes.items() if p.default is not inspect.Parameter.empty}
    # a setting given on the command line that the new class does not take: jsonargparse dropped it without a
    # word when it came before --model (and refuses it after): refused here either way
    prefix = "--model.init_args."
    for arg in argv:
        key = arg[len(prefix) :].split("=", 1)[0] if arg.startswith(prefix) else None
        if key and key.split(".")[0] not in takes:
            raise OTXConfigError(
                f"{prefix}{key} is not a setting of {name}, which --model puts in place of the "
                f"{str(theirs['class_path']).rpartition('.')[2]} of {source}: drop it (otx train --model.help {name} "
                "lists its settings)"
            )
    given = cfg.model.init_args.as_dict() if isinstance(cfg.model.init_args, Namespace) else {}
    kept = [
        f"{key} {json.dumps(value, default=str)}"
        for key, value in (theirs.get("init_args") or {}).items()
        if key in given and key in defaults and _plain(given[key]) == _plain(value) != _plain(defaults[key])
    ]
    task = cfg.get("task") or theirs.get("task") or "segmentation"
    own = f"recipe/anomaly_{task}/{name.lower()}.yaml"
    advice = f"pass --config {own} for {name}'s own" if own in list_recipes() else f"set {name}'s settings yourself"
    return (
        f"--model {name} replaces the {str(theirs['class_path']).rpartition('.')[2]} of {source}, and keeps "
        + (f"its settings {', '.join(kept)} and " if kept else "")
        + f"its trainer section; {advice}"
    )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _asks_print_config(argv: list[str]) -> bool:
    return any(arg == "--print_config" or arg.startswith("--print_config=") for arg in argv)


def _print_config_flags(argv: list[str]) -> set[str]:
    """The flags of ``--print_config=...``: ``skip_null`` leaves out unset settings; others are refused.

    Before, any value was taken and passed over (``--print_config=flags``, ``=skip_default``: the
    whole configuration, as if it meant something).
    """
    flags = {
        flag.strip()
        for arg in argv
        if arg.startswith("--print_config=")
        for flag in arg.split("=", 1)[1].split(",")
        if flag.strip()
    }
    if unknown := sorted(flags - {"skip_null"}):
        raise OTXConfigError(
            f"--print_config takes no value, or skip_null to leave out unset settings (got {', '.join(unknown)})"
        )
    return flags


def _without_nulls(value: Any) -> Any:
    """``value`` with the unset (None) settings of its mappings left out, for ``--print_config=skip_null``."""
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):  # a callback entry's init_args
        return [_without_nulls(item) for item in value]
    return value


def _evaluation_config(cfg: Namespace, parser: ArgumentParser, flags: set[str], verb: str) -> str:
    """``--print_config`` of test, predict, export, optimize and benchmark: the settings they use.

    The model, its settings (thresholds, input size and mode) and the epochs come from the checkpoint
    or exported model; a recipe's ``model`` and ``trainer`` sections are read by otx train alone.
    On the data the model was trained on, the verbs that split it use the model's validation split,
    whatever ``data.val_split`` and ``data.seed`` say (before: printed as if they applied; a bug bash).
    """
    import yaml

    resolved = yaml.safe_load(parser.dump(cfg, skip_none=False, format="parser_mode"))
    for key in ("model", "trainer", "max_epochs", "resume"):
        resolved.pop(key, None)
    checkpoint = resolved.get("checkpoint") or "the latest run in work_dir"
    head = (
        f"# the model and its settings (thresholds, input size and mode) come from {checkpoint}; a recipe's\n"
        "# model and trainer sections are used by otx train only, so they are not shown\n"
    )
    if not resolved.get("data_root") and not (resolved.get("data") or {}).get("data_root"):
        head += "# no data_root: the data the model was trained on\n"
    if verb in ("test", "predict", "export", "optimize"):
        head += (
            "# data.val_split and data.seed: on the data the model was trained on, its own validation split (the\n"
            "# images it was calibrated on) is used instead, so that they stay out of the test split\n"
        )
    return head + yaml.safe_dump(_without_nulls(resolved) if "skip_null" in flags else resolved, sort_keys=False)


def _train_config(cfg: Namespace, parser: ArgumentParser, flags: set[str]) -> str:
    """``otx train --print_config``: each setting once, as the run's config.yaml writes it.

    The shortcuts ``data_root`` and ``max_epochs`` are shown in their sections (``data.data_root``,
    ``trainer.max_epochs``), where a top-level one from a ``--config`` file also wins when the run
    starts (before: both were printed, and an edited ``data.data_root`` lost to the old ``data_root``
    left beside it, with a warning only; a bug bash).
    """
    import yaml

    resolved = yaml.safe_load(parser.dump(cfg, skip_none=False, format="parser_mode"))
    data_root, max_epochs = resolved.pop("data_root", None), resolved.pop("max_epochs", None)
    if data_root and isinstance(resolved.get("data"), dict):
        resolved["data"]["data_root"] = data_root
    if max_epochs is not None and isinstance(resolved.get("trainer"), dict):
        resolved["trainer"]["max_epochs"] = max_epochs
    return yaml.safe_dump(_without_nulls(resolved) if "skip_null" in flags else resolved, sort_keys=False)


def _main(argv: list[str], whole_process: bool = False) -> int:
    if whole_process:  # a pipe whose reader stops early (| head -1) no longer stops the command
        pipe_safe_stdout()
    console = make_console(quiet=secondary())  # a process of rank > 0 in a distributed run: rank 0 reports
    errors = make_console(stderr=True)
    _quiet_libraries()
    _warnings_to_stderr()
    _install_signal_handlers(listen=whole_process)
    try:
        _refuse_train_options(argv)
        if len(argv) > 1 and argv[0] == "find" and not argv[1].startswith("-"):
            words = [arg for arg in argv[1:] if not arg.startswith("-")]
            if len(words) > 1:  # before: "unexpected argument(s): models (options are --name value)"
                got = " ".join(words)
                line = f"otx find lists one of all, recipes, models, backbones (got {got}); `otx find` lists all"
                errors.print(f"[bold red]error[/]: {escape(line)}", highlight=False, soft_wrap=True)
                return 2  # as for other bad arguments
            argv = ["find", "--what", *argv[1:]]  # `otx find recipes` as `otx find --what recipes`
        parser = build_parser(tuple(argv[:1]))  # only the verb that runs needs its options
        printing = bool(argv) and argv[0] in VERBS and _asks_print_config(argv)
        if printing:  # the evaluation verbs print what they will use, not the recipe's model and trainer
            try:
                print_flags = _print_config_flags(argv)
            except OTXConfigError as exc:  # a bad argument, as the parser's (exit 2)
                errors.print(f"[bold red]error[/]: {escape(_one_line(exc))}", highlight=False, soft_wrap=True)
                return 2
            argv = [arg for arg in argv if not (arg == "--print_config" or arg.startswith("--print_config="))]
        argv = _configs_first(_fold_choice_case(argv))
        cfg = parser.parse_args(_fold_data_root(_fold_max_epochs(_resolve_config_args(argv))))
        command = cfg.command
        if command in VERBS and command != "train" and cfg[command].checkpoint is None:
            cfg[command].checkpoint = _run_checkpoint(argv)
        if command == "train" and not printing and (swapped := _model_swap_note(argv, cfg.train)):
            logging.getLogger("otx").warning(swapped)
        if printing:
            own = parser._subcommands_action._name_parser_map[command]
            text = (
                _train_config(cfg.train, own, print_flags)
                if command == "train"
                else _evaluation_config(cfg[command], own, print_flags, command)
            )
            console.print(text, markup=False, emoji=False, highlight=False, soft_wrap=True, end="")
            return 0
        if command in VERBS:
            own = parser._subcommands_action._name_parser_map[command]
            return _run_verb(command, cfg[command], own, console, argv)
        elif command == "find":
            _find(cfg.find.what, console)
        elif command == "data":
            _make_sample(cfg.data["make-sample"], console)
    except OTXError as exc:
        errors.print(f"[bold red]error[/]: {escape(_one_line(exc))}", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        _stop_taken()
        if FINISHED and not OPEN_RUNS:  # the stop came after the run was written (its line said so): done
            return 0
        with contextlib.suppress(OSError):  # a terminal that hung up (SIGHUP): EIO, the exit code still says it
            if not STOPS:
                errors.print("interrupted; earlier runs and latest.json stay as they were")
            if (hint := _resume_hint()) and not secondary():
                errors.print(hint, markup=False, highlight=False, soft_wrap=True)
                _HINTED.append(True)
        return stop_exit_code()
    except Exception as exc:  # jsonargparse reports bad arguments as ArgumentError / ValueError
        cause = exc
        while cause.__cause__ is not None and not isinstance(cause, OTXError):
            cause = cause.__cause__
        if isinstance(cause, OTXError):
            errors.print(f"[bold red]error[/]: {escape(_one_line(cause))}", highlight=False, soft_wrap=True)
            return 1
        if exc.__class__.__name__ in ("ArgumentError", "ParserError", "NSKeyError"):
            line = _parser_error_line(exc, argv[0] if argv else None)
            if argv and argv[0] in _COMMANDS and (guess := _did_you_mean(line, argv[0], argv)):
                line = guess
            if argv and argv[0] in VERBS and (not_recipe := _not_a_recipe(argv, argv[0])):
                line = not_recipe
            if argv and argv[0] in VERBS and (other := _other_runs_config(argv, argv[0])):
                line = other
            line = _from_config(line, argv or [])
            if argv and argv[0] == "export":
                line = _export_choice_hint(line)
            if argv and argv[0] in (*VERBS, "find", "data"):
                line = line.replace("otx <command>", f"otx {argv[0]}")
            errors.print(f"[bold red]error[/]: {escape(line)}", highlight=False, soft_wrap=True)
            return 2
        if STOPS and not env_flag("OTX_DEBUG"):
            # a stop that landed while modules were still loading (numpy half-imported, a RecursionError):
            # the stop's own line is out already; nothing had been written yet
            return stop_exit_code()
        if env_flag("OTX_DEBUG"):
            raise
        # outside a verb's run (a verb's own says these as OTXError): memory, disk, the environment
        if (said := shared_memory(exc) or out_of_memory(exc) or out_of_space(exc) or broken_install(exc)) is not None:
            errors.print(f"[bold red]error[/]: {escape(_one_line(said))}", highlight=False, soft_wrap=True)
            return 1
        log_file = getattr(exc, "otx_log", None)  # the failed run's log, where a run folder was made
        where = f"{log_file} has the traceback" if log_file else "no run folder was made"
        errors.print(
            f"[bold red]error[/]: internal error ({type(exc).__name__}: {escape(_one_line(exc)[:300])}); a bug in otx: "
            f"{escape(where)} (OTX_DEBUG=1 shows it here)",
            highlight=False,
            soft_wrap=True,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

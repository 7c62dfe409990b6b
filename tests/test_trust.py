"""Results a quality line can trust: no silent failure, no silent drift (one test per item, CLI where it applies)."""

from __future__ import annotations

import errno
import html
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import openvino as ov
import pytest
import tifffile
import torch
import yaml
from PIL import Image

from helpers import demo_package, start_otx_group
from otx.cli import main
from otx.data import AnomalyDataModule, index_mvtec
from otx.data.datamodule import AnomalyDataset
from otx.data.io import read_mask
from otx.deploy import OpenVINOInferencer
from otx.deploy.calibrate import best_threshold, postprocessor_inputs, replace_postprocessor
from otx.engine import Engine
from otx.postprocess import normalize
from otx.workdir import training_data_root

pytestmark = pytest.mark.e2e  # end-to-end: trains, exports or runs the CLI (`pytest -m 'not e2e'` skips)

RECIPE = "recipe/anomaly_segmentation/padim.yaml"


def corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:120])  # header readable, pixels not


def latest(work_dir: Path) -> dict:
    return json.loads((work_dir / "latest.json").read_text())


# --- 1. unreadable input gets no normal/anomalous label -------------------------------------------------


def test_predict_labels_an_unreadable_image_error_and_exits_1(
    trained_padim: dict, dataset_copy, tmp_path: Path, capsys
) -> None:
    folder = dataset_copy() / "test" / "good"
    corrupt(folder / "001.png")
    work_dir = tmp_path / "ws"
    args = ["predict", "--checkpoint", str(trained_padim["checkpoint"]), "--source", str(folder)]
    (tmp_path / "empty.png").write_bytes(b"")  # 0 bytes (before: an internal error, nothing written)
    empty = ["predict", "--checkpoint", str(trained_padim["checkpoint"]), "--source", str(tmp_path / "empty.png")]
    assert main([*empty, "--work_dir", str(tmp_path / "ws0")]) == 1
    err = capsys.readouterr().err
    assert "the file is empty, 0 bytes" in err and "internal error" not in err
    assert main([*args, "--work_dir", str(work_dir), "--visualize", "false"]) == 1
    err = capsys.readouterr().err
    assert "1 image(s) could not be read" in err and "Traceback" not in err
    run = work_dir / latest(work_dir)["predict"]  # the others were written: the run counts
    records = {Path(r["image"]).name: r for r in json.loads((run / "predictions/predictions.json").read_text())}
    assert len(records) == 12
    assert records["001.png"]["label"] == "error" and records["001.png"]["score"] is None
    assert "001.png" in records["001.png"]["error"]
    assert {r["label"] for name, r in records.items() if name != "001.png"} <= {"normal", "anomalous"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["counts"]["error"] == 1 and metrics["counts"]["images"] == 12
    assert metrics["counts"]["normal"] + metrics["counts"]["anomalous"] == 11
    assert metrics["errors"][0]["image"].endswith("001.png") and metrics["timing_s"]["predict_s"] > 0
    # The option for pipelines that want exit 0.
    assert main([*args, "--work_dir", str(work_dir), "--visualize", "false", "--allow_errors", "true"]) == 0
    assert main([*args, "--allow_errors", "--work_dir", str(work_dir), "--visualize"]) == 0  # bare flags, as
    # the demo package's predict.py takes --allow_errors (before: "expected one argument")
    assert main([*args, "--work_dir", str(work_dir), "--visualize", "false", "--allow_errors", "false"]) == 1


def _non_utf8_name(folder: Path, source: Path) -> Path:
    """A copy of ``source`` in ``folder`` named b"Pr\\xfcfteil.png" (cp1252, as in a zip made on Windows)."""
    target = os.fsdecode(os.path.join(os.fsencode(folder), b"Pr\xfcfteil.png"))
    try:
        shutil.copy(source, target)
    except OSError:  # a file system that keeps UTF-8 names only (macOS)
        pytest.skip("this file system does not take file names that are not valid UTF-8")
    return Path(target)


def test_file_names_that_are_not_utf8_are_predicted_and_trained_on(
    trained_padim: dict, dataset_copy, tmp_path: Path, capsys
) -> None:
    # Before: otx predict died with a segmentation fault (cv2.imwrite on such a path) and training with
    # "internal error (UnicodeEncodeError ...)" after the whole fit (the training data's fingerprint).
    root = dataset_copy()
    source = tmp_path / "parts"
    source.mkdir()
    image = _non_utf8_name(source, root / "test" / "scratch" / "000.png")
    work_dir = tmp_path / "ws"
    assert main(["predict", "--checkpoint", str(trained_padim["checkpoint"]), "--source", str(source),
                 "--work_dir", str(work_dir)]) == 0  # fmt: skip
    run = work_dir / latest(work_dir)["predict"] / "predictions"
    (record,) = json.loads((run / "predictions.json").read_text())
    assert record["label"] == "anomalous" and Path(record["image"]) == image
    mask = run / record["mask"]
    assert read_mask(mask).any() and (run / "overlays" / f"{image.stem}.png").is_file()
    before = index_mvtec(root).fingerprint()
    _non_utf8_name(root / "train" / "good", root / "train" / "good" / "000.png")
    assert index_mvtec(root).fingerprint() != before  # the new training file counts, by its name's bytes
    # A defect image in test/good under such a name: the report shows it among the highest-scoring normal
    # images (before: its write raised UnicodeEncodeError, an internal error after the whole test).
    (root / "train" / "good" / image.name).unlink()
    _non_utf8_name(root / "test" / "good", root / "test" / "scratch" / "000.png")
    capsys.readouterr()
    assert main(["test", "--checkpoint", str(trained_padim["checkpoint"]), "--data_root", str(root),
                 "--work_dir", str(work_dir)]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err
    report = (work_dir / latest(work_dir)["test"] / "report.html").read_text(encoding="utf-8")
    assert "Pr\\udcfcfteil.png" in report


def test_a_mask_that_cannot_be_written_fails_in_one_line_and_keeps_latest(
    trained_padim: dict, sample_root: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    work_dir = tmp_path / "ws"
    args = ["predict", "--checkpoint", str(trained_padim["checkpoint"]), "--work_dir", str(work_dir)]
    source = ["--source", str(sample_root / "bottle_like" / "test" / "good"), "--visualize", "false"]
    assert main([*args, *source]) == 0
    before = (work_dir / "latest.json").read_bytes()
    written = Path.write_bytes

    def full_disk(path: Path, data: bytes) -> int:  # what Python raises when the disk is full
        if path.name.endswith("_mask.png"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return written(path, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    assert main([*args, *source]) == 1
    err = capsys.readouterr().err
    assert "could not write" in err and "_mask.png" in err and "free space" in err and "Traceback" not in err
    assert (work_dir / "latest.json").read_bytes() == before  # the earlier run stays the latest


def test_an_image_the_model_scores_nan_is_an_error_not_normal(trained_padim: dict, sample_root: Path, tmp_path) -> None:
    # Before (a review): a NaN score failed every comparison with the threshold, so the image was labelled normal
    # with a null score, and otx test stopped in its metrics with "internal error (scores contain NaN)".
    from rich.console import Console

    from otx.checkpoint import load_checkpoint
    from otx.data.datamodule import samples_from_source
    from otx.errors import OTXError
    from otx.scoring import TorchScorer
    from otx.tasks import get_adapter
    from otx.verbs.context import VerbContext
    from otx.verbs.inference import collect, to_predictions
    from otx.workdir import WorkDir

    model, _ = load_checkpoint(trained_padim["checkpoint"])
    samples = samples_from_source(str(sample_root / "bottle_like" / "test" / "good"))[:3]
    data = AnomalyDataModule(num_workers=0, batch_size=2)
    ctx = VerbContext(Console(quiet=True), WorkDir(tmp_path / "ws"), data, None, "CPU", "f32", 0, {})
    scorer = TorchScorer(model)
    outputs, errors = collect(ctx, data, scorer, samples, "predict", skip_errors=True)
    assert errors == ["", "", ""] and torch.isfinite(outputs["scores"]).all()
    model.model.gaussian.mean[0, 0] = float("nan")  # the model's arithmetic fails: NaN in every map and score
    outputs, errors = collect(ctx, data, scorer, samples, "predict", skip_errors=True)
    assert all(error.startswith("the model computed no score for") for error in errors), errors
    predictions = to_predictions(get_adapter("segmentation"), scorer, outputs, samples, errors)
    assert [p.label_name for p in predictions] == ["error"] * 3  # before: "normal"
    with pytest.raises(OTXError, match=r"computed no score for '.*' \(NaN in its score or map"):
        collect(ctx, data, scorer, samples, "validation")


def test_opencvs_own_messages_on_cut_pngs_stay_off_the_terminal(trained_padim: dict, tmp_path: Path) -> None:
    # OpenCV printed "[ WARN:0@5.2] global grfmt_png.cpp:... PNG input buffer is incomplete" (cut in
    # the header) or libpng "libpng error: PNG input buffer is incomplete" (cut in the pixels) before
    # otx's one line about the file.
    image = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))[1]
    data = image.tobytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "header.png").write_bytes(data[:300])
    (tmp_path / "cut" / "pixels.png").write_bytes(data[: len(data) // 2])
    # OpenCV logged an "[ERROR:0@0.2] ... imdecode_ ... Unsupported number of channels" block of five lines for a
    # TIFF of five channels (Pillow cannot read it either)
    tifffile.imwrite(
        tmp_path / "cut" / "five.tif", np.zeros((8, 8, 5), np.uint8), photometric="minisblack", planarconfig="contig"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}  # (main() in this process sets it)
    command = [sys.executable, "-m", "otx.cli", "predict", "--checkpoint", str(trained_padim["checkpoint"])]
    command += ["--source", str(tmp_path / "cut"), "--work_dir", str(tmp_path / "ws")]
    done = subprocess.run(command, capture_output=True, text=True, env={**env, "OTX_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 1 and all(name in done.stderr for name in ("header.png", "pixels.png", "five.tif"))
    assert "ERROR:" not in done.stderr and "channels" not in done.stderr, done.stderr
    assert "WARN:" not in done.stderr and "libpng" not in done.stderr, done.stderr
    assert "PNG input buffer" not in done.stderr, done.stderr


def test_a_run_where_nothing_could_be_read_does_not_move_latest(
    trained_padim: dict, dataset_copy, tmp_path: Path, capsys
) -> None:
    folder = dataset_copy() / "test" / "good"
    work_dir = tmp_path / "ws"
    shutil.copytree(trained_padim["work_dir"], work_dir)
    assert main(["predict", "--work_dir", str(work_dir), "--source", str(folder / "002.png")]) == 0
    before = latest(work_dir)
    for path in folder.glob("*.png"):
        corrupt(path)
    assert main(["predict", "--work_dir", str(work_dir), "--source", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "none of the 12 image(s) could be read" in err
    assert latest(work_dir) == before


def test_inferencer_gives_no_label_to_an_unreadable_image(exported, dataset_copy) -> None:
    folder = dataset_copy() / "test" / "good"
    corrupt(folder / "003.png")
    predictions = OpenVINOInferencer(exported("padim"), device="CPU").predict(folder)
    broken = [p for p in predictions if p.image_path.endswith("003.png")][0]
    assert broken.label_name == "error" and broken.pred_label is None and "003.png" in broken.error
    assert [p for p in predictions if p.failed] == [broken]  # before: a classmethod, truthy on every prediction
    assert broken.to_json()["label"] == "error" and broken.to_json()["score"] is None
    assert all(p.label_name in ("normal", "anomalous") for p in predictions if p is not broken)


def test_demo_package_labels_an_unreadable_image_error(trained_padim: dict, dataset_copy, tmp_path: Path) -> None:
    folder = dataset_copy() / "test" / "good"
    corrupt(folder / "004.png")
    (folder / "005.png").write_bytes(b"not an image at all")
    (folder / "007_empty.png").write_bytes(b"")  # before: OpenCV's assertion, a traceback
    gray = cv2.cvtColor(cv2.imread(str(folder / "000.png")), cv2.COLOR_BGR2GRAY)
    assert cv2.imwrite(str(folder / "006_gray.png"), gray)  # the model was trained on colour images
    summary = Engine(data=AnomalyDataModule(num_workers=0), work_dir=tmp_path / "ws").export(
        trained_padim["checkpoint"], demo_package=True
    )
    with zipfile.ZipFile(summary["demo_package"]) as archive:
        archive.extractall(tmp_path / "demo")
    command = [sys.executable, str(tmp_path / "demo" / "predict.py"), str(folder), "--output", str(tmp_path / "out")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    records = {Path(r["image"]).name: r for r in json.loads((tmp_path / "out" / "results.json").read_text())}
    assert run.returncode == 1 and "could not be read" in run.stderr
    # as otx predict warns: a grayscale image scored by a colour model
    assert "warning: 1 of " in run.stderr and "images are grayscale, but the model was trained on colour" in run.stderr
    for name in ("005.png", "007_empty.png"):  # cv2 cannot decode them
        assert records[name]["label"] == "error" and records[name]["score"] is None
    # each named as otx predict names it, where the script can tell (before: "cannot decode image" for all)
    assert records["007_empty.png"]["error"] == "the file is empty, 0 bytes"
    assert records["004.png"]["error"].startswith("image file is truncated")
    assert records["005.png"]["error"].startswith("cannot decode image (not an image format")
    assert sum(r["label"] == "error" for r in records.values()) >= 1
    allowed = subprocess.run([*command, "--allow_errors"], capture_output=True, text=True, timeout=300)
    assert allowed.returncode == 0
    # results.json that cannot be written (a full disk; here a file size limit every mask fits under): one line,
    # and the earlier results.json whole (before: a traceback and a 0-byte results.json; a bug bash)
    import resource

    before = (tmp_path / "out" / "results.json").read_bytes()
    largest_mask = max(f.stat().st_size for f in (tmp_path / "out" / "masks").iterdir())
    assert 2 * largest_mask < len(before)
    limit = largest_mask + 100

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = subprocess.run([*command, "--allow_errors"], capture_output=True, text=True, timeout=300, preexec_fn=cap)
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr
    said = full.stderr.strip().splitlines()[-1]
    assert said.startswith(f"error: could not write {tmp_path / 'out' / 'results.json'}"), said
    assert (tmp_path / "out" / "results.json").read_bytes() == before
    assert not (tmp_path / "out" / ".results.json.tmp").exists()


def test_demo_package_reads_float_images_as_otx_does_and_names_a_bad_model_in_one_line(
    trained_padim: dict, sample_root: Path, tmp_path: Path
) -> None:
    summary = Engine(data=AnomalyDataModule(num_workers=0), work_dir=tmp_path / "ws").export(
        trained_padim["checkpoint"], demo_package=True
    )
    with zipfile.ZipFile(summary["demo_package"]) as archive:
        archive.extractall(tmp_path / "demo")
    source = sample_root / "bottle_like" / "test" / "good" / "003.png"  # a score inside (0, 1), not clipped
    image = cv2.imread(str(source), cv2.IMREAD_COLOR).astype(np.float32) / 255.0  # float in [0, 1]
    tiff = tmp_path / "images" / "float.tif"
    tiff.parent.mkdir()
    assert cv2.imwrite(str(tiff), image)
    assert cv2.imread(str(tiff), cv2.IMREAD_UNCHANGED).dtype == np.float32
    demo = [sys.executable, str(tmp_path / "demo" / "predict.py")]
    run = subprocess.run(
        [*demo, str(tiff), "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "grayscale" not in run.stderr  # before: every colour float TIFF was taken for a grayscale image
    record = json.loads((tmp_path / "out" / "results.json").read_text())[0]
    expected = OpenVINOInferencer(summary["exported_model"], device="CPU").predict(str(tiff))[0]
    assert 0.0 < float(expected.pred_score) < 1.0
    assert record["score"] == pytest.approx(float(expected.pred_score), abs=1e-5)
    assert record["label"] == expected.label_name
    mine = tmp_path / "mine"  # a folder of the user's own: before, its results.json was replaced without a word
    mine.mkdir()
    (mine / "results.json").write_text('{"mine": 1}')
    run = subprocess.run([*demo, str(tiff), "--output", str(mine)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "results.json was not written by this script" in run.stderr, run.stderr
    assert [p.name for p in mine.iterdir()] == ["results.json"] and (mine / "results.json").read_text() == '{"mine": 1}'
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    exported_bin = Path(summary["exported_model"]).with_suffix(".bin")
    for args, said in (
        (["--model", str(tmp_path / "none.xml")], "is not found; pass --model <exported_model.xml>"),
        (["--model", str(tmp_path / "none.onnx")], "is not found"),  # before: "is an ONNX file"
        # before: "has no weights file 'model.bin' beside it", and OpenVINO's TensorFlow front end's noise
        (["--model", str(trained_padim["checkpoint"])], "is not an OpenVINO IR (.xml); pass --model"),
        (
            ["--model", str(exported_bin)],
            f"is the weights file of an OpenVINO IR; pass its .xml: {exported_bin.with_suffix('.xml')}",
        ),
        (["--precision", "f64"], "invalid choice: 'f64'"),
        (["--output", str(tiff)], "cannot write results to"),  # before: NotADirectoryError's traceback
        (["--device", "CPU.1"], "device CPU.1 not available (available: CPU"),  # before: OpenVINO's traceback
        (["--device", "AUTO:GPU7"], "device GPU7 not available"),
        (["--model", str(tmp_path / "m.onnx")], "is an ONNX file; this demo takes the OpenVINO IR"),
    ):
        bad = subprocess.run([*demo, str(tiff), *args], capture_output=True, text=True, timeout=300)
        assert bad.returncode != 0 and said in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    # a package half copied: the .xml without its .bin, or a .bin cut short (before: "not an otx export", the
    # cause dropped); a Python without OpenCV (before: ModuleNotFoundError's traceback)
    model = Path(summary["exported_model"])
    (tmp_path / "half").mkdir()
    shutil.copy(model, tmp_path / "half" / model.name)
    cut = tmp_path / "cut" / model.name
    shutil.copytree(model.parent, cut.parent)
    cut.with_suffix(".bin").write_bytes(model.with_suffix(".bin").read_bytes()[:1000])
    without_cv2 = "import runpy, sys; sys.modules['cv2'] = None; runpy.run_path(sys.argv[1], run_name='__main__')"
    for command, said in (
        ([*demo, str(tiff), "--model", str(tmp_path / "half" / model.name)], "has no weights file 'exported_model"),
        ([*demo, str(tiff), "--model", str(cut)], "OpenVINO cannot read it (Incorrect weights in bin file"),
        ([sys.executable, "-c", without_cv2, *demo[1:], str(tiff)], "cannot import opencv-python-headless (cv2) ("),
    ):
        bad = subprocess.run(command, capture_output=True, text=True, timeout=300)
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 1 and len(lines) == 1 and said in lines[0], bad.stderr
    auto = subprocess.run([*demo, str(tiff), "--device", "AUTO:CPU", "--output", str(tmp_path / "auto")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert auto.returncode == 0, auto.stderr  # before: "device AUTO:CPU not available", which otx predict takes
    missing = subprocess.run([*demo, str(tmp_path / "nope")], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and "no such file or folder" in missing.stderr
    with zipfile.ZipFile(summary["demo_package"]) as archive:  # readable by all, as the files beside them
        assert {info.filename: info.external_attr >> 16 & 0o777 for info in archive.infolist()}["README.md"] == 0o644
        assert all(info.external_attr >> 16 & 0o444 == 0o444 for info in archive.infolist())  # before: 0600 for two
    shutil.copy(source, tiff.parent / "b.png")
    results = tiff.parent / "results"  # inside the folder predicted, run twice, then on one image
    for target, names in (
        (tiff.parent, ["b.png", "float.tif"]),
        (tiff.parent, ["b.png", "float.tif"]),
        (tiff, ["float.tif"]),
    ):
        run = subprocess.run(
            [*demo, str(target), "--output", str(results), "--device", "cpu"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr
        records = json.loads((results / "results.json").read_text())
        assert [Path(r["image"]).name for r in records] == names  # before: its own masks, then 4 images
        masks = sorted(p.relative_to(results).as_posix() for p in (results / "masks").iterdir())
        assert masks == sorted(r["mask"] for r in records)  # before: the first run's masks stayed
    pattern = str(tiff.parent / "**" / "*.png")  # a glob that reaches into --output: its masks are not images
    run = subprocess.run([*demo, pattern, "--output", str(results)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr  # before: its masks deleted as stale, then "cannot decode image"
    assert [Path(r["image"]).name for r in json.loads((results / "results.json").read_text())] == ["b.png"]
    assert "left out 1 file(s) under" in run.stdout


@pytest.mark.parametrize("damage", ["pixels", "header", "empty"])
def test_test_reports_unreadable_images_and_leaves_them_out_of_the_metrics(
    damage: str, trained_padim: dict, dataset_copy, tmp_path: Path, capsys
) -> None:
    root = dataset_copy()
    data = AnomalyDataModule(str(root))
    data.setup()  # the split the model was calibrated with (default seed and fraction)
    bad = Path(data.splits["test"][3].path)
    if damage == "pixels":
        corrupt(bad)
    elif damage == "header":  # not an image at all: the up-front check of the files refused the whole test (before)
        bad.write_bytes(b"not an image")
    else:  # 0 bytes: OpenCV's assertion on an empty buffer ended the run as an internal error (before)
        bad.write_bytes(b"")
    work_dir = tmp_path / "ws"
    args = ["test", "--checkpoint", str(trained_padim["checkpoint"]), "--data_root", str(root)]
    assert main([*args, "--work_dir", str(work_dir)]) == 1
    run = work_dir / latest(work_dir)["test"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["errors"][0]["image"] == str(bad) and metrics["counts"]["error"] == 1
    records = {r["image"]: r for r in json.loads((run / "predictions.json").read_text())}
    assert records[str(bad)]["label"] == "error"
    report = (run / "report.html").read_text()
    assert "could not be read (1)" in report and bad.name in report
    scored = sum(metrics["splits"]["test"][k] for k in ("normal", "anomalous"))
    assert metrics["counts"]["normal"] + metrics["counts"]["anomalous"] == scored - 1
    assert metrics["splits"]["test"]["unreadable"] == 1  # the split's files, and how many of them were not read
    assert "<th>unreadable</th>" in report


def test_an_unreadable_defect_image_is_not_also_said_to_lack_a_mask(
    trained_padim: dict, dataset_copy, tmp_path: Path
) -> None:
    # before: besides "not scored", "1 anomalous test image(s) have no mask (e.g. scratch/zz.png ...)"
    root = dataset_copy()
    (root / "test" / "scratch" / "zz.png").write_bytes(b"not an image")
    work_dir = tmp_path / "ws"
    args = ["test", "--checkpoint", str(trained_padim["checkpoint"]), "--data_root", str(root)]
    assert main([*args, "--work_dir", str(work_dir)]) == 1
    metrics = json.loads((work_dir / latest(work_dir)["test"] / "metrics.json").read_text())
    assert [e["image"] for e in metrics["errors"]] == [str(root / "test" / "scratch" / "zz.png")]
    assert not [w for w in metrics["warnings"] if "have no mask" in w], metrics["warnings"]


def test_a_defect_type_with_no_readable_image_is_named_in_the_report(
    trained_padim: dict, dataset_copy, tmp_path: Path
) -> None:
    root = dataset_copy()
    data = AnomalyDataModule(str(root))
    data.setup()  # the split the model was calibrated with
    lost = [Path(s.path) for s in data.splits["test"] if s.defect == "scratch"]
    for path in lost:
        path.write_bytes(b"not an image")
    work_dir = tmp_path / "ws"
    args = ["test", "--checkpoint", str(trained_padim["checkpoint"]), "--data_root", str(root)]
    assert main([*args, "--work_dir", str(work_dir)]) == 1
    run = work_dir / latest(work_dir)["test"]
    assert "scratch" not in json.loads((run / "metrics.json").read_text())["per_defect"]
    # before: the type vanished from the per-defect table without a word
    report = (run / "report.html").read_text()
    assert f"Not in the table, every image unreadable: scratch ({len(lost)})" in report and lost


def test_an_unreadable_validation_image_is_refused_in_one_line(
    trained_padim: dict, dataset_copy, tmp_path: Path, capsys
) -> None:
    root = dataset_copy()
    data = AnomalyDataModule(str(root))
    data.setup()  # the recipe's split (default fraction and seed)
    bad = Path(data.splits["val"][0].path)
    bad.write_bytes(b"not an image")  # the thresholds are fitted on it: not a test image to label "error"
    work_dir = tmp_path / "ws"
    args = ["--config", RECIPE, "--data_root", str(root), "--work_dir", str(work_dir)]
    assert main(["train", *args, "--model.init_args.input_size", "[64,64]"]) == 1
    err = capsys.readouterr().err
    assert f"cannot read image '{bad}'" in err and "a validation image" in err and len(err.strip().splitlines()) == 1
    assert not (work_dir / "latest.json").exists()
    # otx test does not read the validation images (the thresholds are the model's): it tests the others
    args = ["test", "--checkpoint", str(trained_padim["checkpoint"]), "--data_root", str(root)]
    assert main([*args, "--work_dir", str(work_dir)]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("source", ["checkpoint", "ir"])
def test_images_added_to_the_test_folders_never_take_a_validation_images_place(
    source: str, trained_padim: dict, exported, dataset_copy, tmp_path: Path, capsys
) -> None:
    root = dataset_copy()
    data = AnomalyDataModule(str(root))
    data.setup()  # the split the model was calibrated with: the checkpoint and the export name its images
    fitted = {str(root / name) for name in data.validation_names()}
    assert len(fitted) == len(data.splits["val"]) > 0
    good = sorted((root / "test" / "good").iterdir())
    shutil.copy(good[0], root / "test" / "good" / "000_added.png")  # sorts first: the seeded split moves
    (root / "test" / "good" / "zz_broken.png").write_bytes(b"not an image")  # labelled "error", not tested
    moved = AnomalyDataModule(str(root))
    moved.setup()
    assert {s.path for s in moved.splits["test"]} & fitted  # what a seeded split alone would test on
    model = trained_padim["checkpoint"] if source == "checkpoint" else exported("padim")
    work_dir = tmp_path / "ws"
    assert main(["test", "--checkpoint", str(model), "--data_root", str(root), "--work_dir", str(work_dir)]) == 1
    err = capsys.readouterr().err
    assert "test folders" in err and "changed since training" in err and "Traceback" not in err
    run = work_dir / latest(work_dir)["test"]
    records = json.loads((run / "predictions.json").read_text())
    tested = {r["image"] for r in records}
    assert not tested & fitted
    assert str(root / "test" / "good" / "000_added.png") in tested
    assert len(tested) == len(data.splits["test"]) + 2
    scored = sum(r["label"] != "error" for r in records)  # before: the count took the unreadable image in
    assert f"the test metrics are on the {scored} others" in " ".join(err.split())
    (root / "test" / "good" / "zz_broken.png").unlink()
    assert any("changed since training" in w for w in json.loads((run / "metrics.json").read_text())["warnings"])
    # A validation image removed: said, and the others stay validation images.
    removed = Path(sorted(f for f in fitted if "/good/" in f)[0])  # a defect image would leave its mask alone
    kept = removed.read_bytes()
    removed.unlink()
    assert main(["test", "--checkpoint", str(model), "--data_root", str(root), "--work_dir", str(work_dir)]) == 0
    assert "(1 is gone)" in " ".join(capsys.readouterr().err.split())
    tested = {r["image"] for r in json.loads((work_dir / latest(work_dir)["test"] / "predictions.json").read_text())}
    assert not tested & fitted
    removed.write_bytes(kept)
    # Unchanged folders: no warning, the same split as before.
    (root / "test" / "good" / "000_added.png").unlink()
    assert main(["test", "--checkpoint", str(model), "--data_root", str(root), "--work_dir", str(work_dir)]) == 0
    assert "changed since training" not in capsys.readouterr().err
    # A val/ folder added: it is the validation split now, and the images the model was calibrated on
    # still stay out of the test split (before: all of test/ was tested, the calibration images too, unsaid).
    (root / "val" / "good").mkdir(parents=True)
    for image in good[:3]:
        shutil.copy(image, root / "val" / "good" / f"v_{image.name}")
    assert main(["test", "--checkpoint", str(model), "--data_root", str(root), "--work_dir", str(work_dir)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "has a val/ folder now" in err and f"calibrated on {len(fitted)} images of its test folders" in err
    tested = {r["image"] for r in json.loads((work_dir / latest(work_dir)["test"] / "predictions.json").read_text())}
    assert not tested & fitted and len(tested) == len(data.splits["test"])
    assert f"the test metrics are on the {len(tested)} others" in err
    # otx predict of the test split says what it predicts (before: "so the test metrics are on ...")
    assert main(["predict", "--checkpoint", str(model), "--data_root", str(root), "--work_dir", str(work_dir)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"the {len(tested)} others are predicted" in err and "test metrics" not in err


def test_test_keeps_the_models_validation_split_and_names_both(trained_padim: dict, sample_root, tmp_path, capsys):
    # Another split at test time would test on images the thresholds were calibrated on: the
    # model's split is used, and the warning says which values won over which.
    args = ["test", "--checkpoint", str(trained_padim["checkpoint"]), "--data_root", str(sample_root / "bottle_like")]
    assert main([*args, "--data.val_split", "0.3", "--data.seed", "5", "--work_dir", str(tmp_path)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    said = "using the model's validation split (val_split 0.5, seed 42; this command's: val_split 0.3, seed 5)"
    assert said in err
    run = tmp_path / latest(tmp_path)["test"]
    tested = {r["image"] for r in json.loads((run / "predictions.json").read_text())}
    # in metrics.json and the report too, with the split the metrics are on (before: the console only, and
    # two reports of models of different seeds read alike while they scored different images)
    metrics = json.loads((run / "metrics.json").read_text())
    assert any(w.startswith(said) for w in metrics["warnings"])
    assert metrics["validation"] == {"from": "recorded files", "val_split": 0.5, "seed": 42}
    report = " ".join(html.unescape((run / "report.html").read_text()).split())
    assert said in report and "drawn as 0.5 of the test folders, seed 42)" in report
    trained = json.loads((Path(trained_padim["checkpoint"]).parent / "metrics.json").read_text())
    assert trained["validation"] == {"from": "seeded split", "val_split": 0.5, "seed": 42}
    assert trained["seeds"] == {"global": 42, "model": 0}
    data = AnomalyDataModule(str(sample_root / "bottle_like"))
    data.setup()
    assert tested == {s.path for s in data.splits["test"]}


# --- 2. INT8 and FP16 keep the decisions (--max_drop bounding F1: test_optimize.py) ------------------------


def test_best_threshold_agrees_best_and_stays_near_the_prior() -> None:
    rng = np.random.default_rng(0)
    for trial in range(200):
        values = np.round(rng.normal(size=rng.integers(1, 40)), 1)  # ties on purpose
        reference = rng.random(values.size) < 0.4
        prior = float(rng.normal())
        threshold, agreement = best_threshold(values, reference, prior)
        assert agreement == pytest.approx(np.mean((values >= threshold) == reference))
        # Brute force over every distinct labelling (independent of the implementation's bookkeeping).
        cuts = np.concatenate([np.unique(values), [values.max() + 1.0]])
        assert agreement == pytest.approx(max(np.mean((values >= c) == reference) for c in cuts)), trial


def test_a_recalibrated_threshold_keeps_its_labels_in_float32_and_its_range_finite() -> None:
    """As the graph's float32 post-processor applies it (a review: two bugs of ``calibrate_decisions``).

    A threshold picked between two candidate scores one float32 step apart was stored on the lower one, which the
    graph then labelled anomalous while the check claimed full agreement; one infinite candidate score became
    ``image_max``, every normalised score 0.5, and metadata otx refused.
    """
    from otx.deploy.calibrate import RawOutputs, calibrate_decisions
    from otx.deploy.metadata import ModelInfo, with_stats
    from otx.postprocess import PostProcessor

    n = 20
    reference = np.concatenate([np.linspace(0, 1, n), np.linspace(2, 3, n)]).astype(np.float32)
    maps = np.zeros((2 * n, 2, 2), np.float32)

    def outputs(scores: np.ndarray) -> RawOutputs:
        return RawOutputs(
            scores, maps, np.arange(2 * n) >= n, np.zeros_like(maps, bool), np.arange(2 * n), maps[:, 0, 0] == 0
        )

    stats = {"image_threshold": 1.5, "image_min": 0.0, "image_max": 3.0}
    stats |= {"pixel_threshold": 1.0, "pixel_min": 0.0, "pixel_max": 2.0}
    low = np.float32(1.75)  # the highest normal score and the lowest anomalous one, one float32 step apart
    candidate = np.concatenate([np.linspace(0, low, n), np.linspace(np.nextafter(low, np.float32(4)), 3, n)])
    candidate = candidate.astype(np.float32)
    decided = calibrate_decisions(outputs(reference), outputs(candidate), stats, pixel_level=False)
    assert decided.recalibrated == ["image"] and decided.agreement["image"] == 1.0
    post = PostProcessor()
    for name, value in decided.stats.items():
        getattr(post, name).fill_(value)
    labels = post(torch.from_numpy(maps), torch.from_numpy(candidate))["pred_label"].numpy()
    np.testing.assert_array_equal(labels, reference >= 1.5)  # before: the score 1.75 anomalous
    candidate = reference + np.float32(0.8)  # a shift, and one score that overflowed
    candidate[-1] = np.inf
    decided = calibrate_decisions(outputs(reference), outputs(candidate), stats, pixel_level=False)
    assert decided.recalibrated == ["image"] and np.isfinite(list(decided.stats.values())).all()
    raw = {"otx_version": "0", "otx_model": "Padim", "task": "classification", "input_size": "256 256"}
    ModelInfo.parse(with_stats({**raw, **{k: str(v) for k, v in stats.items()}}, decided.stats), "int8.xml")


def test_optimize_figures_leave_an_anomalous_image_without_a_mask_out_of_the_pixel_level() -> None:
    """The pixel AUROC and F1 otx optimize reports count only images whose mask is their truth, as otx test does."""
    from sklearn.metrics import f1_score, roc_auc_score

    from otx.deploy.calibrate import RawOutputs, level_metrics, reference_labels

    rng = np.random.default_rng(5)
    n, size = 12, 16
    labels = np.arange(n) % 2 == 1
    masks = np.zeros((n, size, size), bool)
    masks[labels, 4:9, 4:9] = True
    maps = rng.normal(size=(n, size, size)).astype(np.float32) + 2.0 * masks
    masks[1] = False  # an anomalous image whose mask file is missing: its map is still high where the defect is
    known = np.ones(n, bool)
    known[1] = False
    outputs = RawOutputs(maps.max(axis=(1, 2)), maps, labels, masks, np.arange(n), known)
    stats = {"image_threshold": 2.0, "pixel_threshold": 1.5, "image_min": -3.0, "image_max": 6.0}
    stats |= {"pixel_min": float(maps.min()), "pixel_max": float(maps.max())}
    figures = level_metrics(outputs, stats, reference_labels(outputs, stats), use_masks=True)
    truth, values = masks[known].ravel(), maps[known].ravel()
    assert figures["pixel_AUROC"] == pytest.approx(roc_auc_score(truth, values), abs=1e-6)
    assert figures["pixel_F1"] == pytest.approx(f1_score(truth, values >= 1.5), abs=1e-6)
    assert figures["pixel_AUROC"] != pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-3)


def test_recalibration_follows_a_shift_and_ignores_noise() -> None:
    from otx.deploy.calibrate import RawOutputs, calibrate_decisions

    rng = np.random.default_rng(3)
    ref = rng.normal(10.0, 3.0, 400).astype(np.float32)
    stats = {"image_threshold": 12.0, "image_min": float(ref.min()), "image_max": float(ref.max())}
    stats |= {"pixel_threshold": 12.0, "pixel_min": float(ref.min()), "pixel_max": float(ref.max())}

    def outputs(scores: np.ndarray) -> RawOutputs:
        n = scores.size
        return RawOutputs(
            scores, scores[:, None, None], np.zeros(n, bool), np.zeros((n, 1, 1), bool), np.arange(n), np.ones(n, bool)
        )

    # Every score 0.8 higher (what INT8 did to PADIM on the sample data): recalibrated, labels restored.
    shifted = calibrate_decisions(outputs(ref), outputs(ref + 0.8), stats)
    assert shifted.recalibrated == ["image", "pixel"] and shifted.agreement["image"] == 1.0
    assert shifted.agreement_kept["image"] < 0.95
    assert 12.0 < shifted.stats["image_threshold"] <= 12.8 + 1e-6
    # Symmetric noise of the same size: the flips go both ways and a moved threshold would not carry over.
    noisy = calibrate_decisions(outputs(ref), outputs(ref + rng.normal(0.0, 0.8, 400).astype(np.float32)), stats)
    assert noisy.agreement_kept["image"] < 1.0 and "image" not in noisy.recalibrated
    assert noisy.stats["image_threshold"] == 12.0
    cv = noisy.cross_validated["image"]
    assert cv["recalibrated"] <= cv["kept"]


def test_a_recalibration_that_fails_the_f1_bar_where_the_fp32_thresholds_pass_is_not_used() -> None:
    """Pixels: moving the threshold over 9 false flips of normal pixels agrees better with FP32's labels
    (4 more of 10,000) but loses 5 defect pixels, and F1 falls beyond the bar (helper's tile STFPM:
    pixel F1 0.655 -> 0.628 written and warned about where the FP32 thresholds kept 0.648)."""
    from sklearn.metrics import f1_score

    from otx.deploy.calibrate import RawOutputs
    from otx.deploy.optimize import DECISION_DROP, ValidationData

    rng = np.random.default_rng(0)
    ref = np.concatenate([rng.uniform(0.0, 4.0, 9791), np.full(9, 4.5), np.full(200, 8.0)]).astype(np.float32)
    truth = np.zeros(10_000, bool)
    truth[9900:] = True  # the last 100 of the 200 FP32 calls anomalous (the others: its false positives)
    cand = ref.copy()
    cand[9791:9800] = 5.3  # 9 normal pixels pushed over the threshold (5)
    cand[9995:] = 5.25  # 5 defect pixels pulled down just below them
    scores = np.linspace(0.0, 9.0, 10).astype(np.float32)  # the image level as FP32's: nothing to change there

    def outputs(maps: np.ndarray) -> RawOutputs:
        masks = truth.reshape(10, 1, 1000)
        return RawOutputs(
            scores, maps.reshape(10, 1, 1000), masks.any(axis=(1, 2)), masks, np.arange(10), np.ones(10, bool)
        )

    stats = {"image_threshold": 4.5, "image_min": 0.0, "image_max": 9.0}
    stats |= {"pixel_threshold": 5.0, "pixel_min": float(ref.min()), "pixel_max": float(ref.max())}
    fp32_f1, kept_f1 = f1_score(truth, ref >= 5.0), f1_score(truth, cand >= 5.0)
    moved_f1 = f1_score(truth, cand >= 5.31)  # the recalibrated threshold: over the 9 and the 5
    assert fp32_f1 - kept_f1 <= DECISION_DROP < fp32_f1 - moved_f1  # the case: kept passes, moved fails
    validation = ValidationData(items=None, use_masks=True, reference=outputs(ref), stats=stats)
    decisions, table = validation.compare(outputs(cand))
    assert decisions.cross_validated["pixel"]["recalibrated"] > decisions.cross_validated["pixel"]["kept"]
    assert decisions.recalibrated == [] and decisions.stats == stats  # before: ["pixel"], threshold 5.308
    assert table["candidate"] == table["candidate_fp32_thresholds"]
    assert table["candidate"]["pixel_F1"] == pytest.approx(kept_f1, abs=1e-6)


def test_replaced_postprocessor_equals_the_export_and_follows_new_statistics(exported, sample_root: Path) -> None:
    path = exported("padim")
    model = ov.Core().read_model(str(path))
    info = OpenVINOInferencer(path, device="CPU").info
    stats = info.stats()
    image = np.random.default_rng(1).random((1, 3, 150, 170), dtype=np.float32)
    core = ov.Core()
    original = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(image)
    same = core.compile_model(replace_postprocessor(model, stats), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(image)
    for name in ("pred_score", "anomaly_map"):
        np.testing.assert_allclose(np.asarray(same[name]), np.asarray(original[name]), atol=1e-6)
    # With other statistics: the normalisation formula applied to the raw outputs (independently computed).
    raw_map, raw_score = postprocessor_inputs(model)
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}  # the CPU's default is bf16 where it has AVX512-BF16 or AMX
    raw = core.compile_model(ov.Model([raw_map, raw_score], model.get_parameters()), "CPU", f32)(image)
    shifted = {**stats, "image_threshold": stats["image_threshold"] * 0.9, "pixel_max": stats["pixel_max"] * 2}
    got = core.compile_model(replace_postprocessor(model, shifted), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(image)
    score = np.clip(
        (np.asarray(raw[1]) - shifted["image_threshold"]) / (stats["image_max"] - stats["image_min"]) + 0.5, 0, 1
    )
    np.testing.assert_allclose(np.asarray(got["pred_score"]), score, atol=1e-5)
    expected_map = normalize(np.asarray(raw[0]), shifted["pixel_threshold"], shifted["pixel_min"], shifted["pixel_max"])
    np.testing.assert_allclose(np.asarray(got["anomaly_map"]).reshape(expected_map.shape), expected_map, atol=1e-5)
    assert [next(iter(o.get_names())) for o in replace_postprocessor(model, stats).outputs] == [
        "pred_score",
        "pred_label",
        "anomaly_map",
        "pred_mask",
    ]


@pytest.mark.parametrize("model", ["padim", "stfpm10", "patchcore"])
def test_int8_keeps_the_fp32_decisions_on_the_test_split(
    model: str, exported, optimized, sample_root: Path, tmp_path: Path
) -> None:
    work_dir = tmp_path / "ws"
    summary = optimized(model)
    decisions = summary["decisions"]
    assert decisions["checked"] and decisions["images"] == 14
    table = decisions["table"]
    for level in ("image", "pixel"):  # recalibration never lowers the agreement it was chosen on
        assert (
            table["candidate"][f"{level}_label_agreement"]
            >= table["candidate_fp32_thresholds"][f"{level}_label_agreement"]
        )
    # On the test split (never seen by calibration nor recalibration): F1 within 0.02, >= 98 % same labels.
    runs = {}
    for name, path in (("fp32", exported(model)), ("int8", Path(summary["optimized_model"]))):
        engine = Engine(data=AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0), work_dir=work_dir)
        result = engine.test(checkpoint=path)
        records = json.loads((Path(result["report"]).parent / "predictions.json").read_text())
        runs[name] = (result["metrics"], {r["image"]: r["label"] for r in records})
    (fp32, fp32_labels), (int8, int8_labels) = runs["fp32"], runs["int8"]
    assert abs(int8["image_F1"] - fp32["image_F1"]) <= 0.02
    agreement = np.mean([int8_labels[k] == v for k, v in fp32_labels.items()])
    assert agreement >= 0.98, agreement
    # metrics.json says what was done and with which thresholds; the IR carries them.
    info = OpenVINOInferencer(summary["optimized_model"], device="CPU").info
    assert info.stats() == pytest.approx(decisions["stats"], rel=1e-6)
    assert info.raw["otx_recalibrated"] == (",".join(decisions["recalibrated"]) or "none")


def test_optimize_says_when_int8_does_not_keep_the_decisions(optimized) -> None:
    import copy

    from otx.deploy.optimize import decision_warning
    from otx.errors import python_spelling

    summary = optimized("padim")
    decisions = summary["decisions"]
    held = decisions["drop"] <= 0.02 and decisions["table"]["candidate"]["image_label_agreement"] >= 0.98
    assert (decision_warning(decisions) is None) == held
    expected = [] if held else [python_spelling(decision_warning(decisions))]  # Engine.optimize(): Python's names
    assert [w for w in summary["warnings"] if "decisions" in w] == expected
    # The same record, as PatchFlow's INT8 after one epoch on the sample data left it (validation image
    # AUROC 0.854 -> 0.542, F1 0.889 -> 0.571, 71 % of the labels): one line, naming what moved.
    worse = copy.deepcopy(decisions)
    fp32 = worse["table"]["fp32"]
    worse["table"]["candidate"].update(
        image_AUROC=fp32["image_AUROC"] - 0.3, image_F1=fp32["image_F1"] - 0.3, image_label_agreement=5 / 7
    )
    worse["drop"] = 0.3
    line = decision_warning(worse)
    assert line is not None and "\n" not in line
    assert f"image AUROC {fp32['image_AUROC']:.3f} -> {fp32['image_AUROC'] - 0.3:.3f}" in line
    assert "71.4% of the image labels" in line and "pixel AUROC" not in line  # only what moved
    # Labels kept while a figure fell: said apart (before: "..., 100.0% of the image labels as FP32's" read as a fault)
    kept = copy.deepcopy(decisions)
    kept["table"]["candidate"].update(image_F1=fp32["image_F1"] - 0.1, image_label_agreement=1.0)
    kept["drop"] = 0.1
    line = decision_warning(kept)
    assert f"image F1 {fp32['image_F1']:.3f} -> {fp32['image_F1'] - 0.1:.3f}" in line and ", 100.0%" not in line
    assert "98% of the labels; the image labels hold: 100.0% of the image labels as FP32's); check it" in line
    # Just short of the bar: rounded down (before: 0.9795 read "98.0% of the image labels" beside a bar of 98%)
    short = copy.deepcopy(worse)
    short["table"]["candidate"]["image_label_agreement"] = 0.9795
    assert "97.9% of the image labels as FP32's" in decision_warning(short)
    # The summary's recalibration line agrees with the warning (before: "none (the FP32 thresholds keep the
    # decisions)" beside a pixel F1 fallen to 0, helper-40)
    from types import SimpleNamespace

    from rich.console import Console

    from otx.render import _decisions

    cases = [(worse, "none (moving them kept no more of the FP32 labels on held-out validation images")]
    cases += [(decisions, "none (the FP32 thresholds keep the decisions)")] if held else []
    for record, said in cases:
        console = Console(record=True, width=300)
        shown = {**record, "recalibrated": []}
        _decisions(console, SimpleNamespace(decisions=shown, command="optimize", run_folder="r"), "INT8", {})
        text = console.export_text()
        assert f"recalibrated thresholds: {said}" in text, text


def test_fp16_export_checks_its_decisions(exported) -> None:
    fp16 = exported("padim", "segmentation", "OPENVINO", "FP16")  # Engine.export(precision="FP16"), once per session
    summary = json.loads((fp16.parent / "metrics.json").read_text())
    decisions = summary["decisions"]
    assert decisions["checked"] and decisions["table"]["candidate"]["image_label_agreement"] == 1.0
    assert decisions["table"]["candidate"]["image_F1"] >= decisions["table"]["fp32"]["image_F1"] - 0.02


# --- 3. masks of every mode read as the same binary mask ------------------------------------------------


def _mask() -> np.ndarray:
    mask = np.zeros((24, 32), bool)
    mask[4:10, 5:20] = True
    mask[15:22, 25:30] = True
    return mask


@pytest.mark.parametrize(
    "mode",
    [
        "L", "L01", "1", "I;16", "RGB", "RGB-red", "RGBA-opaque", "RGBA-alpha-only", "RGBA-white-transparent",
        "RGBA-half-black", "RGBA-black-pen", "RGBA-empty-layer", "LA", "LA-alpha-only", "LA-white-transparent", "P",
        "soft",
    ],
)  # fmt: skip
def test_masks_of_every_mode_read_the_same(mode: str, tmp_path: Path) -> None:
    mask = _mask()
    u8 = mask.astype(np.uint8) * 255
    zeros, full = np.zeros_like(u8), np.full_like(u8, 255)
    images = {
        "L": lambda: Image.fromarray(u8, "L"),
        "L01": lambda: Image.fromarray(mask.astype(np.uint8), "L"),  # label masks: 0 and 1
        "1": lambda: Image.fromarray(mask).convert("1"),
        "I;16": lambda: Image.fromarray(mask.astype(np.uint16) * 65535),
        "RGB": lambda: Image.fromarray(np.stack([u8] * 3, -1), "RGB"),
        "RGB-red": lambda: Image.fromarray(np.stack([u8, zeros, zeros], -1), "RGB"),
        "RGBA-opaque": lambda: Image.fromarray(np.stack([u8, u8, u8, full], -1), "RGBA"),
        "RGBA-alpha-only": lambda: Image.fromarray(np.stack([full, zeros, zeros, u8], -1), "RGBA"),
        # labelling tools' exports: an opaque red defect on a transparent white background (before: every
        # pixel a defect), a white defect on a half-transparent black one
        "RGBA-white-transparent": lambda: Image.fromarray(np.stack([full, 255 - u8, 255 - u8, u8], -1), "RGBA"),
        "RGBA-half-black": lambda: Image.fromarray(np.stack([u8, u8, u8, np.maximum(u8, 128)], -1), "RGBA"),
        # a black pen on a transparent white background, and a layer with nothing drawn (every pixel transparent)
        "RGBA-black-pen": lambda: Image.fromarray(np.stack([255 - u8, 255 - u8, 255 - u8, u8], -1), "RGBA"),
        "RGBA-empty-layer": lambda: Image.fromarray(np.stack([full, full, full, zeros], -1), "RGBA"),
        "LA": lambda: Image.fromarray(np.stack([u8, full], -1), "LA"),
        "LA-white-transparent": lambda: Image.fromarray(np.stack([full - u8 // 2, u8], -1), "LA"),
        "LA-alpha-only": lambda: Image.fromarray(np.stack([zeros, u8], -1), "LA"),
        "P": lambda: Image.fromarray(np.stack([u8] * 3, -1), "RGB").convert("P", palette=Image.Palette.ADAPTIVE),
        "soft": lambda: Image.fromarray(cv2.GaussianBlur(u8, (0, 0), 1.0), "L"),  # antialiased edges
    }
    path = tmp_path / "m_mask.png"
    image = images[mode]()
    image.save(path)
    # What counts as defect in a soft mask: every pixel above 0 (README, Data), here a wider region.
    expected = np.asarray(image) > 0 if mode == "soft" else np.zeros_like(mask) if mode == "RGBA-empty-layer" else mask
    assert mode != "soft" or expected.sum() > mask.sum()
    np.testing.assert_array_equal(read_mask(path), expected)


def test_an_rgba_mask_gives_the_mask_of_the_grayscale_mask(dataset_copy) -> None:
    root = dataset_copy()
    data = AnomalyDataModule(str(root), num_workers=0)
    data.setup()
    samples = [s for s in data.splits["test"] if s.mask_path]
    before = [AnomalyDataset([s], (64, 64))[0]["mask"] for s in samples]
    for s in samples:  # the same masks, as RGBA with an opaque alpha channel
        gray = np.asarray(Image.open(s.mask_path))
        Image.fromarray(np.stack([gray, gray, gray, np.full_like(gray, 255)], -1), "RGBA").save(s.mask_path)
    after = [AnomalyDataset([s], (64, 64))[0]["mask"] for s in samples]
    assert all(bool((a == b).all()) for a, b in zip(before, after, strict=True))
    assert any(bool(a.any()) for a in after) and not all(bool(a.all()) for a in after)


# --- 5. warnings where the numbers would mislead ---------------------------------------------------------


def test_inverted_masks_are_named_in_train_and_test(dataset_copy, tmp_path: Path) -> None:
    # Before: inverted masks trained without a word, with a pixel AUROC near the image AUROC (it follows the
    # image scores), a pixel threshold far too low and predicted masks over nearly every image.
    root = dataset_copy()
    masks = sorted((root / "ground_truth").glob("*/*_mask.png"))
    shares = []
    for path in masks:
        mask = read_mask(path)
        shares.append(float((~mask).mean()))
        cv2.imwrite(str(path), (~mask).astype(np.uint8) * 255)  # defect black on white
    assert min(shares) > 0.5  # what the warning will report: every inverted mask marks most of its image
    small = ["--model.init_args.input_size", "[64,64]", "--data.num_workers", "0"]
    work_dir = tmp_path / "ws"
    assert main(["train", "--config", RECIPE, "--data_root", str(root), "--work_dir", str(work_dir), *small]) == 0
    train = json.loads((work_dir / latest(work_dir)["train"] / "metrics.json").read_text())
    named = [w for w in train["warnings"] if "look inverted" in w]
    assert len(named) == 1 and "validation split" in named[0], train["warnings"]
    assert main(["test", "--work_dir", str(work_dir), "--data_root", str(root)]) == 0
    tested = json.loads((work_dir / latest(work_dir)["test"] / "metrics.json").read_text())
    assert any("look inverted" in w and "test split" in w for w in tested["warnings"]), tested["warnings"]


def test_masks_as_drawn_are_not_taken_for_inverted(trained_padim: dict, sample_root: Path, tmp_path: Path) -> None:
    summary = trained_padim["summary"]
    assert not any("look inverted" in w for w in summary["warnings"])
    tested = Engine(work_dir=tmp_path / "ws").test(checkpoint=trained_padim["checkpoint"])
    assert not any("look inverted" in w for w in tested.warnings)


def test_warnings_for_a_model_that_learned_nothing_and_for_other_data(dataset_copy, tmp_path: Path, capsys) -> None:
    root = dataset_copy()
    goods = sorted((root / "test" / "good").glob("*.png"))
    for i, path in enumerate(sorted((root / "test").glob("*/*.png"))):  # defects replaced by normal images
        if path.parent.name != "good":
            shutil.copy(goods[i % len(goods)], path)
    work_dir = tmp_path / "ws"
    small = ["--model.init_args.input_size", "[64,64]", "--data.num_workers", "0"]
    assert main(["train", "--config", RECIPE, "--data_root", str(root), "--work_dir", str(work_dir), *small]) == 0
    err = capsys.readouterr().err
    train = json.loads((work_dir / latest(work_dir)["train"] / "metrics.json").read_text())
    assert any("near chance" in w and "validation image AUROC" in w for w in train["warnings"]), train["warnings"]
    assert "near chance" in err
    # otx test says it of its pixels too (before: of the image level only)
    assert main(["test", "--data_root", str(root), "--work_dir", str(work_dir), "--data.num_workers", "0"]) == 0
    test = json.loads((work_dir / latest(work_dir)["test"] / "metrics.json").read_text())
    assert any(w.startswith("test pixel AUROC is") and "near chance" in w for w in test["warnings"]), test["warnings"]
    # A recipe naming another model, on data the model was not trained on: both said in test's summary.
    other = dataset_copy("carpet_like")
    stfpm = "recipe/anomaly_segmentation/stfpm.yaml"
    main(["test", "--config", stfpm, "--data_root", str(other), "--work_dir", str(work_dir), "--data.num_workers", "0"])
    test = json.loads((work_dir / latest(work_dir)["test"] / "metrics.json").read_text())
    assert any("the recipe's model is Stfpm" in w and "holds Padim" in w for w in test["warnings"])
    assert any("is not the data the model was trained on" in w for w in test["warnings"])
    report = (work_dir / latest(work_dir)["test"] / "report.html").read_text()
    assert "the recipe&#x27;s model is Stfpm" in report
    # The training images replaced in the same folder: said (before: the same path counted as the same data)
    assert not any("changed since the model was trained" in w for w in test["warnings"])
    shutil.rmtree(root / "train" / "good")
    shutil.copytree(other / "train" / "good", root / "train" / "good")
    assert main(["test", "--data_root", str(root), "--work_dir", str(work_dir), "--data.num_workers", "0"]) == 0
    test = json.loads((work_dir / latest(work_dir)["test"] / "metrics.json").read_text())
    said = [w for w in test["warnings"] if "changed since the model was trained" in w]
    assert len(said) == 1 and said[0].startswith(f"the training images at {root} changed"), test["warnings"]


def test_without_anomalous_validation_images_every_validation_image_is_normal_and_that_is_said(
    dataset_copy, tmp_path: Path
) -> None:
    from otx.models import Padim

    root = dataset_copy()
    for folder in (root / "test").iterdir():  # only good test images, no masks
        if folder.name != "good":
            shutil.rmtree(folder)
    shutil.rmtree(root / "ground_truth")
    engine = Engine(
        model=Padim(input_size=(64, 64)), data=AnomalyDataModule(str(root), num_workers=0), work_dir=tmp_path
    )
    summary = engine.train()
    assert any("no anomalous images" in w and "image threshold" in w for w in summary["warnings"]), summary["warnings"]
    assert any("add defect images (test/<defect>)" in w for w in summary["warnings"]), summary["warnings"]
    # the pixel threshold is fitted the same way (before: unsaid, and the test's pixel F1 was 0.098; bug bash)
    pixel = [w for w in summary["warnings"] if "the pixel threshold" in w and "was not learned" in w]
    assert len(pixel) == 1 and "add defect images (test/<defect>, with ground_truth/ masks)" in pixel[0], pixel
    assert not any("flags nothing" in w for w in summary["warnings"])  # one line says it
    data = AnomalyDataModule(str(root), num_workers=0)
    data.setup()
    fitted = {s.path for s in data.splits["val"]}
    predictions = engine.predict(source=root / "test" / "good", checkpoint=summary["checkpoint"], visualize=False)
    labels = [p.label_name for p in predictions if p.image_path in fitted]
    assert len(labels) == len(fitted) and set(labels) == {"normal"}  # the highest one included
    tested = engine.test(checkpoint=summary["checkpoint"])  # learned on validation: nothing to say of it here
    assert not any("was not learned" in w for w in tested["warnings"]), tested["warnings"]
    # With a val/ folder of its own, the defect images to add go there (before: "test/<defect>").
    (root / "val" / "good").mkdir(parents=True)
    for image in sorted((root / "test" / "good").iterdir())[:4]:
        image.rename(root / "val" / "good" / image.name)
    data = AnomalyDataModule(str(root), num_workers=0)
    summary = Engine(model=Padim(input_size=(64, 64)), data=data, work_dir=tmp_path).train()
    assert any("add defect images (val/<defect>)" in w for w in summary["warnings"]), summary["warnings"]


def test_without_normal_validation_images_the_cause_is_said_and_one_class_metrics_read_na(
    dataset_copy, tmp_path: Path, capsys
) -> None:
    root = dataset_copy()
    shutil.rmtree(root / "test" / "good")  # only defect images to validate on
    args = ["train", "--config", "recipe/anomaly_classification/padim.yaml", "--data_root", str(root)]
    assert main([*args, "--model.init_args.input_size", "[64,64]", "--work_dir", str(tmp_path / "ws")]) == 0
    out, err = capsys.readouterr()
    # before: only "flags every image as anomalous", which hid why; then "so this model flags every image
    # as anomalous", which it does not: the threshold sits just below the lowest validation score
    assert "the validation split has no normal images" in err
    assert "just below the lowest anomalous validation score, so only images scoring lower are called normal" in err
    assert "n/a" in out and "nan" not in out  # the AUROC of one class, null in metrics.json


def test_test_folders_of_one_image_each_are_named_as_the_reason_for_no_validation(
    dataset_copy, tmp_path: Path, capsys
) -> None:
    root = dataset_copy()
    for folder in (root / "test").iterdir():  # one image per folder (before: "add test/good and test/<defect>
        for image in sorted(folder.iterdir())[1:]:  # folders", which were there)
            image.unlink()
            (root / "ground_truth" / folder.name / f"{image.stem}_mask.png").unlink(missing_ok=True)
    args = ["train", "--config", "recipe/anomaly_classification/padim.yaml", "--data_root", str(root)]
    assert main([*args, "--work_dir", str(tmp_path / "ws")]) == 1
    err = capsys.readouterr().err
    assert "each test/ folder holds one image, which stays in the test split at val_split 0.5" in err
    # and what it says helps: a second image in each folder gives validation images
    assert main([*args, "--data.val_split", "0.6", "--model.init_args.input_size", "[64,64]",
                 "--work_dir", str(tmp_path / "ws")]) == 0  # fmt: skip


def test_a_one_class_test_split_is_not_called_a_broken_model(trained_padim: dict, dataset_copy, tmp_path: Path) -> None:
    for kept in ("defects", "good"):
        root = dataset_copy().rename(tmp_path / f"only_{kept}")
        for folder in (root / "test").iterdir():
            if (folder.name == "good") == (kept == "defects"):
                shutil.rmtree(folder)
        if kept == "good":
            shutil.rmtree(root / "ground_truth")
        work_dir = tmp_path / kept
        engine = Engine(data=AnomalyDataModule(str(root), num_workers=0), work_dir=work_dir)
        result = engine.test(checkpoint=trained_padim["checkpoint"])
        # before: "flags every image as anomalous" for defects only, "flags nothing" for good only
        assert not any("threshold" in w and "every test score" in w for w in result["warnings"]), result["warnings"]
        metrics = json.loads((work_dir / latest(work_dir)["test"] / "metrics.json").read_text())["metrics"]
        assert metrics["image_AUROC"] is None
        if kept == "good":  # no anomalous image: F1 is 0 / 0 unless normal ones are flagged (before: 0.0 always)
            flagged = json.loads((work_dir / latest(work_dir)["test"] / "metrics.json").read_text())["counts"]
            assert (metrics["image_F1"] is None) == (flagged.get("anomalous", 0) == 0), (metrics, flagged)
        report = (work_dir / latest(work_dir)["test"] / "report.html").read_text()
        assert ">nan<" not in report and ">n/a<" in report  # before: nan for the figures one class cannot give


def test_the_report_legend_names_what_its_overlays_draw(
    trained_padim: dict, sample_root: Path, tmp_path: Path, monkeypatch
) -> None:
    import re

    checkpoint = Path(trained_padim["checkpoint"])
    monkeypatch.chdir(checkpoint.parent)  # the model given relative to where the command runs, and from ~
    monkeypatch.setenv("HOME", str(checkpoint.parent.parent))
    given = {"classification": checkpoint.name, "detection": f"~/{checkpoint.parent.name}/{checkpoint.name}"}
    # Another category than the model was trained on, so that both kinds of worst cases have images.
    for task, drawn, absent in (
        ("classification", "Overlays: the image, ground truth", "heat map"),  # before: a heat map it did not draw
        ("detection", "predicted boxes in magenta", "mask outline"),
    ):
        work_dir = tmp_path / task
        data = AnomalyDataModule(str(sample_root / "carpet_like"), num_workers=0)
        result = Engine(data=data, task=task, work_dir=work_dir).test(checkpoint=given[task])
        report = (work_dir / latest(work_dir)["test"] / "report.html").read_text()
        legends = re.findall(r"Overlays: [^<]*", report)
        assert legends and all(drawn in legend and absent not in legend for legend in legends), legends
        # recorded absolute, readable from anywhere (before: 'model.ckpt' as typed; helper bug bash)
        assert result["checkpoint"] == str(checkpoint) and f"model: <code>{checkpoint}</code>" in report


def test_the_report_ranks_worst_cases_by_raw_score_says_how_many_and_how_thresholds_were_set(
    sample_root: Path, tmp_path: Path
) -> None:
    import base64
    import re

    from otx.checkpoint import load_checkpoint
    from otx.data.io import read_image
    from otx.models import Padim
    from otx.preprocess import resize_image
    from otx.visualize import overlay

    # A threshold given below every score: every good test image is a false positive, scored 1 once normalised.
    data = AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0)
    engine = Engine(model=Padim(input_size=(64, 64), image_threshold=-1e6), data=data, work_dir=tmp_path)
    tested = engine.test(checkpoint=engine.train()["checkpoint"])
    run = Path(tested["report"]).parent
    records = json.loads((run / "predictions.json").read_text())
    good = [r for r in records if Path(r["image"]).parent.name == "good"]
    assert len(good) > 4 and all(r["label"] == "anomalous" and r["score"] == 1.0 for r in good)
    # The worst false positives are the good images of highest raw score (before: the first four in file order).
    model, _ = load_checkpoint(tested["checkpoint"])
    with torch.inference_mode():
        raw = {
            r["image"]: float(
                model(resize_image(torch.from_numpy(read_image(r["image"])).permute(2, 0, 1) / 255.0, (64, 64))[None])[
                    1
                ]
            )
            for r in good
        }
    expected = [f"good/{Path(p).name}" for p in sorted(raw, key=raw.get, reverse=True)[:4]]
    # predictions.json carries those raw scores, unclipped (before: only the clipped 1.0 of every good image)
    assert all(r["raw_score"] == pytest.approx(raw[r["image"]], rel=1e-4, abs=1e-4) for r in good)
    report = (run / "report.html").read_text()
    section = report.split("Worst false positives")[1].split("Worst false negatives")[0]
    assert section.startswith(f" (4 of {len(good)}, by raw image score)</h2>")  # before: no word of the others
    assert re.findall(r"<figcaption>([^ <]+) \(full size", section) == expected
    # Embedded as JPEG thumbnails at most 520 pixels wide; the overlays at full size beside the report.
    for i, encoded in enumerate(re.findall(r'src="data:image/jpeg;base64,([^"]+)"', section), start=1):
        thumb = cv2.imdecode(np.frombuffer(base64.b64decode(encoded), np.uint8), cv2.IMREAD_COLOR)
        full = cv2.imread(str(run / "report" / f"false_positives_{i}.png"))
        width = min(520, full.shape[1])
        assert thumb.shape[1] == width and abs(thumb.shape[0] - full.shape[0] * width / full.shape[1]) <= 1
    # Each overlay shows its map, made again for the report (otx test keeps no full-size map): as otx predict draws it
    worst = next(r["image"] for r in good if f"good/{Path(r['image']).name}" == expected[0])
    (predicted,) = engine.predict(source=worst, checkpoint=tested["checkpoint"])
    drawn = cv2.imread(str(next(tmp_path.glob(f"*-predict/predictions/{predicted.overlay_file}")))).astype(np.int16)
    reported = cv2.imread(str(run / "report" / "false_positives_1.png"))
    assert predicted.anomaly_map is None  # (otx predict keeps no map either; drawn without one:)
    unmapped = cv2.cvtColor(overlay(read_image(worst), predicted), cv2.COLOR_RGB2BGR)
    assert np.abs(drawn - reported).max() <= 2 < np.abs(drawn - unmapped).max()
    # The thresholds, raw, with how each was set.
    assert tested["threshold_origin"] == {
        "image": "given (image_threshold)",
        "pixel": "learned: the F1-best on the validation split",
    }
    assert "<td>image</td><td>-1e+06</td><td>given (image_threshold)</td>" in report
    # The decisions at the threshold, recounted from predictions.json, whose records carry each image's truth
    from sklearn.metrics import confusion_matrix

    truth = [r["true_label"] for r in records]
    assert truth == ["normal" if Path(r["image"]).parent.name == "good" else "anomalous" for r in records]
    assert [r["defect"] for r in records] == [Path(r["image"]).parent.name for r in records]
    flagged = [r["label"] == "anomalous" for r in records]
    (tn, fp), (fn, tp) = confusion_matrix([t == "anomalous" for t in truth], flagged)
    decisions = tested["decisions"]
    assert (decisions["found"], decisions["missed"], decisions["flagged"], decisions["passed"]) == (tp, fn, fp, tn)
    assert fp == len(good) and decisions["false_alarm_rate"] == 1.0 and decisions["threshold"] == -1e6
    assert json.loads((run / "metrics.json").read_text())["decisions"] == decisions
    assert "<h2>Decisions at the image threshold</h2>" in report
    assert f"<td>normal</td><td>{len(good)}</td><td>{fp} (false alarms)</td><td>0 (passed)</td>" in report
    assert "Worst false negatives (0)</h2>" in report  # the count, also where every one is shown


def test_a_pixel_threshold_copied_from_the_image_threshold_is_not_called_learned(dataset_copy, tmp_path: Path) -> None:
    from otx.models import Padim

    root = dataset_copy()
    shutil.rmtree(root / "ground_truth")  # no defect pixels: the pixel threshold takes the image threshold's value
    engine = Engine(
        model=Padim(input_size=(64, 64)), data=AnomalyDataModule(str(root), num_workers=0), work_dir=tmp_path
    )
    tested = engine.test(checkpoint=engine.train()["checkpoint"])
    assert tested["thresholds"]["pixel_threshold"] == tested["thresholds"]["image_threshold"]
    assert tested["threshold_origin"] == {  # before: "pixel": "learned: the F1-best on the validation split"
        "image": "learned: the F1-best on the validation split",
        "pixel": "the image threshold's value: the validation split had no defect pixels to learn one from",
    }


def test_a_pixel_threshold_set_by_hand_that_marks_images_called_normal_is_warned(
    sample_root: Path, tmp_path: Path
) -> None:
    # Before: masks on images labelled normal, without a word, when a hand-set pixel threshold lay below what
    # the learned image threshold lets through (a bug bash: 4 of 9 normal test images).
    from otx.models import Padim

    data = AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0)
    learned = Engine(model=Padim(input_size=(64, 64)), data=data, work_dir=tmp_path / "a").train()
    low = learned["thresholds"]["pixel_min"]  # every pixel at or above it: every mask full
    summary = Engine(model=Padim(input_size=(64, 64), pixel_threshold=low), data=data, work_dir=tmp_path / "b").train()
    said = [w for w in summary["warnings"] if "validation images called normal have pixels at or above" in w]
    assert not [w for w in learned["warnings"] if "called normal have pixels" in w]
    assert len(said) == 1 and "(pixel set by hand)" in said[0], summary["warnings"]
    normal = [p for p in Engine(work_dir=tmp_path / "b").predict(checkpoint=summary["checkpoint"]) if not p.pred_label]
    assert normal and all(p.pred_mask.any() for p in normal)  # what the warning says: their masks are not empty


def test_images_called_anomalous_with_an_empty_mask_are_said(
    sample_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Before: an image threshold below what the pixel threshold lets through labelled images anomalous with an
    # empty mask and no outline, without a word (a bug bash: 4 of 57 magnetic_tile images), where detection
    # said the same of boxes.
    from otx.models import Padim

    data = AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0)
    summary = Engine(model=Padim(input_size=(64, 64), pixel_threshold=1e30), data=data, work_dir=tmp_path).train()
    said = [w for w in summary["warnings"] if "validation images called anomalous have no pixel at or above" in w]
    assert len(said) == 1 and "(pixel set by hand); lower the pixel threshold" in said[0], summary["warnings"]
    capsys.readouterr()
    predictions = Engine(work_dir=tmp_path).predict(source=sample_root / "bottle_like" / "test", visualize=False)
    blank = [p for p in predictions if p.pred_label and not p.pred_mask.any()]
    assert blank and len(blank) == sum(p.pred_label for p in predictions)  # every mask empty at that threshold
    note = " ".join(capsys.readouterr().err.split())
    assert f"{len(blank)} image(s) labelled anomalous have an empty mask (e.g." in note, note
    assert "no pixel of the map reaches the pixel threshold" in note
    (run,) = tmp_path.glob("*-predict")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["counts"]["anomalous_without_mask"] == len(blank)
    # otx predict's metrics.json says which thresholds labelled the images (raw_score is in their units)
    assert metrics["thresholds"]["pixel_threshold"] == pytest.approx(1e30, rel=1e-6)
    assert metrics["thresholds"]["image_threshold"] == pytest.approx(summary["thresholds"]["image_threshold"])
    assert metrics["threshold_origin"]["pixel"] == "given (pixel_threshold)"
    # classification has no masks: its pixel threshold decides nothing, and is not warned of (before: "above every
    # validation score ... every mask is empty")
    classified = Engine(
        model=Padim(input_size=(64, 64), pixel_threshold=1e30),
        data=AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0),
        task="classification",
        work_dir=tmp_path / "c",
    ).train()
    assert not [w for w in classified["warnings"] if "pixel" in w], classified["warnings"]


def test_an_overlay_thumbnail_keeps_the_aspect_ratio_within_its_width() -> None:
    from otx.visualize import thumbnail

    canvas = np.zeros((3000, 4000, 3), np.uint8)
    canvas[:, 2000:] = (255, 0, 255)
    thumb = cv2.imdecode(np.frombuffer(thumbnail(canvas, 520), np.uint8), cv2.IMREAD_COLOR)
    assert thumb.shape == (390, 520, 3)  # a 12-megapixel overlay: 15 MB as PNG, embedded at report width
    assert np.abs(thumb[:, 270:].astype(int) - (255, 0, 255)).max() < 12 and thumb[:, :250].max() < 12  # BGR
    small = np.full((100, 80, 3), 7, np.uint8)
    assert cv2.imdecode(np.frombuffer(thumbnail(small, 520), np.uint8), cv2.IMREAD_COLOR).shape == (100, 80, 3)


def test_a_model_ranking_normal_above_anomalous_is_warned() -> None:
    from sklearn.metrics import roc_auc_score

    from otx.checks import threshold_warnings

    labels = np.array([0] * 20 + [1] * 20)
    scores = np.where(labels == 1, 1.0, 2.0) + np.random.default_rng(0).normal(0, 0.3, 40)
    auroc = roc_auc_score(labels, scores)
    assert auroc < 0.2
    found = threshold_warnings(scores, labels, 1.5, "image", "test")
    assert any(f"test image AUROC is {auroc:.3f}, below chance" in w for w in found), found  # before: no warning
    assert not any("below chance" in w for w in threshold_warnings(-scores, labels, -1.5, "image", "test"))


def test_test_images_copied_from_training_are_warned_at_training(dataset_copy, tmp_path: Path) -> None:
    from otx.checks import copies_warning
    from otx.models import Padim

    root = dataset_copy()
    data = AnomalyDataModule(str(root), num_workers=0)
    data.setup()
    train = [s.path for s in data.splits["train"]]
    others = [s.path for s in (*data.splits["val"], *data.splits["test"])]
    assert copies_warning(train, others, root) is None  # the sample data has none
    for i, source in enumerate(sorted((root / "train" / "good").iterdir())[:3]):
        shutil.copy(source, root / "test" / "good" / f"copy_{i}{source.suffix}")
    # files of one size but other bytes are no copies
    (tmp_path / "a.bin").write_bytes(b"0123456789")
    (tmp_path / "b.bin").write_bytes(b"0123456780")
    assert copies_warning([str(tmp_path / "a.bin")], [str(tmp_path / "b.bin")]) is None
    data = AnomalyDataModule(str(root), num_workers=0)
    summary = Engine(model=Padim(input_size=(64, 64)), data=data, work_dir=tmp_path / "ws").train()
    (line,) = [w for w in summary["warnings"] if "byte-for-byte copies" in w]
    assert line.startswith("3 validation/test image(s)") and "= train/good/" in line  # before: no word


def test_an_unmasked_test_image_is_not_said_to_leave_a_threshold() -> None:
    from otx.checks import unmasked_warning
    from otx.data.dataset import Sample

    images = [Sample("/d/test/scratch/000.png", 1, "scratch")]
    assert "left out of the pixel threshold and the pixel and box metrics" in unmasked_warning(images, "validation")
    assert "left out of the pixel and box metrics" in unmasked_warning(images, "test")  # otx test fits none


def test_an_anomalous_validation_image_without_a_mask_is_left_out_of_the_pixel_threshold(
    dataset_copy, tmp_path: Path
) -> None:
    from sklearn.metrics import precision_recall_curve

    from otx.checkpoint import load_checkpoint
    from otx.models import Padim
    from otx.postprocess import f1_adaptive_threshold

    root = dataset_copy()
    data = AnomalyDataModule(str(root), num_workers=0)
    data.setup()
    defects = [s for s in data.splits["val"] if s.label == 1]
    unmasked = max(defects, key=lambda s: int(read_mask(s.mask_path).sum()))  # the largest defect: it counts most
    Path(unmasked.mask_path).unlink()
    engine = Engine(
        model=Padim(input_size=(64, 64)), data=AnomalyDataModule(str(root), num_workers=0), work_dir=tmp_path
    )
    summary = engine.train()
    assert any("1 anomalous validation image(s) have no mask" in w for w in summary["warnings"]), summary["warnings"]
    model, _ = load_checkpoint(summary["checkpoint"])
    data.setup()  # the same split, now without that mask
    maps, masks, known = [], [], []
    with torch.no_grad():
        for batch in data.dataloader("val", model.preprocessor):
            maps.append(model(batch["image"])[0].flatten(1))
            masks.append(batch["mask"].flatten(1))
            known += [
                s.label == 0 or s.mask_path is not None
                for s in data.splits["val"][len(known) : len(known) + len(batch["label"])]
            ]
    maps, masks, known = torch.cat(maps).numpy(), torch.cat(masks).numpy(), np.array(known)
    assert known.sum() == len(known) - 1

    def f1(values: np.ndarray, truth: np.ndarray, threshold: float) -> float:
        predicted = values >= threshold
        return 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())

    def best_f1(values: np.ndarray, truth: np.ndarray) -> float:  # scikit-learn's curve, independent of otx
        precision, recall, _ = precision_recall_curve(truth.ravel(), values.ravel())
        return float(np.max(2 * precision * recall / np.maximum(precision + recall, 1e-12)))

    threshold = summary["thresholds"]["pixel_threshold"]
    assert f1(maps[known], masks[known], threshold) == pytest.approx(best_f1(maps[known], masks[known]), abs=1e-6)
    # otx's rule (the middle of the F1-optimal interval, checked in test_metrics.py) on the images with a
    # known truth; counting the unmasked image's pixels as normal, as before, gives another threshold.
    assert threshold == pytest.approx(f1_adaptive_threshold(maps[known], masks[known]), rel=1e-6)
    assert f1_adaptive_threshold(maps, masks) != pytest.approx(threshold, rel=1e-6)
    # The maps' range, which normalises every map, still spans all of them, the unmasked one included.
    assert summary["thresholds"]["pixel_max"] == pytest.approx(float(maps.max()), rel=1e-5)
    assert summary["thresholds"]["pixel_min"] == pytest.approx(float(maps.min()), rel=1e-5)


def test_manual_threshold_above_every_score_warns_that_nothing_is_flagged(dataset_copy, tmp_path: Path) -> None:
    from otx.models import Padim

    engine = Engine(
        model=Padim(input_size=(64, 64), image_threshold=1e9),
        data=AnomalyDataModule(str(dataset_copy()), num_workers=0),
        work_dir=tmp_path,
    )
    warnings = engine.train()["warnings"]
    assert any("image threshold" in w and "flags nothing" in w for w in warnings), warnings


def test_a_grayscale_model_warns_about_colour_images(dataset_copy, tmp_path: Path, capsys) -> None:
    root = dataset_copy()
    colour = tmp_path / "colour"
    shutil.copytree(root / "test" / "good", colour)
    for path in root.rglob("*.png"):
        if "ground_truth" not in path.parts:
            Image.open(path).convert("L").save(path)
    work_dir = tmp_path / "ws"
    small = ["--model.init_args.input_size", "[64,64]", "--data.num_workers", "0"]
    assert main(["train", "--config", RECIPE, "--data_root", str(root), "--work_dir", str(work_dir), *small]) == 0
    capsys.readouterr()
    assert main(["predict", "--work_dir", str(work_dir), "--source", str(colour), "--visualize", "false"]) == 0
    err = capsys.readouterr().err
    metrics = json.loads((work_dir / latest(work_dir)["predict"] / "metrics.json").read_text())
    assert any("12 of 12 input images are colour" in w and "grayscale" in w for w in metrics["warnings"])
    assert "trained on grayscale images" in err
    # The same from the exported model (the training images' profile travels in its metadata).
    assert main(["export", "--work_dir", str(work_dir)]) == 0
    xml = work_dir / latest(work_dir)["export"] / "exported_model.xml"
    capsys.readouterr()
    assert main(["predict", "--work_dir", str(work_dir), "--checkpoint", str(xml), "--source", str(colour)]) == 0
    assert "trained on grayscale images" in capsys.readouterr().err


# --- 6. interruption and failed runs ----------------------------------------------------------------------


def _otx(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OTX_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "otx.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


_STOP_IN_FINALISER = """
import os, signal, sys, time
from otx import cli
cli._install_signal_handlers()
class Finalised:
    def __del__(self):  # Python swallows what a finaliser raises (as at fork in DataLoader workers)
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(10000))
try:
    item = Finalised()
    del item
    for _ in range(200):
        time.sleep(0.01)
    print("kept running")
except KeyboardInterrupt as stop:
    print("stopped by", stop)
"""


def test_a_stop_that_arrives_inside_a_finaliser_still_stops_without_a_traceback() -> None:
    done = subprocess.run([sys.executable, "-c", _STOP_IN_FINALISER], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "stopped by SIGTERM", (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "SIGTERM received" in done.stderr


_STOP_WITH_A_HUNG_CLEANUP = """
import json, os, signal, sys, threading, time
from pathlib import Path
from otx import cli
from otx.workdir import WorkDir
cli.STOP_GRACE_S = 2.0
work_dir = WorkDir(Path(sys.argv[1]))
json.dump({"train": "earlier"}, open(work_dir.root / "latest.json", "w"))
run = work_dir.new_run("train")
import otx.training  # (the watchdog reads the saved epochs through it)
if sys.argv[2] == "saved":  # an epoch saved before the stop
    (run.path / otx.training.CHECKPOINT_DIR).mkdir()
    (run.path / otx.training.CHECKPOINT_DIR / "epoch1.ckpt").write_bytes(b"state")
held = threading.Lock()
held.acquire()
cli._install_signal_handlers()
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
except KeyboardInterrupt:
    held.acquire()  # a clean-up that waits for ever on a lock left held
print("never")
"""


@pytest.mark.parametrize("saved", ["saved", "none"])
def test_a_stop_whose_clean_up_hangs_still_ends_the_process_and_says_where_it_hung(saved: str, tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _STOP_WITH_A_HUNG_CLEANUP, str(tmp_path / "ws"), saved],
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    assert done.returncode == 128 + signal.SIGTERM and done.stdout == "", (done.stdout, done.stderr)
    run = next((tmp_path / "ws").glob("*-train"))
    # and how to go on from the saved epoch, as the clean-up would have said (before: not said)
    resume = [f"its saved epochs are kept: continue it with the same command and --resume {run}"]
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        "otx: SIGTERM received, stopping; earlier runs and latest.json stay as they were",
        *(resume if saved == "saved" else []),
    ], done.stderr
    assert took < 30, took  # the 2 s grace, not the 30 s sleep nor for ever
    log = next((tmp_path / "ws").glob("*-train/otx.log")).read_text()
    assert "train failed: interrupted (SIGTERM); the clean-up did not end within 2 s" in log
    waited_at = next(n for n, line in enumerate(_STOP_WITH_A_HUNG_CLEANUP.splitlines(), 1) if "for ever" in line)
    assert "Current thread" in log and f'File "<string>", line {waited_at} in <module>' in log  # where it hung
    assert json.loads((tmp_path / "ws" / "latest.json").read_text()) == {"train": "earlier"}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_training_at_once_and_keeps_earlier_runs(
    signum: int, trained_padim: dict, sample_root: Path, tmp_path: Path
) -> None:
    work_dir = tmp_path / "ws"
    shutil.copytree(trained_padim["work_dir"], work_dir)
    before = (work_dir / "latest.json").read_bytes()
    args = [
        "train",
        "--config",
        "recipe/anomaly_segmentation/stfpm.yaml",
        "--data_root",
        str(sample_root / "bottle_like"),
    ]
    args += ["--work_dir", str(work_dir), "--max_epochs", "50", "--model.init_args.input_size", "[96,96]"]
    earlier = set(work_dir.glob("*-train"))
    process = _otx(args, tmp_path)  # two data-loading workers (the recipe's default)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # until the first epoch has ended: training is under way
        if any((run / "logs" / "metrics.csv").exists() for run in set(work_dir.glob("*-train")) - earlier):
            break
        time.sleep(0.5)
    assert process.poll() is None, process.communicate()
    process.send_signal(signum)
    sent = time.monotonic()
    out, err = process.communicate(timeout=60)
    stopped = time.monotonic() - sent
    name = signal.Signals(signum).name
    lines = [line for line in err.splitlines() if line.strip()]
    assert process.returncode == 128 + signum and "Traceback" not in err  # 130 SIGINT, 143 SIGTERM (was 130)
    runs = sorted(work_dir.glob("*-train"))
    from otx.training import newest_state

    # and how to go on, where the stop came after an epoch was saved (before: that line was not there)
    resume = f"its saved epochs are kept: continue it with the same command and --resume {runs[-1].resolve()}"
    saved = [resume] if newest_state(runs[-1]) is not None else []
    assert lines == [f"otx: {name} received, stopping; earlier runs and latest.json stay as they were", *saved], err
    assert stopped < 30, stopped  # seconds, not the rest of 50 epochs
    assert (work_dir / "latest.json").read_bytes() == before
    log = (runs[-1] / "otx.log").read_text()
    assert f"train failed: interrupted ({name})" in log and not (runs[-1] / "model.ckpt").exists()


@pytest.mark.e2e
def test_a_stop_while_an_epochs_data_loader_starts_its_workers_ends_in_a_moment(
    sample_root: Path, tmp_path: Path
) -> None:
    # A CI run: a stop that landed while the next epoch's data loader started its two workers ended 20 s later,
    # through otx's watchdog and without the resume line. The half-made iterator was left to Python's cyclic
    # collector, which closed its queues before the iterator told its workers to end: torch waited 5 s per worker.
    stamp = tmp_path / "stopped_at"
    stop = f"[{{class_path: helpers.StopWhileLoaderStarts, init_args: {{epochs: 1, stamp: '{stamp}'}}}}]"
    work_dir = tmp_path / "ws"
    args = ["--config", "recipe/anomaly_segmentation/stfpm.yaml", "--data_root", str(sample_root / "bottle_like")]
    args += ["--work_dir", str(work_dir), "--max_epochs", "3", "--model.init_args.input_size", "[64,64]"]
    process = start_otx_group("train", *args, "--trainer.callbacks", stop, cwd=tmp_path)  # two loading workers
    _, err = process.communicate(timeout=240)
    took = time.time() - float(stamp.read_text())
    run = next(work_dir.glob("*-train"))
    assert process.returncode == 130 and "Traceback" not in err, err
    assert [line for line in err.splitlines() if line.strip()] == [
        "otx: SIGINT received, stopping; earlier runs and latest.json stay as they were",
        f"its saved epochs are kept: continue it with the same command and --resume {run.resolve()}",
    ], err
    assert took < 4, took  # 0.13-0.15 s; was 5.2 s here, 10.2 s in a loop of stops (torch's 5 s per worker)
    log = (run / "otx.log").read_text()
    assert "train failed: interrupted (SIGINT); earlier runs are unchanged" in log and "did not end" not in log


def test_a_stop_while_a_finished_run_is_made_the_latest_says_so_and_exits_0(
    trained_padim: dict, sample_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # Before: a stop between latest.json's update and the run's "finished" mark said "latest.json stay as
    # they were" (it had changed) and exited 130. Now it is held until both are done, then said as it is.
    from otx.workdir import WorkDir

    work = tmp_path / "ws"
    shutil.copytree(trained_padim["work_dir"], work)
    marked = WorkDir.mark_latest

    def stopped_while_marking(self: WorkDir, run) -> None:  # type: ignore[no-untyped-def]
        marked(self, run)
        signal.raise_signal(signal.SIGINT)  # Ctrl+C just after latest.json was written

    monkeypatch.setattr(WorkDir, "mark_latest", stopped_while_marking)
    image = str(sample_root / "bottle_like" / "test" / "good" / "000.png")
    capsys.readouterr()
    assert main(["predict", "--work_dir", str(work), "--source", image, "--visualize", "false"]) == 0
    err = capsys.readouterr().err
    run = json.loads((work / "latest.json").read_text())["predict"]
    assert f"otx: SIGINT received after the run finished; {work / run} and latest.json are written" in err, err
    assert "stay as they were" not in err


def test_a_stop_held_while_latest_json_waits_for_its_lock_is_not_announced_as_stopping(
    trained_padim: dict, sample_root: Path, tmp_path: Path
) -> None:
    # Before: a stop held while latest.json waited for its lock (another otx finishing in the same work dir)
    # was announced after a second by the listener thread: "stopping; ... latest.json stay as they were",
    # exit 0 and latest.json changed (bug bash).
    from filelock import FileLock

    from helpers import start_otx_group
    from otx.workdir import LATEST_LOCK

    work = tmp_path / "ws"
    shutil.copytree(trained_padim["work_dir"], work)
    before = set(work.iterdir())
    lock = FileLock(work / LATEST_LOCK)
    lock.acquire()  # another otx, finishing in this work dir
    try:
        image = str(sample_root / "bottle_like" / "test" / "good" / "000.png")
        process = start_otx_group("predict", "--work_dir", str(work), "--source", image, cwd=tmp_path)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            new = [p for p in set(work.iterdir()) - before if (p / "metrics.json").is_file()]
            if new:
                break
            time.sleep(0.05)
        assert process.poll() is None and new, process.communicate()
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        time.sleep(3)  # the listener thread looks after 1 s
    finally:
        lock.release()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    said = [line for line in err.splitlines() if line.startswith("otx: SIGINT")]
    assert said == [f"otx: SIGINT received after the run finished; {new[0]} and latest.json are written"], err
    assert json.loads((work / "latest.json").read_text())["predict"] == new[0].name


def test_a_stop_after_the_command_ended_exits_at_once_with_its_code(tmp_path: Path) -> None:
    # Before: a stop during the interpreter's exit (a second or so after a finished run) ended it with 130, silently
    script = (
        "import os, signal, time\n"
        "from otx import cli\n"
        "cli._ended(3)\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(30)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "otx: SIGINT received after the command ended (exit code 3)"


def _ended_with(setup: str) -> subprocess.CompletedProcess:
    """A process that ends its command with code 3 (``cli._ended``) after running ``setup`` (Python lines)."""
    script = f"import atexit, os, signal, sys, time\nfrom otx import cli\n{setup}cli._ended(3)\nsys.exit(3)\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_a_stop_in_the_interpreters_own_exit_keeps_the_commands_code() -> None:
    # Before: from the interpreter's exit hooks on, Python puts the default handlers back, and a stop while
    # torch and OpenVINO tear down (a second or so) ended a finished command with 130 and no word (a bug
    # bash's `timeout` marked a written export as failed). A module global's __del__ stops it there.
    done = _ended_with(
        "class Late:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(0.3)\n"
        "late = Late()\n"
    )
    assert done.returncode == 3, (done.returncode, done.stderr)
    # A stop in a library's exit hook (they run before otx's last one) still ends the process at once, said:
    # a hook that hangs can be stopped.
    done = _ended_with(
        "def hook():\n    os.kill(os.getpid(), signal.SIGTERM)\n    time.sleep(60)\natexit.register(hook)\n"
    )
    assert done.returncode == 3, (done.returncode, done.stderr)
    assert done.stderr.strip().splitlines()[-1] == "otx: SIGTERM received after the command ended (exit code 3)"


# Ctrl+C while OpenVINO converts the traced graph: its C++ front end calls back into Python, where the
# stop is raised, and hands it back as a RuntimeError of its own (here the stop arrives at the first callback).
_STOP_IN_CONVERSION = """
import os, signal, sys
from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder
original = TorchScriptPythonDecoder.get_op_type
def stop_once(self):
    if not getattr(stop_once, "sent", False):
        stop_once.sent = True
        os.kill(os.getpid(), signal.SIGINT)
    return original(self)
TorchScriptPythonDecoder.get_op_type = stop_once
from otx.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_stop_during_the_conversion_to_openvino_is_a_stop_not_an_internal_error(
    trained_padim: dict, tmp_path: Path
) -> None:
    work_dir = tmp_path / "ws"
    shutil.copytree(trained_padim["work_dir"], work_dir)
    before = (work_dir / "latest.json").read_bytes()
    args = ["export", "--checkpoint", str(trained_padim["checkpoint"]), "--work_dir", str(work_dir)]
    env = {**os.environ, "OTX_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _STOP_IN_CONVERSION, *args], capture_output=True, text=True, timeout=300, env=env
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 130, done.stderr
    assert lines == ["otx: SIGINT received, stopping; earlier runs and latest.json stay as they were"], done.stderr
    assert (work_dir / "latest.json").read_bytes() == before
    log = next(work_dir.glob("*-export/otx.log")).read_text()
    assert "export failed: interrupted (SIGINT)" in log and "RuntimeError" in log


# A loading worker serves each batch's shared memory from a resource_sharer thread; the main process
# stopping in the middle of a hand-off breaks the connection (here: a client that connects and leaves).
_BROKEN_HANDOFF = """
import os, socket, sys, threading, time
from multiprocessing import resource_sharer
if sys.argv[1] == "worker":
    from otx.data.datamodule import quiet_broken_handoffs
    quiet_broken_handoffs(0)  # what each loading worker runs first
read_end, write_end = os.pipe()
address, _ = resource_sharer.DupFd(write_end)._id
client = socket.socket(socket.AF_UNIX)
client.connect(address)
client.close()
time.sleep(1.0)
threading.Thread(target=sys.excepthook, args=(ValueError, ValueError("other"), None), name="x").start()
time.sleep(0.2)
"""


@pytest.mark.parametrize("where", ["worker", "elsewhere"])
def test_a_hand_off_broken_by_the_stopping_main_process_prints_no_traceback(where: str) -> None:
    done = subprocess.run([sys.executable, "-c", _BROKEN_HANDOFF, where], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    broken = "resource_sharer.py" in done.stderr and "Error" in done.stderr.split("deliver_challenge")[-1]
    assert broken == (where == "elsewhere"), done.stderr  # Python prints it unless the worker hook is set
    assert "ValueError: other" in done.stderr  # other errors, other threads: still printed


def test_every_failed_run_says_why_in_its_log(trained_padim: dict, tmp_path: Path) -> None:
    work_dir = tmp_path / "ws"
    assert main(["predict", "--checkpoint", str(trained_padim["checkpoint"]), "--source", str(tmp_path / "none"),
                 "--work_dir", str(work_dir)]) == 1  # fmt: skip
    log = next(work_dir.glob("*-predict/otx.log")).read_text()
    assert "predict failed: source" in log and "does not exist" in log


def test_a_run_ended_by_another_stop_still_says_why_in_its_log(tmp_path: Path) -> None:
    from rich.console import Console

    from otx.verbs.context import VerbContext, run_verb
    from otx.workdir import WorkDir

    ctx = VerbContext(Console(quiet=True), WorkDir(tmp_path / "ws"), AnomalyDataModule(num_workers=0), None, "CPU",
                      "f32", 0, {})  # fmt: skip

    def body(run: object) -> None:
        raise SystemExit(3)  # neither an interrupt nor an error: what a library's sys.exit looks like

    with pytest.raises(SystemExit):
        run_verb(ctx, "train", body, lambda result: None)
    log = next((tmp_path / "ws").glob("*-train/otx.log")).read_text()
    assert "train failed: SystemExit(3)" in log and not (tmp_path / "ws" / "latest.json").exists()


def test_a_fit_ended_by_sys_exit_logs_the_signal_the_cli_received(
    sample_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from otx import workdir
    from otx.models import Padim

    monkeypatch.setattr(workdir, "STOPS", [])

    class StoppedPadim(Padim):
        def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN202
            workdir.STOPS.append("SIGTERM")  # what the CLI's handler records when the signal arrives
            sys.exit(1)  # how Lightning ends an interrupted fit, here with nothing being handled as its context

    data = AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0)
    engine = Engine(model=StoppedPadim(input_size=(64, 64)), data=data, task="segmentation", work_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        engine.train()
    log = next(tmp_path.glob("*-train/otx.log")).read_text()
    assert "train failed: interrupted (SIGTERM)" in log and "the fit ended with SystemExit(1) after None" in log


# --- 7. umask, predict's metrics.json, optimize's default source, --models a b ------------------------------


def test_run_files_follow_the_umask(trained_padim: dict, sample_root: Path, tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        work_dir = tmp_path / "ws"
        assert main(["test", "--checkpoint", str(trained_padim["checkpoint"]), "--data_root",
                     str(sample_root / "bottle_like"), "--work_dir", str(work_dir)]) == 0  # fmt: skip
    finally:
        os.umask(old)
    run = next(work_dir.glob("*-test"))
    for path in (run / "metrics.json", run / "config.yaml", run / "predictions.json", work_dir / "latest.json"):
        assert path.stat().st_mode & 0o777 == 0o640, (path, oct(path.stat().st_mode))


def test_optimize_without_a_path_takes_the_latest_ir_not_a_later_onnx(
    trained_padim: dict, sample_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    work_dir = tmp_path / "ws"
    shutil.copytree(trained_padim["work_dir"], work_dir)
    monkeypatch.chdir(tmp_path)  # the exports name their work directory relatively ...
    assert main(["export", "--work_dir", "ws"]) == 0
    time.sleep(1.1)  # run folders are named by the second
    assert main(["export", "--work_dir", "ws", "--format", "ONNX"]) == 0
    monkeypatch.chdir(sample_root)  # ... and every later verb runs from another directory
    ir = work_dir / latest(work_dir)["export"]
    assert (ir / "exported_model.onnx").exists()  # the latest export is the ONNX one
    assert Path(yaml.safe_load((ir / "config.yaml").read_text())["checkpoint"]).is_absolute()
    # No --data_root: the export's run folder names its checkpoint, whose training run names the data.
    trained_on = yaml.safe_load((work_dir / latest(work_dir)["train"] / "config.yaml").read_text())["data"]
    assert trained_on["data_root"] == str(sample_root / "bottle_like")
    assert main(["optimize", "--work_dir", str(work_dir), "--subset_size", "8"]) == 0
    optimize_run = work_dir / latest(work_dir)["optimize"]
    summary = json.loads((optimize_run / "metrics.json").read_text())
    assert summary["source_model"].endswith("exported_model.xml")
    assert summary["calibration_images"] == 8
    assert yaml.safe_load((optimize_run / "config.yaml").read_text())["data"]["data_root"] == trained_on["data_root"]
    # An INT8 IR leads back through the IR it quantised; `otx test` of an export finds the data the same way.
    assert training_data_root(summary["optimized_model"]) == trained_on["data_root"]
    assert main(["test", "--work_dir", str(work_dir), "--checkpoint", str(ir / "exported_model.onnx")]) == 0
    tested = json.loads((work_dir / latest(work_dir)["test"] / "metrics.json").read_text())
    assert tested["metrics"]["image_AUROC"] > 0.9
    # Copied out of its work directory, an exported model says what it needs, in one line.
    alone = tmp_path / "alone"
    alone.mkdir()
    for part in ("exported_model.xml", "exported_model.bin"):
        shutil.copy(Path(summary["source_model"]).parent / part, alone / part)
    assert training_data_root(alone / "exported_model.xml") is None
    copied = ["--checkpoint", str(alone / "exported_model.xml")]
    assert main(["optimize", "--work_dir", str(tmp_path / "ws2"), *copied]) == 1
    assert "pass --data_root DIR" in capsys.readouterr().err


def test_an_int8_model_that_optimize_exported_itself_finds_its_training_data(
    trained_padim: dict, sample_root: Path, tmp_path: Path, monkeypatch
) -> None:
    work_dir = tmp_path / "ws"
    shutil.copytree(trained_padim["work_dir"], work_dir)  # a training run and no export
    monkeypatch.chdir(sample_root)
    assert main(["optimize", "--work_dir", str(work_dir), "--subset_size", "8"]) == 0
    run = work_dir / latest(work_dir)["optimize"]
    int8 = run / "optimized_model.xml"
    assert Path(yaml.safe_load((run / "config.yaml").read_text())["checkpoint"]).parent == run  # its own FP32 IR
    assert training_data_root(int8) == str(sample_root / "bottle_like")
    assert main(["test", "--work_dir", str(work_dir), "--checkpoint", str(int8)]) == 0  # no --data_root needed


def test_benchmark_models_as_documented(exported, tmp_path: Path, capsys, monkeypatch) -> None:
    import shutil

    xml, onnx = exported("padim"), exported("padim", "segmentation", "ONNX")
    other = tmp_path / "other_run" / xml.name  # another run's export: every export is called exported_model.xml
    other.parent.mkdir()
    for suffix in (".xml", ".bin"):
        shutil.copy(xml.with_suffix(suffix), other.with_suffix(suffix))
    monkeypatch.chdir(tmp_path)  # the copy given relative, recorded absolute
    args = ["benchmark", "--models", str(xml), str(onnx), f"other_run/{xml.name}", "--num_images", "2", "--warmup", "1"]
    args += ["--repeats", "1", "--device", "cpu"]  # any case, as OpenVINOInferencer takes it
    assert main([*args, "--work_dir", str(tmp_path)]) == 0
    timed = json.loads(next(tmp_path.glob("*-benchmark/metrics.json")).read_text())
    assert [Path(r["path"]) for r in timed["rows"]] == [xml, onnx, other]
    # rows told apart by their run folders (before: two rows 'OpenVINO FP32 (exported_model.xml)'; helper bug bash)
    assert [r["model"] for r in timed["rows"]] == [
        f"OpenVINO FP32 ({xml.parent.name}/{xml.name})",
        f"OpenVINO FP32 ({onnx.parent.name}/{onnx.name})",
        f"OpenVINO FP32 (other_run/{xml.name})",
    ]
    # the images of the data the models were trained on (their run folders say which), not synthetic ones
    assert timed["images"].startswith("2 images of ") and "synthetic" not in timed["images"], timed["images"]
    # the processor by its name (before: platform.processor(), 'x86_64' on Linux)
    assert timed["machine"]["processor"] == ov.Core().get_property("CPU", "FULL_DEVICE_NAME")
    # given files alone: the ratios divide by the first FP32 IR (before: no x FP32 IR column without a checkpoint)
    assert timed["reference"] == timed["rows"][0]["model"] and timed["rows"][0]["throughput_vs_fp32_ir"] == 1.0
    assert all("throughput_vs_fp32_ir" in r for r in timed["rows"]) and timed["checkpoint"] is None
    assert timed["model"] == "Padim"
    # a damaged file: one line, as test and predict say it (before: "internal error (RuntimeError: ... Incorrect
    # weights in bin file!)", a bug bash)
    damaged = tmp_path / "damaged" / xml.name
    damaged.parent.mkdir()
    shutil.copy(xml, damaged)
    damaged.with_suffix(".bin").write_bytes(xml.with_suffix(".bin").read_bytes()[:1000])
    capsys.readouterr()
    assert main(["benchmark", "--models", str(damaged), "--work_dir", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: OpenVINO cannot read '{damaged}'") and err.endswith("re-export it"), err


def test_benchmark_on_a_device_or_data_root_this_machine_lacks_stops_before_timing_anything(
    trained_padim: dict, tmp_path: Path, capsys
) -> None:
    missing = next(d for d in ("NPU", "GPU", "GPU.3") if d not in ov.Core().available_devices)
    args = ["benchmark", "--checkpoint", str(trained_padim["checkpoint"]), "--device", missing]
    assert main([*args, "--num_images", "2", "--work_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"device '{missing}' is not available on this machine" in err and len(err.strip().splitlines()) == 1
    # before: torch timed and two IRs exported first, then the error
    assert not list(tmp_path.glob("*-benchmark/exported_*"))
    # a mistyped --data_root likewise (before: refused after the two exports; helper bug bash)
    args = ["benchmark", "--checkpoint", str(trained_padim["checkpoint"]), "--data_root", str(tmp_path / "nodata")]
    assert main([*args, "--num_images", "2", "--work_dir", str(tmp_path)]) == 1
    said = capsys.readouterr()
    assert "data root" in said.err and "does not exist" in said.err and len(said.err.strip().splitlines()) == 1
    assert "exporting" not in said.out  # (a failed run's folder keeps its otx.log only: the exports said so)


def test_images_on_their_side_are_named_as_turned_not_as_smaller(tmp_path: Path) -> None:
    import cv2

    from otx.checks import image_profile, profile_warnings

    def write(name: str, height: int, width: int) -> str:
        path = tmp_path / f"{name}.png"
        cv2.imwrite(str(path), np.full((height, width), 128, np.uint8))
        return str(path)

    trained = image_profile([write("train_a", 128, 512), write("train_b", 120, 500)])
    turned = [write("turned", 512, 128)]  # a strip stood on end: too narrow and too tall as it stands
    small, large = [write("small", 40, 150)], [write("large", 300, 1200)]
    (line,) = profile_warnings(trained, turned, "input")
    assert "1 of 1 input images are turned on their side" in line and "(500-512 x 120-128 (width x height))" in line
    one_size = image_profile([write("train_c", 96, 240)])  # a range of one size is written as that size
    (line,) = profile_warnings(one_size, [write("turned_c", 240, 96)], "input")
    assert "(240 x 96 (width x height))" in line
    (line,) = profile_warnings(trained, small, "input")
    assert "more than 2x smaller" in line
    (line,) = profile_warnings(trained, large, "input")
    assert "more than 2x larger" in line
    assert profile_warnings(trained, [write("same", 124, 505)], "input") == []
    # a 4:3 image stood 3:4, within 2x of the training size either way (before: unnamed; a bug bash saw its
    # score move from 0.34 to 0.999); a square one, or one barely taller than wide, is not called turned
    four_three = image_profile([write("train_d", 97, 131), write("train_e", 95, 128)])
    (line,) = profile_warnings(four_three, [write("turned_d", 131, 97), write("upright", 96, 130)], "input")
    assert line.startswith("1 of 2 input images are turned on their side") and "(128-131 x 95-97" in line, line
    assert profile_warnings(four_three, [write("square", 100, 100), write("taller", 101, 99)], "input") == []
    # 10x taller and 4x narrower than the training strips: neither smaller nor turned (before: "smaller")
    (line,) = profile_warnings(trained, [write("tall", 1280, 128)], "input")
    assert line.startswith("1 of 1 input images are shaped unlike the training images (500-512 x 120-128")


def test_the_demo_package_warns_of_images_unlike_the_training_images_as_otx_does(tmp_path: Path) -> None:
    from otx.checks import image_profile, profile_warnings

    demo = demo_package()

    def write(name: str, height: int, width: int, channels: int = 1, colour: bool = True) -> str:
        path = tmp_path / f"{name}.png"
        image = np.full((height, width, channels), 128, np.uint8)
        if channels >= 3 and colour:
            image[..., :3] = (128, 60, 200)
        if channels >= 3:
            image[: height // 2, : width // 2, :3] += np.uint8(1)  # within a level or two: still grayscale
        if channels == 2:  # grayscale with alpha (OpenCV writes no such PNG, and reads one as BGRA)
            Image.fromarray(image, "LA").save(path)
        else:
            cv2.imwrite(str(path), image[..., 0] if channels == 1 else image)
        return str(path)

    gray_trained = image_profile([write("train_a", 128, 512), write("train_b", 120, 500)])
    color_trained = image_profile([write("train_c", 128, 512, 3)])
    # a grayscale camera's images saved as RGB: a grayscale model's (before: colour, so every real grayscale
    # image was "grayscale, but the model was trained on colour images", helper-38)
    stored_gray_trained = image_profile([write("train_d", 128, 512, 3, colour=False)])
    assert (gray_trained["channels"], color_trained["channels"], stored_gray_trained["channels"]) == (
        "gray",
        "color",
        "gray",
    )
    stored_gray = [write("stored_gray", 125, 505, 3, colour=False), write("stored_gray_alpha", 125, 505, 4, False)]
    inputs = [
        [write("turned", 512, 128)],
        [write("small", 40, 150), write("same", 124, 505)],
        [write("large", 300, 1200, 3), write("color", 125, 505, 3), write("alpha", 125, 505, 4)],
        [write("same2", 124, 505)],
        [write("tall", 1280, 128), write("turned2", 505, 124)],
        stored_gray,
        [write("gray_alpha", 125, 505, 2), write("color3", 125, 505, 3)],  # before: the demo counted no grayscale
        [*stored_gray, write("color2", 125, 505, 3)],
        [write("turned_d", 131, 97), write("upright", 96, 130), write("square", 100, 100)],  # for four_three
    ]
    four_three = image_profile([write("train_e", 97, 131), write("train_f", 95, 128)])
    assert len(profile_warnings(four_three, inputs[-1], "input")) == 1  # (turned: covered)
    for trained in (gray_trained, color_trained, four_three):
        for paths in inputs:
            seen = [(demo.channel_kind(a), *a.shape[:2]) for a in (demo.decode(Path(p)) for p in paths)]
            ours = profile_warnings(trained, paths, "input")
            assert demo.profile_notes(trained, seen, len(paths)) == ours
    assert len(profile_warnings(gray_trained, inputs[2], "input")) == 2  # colour, larger: the cases are covered
    assert profile_warnings(gray_trained, stored_gray, "input") == []  # before: "2 of 2 ... are colour"
    (line,) = profile_warnings(gray_trained, inputs[-2], "input")  # one colour image among them: that one
    assert line.startswith("1 of 3 input images are colour, but the model was trained on grayscale")
    assert profile_warnings(stored_gray_trained, [write("gray_file", 124, 505)], "input") == []
    # a colour model given a grayscale camera's images saved as RGB: before, nothing (only one-channel files counted)
    (line,) = profile_warnings(color_trained, stored_gray, "input")
    assert line.startswith("2 of 2 input images are grayscale, but the model was trained on colour images"), line
    assert profile_warnings(color_trained, inputs[-2], "input") == []  # a true colour image among those looked at


def test_a_library_error_left_by_a_stop_goes_to_the_log_not_the_terminal(capsys, caplog, monkeypatch) -> None:
    """A stop raised inside a library's at-fork hook can leave it broken (filelock then raises KeyError in
    its parent hook, which Python reports as "Exception ignored"): after a stop that is logged, not printed."""
    import types

    from otx import cli

    def unraisable() -> types.SimpleNamespace:
        try:
            {}[1]
        except KeyError as exc:
            return types.SimpleNamespace(
                exc_type=KeyError, exc_value=exc, exc_traceback=exc.__traceback__, err_msg=None, object=len
            )

    reported = []
    monkeypatch.setattr(cli, "_DEFAULT_UNRAISABLE", reported.append)
    cli.STOPS.clear()
    cli._unraisable(unraisable())  # no stop: Python's own report ("Exception ignored in ...")
    assert len(reported) == 1 and isinstance(reported[0].exc_value, KeyError)
    cli.STOPS.append("SIGINT")
    try:
        with caplog.at_level("INFO", logger="otx"):
            cli._unraisable(unraisable())
    finally:
        cli.STOPS.clear()
    assert capsys.readouterr().err == "" and len(reported) == 1
    assert any("after the stop" in r.getMessage() and "KeyError" in r.getMessage() for r in caplog.records)


def test_testing_a_data_root_without_test_images_is_one_line(
    trained_padim: dict, dataset_copy, tmp_path: Path, capsys
) -> None:
    # before: a warning that the 0 validation images "stay out of the test split" came first
    root = dataset_copy()
    shutil.rmtree(root / "test")
    shutil.rmtree(root / "ground_truth")
    args = ["test", "--checkpoint", str(trained_padim["checkpoint"]), "--data_root", str(root)]
    assert main([*args, "--work_dir", str(tmp_path / "ws")]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "no labelled test images" in lines[0], lines


def test_openvino_options_given_with_a_checkpoint_are_said_to_apply_to_exports(
    trained_padim: dict, sample_root: Path, tmp_path: Path, capsys
) -> None:
    # Before: ignored without a word (an export is refused where the device is missing).
    args = ["test", "--checkpoint", str(trained_padim["checkpoint"]), "--data_root", str(sample_root / "bottle_like")]
    assert main([*args, "--work_dir", str(tmp_path), "--device", "NPU", "--inference_precision", "bf16"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "--device NPU and --inference_precision bf16 apply to exported models (.xml, .onnx)" in err
    assert "runs in torch on cpu" in err
    assert main([*args, "--work_dir", str(tmp_path), "--device", "CPU"]) == 0
    assert "--device CPU applies to exported models" in " ".join(capsys.readouterr().err.split())
    assert main([*args, "--work_dir", str(tmp_path), "--device", "auto"]) == 0  # the default, in any case
    assert "apply to exported models" not in capsys.readouterr().err


def test_a_long_step_without_a_bar_has_a_spinner_on_a_terminal(tmp_path: Path) -> None:
    # Before: otx test of large images sat for 18 s after its bar had reached the end, without a word (a
    # bug bash): the metrics at each image's own size and the report have a spinner naming the step.
    import io
    import time

    from rich.console import Console
    from rich.progress import Progress

    from otx.verbs.context import VerbContext
    from otx.workdir import WorkDir

    def context(console: Console) -> VerbContext:
        data = AnomalyDataModule(num_workers=0)
        return VerbContext(console, WorkDir(tmp_path / "ws"), data, None, "CPU", "f32", 0, {})

    terminal = io.StringIO()
    with context(Console(file=terminal, force_terminal=True)).working("pixel metrics of 12 images at their own size"):
        time.sleep(0.3)
    assert "pixel metrics of 12 images at their own size" in terminal.getvalue()
    piped = io.StringIO()
    with context(Console(file=piped, force_terminal=False)).working("pixel metrics"):
        pass
    assert piped.getvalue() == ""  # a log file or a pipe gets no spinner frames
    busy = Console(file=io.StringIO(), force_terminal=True)
    with Progress(console=busy), context(busy).working("pixel metrics"):  # another live display: none, no error
        pass


def test_a_model_file_in_a_run_that_did_not_finish_is_warned(
    trained_padim: dict, sample_root: Path, tmp_path: Path
) -> None:
    # The defaults skip a run with a FAILED marker; a file of one named by path was used without a word (a bug
    # bash: an IR whose export was stopped during its check against torch).
    from otx.workdir import FAILED

    failed = tmp_path / "20260101-000000-export"
    failed.mkdir()
    checkpoint = failed / "model.ckpt"
    shutil.copy(trained_padim["checkpoint"], checkpoint)
    (failed / FAILED).write_text("this otx export run did not finish\n")
    engine = Engine(data=AnomalyDataModule(num_workers=0), work_dir=tmp_path / "ws")
    engine.predict(source=sample_root / "bottle_like" / "test" / "good", checkpoint=checkpoint, visualize=False)
    (run,) = (tmp_path / "ws").glob("*-predict")
    said = [w for w in json.loads((run / "metrics.json").read_text())["warnings"] if "did not finish" in w]
    assert len(said) == 1 and said[0].startswith(f"{checkpoint} lies in a run that did not finish"), said
    (failed / FAILED).unlink()  # a finished run's file: nothing to say
    engine.predict(source=sample_root / "bottle_like" / "test" / "good", checkpoint=checkpoint, visualize=False)
    newest = max((tmp_path / "ws").glob("*-predict*"), key=lambda p: p.stat().st_mtime)
    assert not [w for w in json.loads((newest / "metrics.json").read_text())["warnings"] if "did not finish" in w]

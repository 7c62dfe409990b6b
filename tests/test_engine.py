"""End-to-end through the Engine: train, test, predict for every task, on the synthetic data."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from rich.console import Console
from sklearn.metrics import f1_score, roc_auc_score

from helpers import reference_ap
from otx.checkpoint import load_checkpoint
from otx.data import AnomalyDataModule
from otx.data.dataset import Sample
from otx.data.sample import DEFECT_TYPES
from otx.engine import Engine
from otx.errors import OTXConfigError, OTXDataError, OTXError
from otx.models import Padim, Stfpm
from otx.results import TestResult

pytestmark = pytest.mark.e2e  # end-to-end: trains, exports or runs the CLI (`pytest -m 'not e2e'` skips)


def test_train_writes_checkpoint_config_and_split_counts(trained_padim: dict) -> None:
    summary = trained_padim["summary"]
    run = trained_padim["checkpoint"].parent
    assert trained_padim["checkpoint"].exists()
    assert (run / "config.yaml").exists() and (run / "metrics.json").exists() and (run / "otx.log").exists()
    splits = summary["splits"]
    assert splits["train"]["normal"] == 40
    assert splits["val"]["normal"] + splits["test"]["normal"] == 12
    assert splits["val"]["anomalous"] + splits["test"]["anomalous"] == 16
    thresholds = summary["thresholds"]
    assert thresholds["image_min"] <= thresholds["image_threshold"] <= thresholds["image_max"]
    latest = json.loads((trained_padim["work_dir"] / "latest.json").read_text())
    assert latest["train"] == run.name


def test_test_after_train_needs_no_checkpoint(trained_padim: dict, sample_root: Path) -> None:
    engine = Engine(data=AnomalyDataModule(str(sample_root / "bottle_like")), work_dir=trained_padim["work_dir"])
    result = engine.test()
    metrics = result["metrics"]
    pixel = {"pixel_AUROC", "pixel_F1", "AUPRO"}  # at each image's size, and at the model's input size
    assert set(metrics) == {"image_AUROC", "image_F1", *pixel, *(f"{key}_input" for key in pixel)}
    # The synthetic defects are strong: a working model separates them well.
    assert metrics["image_AUROC"] > 0.9 and metrics["pixel_AUROC"] > 0.9
    assert result["splits"]["test"]["normal"] == 6
    written = json.loads(next(trained_padim["work_dir"].glob("*-test/metrics.json")).read_text())
    assert written["metrics"] == pytest.approx(metrics)
    # Each defect type against the good images (values checked against scikit-learn in test_metrics).
    by_defect = written["per_defect"]
    assert set(by_defect) == {"good", *DEFECT_TYPES["bottle_like"]}
    kinds = [by_defect[k] for k in DEFECT_TYPES["bottle_like"]]
    assert sum(k["defect_pixel_share"] for k in kinds) == pytest.approx(1.0)
    assert all(0.9 < k["pixel_AUROC"] <= 1.0 and 0.0 < k["AUPRO"] <= 1.0 for k in kinds)
    assert by_defect["good"]["images"] == 6 and sum(k["images"] for k in kinds) == result["splits"]["test"]["anomalous"]


def test_a_relative_work_dir_stays_where_it_was_after_the_script_changes_folder(
    sample_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: after os.chdir the engine looked for its own checkpoint under the new folder ("does not
    # exist ... run Engine.train() first") and made failed run folders in a new ws/ there (bug bash).
    (tmp_path / "first").mkdir()
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "first")
    data = AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0)
    engine = Engine(model=Padim(input_size=(64, 64)), data=data, work_dir="ws")
    trained = engine.train()
    monkeypatch.chdir(tmp_path / "other")
    tested = engine.test()
    assert Path(tested["checkpoint"]) == Path(trained["checkpoint"])
    assert Path(trained["checkpoint"]).is_relative_to(tmp_path / "first" / "ws")
    assert list((tmp_path / "first" / "ws").glob("*-test/metrics.json")) and not (tmp_path / "other" / "ws").exists()
    assert engine.work_dir == tmp_path / "first" / "ws"


def test_an_engine_model_with_other_settings_than_the_checkpoint_is_said(sample_root: Path, tmp_path: Path) -> None:
    # Before: only another class or backbone was said; other settings were dropped without a word (bug bash).
    data = AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0)
    checkpoint = Engine(model=Padim(input_size=(64, 64)), data=data, work_dir=tmp_path / "ws").train()["checkpoint"]
    other = Engine(model=Padim(input_size=(96, 96), n_features=50), data=data, work_dir=tmp_path / "other")
    said = [w for w in other.test(checkpoint=checkpoint).warnings if w.startswith("the engine's model has other")]
    assert len(said) == 1, said
    assert "input_size [96, 96] (the file's: input_size [64, 64])" in said[0]
    assert "n_features 50 (the file's: default)" in said[0]
    same = Engine(model=Padim(input_size=(64, 64)), data=data, work_dir=tmp_path / "same").test(checkpoint=checkpoint)
    assert not [w for w in same.warnings if "other settings" in w]


def test_the_pixel_f1_is_that_of_the_predicted_masks(tmp_path: Path) -> None:
    # Before: the pixel F1 at each image's size was that of the raw map restored and thresholded, while
    # predictions threshold the normalised map, which is clipped to [0, 1] before it is restored (the
    # segmentation adapter): the two differ where a clipped value meets an unclipped one.
    from otx.postprocess import normalize
    from otx.preprocess import PreProcessor
    from otx.tasks import get_adapter
    from otx.verbs.inference import evaluate

    rng = np.random.default_rng(5)
    maps = rng.random((4, 16, 16)).astype(np.float32)
    maps[2:, 5:10, 4:9] += 20.0  # defects far above the validation maximum: clipped by the normalisation
    truth, samples = [], []
    for i in range(4):
        mask = np.zeros((64, 48), bool)
        if i >= 2:
            mask[18:42, 10:38] = True
            cv2.imwrite(str(tmp_path / f"{i}_mask.png"), mask.astype(np.uint8) * 255)
        truth.append(mask)
        samples.append(Sample(str(tmp_path / f"{i}.png"), int(i >= 2), "good" if i < 2 else "dent",
                              str(tmp_path / f"{i}_mask.png") if i >= 2 else None))  # fmt: skip
    outputs = {
        "maps": torch.from_numpy(maps),
        "scores": torch.from_numpy(maps.reshape(4, -1).max(axis=1)),
        "labels": torch.tensor([0, 0, 1, 1]),
        "masks": torch.from_numpy(np.stack([cv2.resize(m.astype(np.uint8), (16, 16)) > 0 for m in truth])),
        "orig_sizes": torch.tensor([[64, 48]] * 4),
    }
    threshold, low, high = 1.5, 0.0, 2.0  # the validation maps' range: 1.5 +- 1 is [0.5, 2.5]
    pre, adapter = PreProcessor((16, 16)), get_adapter("segmentation")
    normalized = {
        "pred_score": np.full(4, 0.5, np.float32),
        "pred_label": np.ones(4, bool),
        "anomaly_map": normalize(maps, threshold, low, high),
    }
    predictions = list(adapter.iter_predictions(normalized, [s.path for s in samples], np.array([[64, 48]] * 4), pre))
    predicted = np.concatenate([p.pred_mask.ravel() for p in predictions])
    reference = f1_score(np.concatenate([m.ravel() for m in truth]), predicted)
    ctx = Engine(work_dir=tmp_path / "ws")._context()
    got = evaluate(ctx, adapter, True, (1.0, threshold), outputs, samples, pre, pixel_range=(low, high)).metrics
    assert got["pixel_F1"] == pytest.approx(reference, abs=1e-12)
    raw = evaluate(ctx, adapter, True, (1.0, threshold), outputs, samples, pre).metrics  # the raw map thresholded
    assert abs(raw["pixel_F1"] - reference) > 0.01  # what this test tells apart
    assert raw["pixel_AUROC"] == got["pixel_AUROC"] and raw["AUPRO"] == got["AUPRO"]  # ranking: the raw maps


def test_pixel_metrics_at_each_images_size_take_infinite_map_values(tmp_path: Path) -> None:
    """A map holding +inf and -inf (an FP16 model's overflow) is scored, its infinities ranked first and last.

    Before: the bilinear resize to the image's size made NaN next to them, and ``otx test`` stopped on
    "scores contain NaN" (a review, 2026-12-07); the post-processor's fit already took infinities.
    """
    from otx.preprocess import PreProcessor
    from otx.tasks import get_adapter
    from otx.verbs.inference import evaluate

    rng = np.random.default_rng(3)
    maps = rng.random((4, 8, 8)).astype(np.float32)
    samples = []
    for i in range(4):
        mask = np.zeros((16, 16), np.uint8)
        if i >= 2:
            mask[4:10, 4:10] = 255
            maps[i, 2:5, 2:5] += 0.5
            cv2.imwrite(str(tmp_path / f"{i}_mask.png"), mask)
        samples.append(Sample(str(tmp_path / f"{i}.png"), int(i >= 2), "good" if i < 2 else "dent",
                              str(tmp_path / f"{i}_mask.png") if i >= 2 else None))  # fmt: skip
    finite = maps.copy()
    maps[3, 3, 3], maps[0, 6, 6] = np.inf, -np.inf  # inside a defect and on a good image
    outputs = {
        "maps": torch.from_numpy(maps),
        "scores": torch.from_numpy(finite.reshape(4, -1).max(axis=1)),
        "labels": torch.tensor([0, 0, 1, 1]),
        "masks": torch.from_numpy(np.stack([cv2.resize(cv2.imread(str(tmp_path / f"{i}_mask.png"), 0), (8, 8)) > 0
                                            if i >= 2 else np.zeros((8, 8), bool) for i in range(4)])),
        "orig_sizes": torch.tensor([[16, 16]] * 4),
    }  # fmt: skip
    ctx, pre, adapter = Engine(work_dir=tmp_path / "ws")._context(), PreProcessor((8, 8)), get_adapter("segmentation")
    got = evaluate(ctx, adapter, True, (1.0, 1.0), outputs, samples, pre, pixel_range=(0.0, 1.5)).metrics
    # the reference: the infinities as the largest and smallest finite float32, restored by OpenCV as otx does
    stand_in = maps.copy()
    stand_in[3, 3, 3], stand_in[0, 6, 6] = np.finfo(np.float32).max / 4, -np.finfo(np.float32).max / 4
    restored = np.concatenate([cv2.resize(m, (16, 16), interpolation=cv2.INTER_LINEAR).ravel() for m in stand_in])
    truth = np.zeros((4, 256), bool)
    truth[2:] = [(cv2.imread(str(tmp_path / f"{i}_mask.png"), 0) > 0).ravel() for i in (2, 3)]
    truth = truth.ravel()
    assert np.isfinite(restored).all()
    assert got["pixel_AUROC"] == pytest.approx(roc_auc_score(truth, restored), abs=1e-12)
    assert np.isfinite(got["AUPRO"]) and np.isfinite(got["pixel_F1"])


def test_checkpoint_round_trip_reproduces_outputs(trained_padim: dict) -> None:
    model, ckpt = load_checkpoint(trained_padim["checkpoint"])
    again, _ = load_checkpoint(trained_padim["checkpoint"])
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        a_map, a_score = model(x)
        b_map, b_score = again(x)
    torch.testing.assert_close(a_map, b_map)
    assert ckpt["model"]["class_path"] == "otx.models.padim.Padim"
    assert model.postprocessor.is_fitted
    with torch.no_grad():  # loading keeps the backbone channels-last: its feature maps come out so
        features = model.model.feature_extractor(model.normalize_input(x))
    assert all(f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous() for f in features.values())


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_predict_outputs_per_task(trained_padim: dict, sample_root: Path, task: str, tmp_path: Path) -> None:
    engine = Engine(task=task, work_dir=tmp_path / "ws")
    source = sample_root / "bottle_like" / "test"
    predictions = engine.predict(source=source, checkpoint=trained_padim["checkpoint"])
    assert len(predictions) == 28
    run = next((tmp_path / "ws").glob("*-predict"))
    records = json.loads((run / "predictions" / "predictions.json").read_text())
    assert len(records) == 28 and {"image", "score", "label"} <= set(records[0])
    masks = sorted((run / "predictions" / "masks").glob("*.png"))
    defect = [p for p in predictions if "/good/" not in p.image_path]
    good = [p for p in predictions if "/good/" in p.image_path]
    assert np.mean([p.pred_label for p in defect]) > np.mean([p.pred_label for p in good])
    if task == "classification":
        assert not masks and all(p.pred_boxes is None for p in predictions)
        assert not (run / "predictions" / "masks").exists()  # before: an empty masks/ folder
    else:
        assert len(masks) == 28
        shape = cv2.imread(predictions[0].image_path, cv2.IMREAD_UNCHANGED).shape[:2]
        assert cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED).shape == shape
        # each record names its mask file, which holds the returned mask
        for record, prediction in zip(records, predictions, strict=True):
            written = cv2.imread(str(run / "predictions" / record["mask"]), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(written > 0, prediction.pred_mask)
    if task == "segmentation":  # keep_masks=False (the CLI's): the same records, no mask held in memory
        lean = Engine(task=task, work_dir=tmp_path / "lean").predict(
            source=source, checkpoint=trained_padim["checkpoint"], visualize=False, keep_masks=False
        )
        assert all(p.pred_mask is None for p in lean) and all(p.mask_file for p in lean)
        lean_run = next((tmp_path / "lean").glob("*-predict"))
        without_overlay = [{k: v for k, v in r.items() if k != "overlay"} for r in records]  # (visualize=False)
        assert json.loads((lean_run / "predictions" / "predictions.json").read_text()) == without_overlay
        for prediction in lean:
            written = cv2.imread(str(lean_run / "predictions" / prediction.mask_file), cv2.IMREAD_UNCHANGED)
            assert written.shape == cv2.imread(prediction.image_path, cv2.IMREAD_UNCHANGED).shape[:2]
        assert all(p.anomaly_map is None for p in predictions)  # by default: maps take 4 bytes a pixel
        mapped = Engine(task=task, work_dir=tmp_path / "maps").predict(  # before: no way to get them
            source=source, checkpoint=trained_padim["checkpoint"], visualize=False, keep_maps=True
        )
        for prediction, plain in zip(mapped, predictions, strict=True):
            assert prediction.anomaly_map.shape == prediction.pred_mask.shape == plain.pred_mask.shape
            np.testing.assert_array_equal(prediction.anomaly_map >= 0.5, prediction.pred_mask)  # 0.5: the threshold
            np.testing.assert_array_equal(prediction.pred_mask, plain.pred_mask)
    if task == "detection":
        with_boxes = [p for p in defect if len(p.pred_boxes)]
        assert with_boxes and all("boxes" in r for r in records)
        box = with_boxes[0]
        assert np.all(box.box_scores >= 0.5)  # every box comes from map >= 0.5
    # A segmentation model's boxes were never tuned: detection says so (metrics.json, the console).
    warned = [w for w in json.loads((run / "metrics.json").read_text())["warnings"] if "trained for segmentation" in w]
    assert len(warned) == (task == "detection")


def test_predict_names_each_mask_when_names_collide(trained_padim: dict, sample_root: Path, tmp_path: Path) -> None:
    from otx.verbs.predict import output_stems

    assert output_stems(["/d/a.png", "/d/a.jpg", "/d/s/b.png", "/d/a_png.bmp", "/d/c.png"]) == {
        "/d/a.png": "a_png", "/d/a.jpg": "a_jpg", "/d/s/b.png": "s__b", "/d/a_png.bmp": "a_png_2", "/d/c.png": "c"
    }  # fmt: skip
    folder = tmp_path / "images"
    folder.mkdir()
    good, bad = (
        sorted((sample_root / "bottle_like" / "test" / "good").glob("*.png"))[0],
        next((sample_root / "bottle_like" / "test").glob("[!g]*/*.png")),
    )
    shutil.copy(good, folder / "a.png")
    cv2.imwrite(str(folder / "a.jpg"), cv2.imread(str(bad)), [cv2.IMWRITE_JPEG_QUALITY, 100])
    engine = Engine(task="segmentation", work_dir=tmp_path / "ws")
    predictions = engine.predict(source=folder, checkpoint=trained_padim["checkpoint"], visualize=False)
    run = next((tmp_path / "ws").glob("*-predict")) / "predictions"
    assert sorted(p.mask_file for p in predictions) == ["masks/a_jpg_mask.png", "masks/a_png_mask.png"]
    for p in predictions:  # two files, each holding its own image's mask
        np.testing.assert_array_equal(cv2.imread(str(run / p.mask_file), cv2.IMREAD_GRAYSCALE) > 0, p.pred_mask)
    assert not np.array_equal(predictions[0].pred_mask, predictions[1].pred_mask)


def test_output_names_fit_a_file_name_and_the_demo_names_alike(tmp_path: Path) -> None:
    from helpers import demo_package
    from otx.verbs.predict import output_stems

    deep = "/".join(["b" * 60] * 3)
    paths = [
        f"/d/{'y' * 250}.png",
        f"/d/{'y' * 250}.jpg",
        f"/d/{deep}/{'é' * 100}.png",
        f"/d/{'y' * 240}z.png",
        "/d/c.png",
    ]
    stems = output_stems(paths)
    assert stems["/d/c.png"] == "c"  # short names as before
    assert len(set(stems.values())) == len(paths)  # still one name each
    for stem in stems.values():
        name = f"{stem}_mask.png"
        assert len(name.encode()) <= 255
        (tmp_path / name).write_bytes(b"")  # the file system takes it
    long_stem = stems[f"/d/{'y' * 240}z.png"]
    assert long_stem.startswith("y" * 150) and long_stem != stems[f"/d/{'y' * 250}.png"]
    assert stems[f"/d/{deep}/{'é' * 100}.png"].startswith(deep.replace("/", "__") + "__é")  # cut between characters
    demo = demo_package()
    assert {str(k): v for k, v in demo.output_stems([Path(p) for p in paths]).items()} == stems
    # names a file system that ignores case or Unicode forms holds as one (macOS, Windows) are kept apart too
    paths = ["/d/a.png", "/d/A.jpg", "/d/b.PNG", "/d/b.png", "/d/\u00e9.png", "/d/e\u0301.png"]
    stems = output_stems(paths)  # before: a and A, a_PNG and a_png, and the two é wrote one overlay there
    assert len({unicodedata.normalize("NFC", stem).casefold() for stem in stems.values()}) == len(paths), stems
    assert stems["/d/a.png"] == "a_png" and stems["/d/b.PNG"] == "b_PNG" and stems["/d/b.png"] == "b_png_2"
    assert {str(k): v for k, v in demo.output_stems([Path(p) for p in paths]).items()} == stems


def test_detection_test_reports_box_ap(trained_padim: dict, sample_root: Path, tmp_path: Path) -> None:
    engine = Engine(task="detection", data=str(sample_root / "bottle_like"), work_dir=tmp_path)
    summary = engine.test(checkpoint=trained_padim["checkpoint"])
    metrics = summary["metrics"]
    assert {"box_AP", "box_AP50"} <= set(metrics)
    # the settings the boxes were cut with: the checkpoint's (a segmentation model's are the defaults)
    assert summary.boxes == load_checkpoint(trained_padim["checkpoint"])[0].box_settings.as_dict()
    assert "torch on cpu" in Path(summary.report).read_text()  # the report names where the model ran
    # The same AP50 from first principles: ground-truth boxes are the 8-connected components of the
    # full-size masks (OpenCV), predictions the boxes otx predict gives for the same test images.
    tested = {
        record["image"] for record in json.loads((engine.workdir.latest("test") / "predictions.json").read_text())
    }
    predictions = engine.predict(source=sample_root / "bottle_like" / "test", checkpoint=trained_padim["checkpoint"])
    gts, dets, scores, kinds = [], [], [], []
    for p in predictions:
        if p.image_path not in tested:
            continue
        parts = Path(p.image_path).parts
        kinds.append(parts[-2])
        mask_path = sample_root / "bottle_like" / "ground_truth" / parts[-2] / f"{Path(parts[-1]).stem}_mask.png"
        boxes = np.zeros((0, 4), np.float32)
        if mask_path.exists():
            count, _, stats, _ = cv2.connectedComponentsWithStats(
                (cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8), connectivity=8
            )
            boxes = np.array([[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:count]], np.float32).reshape(-1, 4)
        gts.append(boxes)
        dets.append(np.asarray(p.pred_boxes, np.float32).reshape(-1, 4))
        scores.append(np.asarray(p.box_scores, np.float64).reshape(-1))
    assert len(gts) == len(tested) and sum(len(d) for d in dets) > 0
    assert metrics["box_AP50"] == pytest.approx(reference_ap(gts, dets, scores, 0.5), abs=1e-6)
    for kind in DEFECT_TYPES["bottle_like"]:  # each type's boxes, with the good images' boxes as false ones
        pick = [i for i, k in enumerate(kinds) if k in (kind, "good")]
        for iou in (0.5, 0.25, 0.1):
            expected = reference_ap([gts[i] for i in pick], [dets[i] for i in pick], [scores[i] for i in pick], iou)
            assert summary["per_defect"][kind][f"box_AP{int(iou * 100)}"] == pytest.approx(expected, abs=1e-6)


def test_classification_without_ground_truth(trained_padim: dict, dataset_copy, tmp_path: Path) -> None:
    root = dataset_copy()
    shutil.rmtree(root / "ground_truth")
    for task in ("classification", "segmentation"):
        engine = Engine(task=task, data=str(root), work_dir=tmp_path / task)
        tested = engine.test(checkpoint=trained_padim["checkpoint"])
        assert set(tested["metrics"]) == {"image_AUROC", "image_F1"}
        # said in metrics.json and the report (before: a console note only; helper bug bash)
        said = [w for w in tested["warnings"] if "no ground_truth/ folder" in w]
        line = "the data has no ground_truth/ folder: pixel metrics are unavailable, image metrics only"
        assert said == (
            [] if task == "classification" else [f"{line} (masks go in ground_truth/<defect>/<name>_mask.png)"]
        )
        report = Path(tested["report"]).read_text()
        assert ("no ground_truth/ folder" in report) == (task == "segmentation")


def test_detection_without_masks_warns_that_boxes_are_untuned(dataset_copy, tmp_path: Path, capsys) -> None:
    root = dataset_copy()
    shutil.rmtree(root / "ground_truth")
    engine = Engine(model=Padim(input_size=(64, 64)), task="detection", data=str(root), work_dir=tmp_path)
    trained = engine.train()
    assert any("no ground_truth/ masks" in w and "default settings" in w for w in trained["warnings"])
    out = capsys.readouterr().err  # the summary (stderr in the Python API) does not call them chosen
    assert "boxes (defaults, not tuned)" in out and "chosen on the validation split" not in out
    tested = engine.test()
    assert any("no ground_truth/ folder: pixel and box metrics are unavailable" in w for w in tested["warnings"])
    assert not any("no ground_truth/ folder" in w for w in trained["warnings"])  # train says it of the boxes
    by_defect = tested["per_defect"]  # image metrics per type only: nothing to score pixels on
    assert set(by_defect) == {"good", *DEFECT_TYPES["bottle_like"]}
    assert all(set(row) == {"images", "detected", "image_AUROC"} for k, row in by_defect.items() if k != "good")
    # tested where the masks are, from the checkpoint and from its export: the box metrics are of untuned
    # boxes, said (before: no warning, and the report called the settings chosen on the validation split)
    masked = str(dataset_copy("carpet_like"))
    said = "the model was trained on data without ground_truth/ masks, so its detection boxes use the default"
    export = engine.export(trained["checkpoint"])  # (the export says it too: one check for every verb)
    assert any(w.startswith(said) for w in export.warnings), export.warnings
    exported = export.exported_model
    for model in (trained["checkpoint"], exported):
        tested = Engine(task="detection", data=masked, work_dir=tmp_path / "other").test(checkpoint=model)
        assert "box_AP50" in tested["metrics"] and any(w.startswith(said) for w in tested["warnings"]), model
    tuned = Engine(model=Padim(input_size=(64, 64)), task="detection", data=masked, work_dir=tmp_path / "tuned")
    assert not any(w.startswith(said) for w in tuned.test(checkpoint=tuned.train()["checkpoint"])["warnings"])


def test_evaluate_counts_a_defect_image_without_a_mask_in_its_type_but_not_in_pixel_metrics(tmp_path: Path) -> None:
    from otx.data.dataset import Sample
    from otx.errors import OTXDataError
    from otx.metrics import aupro, per_defect
    from otx.preprocess import PreProcessor
    from otx.tasks import get_adapter
    from otx.verbs.inference import evaluate

    rng = np.random.default_rng(3)
    kinds = ["good", "good", "good", "scratch", "scratch", "scratch", "dent", "dent"]
    maps = rng.random((8, 32, 32)).astype(np.float32)
    masks = np.zeros((8, 32, 32), bool)
    samples = []
    for i, kind in enumerate(kinds):
        mask_path = None
        if kind != "good":
            masks[i, 4 + i : 12 + i, 6:14] = True
            maps[i][masks[i]] += 0.4 * i / 8
            if i != 5:  # the last scratch image has no mask file
                mask_path = str(tmp_path / f"{i}_mask.png")
                cv2.imwrite(mask_path, masks[i].astype(np.uint8) * 255)
        samples.append(Sample(str(tmp_path / f"{i}.png"), int(kind != "good"), kind, mask_path))
    scores = maps.reshape(8, -1).max(axis=1)
    outputs = {
        "maps": torch.from_numpy(maps),
        "scores": torch.from_numpy(scores),
        "labels": torch.tensor([int(k != "good") for k in kinds]),
        "masks": torch.from_numpy(masks),
        "orig_sizes": torch.full((8, 2), 32),
    }
    ctx = Engine(work_dir=tmp_path / "ws")._context()
    threshold = float(np.median(scores))
    adapter = get_adapter("segmentation")
    pooled, got = evaluate(
        ctx, adapter, True, (threshold, 0.9), outputs, samples, PreProcessor((32, 32)), by_defect=True
    )
    assert got["scratch"]["images"] == 3  # image metrics: every scratch image
    kept = [i for i in range(8) if i != 5]  # pooled pixel metrics at the own size: the images with a mask
    assert pooled["pixel_AUROC"] == pytest.approx(roc_auc_score(masks[kept].ravel(), maps[kept].ravel()))
    assert pooled["AUPRO"] == pytest.approx(aupro(maps[kept], masks[kept]), abs=1e-12)
    assert got["scratch"]["image_AUROC"] == pytest.approx(roc_auc_score([0, 0, 0, 1, 1, 1], scores[:6]))
    keep = [i for i in range(8) if i != 5]  # pixel metrics: the images with a mask, and the good ones
    pixels = per_defect([kinds[i] for i in keep], scores[keep], scores[keep] >= threshold, maps[keep], masks[keep])
    for key in ("pixel_AUROC", "AUPRO", "defect_pixel_share"):
        assert got["scratch"][key] == pytest.approx(pixels["scratch"][key], abs=1e-12)
        assert got["dent"][key] == pytest.approx(pixels["dent"][key], abs=1e-12)
    cv2.imwrite(samples[3].mask_path, np.zeros((30, 32), np.uint8))  # a mask that is not its image's size
    with pytest.raises(OTXDataError, match="masks must have their image's size"):
        evaluate(ctx, adapter, True, (threshold, 0.9), outputs, samples, PreProcessor((32, 32)))


def test_evaluate_past_its_pixel_budget_scores_each_image_at_a_whole_fraction_of_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from otx.preprocess import PreProcessor
    from otx.tasks import get_adapter
    from otx.verbs.inference import evaluate

    # Maps and masks constant over 2x2 blocks: at half size each block is one pixel of the same score
    # and label, so the metrics at 1/2 of each image's size are those at full size (and scikit-learn's).
    rng = np.random.default_rng(5)
    blocks = rng.random((6, 24, 20)).astype(np.float32)
    block_masks = np.zeros((6, 24, 20), bool)
    samples = []
    for i in range(6):
        mask_path = None
        if i >= 3:
            block_masks[i, 3 + i : 8 + i, 4:9] = True
            block_masks[i, 18:20, 2 * i : 2 * i + 3] = True  # a second, smaller region
            blocks[i][block_masks[i]] += 0.3
            mask_path = str(tmp_path / f"{i}_mask.png")
            cv2.imwrite(mask_path, block_masks[i].repeat(2, 0).repeat(2, 1).astype(np.uint8) * 255)
        samples.append(Sample(str(tmp_path / f"{i}.png"), int(i >= 3), "scratch" if i >= 3 else "good", mask_path))
    maps = blocks.repeat(2, 1).repeat(2, 2)  # 48x40, each image's own size and the model's
    masks = block_masks.repeat(2, 1).repeat(2, 2)
    scores = maps.reshape(6, -1).max(axis=1)
    outputs = {
        "maps": torch.from_numpy(maps),
        "scores": torch.from_numpy(scores),
        "labels": torch.tensor([int(i >= 3) for i in range(6)]),
        "masks": torch.from_numpy(masks),
        "orig_sizes": torch.tensor([[48, 40]] * 6),
    }
    adapter, thresholds = get_adapter("segmentation"), (float(np.median(scores)), 0.9)
    monkeypatch.setenv("OTX_METRIC_PIXELS", str(10**9))
    full_ctx = Engine(work_dir=tmp_path / "ws")._context()
    full = evaluate(full_ctx, adapter, True, thresholds, outputs, samples, PreProcessor((48, 40))).metrics
    monkeypatch.setenv("OTX_METRIC_PIXELS", str(6 * 48 * 40 // 3))  # a third of the pixels: sides halved
    ctx = Engine(work_dir=tmp_path / "ws")._context()
    half = evaluate(ctx, adapter, True, thresholds, outputs, samples, PreProcessor((48, 40))).metrics
    assert half["pixel_metrics_divisor"] == 2 and "pixel_metrics_divisor" not in full
    assert half["pixel_AUROC"] == pytest.approx(roc_auc_score(block_masks.ravel(), blocks.ravel()), abs=1e-12)
    assert half["pixel_AUROC"] == pytest.approx(full["pixel_AUROC"], abs=1e-12)
    for key in ("AUPRO", "pixel_F1", "image_AUROC", "image_F1"):
        assert half[key] == pytest.approx(full[key], abs=1e-12), key
    assert "pixel_AUROC_input" in full and "pixel_AUROC_input" not in half  # the model-size maps are over it too
    assert not full_ctx.warnings
    assert [w for w in ctx.warnings if "pixel metrics at 1/2 of each image's own size" in w] == ctx.warnings
    assert len(ctx.warnings) == 1 and "OTX_METRIC_PIXELS=11520" in ctx.warnings[0]
    monkeypatch.setenv("OTX_METRIC_PIXELS", "lots")
    # One verb call keeps the budget it first read (optimize scores FP32 and INT8 at the same size) ...
    again = evaluate(ctx, adapter, True, thresholds, outputs, samples, PreProcessor((48, 40))).metrics
    assert again["pixel_metrics_divisor"] == 2 and again["AUPRO"] == half["AUPRO"]
    with pytest.raises(
        OTXConfigError, match="OTX_METRIC_PIXELS='lots' is not a pixel count"
    ):  # ... the next reads anew
        evaluate(
            Engine(work_dir=tmp_path / "ws")._context(),
            adapter,
            True,
            thresholds,
            outputs,
            samples,
            PreProcessor((48, 40)),
        )


def test_otx_test_past_its_pixel_budget_keeps_the_boxes_in_step_with_the_masks(
    trained_padim: dict, sample_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def tested(budget: int, work_dir: Path) -> TestResult:
        monkeypatch.setenv("OTX_METRIC_PIXELS", str(budget))
        data = AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0)
        result = Engine(data=data, task="detection", work_dir=work_dir).test(checkpoint=trained_padim["checkpoint"])
        assert result is not None
        return result

    full = tested(10**9, tmp_path / "full")
    pixels = sum(
        h * w
        for h, w in (
            cv2.imread(r["image"], cv2.IMREAD_UNCHANGED).shape[:2]
            for r in json.loads(next((tmp_path / "full").glob("*-test/predictions.json")).read_text())
        )
    )
    half = tested(pixels // 3, tmp_path / "half")  # sides halved
    assert "pixel_metrics_divisor" not in full.metrics and half.metrics["pixel_metrics_divisor"] == 2
    said = [w for w in half.warnings if w.startswith("pixel metrics at 1/2 of each image's own size")]
    assert len(said) == 1 and f"OTX_METRIC_PIXELS={pixels} computes them at full size" in said[0]
    saved = json.loads(next((tmp_path / "half").glob("*-test/metrics.json")).read_text())
    assert saved["metrics"]["pixel_metrics_divisor"] == 2 and said[0] in saved["warnings"]
    assert full.metrics["defect_recall"] > 0.5 and full.metrics["box_AP25"] > 0.5
    for key in ("pixel_AUROC", "AUPRO"):
        assert half.metrics[key] == pytest.approx(full.metrics[key], abs=0.03), key
    # box metrics stay at each image's own size, the same numbers (before: from shrunk masks, whose regions round
    # outward and merge, against scaled boxes: box AP 0.390 -> 0.121 at a third of the size in a bug bash)
    boxes = ("box_AP", "box_AP50", "box_AP25", "box_AP10", "defect_recall", "false_boxes_per_normal_image")
    assert {key: half.metrics[key] for key in boxes} == {key: full.metrics[key] for key in boxes}
    per_type = ("box_AP50", "box_AP25", "box_AP10", "defect_recall")
    for kind, row in full.per_defect.items():
        assert {k: half.per_defect[kind].get(k) for k in per_type} == {k: row.get(k) for k in per_type}, kind


def test_unknown_images_are_predicted_but_not_scored(trained_padim: dict, dataset_copy, tmp_path: Path) -> None:
    root = dataset_copy()
    (root / "test" / "unknown").mkdir()
    shutil.copy(root / "test" / "good" / "000.png", root / "test" / "unknown" / "u.png")
    engine = Engine(data=str(root), work_dir=tmp_path)
    result = engine.test(checkpoint=trained_padim["checkpoint"])
    assert result["splits"]["test"]["unknown"] == 1
    records = json.loads(next(tmp_path.glob("*-test/predictions.json")).read_text())
    assert any(r["image"].endswith("unknown/u.png") for r in records)


def test_failed_run_keeps_earlier_results(trained_padim: dict, dataset_copy, tmp_path: Path) -> None:
    work_dir = tmp_path / "ws"
    shutil.copytree(trained_padim["work_dir"], work_dir)
    before = {p: p.read_bytes() for p in work_dir.rglob("*") if p.is_file()}
    root = dataset_copy()
    (root / "train" / "good" / "003.png").write_bytes(b"garbage")
    engine = Engine(model=Padim(input_size=(64, 64)), data=str(root), work_dir=work_dir)
    with pytest.raises(OTXDataError, match="003.png"):
        engine.train()
    assert all(p.read_bytes() == data for p, data in before.items())


def test_truncated_training_image_stops_training_with_its_name(dataset_copy, tmp_path: Path) -> None:
    root = dataset_copy()
    bad = root / "train" / "good" / "011.png"
    bad.write_bytes(bad.read_bytes()[:150])
    engine = Engine(
        model=Padim(input_size=(64, 64)), data=AnomalyDataModule(str(root), num_workers=2), work_dir=tmp_path
    )
    with pytest.raises(OTXError, match="011.png"):
        engine.train()
    assert not list(tmp_path.glob("*/model.ckpt"))


def test_stfpm_trains_by_gradient_descent(sample_root: Path, tmp_path: Path) -> None:
    engine = Engine(
        model=Stfpm(input_size=(64, 64)),
        data=AnomalyDataModule(str(sample_root / "carpet_like"), batch_size=8, num_workers=0),
        task="segmentation",
        work_dir=tmp_path,
        max_epochs=3,
    )
    summary = engine.train()
    with (Path(summary["checkpoint"]).parent / "logs" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(row["train_loss_epoch"]) for row in rows if row.get("train_loss_epoch")]
    assert len(losses) == 3 and losses[-1] < losses[0]
    # one validation row per epoch trained (Lightning numbers them from 0); the kept epoch's thresholds,
    # validated again after the fit, are not a fourth (before: a row at epoch 3)
    assert sorted(int(row["epoch"]) for row in rows if row.get("val/image_AUROC")) == [0, 1, 2]
    # the state after the third epoch is epoch3.ckpt, as metrics.json counts (before: epoch2.ckpt)
    states = Path(summary["checkpoint"]).parent / "checkpoints"
    assert sorted(p.name for p in states.glob("epoch*.ckpt")) == ["epoch3.ckpt"]
    assert torch.load(states / "epoch3.ckpt", map_location="cpu", weights_only=False)["epoch"] == 2  # Lightning's index
    assert [row["epoch"] for row in summary["validation_curve"]][-1] == 3
    summary = engine.test()
    records = json.loads((engine.workdir.latest("test") / "predictions.json").read_text())
    labels = ["/good/" not in record["image"] for record in records]
    # normalised scores are a monotonic map of the raw ones: scikit-learn's AUROC on them is the
    # reported one, unless clipping at 0 or 1 tied some of them; on the raw ones it is the reported one
    expected = roc_auc_score(labels, [record["score"] for record in records])
    assert summary["metrics"]["image_AUROC"] == pytest.approx(expected, abs=0.02) and "AUPRO" in summary["metrics"]
    raw = roc_auc_score(labels, [record["raw_score"] for record in records])
    assert summary["metrics"]["image_AUROC"] == pytest.approx(raw, abs=1e-9)


def test_predict_reports_and_skips_an_undecodable_image(trained_padim: dict, dataset_copy, tmp_path: Path) -> None:
    root = dataset_copy()
    folder = root / "test" / "good"
    bad = folder / "001.png"
    bad.write_bytes(bad.read_bytes()[:120])  # truncated: header readable, pixels not
    predictions = Engine(work_dir=tmp_path).predict(source=folder, checkpoint=trained_padim["checkpoint"])
    assert len(predictions) == 12
    broken = [p for p in predictions if p.error]
    assert len(broken) == 1 and broken[0].image_path.endswith("001.png") and "001.png" in broken[0].error
    assert all(np.isfinite(p.pred_score) for p in predictions if not p.error)
    records = json.loads(next(tmp_path.glob("*-predict/predictions/predictions.json")).read_text())
    assert sum("error" in r for r in records) == 1


def test_no_validation_images_is_refused_before_training(dataset_copy, tmp_path: Path) -> None:
    root = dataset_copy()
    shutil.rmtree(root / "test")
    shutil.rmtree(root / "ground_truth")
    engine = Engine(model=Padim(input_size=(64, 64)), data=str(root), work_dir=tmp_path)
    with pytest.raises(OTXError, match="no validation images"):
        engine.train()
    assert not list(tmp_path.glob("*/logs"))  # training never started


def test_a_verb_leaves_the_engine_and_its_data_as_they_were(trained_padim: dict, sample_root: Path) -> None:
    """The task and the data settings a checkpoint brings stay inside the verb (they are values, not state)."""
    data = AnomalyDataModule(num_workers=0, val_split=0.3, seed=7)  # no root: the checkpoint's data is used
    engine = Engine(data=data, work_dir=trained_padim["work_dir"])
    before = (engine.task, data.data_root, data.val_split, data.seed, data.index, data.splits)
    result = engine.test(checkpoint=trained_padim["checkpoint"])
    assert (engine.task, data.data_root, data.val_split, data.seed, data.index, data.splits) == before
    assert engine.task is None and data.data_root is None
    # The verb used the checkpoint's task and its validation split (0.5, seed 42), not the given 0.3 / 7.
    assert result.task == "segmentation"
    assert result.splits["test"]["normal"] == 6
    # The same engine then runs another task on the same checkpoint without carrying the first one over.
    classified = Engine(data=data, work_dir=trained_padim["work_dir"], task="classification").test(
        checkpoint=trained_padim["checkpoint"]
    )
    assert classified.task == "classification" and set(classified.metrics) == {"image_AUROC", "image_F1"}
    assert classified.metrics["image_AUROC"] == pytest.approx(result.metrics["image_AUROC"], abs=1e-12)


def test_results_are_typed_and_are_their_metrics_json(trained_padim: dict, sample_root: Path, tmp_path: Path) -> None:
    from otx.results import TestResult, TrainResult

    summary = trained_padim["summary"]
    assert isinstance(summary, TrainResult)
    assert summary.checkpoint == summary["checkpoint"] == str(trained_padim["checkpoint"])
    written = json.loads((trained_padim["checkpoint"].parent / "metrics.json").read_text())
    assert json.loads(json.dumps(summary.to_json())) == written
    assert list(summary) == list(written) and written["command"] == "train"
    assert summary.run_folder == trained_padim["checkpoint"].parent and "run_folder" not in written
    engine = Engine(data=AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0), work_dir=tmp_path)
    result = engine.test(checkpoint=summary.checkpoint)
    assert isinstance(result, TestResult)
    assert json.loads(json.dumps(result.to_json())) == json.loads((result.run_folder / "metrics.json").read_text())


_API_TRAINING = """
import sys
from otx.data import AnomalyDataModule
from otx.data.dataset import Sample
from otx.engine import Engine
from otx.models import Padim
data = AnomalyDataModule(sys.argv[1], num_workers=0)
Engine(model=Padim(input_size=(64, 64)), data=data, work_dir=sys.argv[2]).train()
"""


def test_the_python_api_prints_no_library_noise(sample_root: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", _API_TRAINING, str(sample_root / "bottle_like"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OTX_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert "otx train: Padim" in done.stderr  # otx's own summary (stderr in the Python API)
    for noise in ("Warning", "deprecated", "GPU available", "eval mode", "TPU available"):
        assert noise not in done.stderr + done.stdout, (noise, done.stderr)


_API_WARNING = """
import logging, sys
if sys.argv[3] == "basicConfig":
    logging.basicConfig(level=logging.WARNING)
from otx.data import AnomalyDataModule
from otx.data.dataset import Sample
from otx.engine import Engine
from otx.models import Padim
data = AnomalyDataModule(sys.argv[1], num_workers=0)
Engine(model=Padim(input_size=(64, 64), image_threshold=1e9), data=data, work_dir=sys.argv[2]).train()
"""


@pytest.mark.parametrize("logging_setup", ["none", "basicConfig"])
def test_the_python_api_shows_otx_warnings_once(logging_setup: str, sample_root: Path, tmp_path: Path) -> None:
    """A warning otx gives (here: a manual threshold above every score) reaches stderr, once, however logging is set."""
    done = subprocess.run(
        [sys.executable, "-c", _API_WARNING, str(sample_root / "bottle_like"), str(tmp_path), logging_setup],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OTX_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    shown = [line for line in done.stderr.splitlines() if "image threshold" in line and "flags nothing" in line]
    assert len(shown) == 1, done.stderr
    assert "INFO" not in done.stderr  # the run's INFO lines go to its otx.log (before: to basicConfig's handler too)
    assert shown[0].startswith("WARNING:")  # logging's own format or otx's: "LEVEL: message" / "LEVEL:otx:message"


def test_an_engine_tests_and_predicts_with_its_own_training(sample_root: Path, tmp_path: Path) -> None:
    """Two engines sharing a work_dir: each one's test and predict default to the model it trained."""
    first = Engine(
        model=Padim(input_size=(64, 64)),
        data=AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0),
        work_dir=tmp_path,
    )
    second = Engine(
        model=Padim(input_size=(96, 96)),
        data=AnomalyDataModule(str(sample_root / "tile_like"), num_workers=0),
        task="classification",
        work_dir=tmp_path,
    )
    mine = first.train().checkpoint
    theirs = second.train().checkpoint  # now the work_dir's latest training run
    assert first.test().checkpoint == mine and second.test().checkpoint == theirs
    predicted = first.predict(source=sample_root / "bottle_like" / "test" / "good", visualize=False)
    run = first.workdir.latest("predict")
    assert json.loads((run / "metrics.json").read_text())["checkpoint"] == mine and predicted
    exported = first.export()
    assert exported.checkpoint == mine
    first.export(export_format="ONNX")  # optimize takes IRs only: its default stays this engine's IR
    assert first.optimize(subset_size=8).source_model == exported.exported_model


def test_numpy_numbers_and_path_likes_are_taken_as_python_ones(sample_root: Path, tmp_path: Path) -> None:
    """Values read from arrays or configs (NumPy scalars, PurePath) run the verbs; NumPy bools stay refused."""
    from pathlib import PurePosixPath

    import timm

    weights = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), weights)
    data = AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0, batch_size=np.int64(8))
    engine = Engine(
        model=Padim(
            backbone="resnet18",
            weights=PurePosixPath(weights),  # before: the checkpoint held a PosixPath and could not be read
            input_size=(np.int64(64), np.int32(64)),  # before: "must be [height, width], two integers"
            score_top_share=np.float64(0.05),  # before: accepted, and its checkpoint could not be read
        ),
        data=data,
        work_dir=PurePosixPath(tmp_path / "ws"),  # before: "work_dir must be a path"
        trainer={"max_epochs": np.int64(1)},  # before: "must be an integer" for every NumPy integer
    )
    trained = engine.train()
    stored = torch.load(trained.checkpoint, map_location="cpu", weights_only=True)["model"]["init_args"]
    assert stored["weights"] == str(weights) and stored["score_top_share"] == 0.05
    assert [type(side) for side in stored["input_size"]] == [int, int]
    tested = engine.test(devices=np.int64(1))
    assert tested.checkpoint == trained.checkpoint and "image_AUROC" in tested.metrics
    with pytest.raises(OTXConfigError, match=r"devices must be an integer >= 1"):
        engine.test(devices=np.bool_(True))


def test_training_twice_starts_from_the_model_as_given(sample_root: Path, tmp_path: Path) -> None:
    """STFPM learns by gradient descent: a second train() must not go on from the first one's weights."""
    model = Stfpm(input_size=(64, 64))
    engine = Engine(
        model=model,
        data=AnomalyDataModule(str(sample_root / "carpet_like"), batch_size=8, num_workers=0),
        work_dir=tmp_path,
        max_epochs=1,
    )
    first, second = engine.train(), engine.train()
    assert second.thresholds == pytest.approx(first.thresholds, rel=1e-5)
    assert second.validation_metrics == pytest.approx(first.validation_metrics, rel=1e-5)
    assert engine.model is not model  # the first call trained the given object, the second a fresh copy of it
    engine.model = Padim(input_size=(64, 64))  # a model swapped in is the one the next call trains
    assert engine.train().model == "Padim"


def test_callback_objects_start_afresh_in_each_training(sample_root: Path, tmp_path: Path) -> None:
    """Lightning keeps a run's state on its callbacks: a second train() must not inherit the first's best epoch."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    best = ModelCheckpoint(monitor="val/image_AUROC", mode="max", filename="best")
    stop = EarlyStopping(monitor="val/image_AUROC", mode="max", patience=1)
    engine = Engine(
        model=Stfpm(input_size=(64, 64)),
        data=AnomalyDataModule(str(sample_root / "carpet_like"), batch_size=8, num_workers=0),
        work_dir=tmp_path,
        trainer={"max_epochs": 2, "callbacks": [best, stop]},
    )
    first = engine.train()
    engine.data = AnomalyDataModule(str(sample_root / "bottle_like"), batch_size=8, num_workers=0)
    second = engine.train()
    assert best.dirpath is None and best.best_model_path == "" and stop.wait_count == 0  # as given
    for run in (first, second):  # each run's best epoch in its own folder (before: the second wrote into the first's)
        assert [p.name for p in (Path(run.run_folder) / "checkpoints").glob("best*.ckpt")] == ["best.ckpt"]
    students = [load_checkpoint(run.checkpoint)[0].model.student_model.state_dict() for run in (first, second)]
    assert any(not torch.equal(students[0][k], students[1][k]) for k in students[0])  # before: the first's weights


def test_a_training_leaves_the_process_and_the_model_ready(sample_root: Path, tmp_path: Path) -> None:
    """torch's deterministic mode and otx's log level are the run's; the trained model is left for inference."""
    import logging

    otx_logger = logging.getLogger("otx")
    before = (torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG"), otx_logger.level)
    engine = Engine(
        model=Padim(input_size=(64, 64)),
        data=AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0),
        work_dir=tmp_path,
        trainer={"deterministic": True, "callbacks": [{"class_path": "RichProgressBar"}]},  # the user's own bar
        console=Console(quiet=True),  # (with a bar among the callbacks, Lightning refuses to turn bars off)
    )
    engine.train()
    after = (torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG"), otx_logger.level)
    assert after == before and otx_logger.propagate  # before: deterministic on, the level INFO
    assert not engine.model.training
    with torch.no_grad():
        anomaly_map, score = engine.model(torch.rand(2, 3, 64, 64))  # before: AttributeError (train mode)
    assert anomaly_map.shape == (2, 64, 64) and score.shape == (2,)


def test_runs_closing_out_of_order_leave_the_otx_logger_as_it_was(tmp_path: Path) -> None:
    """Two engines in two threads: their runs may close in any order."""
    import logging

    from otx.workdir import WorkDir

    otx_logger = logging.getLogger("otx")
    before = (otx_logger.level, otx_logger.propagate, list(otx_logger.handlers))
    first = WorkDir(tmp_path / "a").new_run("test")
    second = WorkDir(tmp_path / "b").new_run("test")
    first.close(True)
    otx_logger.info("still open")  # the second run's log keeps its INFO lines
    second.close(True)
    assert "still open" in (second.path / "otx.log").read_text()
    assert (otx_logger.level, otx_logger.propagate, list(otx_logger.handlers)) == before


def test_an_engines_model_unlike_the_checkpoint_is_named(trained_padim: dict, sample_root: Path, tmp_path) -> None:
    engine = Engine(model=Stfpm(input_size=(64, 64)), data=str(sample_root / "bottle_like"), work_dir=tmp_path)
    tested = engine.test(checkpoint=trained_padim["checkpoint"])
    assert any("the engine's model is Stfpm" in w and "holds Padim" in w for w in tested.warnings), tested.warnings
    # the same for the verbs that deploy or time a model (before: they used the file without a word)
    exported = engine.export(checkpoint=trained_padim["checkpoint"])
    optimized = engine.optimize(checkpoint=exported.exported_model, subset_size=4)
    timed = engine.benchmark(checkpoint=trained_padim["checkpoint"], num_images=2, warmup=0, repeats=1)
    for result in (exported, optimized, timed):
        assert any("the engine's model is Stfpm" in w and "holds Padim" in w for w in result.warnings), result


def test_python_callers_are_told_the_python_argument_names(sample_root: Path, tmp_path: Path, capsys) -> None:
    """The same mistake names ``checkpoint=PATH`` through the Engine and ``--checkpoint PATH`` through the CLI."""
    from otx.cli import main

    empty = tmp_path / "ws"
    with pytest.raises(OTXError) as raised:
        Engine(work_dir=empty).test()
    message = str(raised.value)
    assert "checkpoint=PATH" in message and "Engine.train()" in message and "--" not in message
    with pytest.raises(OTXDataError) as raised:
        Engine(model=Padim(pretrained=False), work_dir=empty).train()
    assert "pass data=DIR" in str(raised.value) and "--data_root" not in str(raised.value)
    assert main(["test", "--work_dir", str(empty)]) == 1
    err = capsys.readouterr().err
    assert "--checkpoint PATH" in err and "`otx train`" in err and "checkpoint=" not in err
    with pytest.raises(OTXConfigError, match=r"no model given; pass model=, e\.g\. Engine\(model=Padim\(\)"):
        Engine(work_dir=empty).train()  # before: "pass a model (e.g. --config ...)"
    data = AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0)
    with pytest.raises(OTXConfigError, match="unexpected keyword argument 'max_epoch'; did you mean 'max_epochs'\\?"):
        Engine(model=Padim(pretrained=False), data=data, work_dir=empty, trainer={"max_epoch": 1}).train()
    with pytest.raises(OTXConfigError, match=r'trainer\["max_epochs"\] must be an integer >= 1 \(got .two.\)'):
        Engine(model=Padim(pretrained=False), data=data, work_dir=tmp_path / "ws2", trainer={"max_epochs": "two"})
    assert not (tmp_path / "ws2").exists()  # refused before a run folder (before: int()'s ValueError, from train())
    images = sorted((sample_root / "bottle_like" / "test" / "good").glob("*.png"))[:2]
    with pytest.raises(OTXConfigError, match="got a list of 2 paths.*pass a glob"):
        Engine(work_dir=empty).predict(source=images)
    with pytest.raises(OTXConfigError, match="got ndarray.*OpenVINOInferencer"):
        Engine(work_dir=empty).predict(source=np.zeros((8, 8, 3), np.uint8))  # before: "must be a path"
    trainer = {"enable_model_summary": True, "log_every_n_steps": 1}  # before: "got multiple values for ..."
    assert Engine(
        model=Padim(pretrained=False, input_size=(64, 64)), data=data, work_dir=empty, trainer=trainer
    ).train()


@pytest.mark.parametrize(
    ("cli", "python"),
    [
        ("pass --checkpoint PATH or run `otx train` first", "pass checkpoint=PATH or run Engine.train() first"),
        ("export with --format OPENVINO", "export with export_format='OPENVINO'"),
        ("run `otx export --format OPENVINO` first", "run `otx export --format OPENVINO` first"),  # a quoted command
        ("or --resume true", "or resume=True"),
        ("re-run otx optimize with --weight_bits 7", "re-run Engine.optimize() with weight_bits=7"),
        ("set --model.init_args.input_mode keep_aspect", "set the model's input_mode keep_aspect"),
        ("(--trainer.devices, --trainer.num_nodes)", '(trainer["devices"], trainer["num_nodes"])'),
        ("resume with --max_epochs above 3", "resume with max_epochs above 3"),
        (
            "pass --model.init_args.weights FILE, or set --model.init_args.pretrained false",
            "pass the model's weights=FILE, or set the model's pretrained=False",
        ),
        (
            "`otx train --help` lists them; `otx find --what backbones`",
            "`otx train --help` lists them; `otx find --what backbones`",
        ),
        # paths keep their names (before: '/data/cam--source' lost its '--source', 'otx test sets' became Engine.test())
        (
            "the training data '/data/cam--source/otx test sets' is gone; pass --data_root DIR",
            "the training data '/data/cam--source/otx test sets' is gone; pass data=DIR",
        ),
        ("ws/lr--max_epochs/model.ckpt: pass --checkpoint PATH", "ws/lr--max_epochs/model.ckpt: pass checkpoint=PATH"),
        (r"C:\parts\otx--resume true is gone; or --resume true", r"C:\parts\otx--resume true is gone; or resume=True"),
    ],
)
def test_python_spelling_of_command_line_options(cli: str, python: str) -> None:
    from otx.errors import python_spelling

    assert python_spelling(cli) == python


def test_all_black_masks_of_defect_images_are_named(trained_padim: dict, dataset_copy, tmp_path: Path) -> None:
    from otx.cli import main

    root = dataset_copy()
    for mask in (root / "ground_truth" / "scratch").glob("*_mask.png"):
        cv2.imwrite(str(mask), np.zeros_like(cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)))  # an annotation slip
    work_dir = tmp_path / "ws"
    args = ["test", "--checkpoint", str(trained_padim["checkpoint"]), "--data_root", str(root)]
    assert main([*args, "--work_dir", str(work_dir)]) == 0
    run = json.loads((work_dir / "latest.json").read_text())["test"]
    warnings = json.loads((work_dir / run / "metrics.json").read_text())["warnings"]
    assert any("have an all-black mask (e.g. ground_truth/scratch/" in w for w in warnings), warnings


def test_padim_with_one_training_image_is_refused_before_fitting(dataset_copy, tmp_path: Path) -> None:
    root = dataset_copy()
    for path in sorted((root / "train" / "good").glob("*.png"))[1:]:
        path.unlink()
    engine = Engine(
        model=Padim(input_size=(64, 64)), data=AnomalyDataModule(str(root), num_workers=0), work_dir=tmp_path
    )
    with pytest.raises(OTXDataError, match="Padim needs at least 2 training images .*train/good holds 1"):
        engine.train()  # before: a ValueError after the fit, reported as an internal error
    assert not (tmp_path / "latest.json").exists()


def test_train_closes_its_loggers_with_the_timings_written(dataset_copy, tmp_path: Path) -> None:
    import threading

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def writers() -> int:  # TensorBoard's event-file writer threads
        return sum(type(t).__name__ == "_AsyncWriterThread" for t in threading.enumerate())

    before = writers()
    trained = Engine(model=Padim(input_size=(64, 64)), data=str(dataset_copy()), work_dir=tmp_path).train()
    assert writers() == before  # before: one more per Engine.train, its file open for the whole session
    logs = Path(trained.run_folder) / "logs"
    events = EventAccumulator(str(logs)).Reload()
    assert "time/fit_s" in events.Tags()["scalars"]  # written after Lightning's own finalize, then closed
    assert "time/fit_s" in (logs / "metrics.csv").read_text().splitlines()[0]


def test_a_test_split_of_normal_images_only_says_why_its_metrics_are_na(
    trained_padim: dict, dataset_copy, tmp_path: Path
) -> None:
    # before: image_AUROC and image_F1 n/a in the table, and only "no ground_truth/ folder" said
    root = dataset_copy()
    for folder in [*root.glob("test/*"), root / "ground_truth"]:
        if folder.name != "good":
            shutil.rmtree(folder)
    result = Engine(data=str(root), work_dir=tmp_path).test(checkpoint=trained_padim["checkpoint"])
    assert result is not None and np.isnan(result.metrics["image_AUROC"])
    said = [w for w in result.warnings if w.startswith("the test split has only normal images")]
    assert len(said) == 1 and "add defect images (test/<defect>) to measure them" in said[0]


def test_training_images_of_both_kinds_grayscale_and_colour_are_said(dataset_copy, tmp_path: Path) -> None:
    root = dataset_copy()  # bottle_like: colour images
    train = sorted((root / "train" / "good").glob("*.png"))
    for path in train[::2]:  # every other one saved as a one-channel file
        cv2.imwrite(str(path), cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY))
    data = AnomalyDataModule(str(root), num_workers=0)
    result = Engine(model=Padim(input_size=(64, 64)), data=data, work_dir=tmp_path).train()
    said = [w for w in result["warnings"] if w.startswith("the training images mix grayscale and colour files")]
    assert len(said) == 1 and f"(e.g. train/good/{train[0].name} and train/good/{train[1].name})" in said[0]


def test_twelve_bit_test_and_input_images_are_said_where_the_training_images_were_full_range(
    trained_padim: dict, dataset_copy, tmp_path: Path
) -> None:
    # before: only the training images were checked (their first three files); a model trained on 8-bit
    # images scored 12-bit-in-16 test images, read nearly black, as anomalous, and nothing was said
    root = dataset_copy()
    for path in sorted((root / "test" / "good").glob("*.png")):
        assert cv2.imwrite(str(path), cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 16)
    tested = Engine(data=str(root), work_dir=tmp_path / "test").test(checkpoint=trained_padim["checkpoint"])
    said = [w for w in tested.warnings if w.startswith("the test images include 16-bit files")]
    assert len(said) == 1 and "checked, e.g. test/good/" in said[0] and "multiply by 16" in said[0]
    predicted = Engine(work_dir=tmp_path / "predict").predict(
        source=root / "test" / "good", checkpoint=trained_padim["checkpoint"]
    )
    assert predicted is not None
    warnings = json.loads(next((tmp_path / "predict").glob("*-predict/metrics.json")).read_text())["warnings"]
    said = [w for w in warnings if w.startswith("the input images include 16-bit files")]
    assert len(said) == 1 and "checked, e.g. 0" in said[0]  # named under the source folder


def test_an_engines_work_dir_can_be_moved_between_runs(trained_padim: dict, sample_root: Path, tmp_path: Path) -> None:
    # Before: `engine.work_dir = ...` set an attribute nothing read; the next run went to the old folder.
    engine = Engine(data=AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0), work_dir=tmp_path / "a")
    assert engine.work_dir == tmp_path / "a"
    engine.work_dir = str(tmp_path / "b")
    assert engine.work_dir == tmp_path / "b"
    engine.predict(source=sample_root / "bottle_like" / "test" / "good", checkpoint=trained_padim["checkpoint"])
    assert json.loads((tmp_path / "b" / "latest.json").read_text())["predict"]
    assert not (tmp_path / "a").exists()
    with pytest.raises(OTXConfigError, match="work_dir"):
        engine.work_dir = 3


def test_temporary_files_of_writes_a_killed_process_never_finished_are_swept(tmp_path: Path) -> None:
    # Before (a bug bash of signals): kill -9 or the OOM killer mid-write left .model.ckpt.<random>.tmp (177 MB for
    # PADIM), .latest.json.<random>.tmp and an export's .save-* folder for good.
    import time

    from otx.workdir import WorkDir

    work = WorkDir(tmp_path / "ws")
    run = work.root / "20261201-120000-train"
    (run / ".save-ab_c1234").mkdir(parents=True)  # (tempfile's names: 8 random characters)
    (run / ".save-ab_c1234" / "exported_model.bin").write_bytes(b"0" * 10)
    old = [run / ".model.ckpt.x1y2z3w4.tmp", work.root / ".latest.json.q9r8s7t6.tmp", run / ".save-ab_c1234"]
    (run / "checkpoints").mkdir()
    old.append(run / "checkpoints" / ".epoch3.ckpt.k2m4n6p8.tmp")  # an epoch state (before: not swept)
    for path in (*old[:2], old[3]):
        path.write_bytes(b"partial")
    fresh = run / ".metrics.json.z3a4b5c6.tmp"  # another otx writing now: left alone
    fresh.write_bytes(b"{")
    mine = [run / "notes.tmp", work.root / ".build.tmp", work.root / ".export-cache"]  # not names otx writes
    mine[0].write_text("the user's")
    mine[1].write_text("the user's")
    mine[2].mkdir()
    hours_ago = time.time() - 2 * 3600
    for path in (*old, *mine):
        os.utime(path, (hours_ago, hours_ago))
    new = work.new_run("test")
    assert not any(path.exists() for path in old)
    assert fresh.exists() and all(path.exists() for path in mine) and new.path.is_dir()
    new.close(False)


def test_run_folders_with_relative_paths_are_read_from_anywhere(tmp_path: Path, monkeypatch) -> None:
    # Before (a bug bash of older artifacts): an otx before 2026-12-03 recorded work_dir, checkpoint and data_root
    # relative to where it ran; from another directory `otx test` of its export said "no data to test on" and
    # `otx optimize` "no run folder beside the model says where" the training images are.
    import yaml

    from otx.workdir import training_checkpoint, training_data_root

    project = tmp_path / "project"
    train, export = project / "ws" / "20261201-120000-train", project / "ws" / "20261201-120100-export"
    train.mkdir(parents=True)
    export.mkdir()
    (train / "config.yaml").write_text(yaml.safe_dump({"work_dir": "ws", "data": {"data_root": "../d/bottle_like"}}))
    checkpoint = "ws/20261201-120000-train/model.ckpt"
    (export / "config.yaml").write_text(yaml.safe_dump({"work_dir": "ws", "checkpoint": checkpoint}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for given in (export / "exported_model.xml", Path("../project/ws/20261201-120100-export/exported_model.xml")):
        assert training_data_root(given) == str(project.resolve() / "../d/bottle_like")
        assert training_checkpoint(given) == project.resolve() / checkpoint

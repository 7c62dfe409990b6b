"""Detection boxes: cut from maps by the box settings, tuned on validation, and the anomaly box metrics."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import assert_same_predictions, check_demo_package, demo_package
from otx.boxes import BoxSettings, boxes_from_map, candidates, refine_boxes, tune
from otx.metrics import box_ap, defect_recall, gt_boxes_from_mask
from otx.postprocess import mask_to_boxes


def two_pieces() -> np.ndarray:
    """A 100x200 map: a crack in two pieces 6 pixels apart (0.9), a speck (0.7), background 0.2."""
    amap = np.full((100, 200), 0.2, np.float32)
    amap[20:60, 50:53] = 0.9
    amap[66:90, 51:54] = 0.8
    amap[10, 150] = 0.7
    return amap


def component_means(amap: np.ndarray, level: float) -> np.ndarray:
    """The mean map value of each 8-connected component of ``amap >= level`` (cv2's order), by brute force."""
    count, labels = cv2.connectedComponents((amap >= level).astype(np.uint8), connectivity=8)
    return np.array([amap[labels == k].mean(dtype=np.float64) for k in range(1, count)])


def test_default_settings_are_the_connected_components_of_the_mask() -> None:
    amap = two_pieces()
    amap[30, 51] = 0.95  # one pixel of the upper piece above the rest: the maximum and the mean differ
    boxes, scores = boxes_from_map(amap, True, BoxSettings())
    want_boxes, want_maxima = mask_to_boxes(amap >= 0.5, amap)
    np.testing.assert_array_equal(boxes, want_boxes)
    assert len(boxes) == 3
    # each box scored by the mean of its component's values; the earlier score, their maximum, on request
    np.testing.assert_allclose(scores, component_means(amap, 0.5), rtol=1e-6)
    assert scores[boxes[:, 1] == 20] == pytest.approx([(119 * 0.9 + 0.95) / 120])
    np.testing.assert_array_equal(boxes_from_map(amap, True, BoxSettings(score="max"))[1], want_maxima)
    with pytest.raises(ValueError, match="box score"):
        BoxSettings(score="median")


def test_merge_min_area_threshold_and_normal_images() -> None:
    amap = two_pieces()
    # within 0.05 * 200 = 10 pixels: the two pieces are one box of their own pixels (not the dilation)
    boxes, scores = boxes_from_map(amap, True, BoxSettings(merge=0.05))
    assert sorted(map(tuple, boxes.tolist())) == [(50.0, 20.0, 54.0, 90.0), (150.0, 10.0, 151.0, 11.0)]
    assert sorted(scores.tolist()) == pytest.approx([0.7, (120 * 0.9 + 72 * 0.8) / 192])  # the two pieces' mean
    # a box must cover 0.1 % of 20000 pixels = 20: the one-pixel speck goes
    boxes, scores = boxes_from_map(amap, True, BoxSettings(merge=0.05, min_area=0.001))
    assert boxes.tolist() == [[50.0, 20.0, 54.0, 90.0]]
    assert scores.tolist() == pytest.approx([(120 * 0.9 + 72 * 0.8) / 192])  # the kept box's own score
    # a threshold of its own: at 0.85 only the upper piece is left
    boxes, _ = boxes_from_map(amap, True, BoxSettings(threshold=0.85))
    assert boxes.tolist() == [[50.0, 20.0, 53.0, 60.0]]
    # images labelled normal get no box, unless asked for
    assert len(boxes_from_map(amap, False, BoxSettings())[0]) == 0
    assert len(boxes_from_map(amap, False, BoxSettings(on_normal=True))[0]) == 3


def test_merging_grows_each_group_by_the_euclidean_radius() -> None:
    """``grown``: every pixel within the radius of the mask, by brute force over pixel pairs."""
    from otx.boxes import grown

    rng = np.random.default_rng(5)
    mask = (rng.random((40, 60)) > 0.985).astype(np.uint8)
    mask[0, 0] = mask[39, 59] = 1
    ys, xs = np.nonzero(mask)
    yy, xx = np.mgrid[0:40, 0:60]
    for radius in (0, 1, 3, 7):
        squared = ((yy[..., None] - ys) ** 2 + (xx[..., None] - xs) ** 2).min(axis=-1)
        np.testing.assert_array_equal(grown(mask, radius), (squared <= radius**2).astype(np.uint8))
    # two pieces 2r apart are one group, 2r + 2 apart two (r = round(merge * the longer side))
    for gap, groups in ((20, 1), (22, 2)):
        amap = np.zeros((50, 200), np.float32)
        amap[20:30, 40:50] = amap[20:30, 50 + gap : 60 + gap] = 0.9
        assert len(boxes_from_map(amap, True, BoxSettings(merge=0.05))[0]) == groups, gap


def test_peak_share_fits_each_box_to_its_own_core() -> None:
    """With ``peak``, a box encloses its group's pixels at or above its own level between threshold and maximum."""
    yy, xx = np.mgrid[0:120, 0:200].astype(np.float32)
    high = 0.2 + 0.7 * np.exp(-((yy - 40) ** 2 + (xx - 50) ** 2) / (2 * 8.0**2))  # peak 0.9
    low = 0.2 + 0.5 * np.exp(-((yy - 80) ** 2 + (xx - 150) ** 2) / (2 * 12.0**2))  # peak 0.7
    amap = np.maximum(high, low).astype(np.float32)
    wide, _ = boxes_from_map(amap, True, BoxSettings(threshold=0.5))
    tight, scores = boxes_from_map(amap, True, BoxSettings(threshold=0.5, peak=0.5))
    # first principles: each blob's own cut, halfway from 0.5 to its maximum
    want = []
    for blob in (high, low):
        top = float(amap[blob > 0.5].max())
        region = (blob > 0.5) & (amap >= 0.5 + 0.5 * (top - 0.5))
        want.append(mask_to_boxes(region)[0][0])
    order = np.argsort(tight[:, 0])
    np.testing.assert_array_equal(tight[order], np.stack(want))
    # scored by the mean of each group's values at or above the box level, not of the core alone
    np.testing.assert_allclose(np.sort(scores), np.sort(component_means(amap, 0.5)), rtol=1e-6)
    assert np.sort(boxes_from_map(amap, True, BoxSettings(threshold=0.5, peak=0.5, score="max"))[1]) == (
        pytest.approx([amap[low > 0.5].max(), amap.max()])
    )
    # the core of a blob is inside the box at the box level, and smaller
    wide = wide[np.argsort(wide[:, 0])]
    assert (tight[order][:, :2] > wide[:, :2]).all() and (tight[order][:, 2:] < wide[:, 2:]).all()


@pytest.mark.parametrize(
    "settings",
    [
        BoxSettings(),
        BoxSettings(0.55, 0.05, 0.001, peak=0.5),
        BoxSettings(peak=0.25),
        BoxSettings(0.55, 0.05, score="max"),
        BoxSettings(peak=0.25, refine="dark"),
        BoxSettings(0.55, 0.05, refine="bright"),
        BoxSettings(refine="contrast"),
    ],
)
def test_demo_package_cuts_the_boxes_otx_cuts(settings: BoxSettings) -> None:
    """The demo package's script (numpy and OpenCV only) repeats ``boxes_from_map``, core share included."""
    demo = demo_package()
    yy, xx = np.mgrid[0:120, 0:200].astype(np.float32)
    amap = (
        0.2
        + 0.7 * np.exp(-((yy - 40) ** 2 + (xx - 50) ** 2) / 128.0)
        + 0.5 * np.exp(-((yy - 80) ** 2 + (xx - 150) ** 2) / 288.0)
    )
    amap = np.minimum(amap, 1.0).astype(np.float32)
    amap[20:60, 100:103] = 0.8  # a thin piece near nothing, and one within merging distance of the first blob
    amap[40:44, 62:64] = 0.6
    image = textured_image(amap.shape, seed=3)
    image[35:46, 45:56] = (40, 60, 50)  # a dark spot inside the first blob, a bright streak along the thin piece
    image[25:50, 100:102] = 230
    boxes, scores = boxes_from_map(amap, True, settings, image)
    theirs = demo.boxes_of(amap, True, settings.as_dict(), image)
    order = np.lexsort((boxes[:, 1], boxes[:, 0]))
    want = sorted((b["xyxy"], b["score"]) for b in theirs)
    assert [list(map(float, b)) for b in boxes[order]] == [w[0] for w in want]
    assert [round(float(s), 6) for s in scores[order]] == [w[1] for w in want]  # the 6 decimals both write


def test_a_group_whose_maximum_sits_on_the_rounded_box_level_keeps_its_box_in_otx_and_the_demo() -> None:
    """Levels are compared in float32, as the map's pixels are: a group never loses its maximum."""
    demo = demo_package()
    # 0.575 is no float32: float32(0.575) is just below it, yet at the box threshold 0.575 (the map is float32)
    amap = np.zeros((32, 32), np.float32)
    amap[4:8, 4:8] = np.float32(0.575)
    amap[20:24, 20:24] = 0.9
    settings = BoxSettings(threshold=0.575, peak=0.25)
    boxes, scores = boxes_from_map(amap, True, settings)
    assert np.isfinite(boxes).all()  # before: [inf, inf, -inf, -inf] for the first group (and Infinity in JSON)
    theirs = sorted(b["xyxy"] for b in demo.boxes_of(amap, True, settings.as_dict(), None))
    assert sorted(list(map(float, b)) for b in boxes) == theirs == [[4.0, 4.0, 8.0, 8.0], [20.0, 20.0, 24.0, 24.0]]
    # a core pixel at float32 of the core level: the demo took it (float32), otx did not (float64), one pixel wider
    amap = np.zeros((20, 20), np.float32)
    amap[5, 5], amap[5, 6:12], amap[5, 12] = 0.6, 0.55, np.float32(0.525)
    settings = BoxSettings(threshold=0.5, peak=0.25)  # the core level is 0.5 + 0.25 * (0.6 - 0.5) = 0.525
    boxes, _ = boxes_from_map(amap, True, settings)
    assert [list(map(float, b)) for b in boxes] == [b["xyxy"] for b in demo.boxes_of(amap, True, settings.as_dict())]
    assert boxes.tolist() == [[5.0, 5.0, 13.0, 6.0]]


def test_a_nan_pixel_in_the_first_validation_map_leaves_the_levels_tried_finite() -> None:
    maps = [np.full((64, 64), 0.1, np.float32) for _ in range(2)]
    for amap in maps:
        amap[10:20, 10:20] = 0.9
    truth = [np.array([[10.0, 10.0, 20.0, 20.0]], np.float32)] * 2
    clean, _ = tune(maps, [True, True], truth)
    maps[0][0, 0] = np.nan
    chosen, metrics = tune(maps, [True, True], truth)  # before: every level NaN, box AP50 0.0
    assert chosen == clean and metrics["box_AP50"] == 1.0


def textured_image(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """An RGB ``uint8`` surface: grey 128 with noise (standard deviation 6), no defect."""
    rng = np.random.default_rng(seed)
    grey = np.clip(np.rint(128 + 6 * rng.standard_normal(shape)), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def test_refined_boxes_snap_to_the_defect_the_image_shows() -> None:
    """A blurred map's box is several times an 11-pixel hole; snapped to the image it is the hole's box."""
    image = textured_image((120, 160))
    image[50:61, 70:81] = 60  # a dark hole, 11x11
    image[20:24, 20:60] = 200  # a bright scratch elsewhere, 4x40
    yy, xx = np.mgrid[0:120, 0:160].astype(np.float32)
    amap = 0.9 * np.exp(-((yy - 55) ** 2 + (xx - 75) ** 2) / (2 * 12.0**2))  # the map's blur around the hole
    amap = np.maximum(amap, 0.8 * np.exp(-((yy - 22) ** 2 / (2 * 8.0**2) + (xx - 40) ** 2 / (2 * 25.0**2))))
    plain, scores = boxes_from_map(amap.astype(np.float32), True, BoxSettings())
    hole = plain[:, 1] > 40
    assert (plain[hole][0, 2] - plain[hole][0, 0]) > 2 * 11  # the map's box: far wider than the hole
    dark, dark_scores = boxes_from_map(amap.astype(np.float32), True, BoxSettings(refine="dark"), image)
    np.testing.assert_array_equal(dark_scores, scores)  # the scores stay the map's
    assert dark[hole].tolist() == [[70.0, 50.0, 81.0, 61.0]]  # exactly the hole (from how it was drawn)
    bright, _ = boxes_from_map(amap.astype(np.float32), True, BoxSettings(refine="bright"), image)
    assert bright[~hole].tolist() == [[20.0, 20.0, 60.0, 24.0]]  # exactly the scratch
    contrast, _ = boxes_from_map(amap.astype(np.float32), True, BoxSettings(refine="contrast"), image)
    assert sorted(contrast.tolist()) == sorted([*bright[~hole].tolist(), *dark[hole].tolist()])
    # the snapped box is inside the map's box, and a box under 3 pixels a side stays as it is
    assert (dark[:, :2] >= plain[:, :2]).all() and (dark[:, 2:] <= plain[:, 2:]).all()
    tiny = np.array([[70, 50, 72, 80]], np.float32)
    np.testing.assert_array_equal(refine_boxes(image, tiny, "dark"), tiny)
    with pytest.raises(ValueError, match="needs the image"):
        boxes_from_map(amap.astype(np.float32), True, BoxSettings(refine="dark"))
    with pytest.raises(ValueError, match=r"at the map's size \(120, 160\) \(got \(60, 80\)\)"):
        boxes_from_map(amap.astype(np.float32), True, BoxSettings(refine="dark"), image[::2, ::2])
    with pytest.raises(ValueError, match="RGB uint8 image"):
        boxes_from_map(amap.astype(np.float32), True, BoxSettings(refine="dark"), image.astype(np.float64))
    # a reader instead of the image: called only when the map gives boxes
    calls = []
    reader = lambda: calls.append(1) or image  # noqa: E731
    assert (
        boxes_from_map(amap.astype(np.float32), True, BoxSettings(refine="dark"), reader)[0].tolist() == dark.tolist()
    )
    assert len(boxes_from_map(np.zeros_like(amap), True, BoxSettings(refine="dark"), reader)[0]) == 0
    assert calls == [1]
    with pytest.raises(ValueError, match="box refinement"):
        BoxSettings(refine="edges")
    from otx.errors import OTXConfigError
    from otx.models import model_class

    with pytest.raises(OTXConfigError, match="boxes_refine must be one of auto, none, dark, bright, contrast"):
        model_class("Padim")(boxes_refine="edges", pretrained=False)


def blob_split(seed: int, visible: bool) -> tuple[list, list, list, list]:
    """Eight images, each with a dark 9x9 hole under a blurred map blob a little off its centre (as a coarse
    map's), the hole in the image too when ``visible``."""
    rng = np.random.default_rng(seed)
    maps, labels, gts, images = [], [], [], []
    yy, xx = np.mgrid[0:96, 0:128].astype(np.float32)
    for _ in range(8):
        y, x = int(rng.integers(15, 75)), int(rng.integers(15, 105))
        image = textured_image((96, 128), int(rng.integers(1000)))
        if visible:
            image[y - 4 : y + 5, x - 4 : x + 5] = 50
        blob = np.exp(-((yy - y - 5) ** 2 + (xx - x + 4) ** 2) / (2 * 12.0**2))
        maps.append((0.3 + 0.6 * blob).astype(np.float32))
        labels.append(True)
        gts.append(np.array([[x - 4, y - 4, x + 5, y + 5]], np.float64))
        images.append(image)
    return maps, labels, gts, images


def test_tuning_refines_boxes_only_where_the_validation_images_say_so() -> None:
    maps, labels, gts, images = blob_split(0, visible=True)
    settings, metrics = tune(maps, labels, gts, images=[lambda im=im: im for im in images])
    plain, plain_metrics = tune(maps, labels, gts)  # without images: never refined
    assert plain.refine == "none" and settings.refine in ("dark", "contrast")
    assert metrics["box_AP50"] == pytest.approx(1.0) and plain_metrics["box_AP50"] < 0.5
    # the chosen settings give the tuned figures when boxes are cut with them (pycocotools' AP)
    cut = [boxes_from_map(m, True, settings, im) for m, im in zip(maps, images, strict=True)]
    assert box_ap(gts, [b for b, _ in cut], [s for _, s in cut])["box_AP50"] == pytest.approx(1.0)
    # where the images do not show the defects, snapping would chase noise: the map's boxes are kept
    maps, labels, gts, images = blob_split(1, visible=False)
    readers = [lambda im=im: im for im in images]
    assert tune(maps, labels, gts, images=readers)[0].refine == "none"
    # the recipe key boxes_refine: a refinement forced (no margin), or none at all
    assert tune(maps, labels, gts, images=readers, refine="bright")[0].refine == "bright"
    maps, labels, gts, images = blob_split(0, visible=True)
    assert tune(maps, labels, gts, images=[lambda im=im: im for im in images], refine="none") == (plain, plain_metrics)
    # images labelled normal are not read
    read = []
    tune(maps, [False] * len(maps), gts, images=[lambda im=im: read.append(1) or im for im in images])
    assert not read


@pytest.mark.e2e
def test_refined_boxes_are_the_same_from_the_checkpoint_the_ir_and_the_demo(
    trained_padim: dict, sample_root: Path, tmp_path: Path
) -> None:
    """Boxes snapped to the image: torch, OpenVINO (files and arrays) and the demo package cut the same."""
    import torch

    from otx.data import AnomalyDataModule
    from otx.data.io import read_image
    from otx.deploy import OpenVINOInferencer
    from otx.engine import Engine

    ckpt = torch.load(trained_padim["checkpoint"], map_location="cpu", weights_only=True)
    for refine in ("none", "dark"):  # boxes on every image, so that every image has some to compare
        torch.save(ckpt | {"boxes": ckpt["boxes"] | {"on_normal": True, "refine": refine}}, tmp_path / f"{refine}.ckpt")
    engine = Engine(data=AnomalyDataModule(num_workers=0), task="detection", work_dir=tmp_path / "runs")
    source = sample_root / "bottle_like" / "test"
    plain = engine.predict(source=source, checkpoint=tmp_path / "none.ckpt")
    dark = engine.predict(source=source, checkpoint=tmp_path / "dark.ckpt")
    changed = 0
    for p, d in zip(plain, dark, strict=True):  # each box is its map box snapped to the image, and inside it
        want = refine_boxes(read_image(p.image_path), p.pred_boxes, "dark")
        np.testing.assert_array_equal(d.pred_boxes, want)
        np.testing.assert_array_equal(d.box_scores, p.box_scores)
        assert (d.pred_boxes[:, :2] >= p.pred_boxes[:, :2]).all() and (d.pred_boxes[:, 2:] <= p.pred_boxes[:, 2:]).all()
        changed += int((d.pred_boxes != p.pred_boxes).any())
    assert changed >= len(dark) // 4  # 8 of the 28 sample images when written
    summary = engine.export(tmp_path / "dark.ckpt", demo_package=True)
    inferencer = OpenVINOInferencer(Path(summary["exported_model"]), device="CPU")
    assert inferencer.info.box_settings().refine == "dark"
    got = inferencer.predict(source)
    assert_same_predictions(dark, got, "detection", 1e-3)
    # images in memory (as read, and as float CHW arrays in [0, 1]) are snapped as the files are
    arrays = [read_image(p.image_path) for p in got]
    for images in (arrays, [a.transpose(2, 0, 1).astype(np.float32) / 255.0 for a in arrays]):
        for file_pred, array_pred in zip(got, inferencer.predict(images), strict=True):
            np.testing.assert_array_equal(array_pred.pred_boxes, file_pred.pred_boxes)
    check_demo_package(Path(summary["demo_package"]), source, got, tmp_path)


def test_an_unreadable_image_is_not_read_again_for_snapped_boxes(
    trained_padim: dict, dataset_copy, tmp_path: Path, capsys
) -> None:
    """An image that could not be read gets its error record; the others their snapped boxes (predict, test)."""
    import torch

    from otx.cli import main

    ckpt = torch.load(trained_padim["checkpoint"], map_location="cpu", weights_only=True)
    torch.save(ckpt | {"boxes": ckpt["boxes"] | {"on_normal": True, "refine": "dark"}}, tmp_path / "dark.ckpt")
    root = dataset_copy()
    bad = root / "test" / "good" / "001.png"
    bad.write_bytes(bad.read_bytes()[:120])  # header readable, pixels not: the loader feeds a placeholder
    common = ["--checkpoint", str(tmp_path / "dark.ckpt"), "--task", "detection", "--work_dir", str(tmp_path / "ws")]
    assert main(["predict", *common, "--source", str(root / "test"), "--visualize", "false"]) == 1
    err = capsys.readouterr().err
    assert "1 image(s) could not be read" in err and "internal error" not in err and "Traceback" not in err
    run = tmp_path / "ws" / json.loads((tmp_path / "ws" / "latest.json").read_text())["predict"]
    records = {r["image"]: r for r in json.loads((run / "predictions/predictions.json").read_text())}
    assert records.pop(str(bad))["label"] == "error"
    assert any(r["boxes"] for r in records.values())  # the others: predicted, with (snapped) boxes
    assert main(["test", *common, "--data_root", str(root)]) == 1  # the unreadable image: listed, exit 1
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err
    run = tmp_path / "ws" / json.loads((tmp_path / "ws" / "latest.json").read_text())["test"]
    assert json.loads((run / "metrics.json").read_text())["counts"]["error"] == 1


def test_files_written_before_the_box_score_keep_the_maximum(trained_padim: dict, tmp_path: Path) -> None:
    """Checkpoints and exports that name no box score were tuned and cut with the maximum: they keep it."""
    import torch

    from otx.checkpoint import load_checkpoint
    from otx.deploy.metadata import REQUIRED, ModelInfo
    from otx.errors import OTXError

    assert load_checkpoint(trained_padim["checkpoint"])[0].box_settings.score == "mean"
    ckpt = torch.load(trained_padim["checkpoint"], map_location="cpu", weights_only=True)
    del ckpt["boxes"]["score"]
    torch.save(ckpt, tmp_path / "old.ckpt")
    old = load_checkpoint(tmp_path / "old.ckpt")[0].box_settings
    assert old.score == "max" and old.as_dict() | {"score": "mean"} == ckpt["boxes"] | {"score": "mean"}
    boxes = ckpt.pop("boxes")  # before box tuning: the default settings, with the maximum
    torch.save(ckpt, tmp_path / "older.ckpt")
    assert load_checkpoint(tmp_path / "older.ckpt")[0].box_settings == BoxSettings(score="max")
    torch.save(ckpt | {"boxes": boxes | {"score": "median"}}, tmp_path / "newer.ckpt")
    with pytest.raises(OTXError, match="box score 'median'.*upgrade otx"):
        load_checkpoint(tmp_path / "newer.ckpt")
    raw = dict.fromkeys(REQUIRED, "1") | {"input_size": "1 1"}  # (an input size is two numbers)
    assert ModelInfo.parse(raw, "old.xml").box_settings().score == "max"
    assert ModelInfo.parse(raw | {"otx_box_score": "mean"}, "new.xml").box_settings().score == "mean"
    with pytest.raises(OTXError, match="box score 'median'.*upgrade otx"):
        ModelInfo.parse(raw | {"otx_box_score": "median"}, "newer.xml").box_settings()
    # box refinement: files without it are not refined, an unknown one is one line
    assert old.refine == "none" and ModelInfo.parse(raw, "old.xml").box_settings().refine == "none"
    assert ModelInfo.parse(raw | {"otx_box_refine": "dark"}, "new.xml").box_settings().refine == "dark"
    with pytest.raises(OTXError, match="box refinement 'edges'.*upgrade otx"):
        ModelInfo.parse(raw | {"otx_box_refine": "edges"}, "newer.xml").box_settings()
    torch.save(ckpt | {"boxes": boxes | {"refine": "edges"}}, tmp_path / "newest.ckpt")
    with pytest.raises(OTXError, match="box refinement 'edges'.*upgrade otx"):
        load_checkpoint(tmp_path / "newest.ckpt")


def test_defect_recall_counts_regions_a_box_touches() -> None:
    mask = np.zeros((50, 80), np.uint8)
    mask[5:10, 5:10] = 1  # region 1
    mask[30:40, 60:70] = 1  # region 2
    mask[45:48, 2:4] = 1  # region 3
    boxes = np.array([[8, 8, 12, 12], [0, 20, 50, 30], [69, 39, 75, 45]], np.float32)  # touch 1 and 2 (a corner)
    assert defect_recall([mask, np.zeros((10, 10))], [boxes, np.zeros((0, 4))]) == pytest.approx(2 / 3)
    # brute force: a region is found when one of its pixels lies inside a box
    count, labels = cv2.connectedComponents(mask, connectivity=8)
    found = {
        labels[y, x]
        for y, x in zip(*np.nonzero(mask), strict=True)
        for x1, y1, x2, y2 in boxes
        if x1 <= x < x2 and y1 <= y < y2
    }
    assert len(found) / (count - 1) == pytest.approx(2 / 3)
    assert np.isnan(defect_recall([np.zeros((5, 5))], [boxes]))
    # a box above and left of the image holds no pixel (before: its negative ends sliced from the far side)
    assert defect_recall([mask], [np.array([[-10, -10, -1, -1]], np.float32)]) == 0.0


def _blurred_defects(
    seed: int, count: int, every: int, shape: tuple[int, int], box: tuple[int, int], corner: tuple[int, int, int, int]
) -> tuple[list[np.ndarray], list[bool], list[np.ndarray]]:
    """Blurred maps of ``box``-sized defects (all but every ``every``-th image), their labels and boxes.

    ``corner``: the range of each defect's top-left ``x`` then ``y`` (``x0, x1, y0, y1``, ends excluded).
    """
    rng = np.random.default_rng(seed)
    maps, labels, gts = [], [], []
    sigma = box[0] / 2
    for i in range(count):
        mask = np.zeros(shape, np.uint8)
        if i % every:  # anomalous
            x, y = rng.integers(corner[0], corner[1]), rng.integers(corner[2], corner[3])
            mask[y : y + box[0], x : x + box[1]] = 1
        blurred = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)
        maps.append(np.clip(0.35 + blurred + rng.normal(0, 0.02, mask.shape), 0, 1).astype(np.float32))
        labels.append(bool(i % every))
        gts.append(gt_boxes_from_mask(mask))
    return maps, labels, gts


def test_tuning_finds_tight_boxes_on_blurred_maps() -> None:
    """Blurred maps make the boxes at the pixel threshold too wide; a higher level or a core fits the defects."""
    maps, labels, gts = _blurred_defects(0, 16, every=4, shape=(120, 160), box=(12, 18), corner=(20, 120, 20, 80))
    default = [boxes_from_map(m, lab, BoxSettings()) for m, lab in zip(maps, labels, strict=True)]
    at_default = box_ap(gts, [b for b, _ in default], [s for _, s in default])
    chosen, metrics = tune(maps, labels, gts)
    assert chosen.threshold > 0.5 or chosen.peak > 0.0
    assert metrics["box_AP50"] > at_default["box_AP50"] + 0.3
    # it is the best of the candidates by the stated objective (mean AP at IoU 0.1, 0.25, 0.5)
    objectives = []
    for settings in candidates(max(float(m.max()) for m in maps)):
        found = [boxes_from_map(m, lab, settings) for m, lab in zip(maps, labels, strict=True)]
        ap = box_ap(gts, [b for b, _ in found], [s for _, s in found])
        objectives.append(np.mean([ap["box_AP10"], ap["box_AP25"], ap["box_AP50"]]))
    assert np.mean([metrics["box_AP10"], metrics["box_AP25"], metrics["box_AP50"]]) == pytest.approx(max(objectives))


def test_tuning_keeps_given_first_settings_unless_a_candidate_does_better() -> None:
    """``first`` (a model's own settings, re-chosen for its INT8 maps) wins ties, loses to a better candidate."""
    maps, labels, gts = _blurred_defects(1, 12, every=3, shape=(96, 128), box=(10, 14), corner=(10, 100, 10, 70))
    best, metrics = tune(maps, labels, gts)

    def objective(settings: BoxSettings) -> float:
        found = [boxes_from_map(m, lab, settings) for m, lab in zip(maps, labels, strict=True)]
        ap = box_ap(gts, [b for b, _ in found], [s for _, s in found])
        return float(np.mean([ap["box_AP10"], ap["box_AP25"], ap["box_AP50"]]))

    # a setting off the candidates' grid that does as well as the best: kept (a candidate would win a tie)
    twin = replace(best, threshold=best.threshold + 1e-4)
    assert objective(twin) == pytest.approx(objective(best))
    assert tune(maps, labels, gts, first=twin)[0] == twin
    # one that does worse (the pixel threshold's wide boxes on blurred maps): the best candidate instead
    worse = BoxSettings(merge=0.05)
    assert objective(worse) < objective(best)
    assert tune(maps, labels, gts, first=worse) == (best, metrics)


def test_anomalous_images_without_a_box_are_named(
    trained_padim: dict, sample_root: Path, tmp_path: Path, capsys
) -> None:
    import torch

    from otx.data import AnomalyDataModule
    from otx.engine import Engine

    ckpt = torch.load(trained_padim["checkpoint"], map_location="cpu", weights_only=False)
    ckpt["boxes"] = {**BoxSettings().as_dict(), "threshold": 1.5}  # above every normalised map value
    strict = tmp_path / "model.ckpt"
    torch.save(ckpt, strict)
    engine = Engine(data=AnomalyDataModule(num_workers=0), task="detection", work_dir=tmp_path / "ws")
    predictions = engine.predict(
        source=sample_root / "bottle_like" / "test" / "scratch", checkpoint=strict, visualize=False
    )
    anomalous = [p for p in predictions if p.label_name == "anomalous"]
    assert anomalous and not any(len(p.pred_boxes) for p in anomalous)
    said = " ".join(capsys.readouterr().err.split())
    assert f"{len(anomalous)} image(s) labelled anomalous have no box" in said, said  # before: nothing said
    assert f"(e.g. scratch/{Path(anomalous[0].image_path).name})" in said  # the folder too: defect types repeat names
    (run,) = (tmp_path / "ws").glob("*-predict")
    assert json.loads((run / "metrics.json").read_text())["counts"]["anomalous_without_box"] == len(anomalous)
    # otx test says it too (before: only its box metrics, defect recall 0, showed it)
    data = AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0)
    tested = Engine(data=data, task="detection", work_dir=tmp_path / "t").test(checkpoint=strict)
    assert tested.metrics["defect_recall"] == 0.0
    said = " ".join(capsys.readouterr().err.split())
    (run,) = (tmp_path / "t").glob("*-test")
    records = json.loads((run / "predictions.json").read_text())
    flagged = [r for r in records if r["label"] == "anomalous"]
    missed = sum("/good/" not in Path(r["image"]).as_posix() for r in flagged)  # normal ones are false alarms
    assert missed > 0, records
    assert f"{len(flagged)} image(s) labelled anomalous have no box" in said
    assert f"the box metrics count the defects of {missed} of them as missed" in said, said


def test_boxes_are_said_untuned_when_the_validation_split_has_no_defect_mask(dataset_copy, tmp_path: Path) -> None:
    # Before (a review): every candidate's box AP was NaN, the first (the defaults) was kept, and the summary said
    # "chosen on the validation split".
    from otx.data import AnomalyDataModule
    from otx.engine import Engine
    from otx.models import Padim

    root = dataset_copy()
    (root / "val" / "good").mkdir(parents=True)
    for path in sorted((root / "test" / "good").glob("*.png"))[:4]:
        shutil.move(path, root / "val" / "good" / path.name)
    engine = Engine(
        model=Padim(), data=AnomalyDataModule(str(root), num_workers=0), task="detection", work_dir=tmp_path / "ws"
    )
    summary = engine.train()
    assert any("no defect image with a mask, so the detection boxes keep the default" in w for w in summary.warnings)
    assert "box_tuning_s" not in summary.timing_s

"""Overlays from otx predict, the HTML report from otx test (opened in a real headless browser), training logs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from otx.data import AnomalyDataModule
from otx.data.io import read_mask
from otx.engine import Engine
from otx.visualize import upscale_factor

pytestmark = pytest.mark.e2e  # end-to-end: trains, exports or runs the CLI (`pytest -m 'not e2e'` skips)

ARTIFACTS = Path(os.environ.get("OTX_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))


def predict_with_overlays(trained: dict, sample_root: Path, tmp_path: Path, task: str, checkpoint=None) -> Path:
    engine = Engine(
        data=AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0), task=task, work_dir=tmp_path
    )
    engine.predict(checkpoint=checkpoint or trained["checkpoint"])  # the test split: ground truth is known
    return next(tmp_path.glob("*-predict/predictions/overlays"))


def defect_and_good(sample_root: Path) -> tuple[Path, Path, Path]:
    test = sample_root / "bottle_like" / "test"
    defect = sorted((test / "contamination").glob("*.png"))
    good = sorted((test / "good").glob("*.png"))
    return defect, good, sample_root / "bottle_like" / "ground_truth" / "contamination"


def redness(overlay_path: Path, image_hw: tuple[int, int] = (128, 128)) -> np.ndarray:
    """Red minus blue of an overlay: the heat map is red where the model sees a defect, blue elsewhere.

    At the image's own size: a small image's overlay is drawn enlarged, each pixel a block.
    """
    drawn = cv2.cvtColor(cv2.imread(str(overlay_path)), cv2.COLOR_BGR2RGB).astype(np.float32)
    factor = upscale_factor(image_hw)
    assert drawn.shape[:2] == (image_hw[0] * factor, image_hw[1] * factor)
    drawn = drawn[factor // 2 :: factor, factor // 2 :: factor]  # each block's middle pixel
    return drawn[..., 0] - drawn[..., 2]


def test_overlay_shows_the_defect_region(trained_padim: dict, sample_root: Path, tmp_path: Path) -> None:
    overlays = predict_with_overlays(trained_padim, sample_root, tmp_path, "segmentation")
    names = {p.name for p in overlays.glob("*.png")}
    defects, goods, gt_dir = defect_and_good(sample_root)
    good = next(p for p in goods if f"good__{p.stem}.png" in names)
    good_red = redness(overlays / f"good__{good.stem}.png")
    checked = 0
    for image in defects:
        name = f"contamination__{image.stem}.png"
        if name not in names:  # in the validation half of the split
            continue
        mask = read_mask(gt_dir / f"{image.stem}_mask.png")
        inside = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        frame = np.zeros_like(mask)
        frame[12:-6, 6:-6] = True  # away from the border frame and the text banner
        outside = frame & ~cv2.dilate(mask.astype(np.uint8), np.ones((21, 21), np.uint8)).astype(bool)
        red = redness(overlays / name)
        assert red.shape == good_red.shape == mask.shape
        # Inside the ground truth the defective image's overlay is hot, the good image's is not ...
        assert red[inside].mean() > good_red[inside].mean() + 60, name
        assert red[inside].mean() > red[outside].mean() + 60, name
        # ... and away from the defect both look alike (cold).
        assert abs(red[outside].mean() - good_red[outside].mean()) < 40, name
        checked += 1
    assert checked >= 2


def test_overlays_for_detection_from_torch_and_from_the_ir(
    trained_padim: dict, exported, sample_root: Path, tmp_path: Path
) -> None:
    from_torch = predict_with_overlays(trained_padim, sample_root, tmp_path / "a", "detection")
    from_ir = predict_with_overlays(
        trained_padim, sample_root, tmp_path / "b", "detection", exported("padim", "detection")
    )
    names = sorted(p.name for p in from_torch.glob("*.png"))
    assert names == sorted(p.name for p in from_ir.glob("*.png"))
    records = json.loads((from_torch.parent / "predictions.json").read_text())
    assert len(names) == len(records)
    for name in names:
        a = cv2.imread(str(from_torch / name)).astype(np.int16)
        b = cv2.imread(str(from_ir / name)).astype(np.int16)
        assert a.shape == b.shape
        assert (np.abs(a - b) > 40).mean() < 0.01, name  # the same drawing up to rounding of the heat map


def test_predict_on_a_dataset_folder_outlines_its_ground_truth(
    trained_padim: dict, sample_root: Path, tmp_path: Path
) -> None:
    from_split = predict_with_overlays(trained_padim, sample_root, tmp_path / "split", "segmentation")
    engine = Engine(data=AnomalyDataModule(num_workers=0), task="segmentation", work_dir=tmp_path / "source")
    folder = sample_root / "bottle_like" / "test" / "contamination"
    engine.predict(source=folder, checkpoint=trained_padim["checkpoint"])
    from_source = next((tmp_path / "source").glob("*-predict/predictions/overlays"))
    compared = 0
    for drawn in sorted(from_split.glob("contamination__*.png")):  # the test half, drawn with its outline
        a = cv2.imread(str(drawn)).astype(np.int16)
        b = cv2.imread(str(from_source / drawn.name.removeprefix("contamination__"))).astype(np.int16)
        assert (np.abs(a - b) > 40).mean() < 0.001, drawn.name  # the same drawing, ground-truth outline included
        compared += 1
    assert compared >= 2


def test_an_unreadable_mask_only_loses_its_outline_in_predict(
    trained_padim: dict, dataset_copy, tmp_path: Path
) -> None:
    root = dataset_copy()
    mask = sorted((root / "ground_truth" / "contamination").glob("*_mask.png"))[0]
    mask.write_bytes(b"not a png")
    engine = Engine(data=AnomalyDataModule(num_workers=0), task="segmentation", work_dir=tmp_path)
    predictions = engine.predict(source=root / "test" / "contamination", checkpoint=trained_padim["checkpoint"])
    assert predictions and all(p.label_name in ("normal", "anomalous") for p in predictions)
    overlays = next(tmp_path.glob("*-predict/predictions/overlays"))
    assert (overlays / f"{mask.stem.removesuffix('_mask')}.png").is_file()


def test_visualize_false_writes_no_overlays(trained_padim: dict, sample_root: Path, tmp_path: Path) -> None:
    engine = Engine(data=AnomalyDataModule(num_workers=0), task="classification", work_dir=tmp_path)
    engine.predict(
        source=sample_root / "bottle_like" / "test" / "good", checkpoint=trained_padim["checkpoint"], visualize=False
    )
    assert not list(tmp_path.glob("*-predict/predictions/overlays"))


def test_training_writes_csv_and_tensorboard_logs(trained_stfpm: dict) -> None:
    logs = trained_stfpm["checkpoint"].parent / "logs"
    rows = (logs / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"train_loss_step", "train_loss_epoch", "time/epoch_s", "time/fit_s"} <= set(header)
    events = list(logs.glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for event in events:
        accumulator = EventAccumulator(str(event))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"train_loss_step", "time/fit_s"} <= tags


# --- the report in a real browser --------------------------------------------------------------------------
def chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installing the Debian packages where they are missing."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if all(found):
        return found  # type: ignore[return-value]
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("chromium is missing and cannot be installed here (needs apt-get as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=900)
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found):
        reason = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
        print(f"chromium could not be installed: {reason}")
        pytest.skip(f"chromium could not be installed: {reason}")
    return found  # type: ignore[return-value]


def test_report_opens_in_a_headless_browser(trained_padim: dict, sample_root: Path, tmp_path: Path) -> None:
    engine = Engine(data=AnomalyDataModule(str(sample_root / "carpet_like"), num_workers=0), work_dir=tmp_path)
    result = engine.test(checkpoint=trained_padim["checkpoint"])  # another category: false positives and negatives
    report = Path(result["report"])
    plots = sorted(p.name for p in (report.parent / "report").glob("*.png"))
    assert {"roc.png", "precision_recall.png", "score_histogram.png"} <= set(plots)
    text = report.read_text()
    for needle in (
        "image_AUROC",
        "Per defect type",
        "Worst false positives",
        "Worst false negatives",
        "score_histogram",
    ):
        assert needle in text
    assert 'src="http' not in text and "src='http" not in text  # self-contained
    # what the report was computed on, for a reader who has only the HTML (before: the model's path alone)
    assert f"data: <code>{sample_root / 'carpet_like'}</code>, test split" in text
    assert "input: resize: images to 128x128 (width x height)" in text and ", tested 20" in text
    assert "Boxes are cut" not in text and "The pixel threshold draws the masks." in text
    # detection: the box settings the boxes were cut with (before: "the pixel threshold draws masks and boxes")
    detection = Engine(
        data=AnomalyDataModule(str(sample_root / "carpet_like"), num_workers=0), task="detection", work_dir=tmp_path
    ).test(checkpoint=trained_padim["checkpoint"])
    settings = detection["boxes"]
    untuned = {
        "threshold": 0.5,
        "merge": 0.0,
        "min_area": 0.0,
        "on_normal": False,
        "peak": 0.0,
        "score": "mean",
        "refine": "none",
    }
    assert settings == untuned
    assert "Boxes are cut from the normalised map at their own settings" in Path(detection["report"]).read_text()
    assert (
        "each box scored by the mean of its group's map values, not snapped to the image"
        in Path(detection["report"]).read_text()
    )
    assert "box level 0.5, components within 0 % of the longer side merged" in Path(detection["report"]).read_text()
    # each metric shown is explained (before: box_AP and the *_input names were not)
    said = Path(detection["report"]).read_text()
    assert "box_AP: box average precision over IoU 0.5 to 0.95" in said and "names ending in _input" in said
    assert "AUPRO: mean overlap" in text and "box_AP" not in text.split("Thresholds")[0].split("image_AUROC: ")[1]
    # classification: no pixel threshold row and no word of masks (before: "The pixel threshold draws the masks.")
    carpet = AnomalyDataModule(str(sample_root / "carpet_like"), num_workers=0)
    classification = Engine(data=carpet, task="classification", work_dir=tmp_path).test(
        checkpoint=trained_padim["checkpoint"]
    )
    thresholds = Path(classification["report"]).read_text().split("<h2>Thresholds</h2>")[1]
    assert "<td>image</td>" in thresholds and "<td>pixel</td>" not in thresholds and "<td>pixel</td>" in text
    assert "masks." not in thresholds and "no maps, masks or boxes" in thresholds

    browser, driver_path = chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,2400",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(report.as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);"
        )
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "report.png"))
    finally:
        driver.quit()
    assert not errors, errors
    assert len(images) >= 4  # three plots and at least one worst case
    for alt, complete, width, height in images:
        assert complete and width > 0 and height > 0, alt
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def _label_backgrounds(canvas: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (x, y, w, h) of the pure-black regions: each label's background, one region each."""
    black = np.all(canvas == 0, axis=-1).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(black, connectivity=8)
    regions = [tuple(int(v) for v in stats[i, :4]) for i in range(1, count)]

    def inside(a: tuple[int, ...], b: tuple[int, ...]) -> bool:  # the hole of an "o" or "0" within its label
        return a != b and b[0] <= a[0] and b[1] <= a[1] and a[0] + a[2] <= b[0] + b[2] and a[1] + a[3] <= b[1] + b[3]

    return [r for r in regions if not any(inside(r, other) for other in regions)]


def test_a_small_images_overlay_is_enlarged_so_its_label_fits() -> None:
    from otx.tasks import Prediction
    from otx.visualize import overlay

    image = np.full((40, 40, 3), 128, np.uint8)
    image[10:20, 10:20] = (200, 60, 60)
    mask = np.zeros((40, 40), bool)
    mask[10:20, 10:20] = True
    canvas = overlay(image, Prediction("x.png", 0.873, True, pred_mask=mask))
    height, width = canvas.shape[:2]
    factor = height // 40
    assert (height, width) == (40 * factor, 40 * factor) and min(height, width) >= 256
    # Every pixel became a factor x factor block: away from the drawing the enlarged image is the image.
    corner = canvas[-3 * factor : -factor, 25 * factor : 35 * factor]
    assert np.array_equal(corner, np.full((2 * factor, 10 * factor, 3), 128))
    ((x, y, w, h),) = _label_backgrounds(canvas)
    assert x + w < width - 1 and y >= 0  # the whole label on the canvas, short of its right edge
    # A thin, long image, whose enlargement the 4,096-pixel cap stops: the font shrinks instead.
    thin = overlay(np.full((3000, 100, 3), 128, np.uint8), Prediction("t.png", 0.873, True))
    assert thin.shape == (3000, 100, 3)
    ((x, y, w, h),) = _label_backgrounds(thin)
    assert x + w <= 100 - 1  # short of the frame's last column
    # A large image is drawn at its own size.
    assert overlay(np.full((300, 500, 3), 128, np.uint8), Prediction("y.png", 0.1, False)).shape == (300, 500, 3)


def test_box_scores_do_not_cover_each_other_or_the_label() -> None:
    from otx.tasks import Prediction
    from otx.visualize import overlay

    # two nested boxes, one alone, and small ones at the top edge (no room above, too small for a score inside)
    boxes = np.array(
        [[60, 80, 160, 180], [62, 84, 150, 170], [300, 300, 380, 360], [200, 0, 208, 6], [330, 0, 338, 6]], np.float32
    )
    scores = np.array([0.91, 0.82, 0.73, 0.65, 0.64], np.float32)
    canvas = overlay(
        np.full((400, 400, 3), 128, np.uint8), Prediction("z.png", 0.9, True, pred_boxes=boxes, box_scores=scores)
    )
    labels = _label_backgrounds(canvas)
    assert len(labels) == 6  # the image's label and five scores, none merged into another
    for x, y, w, h in labels:
        assert x >= 0 and y >= 0 and x + w <= 400 and y + h <= 400
    # Every box's lines stay visible: no score's black background lies on them (before: a score above a
    # box sat on its top line, and one inside a small box covered its right line).
    # Lines on the image's edge too: the image's frame is drawn under the boxes.
    for x1, y1, x2, y2 in boxes.astype(int):
        on_lines = np.zeros((400, 400), bool)
        on_lines[[y1, y2 - 1], x1:x2] = on_lines[y1:y2, [x1, x2 - 1]] = True
        assert not np.all(canvas[on_lines] == 0, axis=-1).any(), (x1, y1, x2, y2)
        assert np.all(canvas[on_lines] == (255, 0, 255), axis=-1).all(), (x1, y1, x2, y2)


@pytest.mark.parametrize("size", [40, 600])
def test_the_score_of_a_box_filling_the_image_is_not_under_the_label(size: int) -> None:
    from otx.tasks import Prediction
    from otx.visualize import overlay

    # before (a review): no room above or below the box, its first corner inside under the image's label
    boxes = np.array([[0, 0, size, size]], np.float32)
    prediction = Prediction("z.png", 0.873, True, pred_boxes=boxes, box_scores=np.array([0.9], np.float32))
    canvas = overlay(np.full((size, size, 3), 128, np.uint8), prediction)
    labels = _label_backgrounds(canvas)
    assert len(labels) == 2, labels  # the image's label and the box's score, apart (before: one, the score hidden)


def test_a_box_along_a_strips_edges_keeps_its_four_lines() -> None:
    from otx.tasks import Prediction
    from otx.visualize import overlay

    # A box as tall as a 40 x 1000 strip: before, the frame drawn last hid three of its four lines.
    for size, box in (((40, 1000), [0, 0, 30, 40]), ((1000, 40), [0, 960, 40, 1000])):
        prediction = Prediction("s.png", 0.9, True, pred_boxes=np.array([box], np.float32), box_scores=np.ones(1))
        canvas = overlay(np.full((*size, 3), 128, np.uint8), prediction)
        factor = upscale_factor(size)
        x1, y1, x2, y2 = (v * factor for v in box)
        magenta = np.abs(canvas.astype(int) - (255, 0, 255)).sum(-1) < 60  # a one-pixel line is antialiased
        for edge in (magenta[y1, x1:x2], magenta[y2 - 1, x1:x2], magenta[y1:y2, x1], magenta[y1:y2, x2 - 1]):
            assert edge.mean() > 0.5, (size, edge.mean())
        # the anomalous frame, still there away from the box
        frame = np.abs(canvas.astype(int) - (230, 40, 40)).sum(-1) < 60
        assert frame[-1, x2 + 4 :].mean() > 0.9 if size[0] < size[1] else frame[: y1 - 4, -1].mean() > 0.9


def test_the_images_label_keeps_off_the_defect() -> None:
    from otx.tasks import Prediction
    from otx.visualize import overlay

    # a defect along the top left, where the label used to go whatever lay beneath it (helper-38)
    image = np.full((300, 400, 3), 128, np.uint8)
    truth = np.zeros((300, 400), bool)
    truth[4:34, 10:60] = True
    for prediction in (
        Prediction("a.png", 0.457, False),  # a missed defect: only the ground truth is drawn
        Prediction("b.png", 0.9, True, pred_boxes=np.array([[8, 2, 62, 36]], np.float32), box_scores=np.ones(1)),
    ):
        canvas = overlay(image, prediction, truth)
        (x, y, w, h), *_ = sorted(_label_backgrounds(canvas), key=lambda r: -r[2] * r[3])  # the largest: the label
        assert not truth[y : y + h, x : x + w].any(), (x, y, w, h)
        assert (x, y) != (0, 0) and x + w <= 400 and y + h <= 300
    # nothing beneath the top left: the label stays there
    ((x, y, w, h),) = _label_backgrounds(overlay(image, Prediction("c.png", 0.1, False)))
    assert x < 10 and y < 40


def test_the_report_names_a_relative_data_root_absolute(trained_padim: dict, sample_root: Path, tmp_path: Path) -> None:
    # before: "data: dnomask", which a report read on its own cannot place (runs bug bash)
    from helpers import run_main

    args = ["--checkpoint", str(trained_padim["checkpoint"]), "--data_root", "carpet_like", "--work_dir", str(tmp_path)]
    done = run_main("test", *args, cwd=sample_root)
    assert done.returncode == 0, done.stderr
    text = next(tmp_path.glob("*-test/report.html")).read_text()
    assert f"data: <code>{(sample_root / 'carpet_like').resolve()}</code>, test split" in text

"""Data indexing, splitting, image reading and the bad-input checks."""

from __future__ import annotations

import glob
import html
import json
import os
import shutil
import unicodedata
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from helpers import demo_package
from otx.data import AnomalyDataModule, index_mvtec
from otx.data.datamodule import AnomalyDataset, samples_from_source
from otx.data.dataset import split_validation
from otx.data.io import image_header, read_image, read_mask
from otx.errors import OTXDataError


def test_index_reads_layout_labels_and_masks(sample_root: Path) -> None:
    index = index_mvtec(sample_root / "bottle_like")
    assert index.has_masks
    train, test = index.subsets["train"], index.subsets["test"]
    assert len(train) == 40 and all(s.label == 0 and s.defect == "good" for s in train)
    defects = [s for s in test if s.label == 1]
    assert len(defects) == 16 and all(s.mask_path and Path(s.mask_path).exists() for s in defects)
    assert all(s.mask_path is None for s in test if s.label == 0)
    assert len(index.fingerprint()) == 16


def test_validation_split_is_stratified_disjoint_and_seeded(sample_root: Path) -> None:
    test = index_mvtec(sample_root / "bottle_like").subsets["test"]
    val, rest = split_validation(test, 0.5, seed=1)
    assert {s.path for s in val}.isdisjoint({s.path for s in rest})
    assert len(val) + len(rest) == len(test)
    for defect in {s.defect for s in test}:
        n_val = sum(s.defect == defect for s in val)
        n_all = sum(s.defect == defect for s in test)
        assert n_val == round(n_all / 2)
    again, _ = split_validation(test, 0.5, seed=1)
    other, _ = split_validation(test, 0.5, seed=2)
    assert [s.path for s in again] == [s.path for s in val]
    assert [s.path for s in other] != [s.path for s in val]


def test_own_val_folder_and_unknown_folder(dataset_copy) -> None:
    root = dataset_copy()
    (root / "val" / "good").mkdir(parents=True)
    for name in sorted((root / "test" / "good").iterdir())[:3]:
        name.rename(root / "val" / "good" / name.name)
    (root / "test" / "unknown").mkdir()
    cv2.imwrite(str(root / "test" / "unknown" / "x.png"), np.zeros((64, 64), np.uint8))
    dm = AnomalyDataModule(str(root))
    dm.setup()
    assert len(dm.splits["val"]) == 3 and all(s.defect == "good" for s in dm.splits["val"])
    assert any(s.label == -1 for s in dm.splits["test"])
    summary = dm.split_summary()
    assert summary["test"]["unknown"] == 1 and summary["val"]["normal"] == 3


def test_a_val_image_named_as_a_test_image_of_its_defect_type_is_refused(dataset_copy) -> None:
    # Masks are matched by defect type and name: val/contamination/000.png beside
    # test/contamination/000.png would take its mask (before: silently, thresholds learned on it).
    root = dataset_copy()
    defect = sorted((root / "test" / "contamination").iterdir())
    (root / "val" / "contamination").mkdir(parents=True)
    shutil.copy(defect[1], root / "val" / "contamination" / defect[0].name)  # another image, the same name
    with pytest.raises(OTXDataError) as error:
        AnomalyDataModule(str(root)).setup()
    message = str(error.value)
    assert f"val/contamination/{defect[0].name} and test/contamination/{defect[0].name} would both take" in message
    assert f"val/contamination/val_{defect[0].name}" in message
    # Named apart, with its own mask: used as given.
    (root / "val" / "contamination" / defect[0].name).rename(root / "val" / "contamination" / f"val_{defect[0].name}")
    masks = root / "ground_truth" / "contamination"
    shutil.copy(masks / f"{defect[1].stem}_mask.png", masks / f"val_{defect[0].stem}_mask.png")
    data = AnomalyDataModule(str(root))
    data.setup()
    (val,) = [s for s in data.splits["val"] if s.defect == "contamination"]
    assert val.mask_path == str(masks / f"val_{defect[0].stem}_mask.png")


def test_folders_otx_does_not_read_are_named(dataset_copy, caplog: pytest.LogCaptureFixture) -> None:
    """MVTec LOCO's validation/ and one mask folder per image: said, not passed over (before: no word)."""
    root = dataset_copy()
    with caplog.at_level("WARNING"):
        AnomalyDataModule(str(root)).setup()
    assert "left out" not in caplog.text
    (root / "validation" / "good").mkdir(parents=True)
    shutil.copy(next((root / "train" / "good").iterdir()), root / "validation" / "good" / "000.png")
    (root / "notes").mkdir()  # a folder without images is nobody's data
    (root / "notes" / "readme.txt").write_text("lighting: ring light")
    (root / "runs").mkdir()  # an otx work dir inside the data root: its overlays are not data either
    (root / "runs" / "latest.json").write_text("{}")
    shutil.copy(root / "validation" / "good" / "000.png", root / "runs" / "overlay.png")
    (root / "first" / "20261206-101500-train").mkdir(parents=True)  # one whose first run has no latest.json yet
    (root / "first" / "20261206-101500-train" / "otx.log").write_text("")
    shutil.copy(root / "runs" / "overlay.png", root / "first" / "20261206-101500-train" / "overlay.png")
    (root / "Masks").mkdir()  # masks under another name than ground_truth/
    shutil.copy(root / "runs" / "overlay.png", root / "Masks" / "000_mask.png")
    mask = next((root / "ground_truth" / "scratch").iterdir())
    (root / "ground_truth" / "scratch" / mask.stem.removesuffix("_mask")).mkdir()
    mask.rename(root / "ground_truth" / "scratch" / mask.stem.removesuffix("_mask") / "000.png")
    caplog.clear()
    with caplog.at_level("WARNING"):
        data = AnomalyDataModule(str(root))
        data.setup()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("left out")]
    assert lines == [
        "left out Masks/, validation/: otx reads train/, val/, test/ and ground_truth/ of a data root (MVTec AD "
        "layout); rename validation/ to val/ to validate on its images; masks are read from ground_truth/ (this "
        "name exactly), not Masks/",
        f"left out 1 mask folder(s) (e.g. ground_truth/scratch/{mask.stem.removesuffix('_mask')}/): otx reads one "
        "mask file per image, ground_truth/<defect type>/<image name>_mask.png; merge each folder's masks into one "
        "such file (MVTec LOCO keeps one folder per image)",
    ]
    assert "validation" not in " ".join(s.path for split in data.splits.values() for s in split)


def test_a_test_folder_named_like_normal_images_is_warned(dataset_copy, caplog: pytest.LogCaptureFixture) -> None:
    root = dataset_copy()
    with caplog.at_level("WARNING"):
        AnomalyDataModule(str(root)).setup()
    assert "scored as a defect type" not in caplog.text
    (root / "test" / "good").rename(root / "test" / "OK")  # normal images under a name otx scores as a defect
    shutil.copytree(root / "train" / "good", root / "test" / "good")
    with caplog.at_level("WARNING"):
        AnomalyDataModule(str(root)).setup()
    assert "'test/OK/' is scored as a defect type" in caplog.text and "move them to test/good/" in caplog.text


def test_a_source_pattern_is_expanded_from_home_and_says_what_it_matched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "parts" / "inner").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "parts" / "inner" / "a.png"), np.zeros((8, 8), np.uint8))
    (tmp_path / "parts" / "notes.txt").write_text("x")
    assert [Path(s.path).name for s in samples_from_source("~/parts/*/*.png")] == ["a.png"]  # before: nothing
    with pytest.raises(OTXDataError, match=r"matches 1 file\(s\), none an image, and 1 folder\(s\) \(a pattern"):
        samples_from_source("~/parts/*")


def test_unknown_folder_stays_in_test_when_splitting(dataset_copy) -> None:
    root = dataset_copy()
    (root / "test" / "unknown").mkdir()
    for i in range(4):
        cv2.imwrite(str(root / "test" / "unknown" / f"u{i}.png"), np.zeros((64, 64), np.uint8))
    dm = AnomalyDataModule(str(root))
    dm.setup()
    assert all(s.label >= 0 for s in dm.splits["val"])
    assert sum(s.label == -1 for s in dm.splits["test"]) == 4


def test_layout_without_ground_truth(dataset_copy) -> None:
    root = dataset_copy()
    import shutil

    shutil.rmtree(root / "ground_truth")
    index = index_mvtec(root)
    assert not index.has_masks
    assert all(s.mask_path is None for s in index.subsets["test"])


@pytest.mark.parametrize(
    ("suffix", "make"),
    [
        (".png", lambda: np.random.default_rng(0).integers(0, 256, (30, 40), dtype=np.uint8)),
        (".png", lambda: np.random.default_rng(0).integers(0, 65536, (30, 40), dtype=np.uint16)),
        (".png", lambda: np.random.default_rng(0).integers(0, 256, (30, 40, 4), dtype=np.uint8)),
        (".jpg", lambda: np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)),
        (".bmp", lambda: np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)),
        (".tiff", lambda: np.random.default_rng(0).integers(0, 65536, (30, 40, 3), dtype=np.uint16)),
        # floats a hair below their levels, as a float pipeline writes them: [0, 1] and 0-255
        (".tiff", lambda: np.random.default_rng(0).integers(1, 256, (30, 40, 3)).astype(np.float32) / 255 - 1e-6),
        (".tiff", lambda: np.random.default_rng(0).integers(1, 256, (30, 40, 3)).astype(np.float32) - 1e-3),
    ],
)
def test_read_image_any_mode_and_depth(tmp_path: Path, suffix: str, make) -> None:
    array = make()
    path = tmp_path / f"img{suffix}"
    assert cv2.imwrite(str(path), array)
    image = read_image(path)
    assert image.shape == (30, 40, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(demo_package().read_rgb(path), image)  # the demo package reads files alike
    if array.dtype == np.float32:  # rounded to the nearest level (before: floored, one level low)
        levels = np.rint(array * (255 if array.max() <= 1 else 1))
        np.testing.assert_array_equal(image, levels[..., ::-1].astype(np.uint8))  # BGR on disk -> RGB
    if array.dtype == np.uint16 and array.ndim == 2:
        # 16-bit is scaled by its full range, not clipped.
        np.testing.assert_allclose(image[..., 0].astype(float), array / 257.0, atol=0.51)
    if array.ndim == 2:
        assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    if array.ndim == 3 and array.shape[2] == 4 and suffix == ".png":
        np.testing.assert_array_equal(image, array[..., [2, 1, 0]])  # BGRA on disk -> RGB, alpha dropped


def test_dataset_resizes_and_keeps_mask_alignment(sample_root: Path) -> None:
    index = index_mvtec(sample_root / "bottle_like")
    sample = next(s for s in index.subsets["test"] if s.mask_path)
    item = AnomalyDataset([sample], (64, 96))[0]
    assert item["image"].shape == (3, 64, 96) and 0.0 <= float(item["image"].min()) <= float(item["image"].max()) <= 1
    assert item["mask"].shape == (64, 96) and item["mask"].dtype == torch.bool and bool(item["mask"].any())
    full = read_mask(sample.mask_path)
    assert tuple(item["orig_size"].tolist()) == full.shape
    assert item["error"] == ""


def test_samples_from_source_file_folder_glob(sample_root: Path) -> None:
    folder = sample_root / "bottle_like" / "test"
    n_all = len(list(folder.rglob("*.png")))
    assert len(samples_from_source(folder)) == n_all
    assert len(samples_from_source(str(folder / "good" / "*.png"))) == 12
    assert len(samples_from_source(folder / "good" / "000.png")) == 1
    with pytest.raises(OTXDataError, match="does not exist"):
        samples_from_source(folder / "missing")


def test_a_mask_folder_beside_its_images_is_left_out_of_a_source(
    sample_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """anomalib's Folder layout given as the source: masks/ named as defect/'s images is not predicted."""
    root = sample_root / "bottle_like"
    for folder in ("good", "defect", "masks", "gt_notes"):
        (tmp_path / "folder" / folder).mkdir(parents=True)
    for image in sorted((root / "test" / "good").glob("*.png"))[:3]:
        shutil.copy(image, tmp_path / "folder" / "good" / image.name)
    for image in sorted((root / "test" / "contamination").glob("*.png"))[:3]:
        shutil.copy(image, tmp_path / "folder" / "defect" / f"contamination_{image.name}")
        mask = root / "ground_truth" / "contamination" / f"{image.stem}_mask.png"
        shutil.copy(mask, tmp_path / "folder" / "masks" / f"contamination_{image.name}")
    shutil.copy(image, tmp_path / "folder" / "masks" / "unrelated.png")  # no twin: an image to predict
    with caplog.at_level("WARNING"):
        found = sorted(
            Path(s.path).relative_to(tmp_path / "folder").as_posix() for s in samples_from_source(tmp_path / "folder")
        )
    # before: the three masks were predicted (and scored anomalous, being white blobs on black)
    assert found == [*(f"defect/contamination_00{i}.png" for i in range(3)), *(f"good/00{i}.png" for i in range(3)),
                     "masks/unrelated.png"]  # fmt: skip
    assert f"left out 3 file(s) in {tmp_path / 'folder' / 'masks'}, named as the images beside" in caplog.text
    demo = demo_package().find_images(str(tmp_path / "folder"))  # the demo package finds the same images
    assert sorted(p.relative_to(tmp_path / "folder").as_posix() for p in demo) == found
    assert len(samples_from_source(tmp_path / "folder" / "masks")) == 4  # the folder itself: all its files
    pattern = f"{tmp_path / 'folder'}/**/*.png"  # a pattern alike, in otx and the demo package
    assert len(samples_from_source(pattern)) == len(demo_package().find_images(pattern)) == len(found)
    # a category named like masks is images (before the review: mask/good/000.png was left out beside bottle/good/)
    for category in ("bottle", "mask"):
        shutil.copytree(root / "test" / "good", tmp_path / "multi" / category / "good")
    assert len(samples_from_source(tmp_path / "multi")) == 2 * len(list((root / "test" / "good").glob("*.png")))


# --- bad input: one clear OTXDataError each ----------------------------------------------------


def test_missing_root() -> None:
    with pytest.raises(OTXDataError, match="does not exist"):
        index_mvtec("/no/such/folder")


def test_empty_train_good(dataset_copy) -> None:
    root = dataset_copy()
    for path in (root / "train" / "good").iterdir():
        path.unlink()
    with pytest.raises(OTXDataError, match="no images in .*train/good"):
        index_mvtec(root)


def test_corrupt_image_is_named(dataset_copy) -> None:
    root = dataset_copy()
    bad = root / "train" / "good" / "005.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(OTXDataError, match="005.png"):
        index_mvtec(root)


def test_truncated_image_found_while_loading(dataset_copy) -> None:
    root = dataset_copy()
    bad = root / "train" / "good" / "007.png"
    bad.write_bytes(bad.read_bytes()[:200])  # valid header, truncated pixel data
    index = index_mvtec(root)  # the header check passes
    sample = next(s for s in index.subsets["train"] if s.path.endswith("007.png"))
    item = AnomalyDataset([sample], (64, 64))[0]
    assert "007.png" in item["error"]


def test_mask_size_mismatch(dataset_copy) -> None:
    root = dataset_copy()
    mask = next((root / "ground_truth").rglob("*_mask.png"))
    cv2.imwrite(str(mask), np.zeros((10, 10), np.uint8))
    with pytest.raises(OTXDataError, match="masks must have their image's size"):
        index_mvtec(root)


def test_mask_without_image(dataset_copy) -> None:
    root = dataset_copy()
    defect_dir = next(p for p in (root / "ground_truth").iterdir())
    cv2.imwrite(str(defect_dir / "999_mask.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(OTXDataError, match="999_mask.png' has no image"):
        index_mvtec(root)


def test_replace_gives_a_new_module_and_leaves_this_one(sample_root: Path) -> None:
    class Mine(AnomalyDataModule):
        pass

    data = Mine(str(sample_root / "bottle_like"), val_split=0.3, seed=1, batch_size=4, num_workers=0)
    data.setup()
    splits = {name: list(samples) for name, samples in data.splits.items()}
    other = data.replace(val_split=0.5, seed=2)
    assert type(other) is Mine and other is not data
    assert (other.data_root, other.batch_size, other.num_workers) == (data.data_root, 4, 0)
    assert (other.val_split, other.seed, other.index, other.splits) == (0.5, 2, None, {})
    other.setup()
    assert (data.val_split, data.seed) == (0.3, 1) and data.splits == splits  # this one unchanged
    # The copy forms its own split: the same one a module built with those settings forms.
    fresh = AnomalyDataModule(str(sample_root / "bottle_like"), val_split=0.5, seed=2, num_workers=0)
    fresh.setup()
    assert [s.path for s in other.splits["val"]] == [s.path for s in fresh.splits["val"]]
    assert [s.path for s in other.splits["val"]] != [s.path for s in data.splits["val"]]


def test_validation_names_of_symlinked_images_are_their_places_in_the_data(dataset_copy, tmp_path: Path) -> None:
    import os
    import shutil

    root = dataset_copy()
    elsewhere = tmp_path / "elsewhere"
    shutil.move(root / "test" / "good", elsewhere)
    (root / "test" / "good").mkdir()
    for image in sorted(elsewhere.iterdir()):  # data prepared by linking: each image a link to a file elsewhere
        os.symlink(image, root / "test" / "good" / image.name)
    data = AnomalyDataModule(str(root))
    data.setup()
    names = data.validation_names()
    assert names and all(not name.startswith(("/", "..")) for name in names)
    again = AnomalyDataModule(str(root))
    again.setup()
    again.val_files = names
    again.split()
    assert [s.path for s in again.splits["val"]] == [s.path for s in data.splits["val"]]
    assert again.split_changes == {"validation_images_gone": 0, "seeded_split_moves": 0}


def test_a_folder_above_the_categories_names_them_and_skips_what_it_cannot_enter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("metal_nut", "screw"):
        (tmp_path / name / "train" / "good").mkdir(parents=True)
    (tmp_path / "lost+found").mkdir()
    real_is_dir = Path.is_dir

    def is_dir(path: Path) -> bool:  # a root-owned folder, as a non-root user meets it (the tests run as root)
        if "lost+found" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_is_dir(path)

    monkeypatch.setattr(Path, "is_dir", is_dir)
    with pytest.raises(OTXDataError, match=r"holds categories \(metal_nut, screw\); pass one of them as --data_root"):
        index_mvtec(tmp_path)


# --- layouts a real dataset brings (each: before, a traceback or images dropped without a word) -------------


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    src.rename(dst)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        # Datumaro's reader failed on these with a TypeError (an internal error)
        ("image_in_split", "image 'test/000.png' is directly in test/: MVTec layout puts each image in"),
        ("subfolder", "'train/good/lot7/' holds images in a subfolder"),
        # and skipped these without a word (30 of 40 training images)
        ("deep_subfolder", "'train/good/2025/' holds images in a subfolder"),
        # and kept one of two images of one name, which one depending on the folder's order
        ("same_stem", "test/scratch/ holds '000.jpg' and '000.png': two images of one name"),
        # and took test/Good for a defect type
        ("capital_good", "'test/Good/' would be a defect type: otx reads test/good/ in lower case"),
        # and scored test/'good ' as a defect type: normal images anomalous, image F1 1.0, exit 0 (bug bash)
        (
            "good_with_a_space",
            "test/'good '/ would be a defect type: otx reads test/good/ exactly, and the name "
            "differs from it by spaces at the start or end; rename the folder to good",
        ),  # fmt: skip
        ("train_good_with_a_space", "(found train/'good ', which differs from good by spaces at the start or end"),
        # and said "mask ... has no image: expected test/scratch/000.<ext>", a path that looked like the one there
        ("defect_with_a_space", "differ by spaces at the start or end; rename one so that they match exactly"),
        ("decomposed_name", "differ by the Unicode form of a letter (decomposed, as macOS writes names"),
    ],
)
def test_layout_problems_are_one_line(dataset_copy, change: str, said: str) -> None:
    root = dataset_copy()
    train = sorted((root / "train" / "good").glob("*.png"))
    if change == "image_in_split":
        _move(root / "test" / "good" / "000.png", root / "test" / "000.png")
    elif change == "subfolder":
        for path in train[:5]:
            _move(path, root / "train" / "good" / "lot7" / path.name)
    elif change == "deep_subfolder":
        for path in train[:30]:
            _move(path, root / "train" / "good" / "2025" / "lot1" / path.name)
    elif change == "capital_good":
        (root / "test" / "good").rename(root / "test" / "Good")
    elif change == "good_with_a_space":
        (root / "test" / "good").rename(root / "test" / "good ")
    elif change == "train_good_with_a_space":
        (root / "train" / "good").rename(root / "train" / "good ")
    elif change == "defect_with_a_space":
        (root / "test" / "scratch").rename(root / "test" / "scratch ")
    elif change == "decomposed_name":  # the image named as macOS writes it, its mask in composed form
        (root / "test" / "scratch" / "000.png").rename(root / "test" / "scratch" / "fle\u0301ck.png")
        (root / "ground_truth" / "scratch" / "000_mask.png").rename(
            root / "ground_truth" / "scratch" / "fl\u00e9ck_mask.png"
        )
    else:
        image = cv2.imread(str(root / "test" / "scratch" / "001.png"))
        cv2.imwrite(str(root / "test" / "scratch" / "000.jpg"), image)
    with pytest.raises(OTXDataError) as raised:
        index_mvtec(root)
    assert said in str(raised.value)


def test_tool_folders_without_images_of_their_own_are_passed_over(dataset_copy) -> None:
    root = dataset_copy()
    thumbs = root / "train" / "good" / "@eaDir" / "000.png"  # Synology's thumbnails, two levels down
    thumbs.mkdir(parents=True)
    cv2.imwrite(str(thumbs / "SYNOPHOTO_THUMB_M.jpg"), np.zeros((8, 8, 3), np.uint8))
    assert len(index_mvtec(root).subsets["train"]) == 40


def test_masks_in_other_formats_are_read_and_misnamed_masks_are_named(dataset_copy) -> None:
    root = dataset_copy()
    masks = root / "ground_truth" / "scratch"
    png = masks / "000_mask.png"
    expected = read_mask(png)
    cv2.imwrite(str(masks / "000_mask.bmp"), cv2.imread(str(png), cv2.IMREAD_UNCHANGED))
    png.unlink()
    sample = next(s for s in index_mvtec(root).subsets["test"] if s.path.endswith("scratch/000.png"))
    assert sample.mask_path == str(masks / "000_mask.bmp")  # before: no mask, and "mask ... has no image"
    np.testing.assert_array_equal(read_mask(sample.mask_path), expected)
    (masks / "000_mask.bmp").rename(masks / "000.png")  # named like its image
    with pytest.raises(OTXDataError, match=r"is not named as a mask of 'test/scratch/000.png'.*rename it to 000_mask"):
        index_mvtec(root)
    (masks / "000.png").rename(masks / "000_mask.png")
    good = root / "ground_truth" / "good"
    good.mkdir()
    cv2.imwrite(str(good / "000_mask.png"), np.zeros((8, 8), np.uint8))  # black masks of normal images: ignored
    assert index_mvtec(root).has_masks


def test_masks_are_found_by_their_stored_names_on_a_case_insensitive_file_system(dataset_copy, monkeypatch) -> None:
    root = dataset_copy()
    masks = root / "ground_truth" / "scratch"
    (masks / "000_mask.png").rename(masks / "000_mask.PNG")
    real_is_file = Path.is_file

    def case_insensitive_is_file(self: Path, *args, **kwargs) -> bool:  # as macOS and Windows answer a probe
        try:
            return real_is_file(self) or any(p.name.lower() == self.name.lower() for p in self.parent.iterdir())
        except OSError:
            return False

    monkeypatch.setattr(Path, "is_file", case_insensitive_is_file)
    sample = next(s for s in index_mvtec(root).subsets["test"] if s.path.endswith("scratch/000.png"))
    assert sample.mask_path == str(masks / "000_mask.PNG")  # before: found as 000_mask.png, then "has two masks"
    (root / "test" / "scratch").rename(root / "test" / "Scratch")  # as on Linux: its masks are named as unmatched
    with pytest.raises(OTXDataError, match="folder names are matched with their case"):
        index_mvtec(root)


def test_a_folder_is_read_for_the_same_image_types_in_training_and_prediction(dataset_copy, tmp_path: Path) -> None:
    from datumaro.util.image import IMAGE_EXTENSIONS as DATUMARO_IMAGE_EXTENSIONS

    from otx.data.io import IMAGE_EXTENSIONS

    assert set(IMAGE_EXTENSIONS) == set(DATUMARO_IMAGE_EXTENSIONS)  # what Datumaro's MVTec reader trains on
    demo = demo_package()
    assert demo.EXTENSIONS == IMAGE_EXTENSIONS
    root = dataset_copy()
    image = cv2.imread(str(root / "train" / "good" / "000.png"))
    cv2.imwrite(str(root / "train" / "good" / "100.webp"), image)
    source = tmp_path / "new_parts"
    source.mkdir()
    cv2.imwrite(str(source / "a.webp"), image)
    cv2.imwrite(str(source / "b.pgm"), image[..., 0])
    assert any(s.path.endswith("100.webp") for s in index_mvtec(root).subsets["train"])
    predicted = [Path(s.path).name for s in samples_from_source(source)]  # before: "no images found"
    assert predicted == ["a.webp", "b.pgm"]
    assert [p.name for p in demo.find_images(str(source))] == predicted
    np.testing.assert_array_equal(read_image(source / "b.pgm"), demo.read_rgb(source / "b.pgm"))


def test_pgm_ppm_and_pam_files_are_read_as_they_mean_their_levels_and_colours(tmp_path: Path) -> None:
    from PIL import Image

    demo = demo_package()
    rng = np.random.default_rng(3)
    cases = []
    for maxval in (100, 255, 1023, 4095, 65535):  # 8-bit below 256, 16-bit above: a 12-bit camera's PGM is 4095
        levels = rng.integers(0, maxval + 1, (6, 7, 3))
        levels[0, 0] = maxval
        store = ">u2" if maxval > 255 else np.uint8
        expected = np.rint(levels * (255.0 / maxval)).astype(np.uint8)  # what 0..maxval means at 8 bits
        gray = levels[..., 0].astype(store)
        binary = b"P5\n# a comment\n7 6\n%d\n" % maxval + gray.tobytes()
        ascii_ = b"P3\n7 6 %d\n" % maxval + " ".join(map(str, levels.reshape(-1))).encode() + b"\n"
        pam = b"P7\nWIDTH 7\nHEIGHT 6\nDEPTH 1\nMAXVAL %d\nTUPLTYPE GRAYSCALE\nENDHDR\n" % maxval + gray.tobytes()
        colour = b"P6\n7 6\n%d\n" % maxval + levels.astype(store).tobytes()
        as_gray = np.repeat(expected[..., :1], 3, axis=2)
        cases += [(f"g{maxval}.pgm", binary, as_gray), (f"a{maxval}.ppm", ascii_, expected)]
        cases += [(f"c{maxval}.ppm", colour, expected), (f"g{maxval}.pam", pam, as_gray)]
        rgb_pam = b"P7\nWIDTH 7\nHEIGHT 6\nDEPTH 3\nMAXVAL %d\nTUPLTYPE RGB\nENDHDR\n" % maxval
        cases.append((f"c{maxval}.pam", rgb_pam + levels.astype(store).tobytes(), expected))  # red first, as stored
    for name, data, expected in cases:
        path = tmp_path / name
        path.write_bytes(data)
        got = read_image(path)
        # 16-bit levels go through 65535 first, then to 8 bits as any 16-bit image: within one level
        np.testing.assert_allclose(got.astype(int), expected.astype(int), atol=1, err_msg=name)
        if not name.endswith(".pam"):  # (Pillow does not read PAM) Pillow scales by maxval too
            with Image.open(path) as pil:  # 16 bits as mode I, 0-65535
                reference = np.asarray(pil).astype(float) / (257.0 if pil.mode == "I" else 1.0)
            reference = np.repeat(reference[..., None], 3, axis=2) if reference.ndim == 2 else reference
            np.testing.assert_allclose(got, reference, atol=1, err_msg=name)
        np.testing.assert_array_equal(demo.read_rgb(path), got, err_msg=name)
    assert read_image(tmp_path / "g4095.pgm").max() == 255  # before: 16 (4095 of 65535), near black


def test_an_openexr_file_is_read_where_opencvs_reader_is_on_and_named_where_it_is_off(tmp_path, monkeypatch, capfd):
    import subprocess
    import sys

    from otx.data.io import image_header

    path = tmp_path / "part.exr"
    on = {**os.environ, "OPENCV_IO_ENABLE_OPENEXR": "1"}
    script = (
        "import sys, cv2, numpy as np; from otx.data.io import read_image, image_header\n"
        "pixels = np.linspace(0, 1, 8 * 9 * 3, dtype=np.float32).reshape(8, 9, 3)\n"
        "assert cv2.imwrite(sys.argv[1], pixels)\n"
        "expected = np.rint(pixels[..., ::-1] * 255).astype(np.uint8)\n"
        "assert (read_image(sys.argv[1]) == expected).all() and image_header(sys.argv[1])[:2] == (8, 9)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], env=on, check=True, timeout=120)
    monkeypatch.delenv("OPENCV_IO_ENABLE_OPENEXR", raising=False)
    capfd.readouterr()
    for read in (read_image, image_header):  # before: OpenCV's warning, then "cannot identify image file"
        with pytest.raises(OTXDataError, match="OPENCV_IO_ENABLE_OPENEXR=1") as raised:
            read(path)
        assert "\n" not in str(raised.value) and str(path) in str(raised.value)
    assert capfd.readouterr().err == ""
    array, why = demo_package().decode_why(path)
    assert array is None and why in str(raised.value)


def test_the_demo_finds_and_reads_the_images_otx_predict_does(tmp_path: Path) -> None:
    # Before (a review of the demo package): a pipe named as an image hung it, a folder matched by a glob was an
    # unreadable image, a camera's own results.json hid its folder while otx's run folders were predicted, and a
    # PNG without only its end chunk was refused where otx reads it.
    demo = demo_package()
    source = tmp_path / "parts"
    (source / "lot1").mkdir(parents=True)
    (source / "sub.png").mkdir()  # a folder under an image's name
    pixels = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    cv2.imwrite(str(source / "a.png"), pixels)
    cv2.imwrite(str(source / "lot1" / "b.png"), pixels)
    (source / "lot1" / "results.json").write_text('{"camera": "x"}')  # not the demo's: its folder is predicted
    run = source / "20260101-110000-predict"
    (run / "masks").mkdir(parents=True)
    (run / "otx.log").write_text("")
    cv2.imwrite(str(run / "masks" / "a_mask.png"), pixels[..., 0])
    os.mkfifo(source / "pipe.png")
    expected = sorted(p.path for p in samples_from_source(str(source)))
    assert expected == [str(source / "a.png"), str(source / "lot1" / "b.png")]
    assert sorted(str(p) for p in demo.find_images(str(source))) == expected  # before: it hung on the pipe
    assert sorted(str(p) for p in demo.find_images(str(source / "*.png"))) == [str(source / "a.png")]
    assert demo.find_images(str(source / "pipe.png")) == []
    data = (source / "a.png").read_bytes()
    cut = tmp_path / "no_end.png"
    cut.write_bytes(data[: data.rfind(b"IEND") - 4])  # every pixel there, the end chunk not
    np.testing.assert_array_equal(demo.read_rgb(cut), read_image(cut))


def test_files_of_other_types_in_a_source_folder_are_named(tmp_path: Path, caplog, capsys) -> None:
    source = tmp_path / "parts"
    (source / "sub").mkdir(parents=True)
    image = np.full((32, 32, 3), 90, np.uint8)
    cv2.imwrite(str(source / "a.png"), image)
    Image.fromarray(image).save(source / "sub" / "b.gif")  # an image, of a type a folder is not searched for
    (source / "notes.txt").write_text("shift notes\n")
    (source / ".hidden").write_text("a tool's file\n")
    with caplog.at_level("WARNING", logger="otx"):
        found = samples_from_source(source)
    assert [Path(s.path).name for s in found] == ["a.png"]
    said = [r.getMessage() for r in caplog.records if "of other types" in r.getMessage()]
    # before: both passed over without a word (and a GIF given on its own is predicted)
    assert len(said) == 1 and said[0].startswith("left out 2 file(s) of other types (1 .gif, 1 .txt; e.g."), said
    assert [Path(s.path).name for s in samples_from_source(source / "sub" / "b.gif")] == ["b.gif"]
    capsys.readouterr()
    assert [p.name for p in demo_package().find_images(str(source))] == ["a.png"]  # the demo package alike
    assert "left out 2 file(s) of other types (1 .gif, 1 .txt; e.g." in capsys.readouterr().out


def test_files_of_other_types_in_a_data_root_are_named(dataset_copy, caplog) -> None:
    # Before: training and testing passed over .jfif and .gif images without a word ("on 30 normal
    # images"), and a .gif test image's mask said "has no image: expected test/scratch/000.<ext>" (bug bash).
    root = dataset_copy()
    good = root / "train" / "good"
    for path in sorted(good.glob("*.png"))[:3]:
        Image.open(path).convert("RGB").save(path.with_suffix(".jfif"), format="JPEG")  # Windows' JPEG name
        path.unlink()
    (good / "Thumbs.db").write_bytes(b"a thumbnail cache")  # Windows' own file: no warning for it
    with caplog.at_level("WARNING", logger="otx"):
        index = index_mvtec(root)
    said = [r.getMessage() for r in caplog.records if "of other types" in r.getMessage()]
    assert len(index.subsets["train"]) == 37
    assert len(said) == 1 and said[0].startswith("left out 3 file(s) of other types (3 .jfif; e.g. train/good/"), said
    scratch = root / "test" / "scratch" / "000.png"
    Image.open(scratch).save(scratch.with_suffix(".gif"))
    scratch.unlink()
    with pytest.raises(OTXDataError, match=r"belongs to 'test/scratch/000.gif', a file type otx does not read \(.gif"):
        index_mvtec(root)


def test_a_run_folder_is_not_predicted_as_images(trained_padim: dict, sample_root: Path, tmp_path: Path) -> None:
    # Before: `otx predict --source ws/<run>-predict` scored the run's own masks and overlays (bug bash).
    from otx.engine import Engine

    engine = Engine(work_dir=tmp_path / "ws")
    engine.predict(source=str(sample_root / "bottle_like" / "test" / "good"), checkpoint=trained_padim["checkpoint"])
    (run,) = (tmp_path / "ws").glob("*-predict")
    assert list(run.glob("predictions/masks/*.png"))
    with pytest.raises(OTXDataError, match=r"is an otx run folder: its images are otx's outputs"):
        samples_from_source(run)
    with pytest.raises(OTXDataError, match=r"is in the otx run folder .*-predict: its images are otx's outputs"):
        samples_from_source(run / "predictions")
    (tmp_path / "parts").mkdir()
    shutil.copy(sample_root / "bottle_like" / "test" / "good" / "000.png", tmp_path / "parts" / "000.png")
    shutil.move(run, tmp_path / "parts" / run.name)  # a run folder inside a source folder, without its work folder
    assert [Path(s.path).name for s in samples_from_source(tmp_path / "parts")] == ["000.png"]


def test_a_work_dir_inside_the_data_is_refused_before_it_is_written(dataset_copy, tmp_path: Path) -> None:
    # Before: --work_dir DATA/test/runs made `runs` a defect type, and once otx predict had written masks
    # there, every later train and test failed, advising to remove the folder that held the checkpoints.
    from otx.engine import Engine
    from otx.errors import OTXConfigError
    from otx.models import Padim

    root = dataset_copy()
    engine = Engine(model=Padim(input_size=(64, 64)), data=str(root), work_dir=root / "test" / "runs")
    with pytest.raises(OTXConfigError, match=r"work_dir '.*test/runs' is inside the data root's test/ folder"):
        engine.train()
    assert not (root / "test" / "runs").exists()
    (root / "test" / "runs").mkdir()
    (root / "test" / "runs" / "latest.json").write_text("{}")  # one an earlier otx wrote there
    with pytest.raises(OTXDataError, match=r"'test/runs/' is otx's work folder \(latest.json\).*move it out"):
        index_mvtec(root)


def test_a_recursive_pattern_matches_as_glob_does_and_reads_each_folder_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    from otx.data.datamodule import _glob_once

    files = ["a.png", ".h.png", "x/c.png", "x/y/d.png", "x/.hid/e.png", "x/y/z/f1.png", "x/y/z/f2.PNG", "q[1]/003.png"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"-")
    monkeypatch.chdir(tmp_path)
    patterns = ["**/*.png", "x/**/*.png", "**/*", "x/**", "**/f?.png", "**/00[0-9].png", "**/[!a]*.png"]
    patterns += ["x/**/z/*", f"{tmp_path}/**/*.png", "**/.h*", "x/**/.hid/*.png", "q[[]1]/**"]
    for pattern in patterns:  # Python's glob as the reference, where no link leads back up
        expected = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        assert sorted(_glob_once(pattern)) == expected, pattern
    # Before: a link to a folder was read again under each path (the same image predicted twice), a link
    # back up 41 times, and two links back up never ended (bug bash).
    (tmp_path / "x" / "latest").symlink_to("y")
    (tmp_path / "x" / "y" / "up").symlink_to("..")
    (tmp_path / "x" / "y" / "self").symlink_to(".")
    found = samples_from_source("x/**/*.png")
    assert sorted(os.path.realpath(s.path) for s in found) == sorted(
        os.path.realpath(tmp_path / name) for name in ("x/c.png", "x/y/d.png", "x/y/z/f1.png")
    )
    with caplog.at_level("WARNING", logger="otx"):
        found = samples_from_source("x/*/d.png")  # x/y/d.png and x/latest/d.png: one image
    assert [s.path for s in found] == ["x/latest/d.png"]
    assert any("already found under another path (a symbolic link)" in r.getMessage() for r in caplog.records)
    assert [str(p) for p in demo_package().find_images("x/*/d.png")] == ["x/latest/d.png"]  # the demo package alike


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_pipe_or_device_named_like_an_image_is_not_read(dataset_copy, tmp_path: Path, caplog) -> None:
    # Before: a pipe named pipe.png in a folder to predict waited for a writer for ever, without a word,
    # and --source /dev/null said "does not exist" (bug bash).
    root = dataset_copy()
    source = tmp_path / "parts"
    source.mkdir()
    shutil.copy(root / "test" / "good" / "000.png", source / "000.png")
    os.mkfifo(source / "pipe.png")
    with caplog.at_level("WARNING", logger="otx"):
        assert [Path(s.path).name for s in samples_from_source(source)] == ["000.png"]
        assert [Path(s.path).name for s in samples_from_source(str(source / "*.png"))] == ["000.png"]
    assert any("of other types (1 .png" in r.getMessage() for r in caplog.records)
    for special in (source / "pipe.png", Path("/dev/null")):
        if special.exists():
            with pytest.raises(OTXDataError, match=r"is not an image file or a folder \(a device, pipe or socket\)"):
                samples_from_source(special)
    os.mkfifo(root / "train" / "good" / "pipe.png")
    with pytest.raises(OTXDataError, match=r"'train/good/pipe.png' is not a regular file \(a pipe, socket or device"):
        index_mvtec(root)


def test_indexing_ignores_listing_order_unicode_form_hidden_copies(sample_root: Path, tmp_path: Path, caplog) -> None:
    # Before (a review): a hidden copy test/.old/scratch/000.png replaced test/scratch/000.png by listing order, and
    # was then dropped (Datumaro's reader keyed both as scratch/000); the order, the seeded split and the
    # fingerprint followed the Unicode form the file system keeps names in (macOS: NFD); a hidden image's mask
    # stopped indexing with "has no image"; a val/ of unknown/ images only was an empty validation split.
    from otx.data import AnomalyDataModule

    def copy(name: str) -> Path:
        return Path(shutil.copytree(sample_root / "bottle_like", tmp_path / name))

    root = copy("hidden")
    before = index_mvtec(root)
    scratch = sorted((root / "test" / "scratch").glob("*.png"))[0]
    (root / "test" / ".old" / "scratch").mkdir(parents=True)
    shutil.copy(scratch, root / "test" / ".old" / "scratch" / scratch.name)
    shutil.copy(scratch, root / "test" / "scratch" / f".{scratch.name}")
    masks = root / "ground_truth" / "scratch"
    shutil.copy(masks / f"{scratch.stem}_mask.png", masks / f".{scratch.stem}_mask.png")
    with caplog.at_level("WARNING", logger="otx"):
        after = index_mvtec(root)
    assert [s.path for s in after.subsets["test"]] == [s.path for s in before.subsets["test"]]
    assert any(".old" in r.getMessage() for r in caplog.records)  # the copy's folder, said as left out
    # the same images named in both Unicode forms: the same order, split and fingerprint
    orders = {}
    for form in ("NFC", "NFD"):
        renamed = copy(form)
        for folder in (renamed / "train" / "good", renamed / "test" / "good"):
            for i, path in enumerate(sorted(folder.glob("*.png"))):
                path.rename(folder / unicodedata.normalize(form, f"{'éf'[i % 2]}_{i:03d}.png"))
        data = AnomalyDataModule(str(renamed), num_workers=0)
        data.setup()
        names = [Path(s.path).relative_to(renamed).as_posix() for s in data.splits["val"]]
        orders[form] = ([unicodedata.normalize("NFC", n) for n in names], data.index.fingerprint())
    assert orders["NFC"] == orders["NFD"]
    # a mask left beside its image (it was scored as a defect image of its own)
    root = copy("beside")
    shutil.copy(masks / f"{scratch.stem}_mask.png", root / "test" / "scratch" / f"{scratch.stem}_mask.png")
    with pytest.raises(OTXDataError, match=r"test/scratch/ holds '000_mask.png' beside '000.png' .*ground_truth/"):
        index_mvtec(root)
    # val/ holding only unknown/ images: the seeded split of test/, as without val/
    root = copy("unknown_val")
    (root / "val" / "unknown").mkdir(parents=True)
    shutil.copy(scratch, root / "val" / "unknown" / "000.png")
    data = AnomalyDataModule(str(root), num_workers=0)
    data.setup()
    seeded = AnomalyDataModule(str(copy("seeded")), num_workers=0)
    seeded.setup()
    assert len(data.splits["val"]) == len(seeded.splits["val"]) > 0


def test_the_colour_check_looks_at_files_spread_to_the_last(tmp_path: Path) -> None:
    # Before (a review): every len // 32-th file from the start, cut at 32: of 40 files the first 32 only
    from otx.checks import PROFILE_CHECKS, all_stored_gray, mixed_channels_warning, spread

    paths = []
    for i in range(40):
        pixels = np.full((8, 8, 3), 100, np.uint8)
        if i >= 32:
            pixels[..., 0] = 200  # colour
        paths.append(tmp_path / f"{i:03d}.png")
        cv2.imwrite(str(paths[-1]), pixels)
    assert spread(paths)[0] == paths[0] and spread(paths)[-1] == paths[-1] and len(spread(paths)) == PROFILE_CHECKS
    assert len(set(spread(list(range(1000))))) == PROFILE_CHECKS and spread([1, 2]) == [1, 2]
    assert not all_stored_gray(paths)  # before: True, the eight colour files never looked at
    assert all_stored_gray(paths[:32])
    assert "mix grayscale and colour files" in (mixed_channels_warning(paths) or "")


def test_folders_without_images_are_named(dataset_copy, caplog) -> None:
    # Before: an empty defect folder and a val/ folder holding only .DS_Store were passed over without a word.
    root = dataset_copy()
    (root / "test" / "dent").mkdir()
    (root / "val").mkdir()
    (root / "val" / ".DS_Store").write_bytes(b"Bud1")
    with caplog.at_level("WARNING", logger="otx"):
        index = index_mvtec(root)
    said = [r.getMessage() for r in caplog.records]
    assert "test/dent/ holds no images: none of that kind is scored" in said, said
    assert "val/ holds no images (or only unknown/ ones, which have no label to set thresholds on): the " in said[1]
    assert index.subsets["val"] == [] and "dent" not in {s.defect for s in index.subsets["test"]}


def test_a_work_folder_inside_the_source_is_not_predicted(sample_root: Path, tmp_path: Path, caplog) -> None:
    source = tmp_path / "parts"
    for name in ("000.png", "001.png"):
        (source / "shift_1").mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_root / "bottle_like" / "test" / "good" / name, source / "shift_1" / name)
    run = source / "otx-workspace" / "20261203-120000-predict" / "masks"  # `otx predict --source .`'s first outputs
    run.mkdir(parents=True)
    shutil.copy(source / "shift_1" / "000.png", run / "000_mask.png")
    (source / "otx-workspace" / "latest.json").write_text("{}")
    with caplog.at_level("WARNING", logger="otx"):
        names = [Path(s.path).relative_to(source).as_posix() for s in samples_from_source(source)]
    assert names == ["shift_1/000.png", "shift_1/001.png"]  # before: the earlier run's mask too
    assert any("left out otx's work or run folder" in r.getMessage() for r in caplog.records)
    results = source / "results" / "masks"  # the demo package's --output inside the folder
    results.mkdir(parents=True)
    shutil.copy(run / "000_mask.png", results / "000_mask.png")
    found = demo_package().find_images(str(source), source / "results")
    assert [p.relative_to(source).as_posix() for p in found] == names
    (source / "results").rename(source / "results_monday")  # an earlier --output of another name
    (source / "results_monday" / "results.json").write_text("[]")
    found = demo_package().find_images(str(source), source / "results")
    assert [p.relative_to(source).as_posix() for p in found] == names
    caplog.clear()
    with caplog.at_level("WARNING", logger="otx"):  # otx predict alike (before: it predicted the demo's masks)
        assert [Path(s.path).relative_to(source).as_posix() for s in samples_from_source(source)] == names
    assert any("left out the demo package's output folder" in r.getMessage() for r in caplog.records)
    (source / "trial").mkdir()  # a user's folder with a results.json of its own: its images are predicted
    shutil.copy(source / "shift_1" / "000.png", source / "trial" / "000.png")
    (source / "trial" / "results.json").write_text('{"accuracy": 0.9}')
    assert "trial/000.png" in [Path(s.path).relative_to(source).as_posix() for s in samples_from_source(source)]
    (source / "shift_1" / "masks").mkdir()  # --output the source folder itself: its masks/ from before
    shutil.copy(run / "000_mask.png", source / "shift_1" / "masks" / "000_mask.png")
    found = demo_package().find_images(str(source / "shift_1"), source / "shift_1")
    assert [p.name for p in found] == ["000.png", "001.png"]


def test_a_jpeg_whose_data_is_damaged_is_unreadable_not_made_up(tmp_path: Path, capfd) -> None:
    # Before: one flipped byte desynchronised libjpeg, which filled the rest of the image with a flat
    # block; OpenCV printed "Corrupt JPEG data" without the file's name and otx trained on (or scored)
    # the made-up image, exit 0 (bug bash).
    image = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8), (5, 5), 0)
    data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    path = tmp_path / "image.jpg"
    path.write_bytes(data)
    capfd.readouterr()
    np.testing.assert_array_equal(read_image(path), demo_package().read_rgb(path))  # whole: read by both
    assert "JPEG" not in capfd.readouterr().err
    for share in np.linspace(0.5, 0.95, 46):  # a byte of the image data whose flip libjpeg notices (most do)
        damaged = bytearray(data)
        damaged[int(len(data) * share)] ^= 0x10
        decoded = cv2.imdecode(np.frombuffer(bytes(damaged), np.uint8), cv2.IMREAD_COLOR)  # the reference: libjpeg
        if "Corrupt JPEG data" in capfd.readouterr().err:
            break
    else:
        pytest.fail("no flipped byte made libjpeg complain")
    assert decoded is not None  # an image comes back all the same
    path.write_bytes(bytes(damaged))
    with pytest.raises(OTXDataError, match=r"cannot decode image '.*image.jpg' \(damaged JPEG data.*Corrupt JPEG"):
        read_image(path)
    assert demo_package().read_rgb(path) is None
    assert demo_package().decode_why(path)[1].startswith("damaged JPEG data, the decoder would make up part of it")
    assert "Corrupt JPEG data" not in capfd.readouterr().err  # said in otx's line, not raw on the console


def test_a_truncated_jpeg_is_unreadable_not_greyed(tmp_path: Path) -> None:
    import io

    from PIL import Image, ImageFile

    image = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8), (5, 5), 0)
    encoded = {
        "baseline": cv2.imencode(".jpg", image)[1].tobytes(),
        "restart markers": cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_RST_INTERVAL, 2])[1].tobytes(),
        "progressive": cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
        "grayscale": cv2.imencode(".jpg", image[..., 0])[1].tobytes(),
    }
    base = encoded["baseline"]
    encoded["trailer"] = base + b"a phone's trailer \xff\xda\x00\x04 after the image"
    demo = demo_package()
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    path = tmp_path / "image.jpg"
    for name, data in encoded.items():
        cuts = (None,) if name == "trailer" else (None, len(data) // 3, len(data) // 2, len(data) - 40, len(data) - 2)
        for cut in cuts:
            path.write_bytes(data if cut is None else data[:cut])
            try:  # Pillow's decoder as the reference: it refuses a JPEG cut short
                with Image.open(io.BytesIO(path.read_bytes())) as pil:
                    reference = np.asarray(pil.convert("RGB"))
            except OSError:
                reference = None
            assert (reference is None) == (cut is not None), (name, cut)
            if reference is None:
                assert cv2.imread(str(path)) is not None  # OpenCV's imread decodes it, the missing rows grey
                with pytest.raises(OTXDataError, match="cannot decode image .*image.jpg.*truncated"):
                    read_image(path)  # before: an image, partly grey, scored
                assert demo.read_rgb(path) is None, (name, cut)  # "cannot decode image"
            else:
                assert np.abs(read_image(path).astype(int) - reference).max() <= 3, name  # decoders differ by rounding
                np.testing.assert_array_equal(read_image(path), demo.read_rgb(path))


def test_twelve_bit_data_in_sixteen_bit_files_is_named(dataset_copy, caplog) -> None:
    root = dataset_copy()
    files = sorted((root / "train" / "good").glob("*.png"))
    grey = {path: cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) for path in files}
    for scale in (16, 257):  # 12-bit data as a machine camera stores it, then the full 16-bit range
        for path, levels in grey.items():
            assert cv2.imwrite(str(path), levels.astype(np.uint16) * scale)
        caplog.clear()
        with caplog.at_level("WARNING", logger="otx"):
            index_mvtec(root)
        said = [r.getMessage() for r in caplog.records if "16-bit files" in r.getMessage()]
        if scale == 16:
            assert read_image(files[0]).max() <= 16  # what otx trains on: 16 grey levels of 256
            assert len(said) == 1 and "(12-bit data" in said[0] and "multiply by 16" in said[0]
        else:
            assert not said
    # Full-range files first, 12-bit ones after: before, only the first three files were decoded (no warning)
    for path in files[len(files) // 2 :]:
        assert cv2.imwrite(str(path), grey[path].astype(np.uint16) * 16)
    caplog.clear()
    with caplog.at_level("WARNING", logger="otx"):
        index_mvtec(root)
    said = [r.getMessage() for r in caplog.records if "16-bit files" in r.getMessage()]
    assert len(said) == 1 and "(12-bit data: 2 of 5 checked, e.g. train/good/" in said[0]
    named = said[0].split("e.g. ")[1].split(")")[0]
    assert root / named in files[len(files) // 2 :]  # the narrow file, not the first one
    # one dark file among full-range ones (a black frame) is not 12-bit data
    for path in files:
        assert cv2.imwrite(str(path), grey[path].astype(np.uint16) * (16 if path == files[0] else 257))
    caplog.clear()
    with caplog.at_level("WARNING", logger="otx"):
        index_mvtec(root)
    assert not [r for r in caplog.records if "16-bit files" in r.getMessage()]


def test_float_images_outside_the_levels_are_refused_not_clipped(tmp_path: Path) -> None:
    demo = demo_package()
    height_map = np.random.default_rng(0).uniform(650, 2200, (20, 30)).astype(np.float32)  # micrometres
    path = tmp_path / "height.tif"
    assert cv2.imwrite(str(path), height_map)
    with pytest.raises(OTXDataError, match="values run from 65.* to 2.*outside \\[0, 1\\] and 0-255"):
        read_image(path)  # before: every pixel 255
    with pytest.raises(ValueError, match="outside \\[0, 1\\] and 0-255"):
        demo.read_rgb(path)
    overshoot = np.clip(np.linspace(-0.004, 1.004, 600, dtype=np.float32).reshape(20, 30), -1, 2)
    assert cv2.imwrite(str(path), overshoot)  # a [0, 1] image with rounding noise: still [0, 1]
    image = read_image(path)
    np.testing.assert_array_equal(image[..., 0], np.clip(np.rint(overshoot * 255), 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(demo.read_rgb(path), image)


def test_exif_orientation_is_named_and_an_empty_file_is_called_empty(dataset_copy, caplog) -> None:
    from PIL import Image

    root = dataset_copy()
    path = root / "test" / "good" / "000.png"
    exif = Image.Exif()
    exif[0x0112] = 6  # a viewer turns it a quarter
    with Image.open(path) as pil:
        pil.convert("RGB").save(root / "test" / "good" / "000.jpg", exif=exif)
    path.unlink()
    with caplog.at_level("WARNING", logger="otx"):
        index_mvtec(root)
    assert any(
        "1 image(s) carry an EXIF orientation (e.g. test/good/000.jpg)" in r.getMessage() for r in caplog.records
    )
    (root / "train" / "good" / "000.png").write_bytes(b"")
    with pytest.raises(OTXDataError, match="the file is empty, 0 bytes"):
        index_mvtec(root)


def test_a_data_root_as_the_source_leaves_its_masks_out(sample_root: Path, caplog) -> None:
    root = sample_root / "bottle_like"
    with caplog.at_level("WARNING", logger="otx"):
        samples = samples_from_source(root)
    assert samples and not any("ground_truth" in s.path for s in samples)  # before: masks predicted as images
    assert len(samples) == len(list((root / "train").rglob("*.png"))) + len(list((root / "test").rglob("*.png")))
    assert any("left out 16 mask file(s)" in r.getMessage() for r in caplog.records)
    assert [str(p) for p in demo_package().find_images(str(root))] == [s.path for s in samples]  # before: +16 masks


def test_a_folder_source_follows_linked_folders_and_leaves_tools_files_out(
    sample_root: Path, tmp_path: Path, caplog
) -> None:
    # Before: a symlinked folder was skipped without a word ("no images found" when it was the only one),
    # and macOS zips' __MACOSX/._*.png files and a notebook's checkpoint copies were predicted as parts.
    scratch = sample_root / "bottle_like" / "test" / "scratch"
    source = tmp_path / "parts"
    (source / "own").mkdir(parents=True)
    shutil.copy(scratch / "000.png", source / "own" / "a.png")
    (source / "linked").symlink_to(scratch, target_is_directory=True)
    (source / "own" / "up").symlink_to(source, target_is_directory=True)  # a link back up: no loop
    (source / "own" / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    shutil.copy(scratch / "000.png", source / "own" / ".thumb.png")  # a hidden image: a tool's (before: predicted)
    for tool in ("__MACOSX/own", "own/.ipynb_checkpoints", "@eaDir"):
        (source / tool).mkdir(parents=True)
        shutil.copy(scratch / "001.png", source / tool / "b.png")
    with caplog.at_level("WARNING", logger="otx"):
        samples = samples_from_source(source)
    expected = [source / "linked" / p.name for p in sorted(scratch.glob("*.png"))] + [source / "own" / "a.png"]
    assert sorted(Path(s.path) for s in samples) == sorted(expected)
    said = [r.getMessage() for r in caplog.records if "macOS, notebook, NAS or other hidden" in r.getMessage()]
    assert len(said) == 1 and "and 4 more" in said[0], said
    said = [r.getMessage() for r in caplog.records if "already read under another path" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"left out {source / 'own' / 'up'}:"), said
    assert sorted(demo_package().find_images(str(source))) == sorted(expected)  # the demo package alike


def test_macos_resource_files_are_ignored_in_training_with_one_warning(dataset_copy, caplog) -> None:
    root = dataset_copy()
    junk = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "  # an AppleDouble header, not an image
    for path in ("train/good/._000.png", "test/scratch/._000.png", "ground_truth/scratch/._000_mask.png"):
        (root / path).write_bytes(junk)
    with caplog.at_level("WARNING", logger="otx"):
        index = index_mvtec(root)  # before: refused one file at a time ("cannot read image")
    assert len(index.subsets["train"]) == 40 and not any("._" in s.path for v in index.subsets.values() for s in v)
    said = [r.getMessage() for r in caplog.records if "macOS resource file" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("ignoring 3 macOS resource file(s)"), said
    # a hidden image: a tool's file (before: trained on without a word, where a glob leaves it out)
    shutil.copy(root / "train" / "good" / "001.png", root / "train" / "good" / ".thumb.png")
    caplog.clear()
    with caplog.at_level("WARNING", logger="otx"):
        index = index_mvtec(root)
    assert len(index.subsets["train"]) == 40
    said = [r.getMessage() for r in caplog.records if "hidden file" in r.getMessage()]
    assert said == [
        "ignoring 1 hidden file(s) (e.g. train/good/.thumb.png): names starting with a dot are tools' files, not "
        "images to use; rename them to use them"
    ], said
    (root / "test" / "._x.png").write_bytes(junk)  # directly in test/: Datumaro's reader would fail on it
    with pytest.raises(OTXDataError, match=r"'test/._x.png' is a macOS resource file .*; remove it"):
        index_mvtec(root)


@pytest.mark.parametrize("name", ["000-mask.png", "000_MASK.png", "000 mask.png", "000mask.png"])
def test_a_misspelt_mask_suffix_is_named_with_its_image(dataset_copy, name: str) -> None:
    # before: "has no image ... remove the mask or add its image" while the image was there
    root = dataset_copy()
    masks = root / "ground_truth" / "scratch"
    (masks / "000_mask.png").rename(masks / name)
    with pytest.raises(OTXDataError, match=r"is not named as a mask of 'test/scratch/000.png'.*rename it to 000_mask"):
        index_mvtec(root)


def test_a_type_folder_of_another_case_than_its_masks_is_named(dataset_copy) -> None:
    root = dataset_copy()
    (root / "test" / "scratch").rename(root / "test" / "Scratch")
    with pytest.raises(OTXDataError) as raised:
        index_mvtec(root)
    said = str(raised.value)
    assert "belongs to 'test/Scratch/" in said and "ground_truth/scratch/ and the image's test/Scratch/" in said
    assert "remove the mask" not in said


def test_multi_page_and_turned_images_are_named_in_the_index_and_in_predict(
    dataset_copy, trained_padim: dict, tmp_path, caplog
):
    # Before: only the first page of a multi-page TIFF was read, without a word (a black first page and
    # the part on the second trained a model on black images).
    from otx.cli import main

    root = dataset_copy()
    pages = [Image.open(root / "test" / "scratch" / f"00{i}.png").convert("RGB") for i in range(3)]
    tiff = root / "test" / "scratch" / "050.tif"
    pages[0].save(tiff, save_all=True, append_images=pages[1:])
    assert Image.open(tiff).n_frames == 3
    with caplog.at_level("WARNING", logger="otx"):
        index_mvtec(root)
    said = [r.getMessage() for r in caplog.records if "several pages" in r.getMessage()]
    assert said == [
        "1 image file(s) hold several pages or frames (e.g. test/scratch/050.tif): otx reads the first page of each; "
        "save each page as an image of its own if the others are to be inspected"
    ]
    np.testing.assert_array_equal(read_image(tiff), np.asarray(pages[0]))  # the first page, as said
    camera = root / "test" / "scratch" / "051.jpg"  # a camera JPEG with a preview frame (MPO): one image
    pages[0].save(camera, format="MPO", save_all=True, append_images=pages[1:2])
    assert Image.open(camera).n_frames == 2 and image_header(camera).pages == 1
    exif = Image.Exif()
    exif[0x0112] = 6  # a viewer turns it a quarter (before: said for a data root only, not for --source)
    pages[0].save(root / "test" / "scratch" / "052.jpg", exif=exif)
    work_dir = tmp_path / "ws"
    args = ["predict", "--checkpoint", str(trained_padim["checkpoint"]), "--work_dir", str(work_dir)]
    assert main([*args, "--source", str(tiff.parent), "--visualize", "false"]) == 0
    run = json.loads(next(work_dir.glob("*-predict/metrics.json")).read_text())
    assert [w for w in run["warnings"] if "several pages" in w] == [said[0].replace("test/scratch/050.tif", "050.tif")]
    assert [w for w in run["warnings"] if "EXIF" in w] == [
        "1 image(s) carry an EXIF orientation (e.g. 052.jpg): otx reads their pixels as stored, not turned as photo "
        "viewers show them, and masks written by otx match the stored pixels; turn the files themselves "
        "(e.g. PIL's ImageOps.exif_transpose) to have them scored and their masks written as viewers show them"
    ]
    # a source folder with type folders: the file is named under it (before: "052.jpg", which several may be)
    assert main([*args, "--source", str(root / "test"), "--visualize", "false"]) == 0
    latest = json.loads((work_dir / "latest.json").read_text())["predict"]
    run = json.loads((work_dir / latest / "metrics.json").read_text())
    assert [w for w in run["warnings"] if "EXIF" in w][0].startswith(
        "1 image(s) carry an EXIF orientation (e.g. scratch/052"
    )


def test_the_datas_warnings_are_listed_in_the_runs_results(dataset_copy, trained_padim: dict, tmp_path: Path) -> None:
    # Before: warnings found while indexing the folder (macOS resource files, EXIF, JPEG masks, pages ...)
    # reached the console only; metrics.json and the report listed the verb's own warnings.
    from otx.cli import main

    root = dataset_copy()
    junk = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "
    for path in ("train/good/._000.png", "test/scratch/._000.png"):
        (root / path).write_bytes(junk)
    work_dir = tmp_path / "ws"
    args = ["--checkpoint", str(trained_padim["checkpoint"]), "--data_root", str(root), "--work_dir", str(work_dir)]
    assert main(["test", *args]) == 0
    run = next(work_dir.glob("*-test"))
    said = [w for w in json.loads((run / "metrics.json").read_text())["warnings"] if "macOS resource" in w]
    assert len(said) == 1 and said[0].startswith("ignoring 2 macOS resource file(s)"), said
    assert html.escape(said[0]) in (run / "report.html").read_text()


def test_a_verb_in_another_thread_keeps_its_data_warnings(dataset_copy, trained_padim: dict, tmp_path: Path) -> None:
    import threading

    from otx.engine import Engine

    # Two Python threads test the model at once, one on a folder with macOS resource files: only its
    # run lists that folder's warning (the data module logs it without knowing the verb).
    junk_root = dataset_copy()
    (junk_root / "test" / "scratch" / "._000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    clean_root = dataset_copy("carpet_like")
    results: dict[str, dict] = {}

    def test(name: str, root: Path) -> None:
        engine = Engine(data=AnomalyDataModule(str(root), num_workers=0), work_dir=tmp_path / name)
        results[name] = engine.test(checkpoint=trained_padim["checkpoint"])

    threads = [threading.Thread(target=test, args=args) for args in (("junk", junk_root), ("clean", clean_root))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert any("macOS resource file" in w for w in results["junk"]["warnings"])
    assert not any("macOS resource file" in w for w in results["clean"]["warnings"]), results["clean"]["warnings"]


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A 1-bit PNG file whose header claims ``width x height``, with the first rows' pixels only."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = zlib.compress(bytes(4 * (1 + (width + 7) // 8)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def test_large_scans_are_indexed_and_bombs_are_one_line(dataset_copy) -> None:
    root = dataset_copy()
    big = root / "test" / "good" / "big.png"
    Image.new("1", (15000, 15000)).save(big)  # 225 MP, 27 KB: over Pillow's default limit, under OpenCV's
    assert image_header(big)[:2] == (15000, 15000)  # before: Pillow's DecompressionBombError, a traceback
    assert str(big) not in index_mvtec(root).unreadable
    _png_header_only(big, 60000, 60000)  # 3.6 G pixels: past both limits
    with pytest.raises(OTXDataError, match=r"cannot read image '.*big\.png' \(Image size \(3600000000 pixels\)"):
        image_header(big)
    assert "Image size (3600000000 pixels)" in index_mvtec(root).unreadable[str(big)]  # a test image: "error"
    _png_header_only(root / "ground_truth" / "scratch" / "000_mask.png", 60000, 60000)
    with pytest.raises(OTXDataError, match="cannot read image .*000_mask.png"):
        index_mvtec(root)


def test_an_image_declaring_more_pixels_than_the_limit_is_not_decoded(tmp_path: Path, monkeypatch) -> None:
    # Before: a 389 KB PNG declaring 20000x20000 took 8.3 GB in otx predict, and one of 32000x32000 (under
    # OpenCV's 2^30 pixels) would have left it to the OOM killer, without a word (a bug bash of foreign files).
    from otx.errors import OTXConfigError

    bomb = tmp_path / "bomb_mask.png"
    _png_header_only(bomb, 20000, 20000)
    said = r"cannot read {} '.*bomb_mask\.png': 20000x20000 is 400 MP, above the 268 MP otx decodes of one image"
    with pytest.raises(OTXDataError, match=said.format("image")):
        read_image(bomb)
    with pytest.raises(OTXDataError, match=said.format("mask")):
        read_mask(bomb)
    small = tmp_path / "small.png"
    assert cv2.imwrite(str(small), np.zeros((40, 50, 3), np.uint8))
    monkeypatch.setenv("OTX_MAX_IMAGE_PIXELS", "1999")
    with pytest.raises(OTXDataError, match=r"50x40 is 2,000 pixels, above the 1,999 pixels otx decodes"):
        read_image(small)
    monkeypatch.setenv("OTX_MAX_IMAGE_PIXELS", "2000")
    assert read_image(small).shape == (40, 50, 3)
    for value in ("lots", "inf"):  # (inf: OverflowError, "internal error" before a review)
        monkeypatch.setenv("OTX_MAX_IMAGE_PIXELS", value)
        with pytest.raises(OTXConfigError, match="OTX_MAX_IMAGE_PIXELS must be a number of pixels"):
            read_image(small)


def test_images_only_opencv_decodes_are_indexed_for_training_and_kept_to_the_pixel_limit(
    dataset_copy, tmp_path: Path, monkeypatch
) -> None:
    """Radiance HDR and float TIFF files (OpenCV decodes them, Pillow cannot identify them) train and test.

    Before: ``otx train`` stopped on them ("cannot read image (UnidentifiedImageError)", the header was
    Pillow's) and ``otx test`` labelled them unreadable, while ``otx predict`` scored them; and the pixel
    limit, checked on Pillow's header only, was never applied to them (a review, 2026-12-07).
    """
    root = dataset_copy()
    image = cv2.imread(str(root / "train" / "good" / "000.png")).astype(np.float32) / 255.0
    hdr, tiff = root / "train" / "good" / "100.hdr", root / "test" / "good" / "100.tiff"
    assert cv2.imwrite(str(hdr), image) and cv2.imwrite(str(tiff), image)
    with pytest.raises(OSError):  # what made them unreadable: Pillow does not know them
        Image.open(hdr)
    index = index_mvtec(root)
    assert str(hdr) in [s.path for s in index.subsets["train"]] and str(tiff) in [s.path for s in index.subsets["test"]]
    assert not index.unreadable
    demo = demo_package()
    for path in (hdr, tiff):
        header, read = image_header(path), read_image(path)
        assert (header.height, header.width, header.pages) == (*image.shape[:2], 1) and read.shape == image.shape
        np.testing.assert_array_equal(demo.read_rgb(path), read)  # the demo package alike
    height, width = image.shape[:2]
    monkeypatch.setenv("OTX_MAX_IMAGE_PIXELS", str(height * width - 1))
    said = f"{width}x{height} is {height * width:,} pixels, above the {height * width - 1:,} pixels otx decodes"
    for path in (hdr, tiff):
        with pytest.raises(OTXDataError, match=said):
            read_image(path)
        assert demo.decode_why(path)[1].startswith(said)
    monkeypatch.delenv("OTX_MAX_IMAGE_PIXELS")
    # a file OpenCV cannot decode and Pillow can (an RGB TIFF with two extra channels: OpenCV takes at most
    # four) reads alike in the demo package (before: "cannot decode image" there; Pillow was its fallback
    # for TGA files only)
    import tifffile

    extra = tmp_path / "extra_channels.tif"
    pixels = (image[:64, :64] * 255).round().astype(np.uint8)
    tifffile.imwrite(extra, np.concatenate([pixels, pixels[..., :2]], -1), photometric="rgb", extrasamples=[0, 0])
    assert cv2.imdecode(np.fromfile(extra, np.uint8), cv2.IMREAD_UNCHANGED) is None
    np.testing.assert_array_equal(read_image(extra), pixels)
    np.testing.assert_array_equal(demo.read_rgb(extra), pixels)
    # a header declaring more pixels than otx decodes: refused by the demo package too, before decoding
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 20000, 20000)
    assert demo.decode_why(bomb) == (None, demo.too_many_pixels(20000, 20000))
    assert demo.too_many_pixels(20000, 20000).startswith("20000x20000 is 400 MP, above the 268 MP otx decodes")


@pytest.mark.parametrize("kind", ["CMYK-tiff", "RGB16-labels", "RGBA16-labels", "LA-tga", "L-png-trailer", "I16B-tiff"])
def test_masks_of_other_encodings_read_the_same(kind: str, tmp_path: Path) -> None:
    mask = np.zeros((24, 32), bool)
    mask[4:10, 5:20] = True
    u8 = mask.astype(np.uint8) * 255
    labels16 = mask.astype(np.uint16)  # 0/1 labels in 16 bits: before, Pillow kept their high byte (all 0)
    path = tmp_path / f"m_mask.{kind.rsplit('-', 1)[-1] if kind.endswith(('tiff', 'tga')) else 'png'}"
    if kind == "CMYK-tiff":  # before: K taken for alpha, the mask inverted
        Image.fromarray(u8).convert("CMYK").save(path)
    elif kind == "RGB16-labels":
        assert cv2.imwrite(str(path), np.stack([labels16] * 3, -1))
    elif kind == "RGBA16-labels":
        assert cv2.imwrite(str(path), np.stack([labels16] * 3 + [np.full_like(labels16, 65535)], -1))
    elif kind == "LA-tga":  # OpenCV does not read TGA: Pillow's LA
        Image.fromarray(np.stack([u8, np.full_like(u8, 255)], -1), "LA").save(path)
    elif kind == "L-png-trailer":  # bytes after the end chunk, as some tools append
        Image.fromarray(u8).save(path)
        path.write_bytes(path.read_bytes() + b"\0" * 100)
    else:
        Image.fromarray(labels16.astype(">u2") * 40000).save(path)  # Pillow's I;16B, big-endian
    np.testing.assert_array_equal(read_mask(path), mask)


def test_images_pillow_decodes_read_like_opencvs(tmp_path: Path) -> None:
    from otx.data.io import to_uint8

    gray = np.random.default_rng(0).integers(0, 256, (12, 20), dtype=np.uint8)
    la = tmp_path / "la.tga"  # OpenCV does not read TGA; Pillow gives LA (before: cv2's "Bad number of channels")
    Image.fromarray(np.stack([gray, np.full_like(gray, 255)], -1), "LA").save(la)
    np.testing.assert_array_equal(read_image(la), np.stack([gray] * 3, -1))
    np.testing.assert_array_equal(demo_package().read_rgb(la), read_image(la))  # the demo: "not an image format"
    png = tmp_path / "trailer.png"
    Image.fromarray(np.stack([gray, np.full_like(gray, 200)], -1), "LA").save(png)
    png.write_bytes(png.read_bytes() + b"\0" * 100)  # before: taken for a PNG cut short, read by Pillow, crashed
    np.testing.assert_array_equal(read_image(png), np.stack([gray] * 3, -1))
    np.testing.assert_array_equal(demo_package().read_rgb(png), read_image(png))  # the demo read it as truncated
    cut = tmp_path / "cut.png"
    cut.write_bytes(png.read_bytes()[:-130])  # without its end chunk: still refused, by both
    with pytest.raises(OTXDataError, match="cut.png"):
        read_image(cut)
    assert demo_package().decode_why(cut)[1].startswith("image file is truncated")
    big_endian = np.array([[0, 40000, 65535]], ">u2")  # before: taken for float levels and refused
    np.testing.assert_array_equal(to_uint8(big_endian), to_uint8(big_endian.astype(np.uint16)))


def test_a_tiff_masks_orientation_is_applied_as_its_images(dataset_copy, caplog) -> None:
    from PIL import TiffImagePlugin

    root = dataset_copy()
    image = root / "test" / "scratch" / "000.png"
    pixels = np.asarray(Image.open(image).convert("L"))
    stored = np.zeros(pixels.shape, np.uint8)
    stored[0, 0] = 255  # one defect pixel in the stored corner
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[0x0112] = 6  # turned a quarter: both decoders turn a TIFF's pixels
    Image.fromarray(pixels).save(image.with_suffix(".tif"), tiffinfo=tags)
    Image.fromarray(stored).save(root / "ground_truth" / "scratch" / "000_mask.tif", tiffinfo=tags)
    image.unlink()
    (root / "ground_truth" / "scratch" / "000_mask.png").unlink()
    with caplog.at_level("WARNING", logger="otx"):
        sample = next(s for s in index_mvtec(root).subsets["test"] if s.path.endswith("000.tif"))
    assert not any("EXIF orientation" in r.getMessage() for r in caplog.records)  # (the warning said "as stored")
    read = read_image(sample.path)
    mask = read_mask(sample.mask_path)  # before: flipped, not turned (Pillow on an uncompressed TIFF)
    assert mask.shape == read.shape[:2] == image_header(sample.mask_path)[:2] == pixels.shape[::-1]
    np.testing.assert_array_equal(read[..., 0], np.rot90(pixels, -1))  # orientation 6: a quarter clockwise
    np.testing.assert_array_equal(mask, np.rot90(stored, -1) > 0)


def test_tool_folders_in_test_and_masks_are_left_out_and_mask_suffixes_match_in_any_case(dataset_copy, caplog) -> None:
    root = dataset_copy()
    before = index_mvtec(root)
    for folder in ("test/.ipynb_checkpoints", "val/__MACOSX", "ground_truth/.ipynb_checkpoints"):
        (root / folder).mkdir(parents=True)
    shutil.copy(root / "test" / "good" / "000.png", root / "test" / ".ipynb_checkpoints" / "000-checkpoint.png")
    shutil.copy(root / "train" / "good" / "000.png", root / "val" / "__MACOSX" / "000.png")
    shutil.copy(root / "ground_truth" / "scratch" / "000_mask.png", root / "ground_truth" / ".ipynb_checkpoints")
    (root / "ground_truth" / "@eaDir" / "000_mask.png").mkdir(parents=True)  # a NAS's thumbnail folder
    masks = root / "ground_truth" / "scratch"
    (masks / "000_mask.png").rename(masks / "000_mask.Png")  # before: "not named as a mask of ..."
    with caplog.at_level("WARNING", logger="otx"):
        index = index_mvtec(root)  # before: two anomalous defect types, ".ipynb_checkpoints" and "__MACOSX"
    defects = {s.defect for samples in index.subsets.values() for s in samples}
    assert defects == {s.defect for samples in before.subsets.values() for s in samples}
    assert len(index.subsets["test"]) == len(before.subsets["test"])
    said = [r.getMessage() for r in caplog.records if "folders that tools leave" in r.getMessage()]
    assert len(said) == 1 and all(
        f"{name}/" in said[0] for name in ("test/.ipynb_checkpoints", "val/__MACOSX", "ground_truth/.ipynb_checkpoints")
    ), said
    sample = next(s for s in index.subsets["test"] if s.path.endswith("scratch/000.png"))
    assert sample.mask_path == str(masks / "000_mask.Png")


def test_a_broken_link_is_named_as_one(dataset_copy) -> None:
    root = dataset_copy()
    link = root / "test" / "good" / "link.png"
    link.symlink_to(root / "nowhere.png")  # before: "(FileNotFoundError)"
    said = index_mvtec(root).unreadable[str(link)]
    assert f"a broken symbolic link to '{root / 'nowhere.png'}'" in said, said
    with pytest.raises(OTXDataError, match="a broken symbolic link to"):
        read_image(link)


def test_masks_of_several_data_roots_in_the_source_are_counted_as_theirs(
    sample_root: Path, tmp_path: Path, caplog, capsys
) -> None:
    # before: "left out 48 mask file(s) under <first>/ground_truth", the masks of three data roots
    for category in ("bottle_like", "carpet_like"):
        shutil.copytree(sample_root / category, tmp_path / category)
    with caplog.at_level("WARNING", logger="otx"):
        samples = samples_from_source(tmp_path)
    assert not any("_mask" in Path(s.path).name for s in samples)
    said = [r.getMessage() for r in caplog.records if "mask file(s)" in r.getMessage()]
    first = (tmp_path / "bottle_like" / "ground_truth").as_posix()
    assert len(said) == 1 and f"mask file(s) under {Path(first)} and 1 other ground_truth folder(s)" in said[0], said
    demo_package().find_images(str(tmp_path))
    assert "and 1 other ground_truth folder(s) (ground truth, not images)" in capsys.readouterr().out


def test_images_as_read_are_batched_by_their_pixels_even_where_only_opencv_reads_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``loader(resize=False)`` (an exported model's batches) cuts batches by pixels; a file whose size Pillow
    cannot read (Radiance HDR, which OpenCV decodes) counts as a whole batch's worth, and an empty share is empty."""
    import otx.data.datamodule as datamodule
    from otx.data.datamodule import PixelBatches
    from otx.data.io import header_pixels
    from otx.preprocess import PreProcessor

    rng = np.random.default_rng(0)
    for name, size in (("a.png", (40, 50)), ("b.hdr", (30, 40)), ("c.png", (20, 20)), ("d.png", (20, 30))):
        image = rng.random((*size, 3), dtype=np.float32)
        cv2.imwrite(str(tmp_path / name), image if name.endswith(".hdr") else (image * 255).astype(np.uint8))
    samples = samples_from_source(str(tmp_path))
    sizes = [read_image(s.path).shape[0] * read_image(s.path).shape[1] for s in samples]  # as decoded
    assert sizes == [2000, 1200, 400, 600]
    assert [header_pixels(s.path) for s in samples] == [2000, None, 400, 600]
    # a budget of 2500 pixels: the HDR file alone (its size unknown), then the two small images together
    assert PixelBatches(range(4), [2000, None, 400, 600], 8, 1, 2500).batches == [[0], [1], [2, 3]]
    assert PixelBatches(range(4), [2000, None, 400, 600], 8, 2, 2500).batches == [[0, 1], [2, 3]]  # two at least
    assert PixelBatches(range(4), sizes, 3, 1, 10**9).batches == [[0, 1, 2], [3]]  # at most three
    data = AnomalyDataModule(num_workers=0)
    pre = PreProcessor((64, 64))
    monkeypatch.setattr(datamodule, "BATCH_PIXELS", 2500)
    batches = list(data.loader(samples, pre, resize=False))
    assert [b["index"].tolist() for b in batches] == [[0], [1], [2, 3]]
    assert [[tuple(image.shape) for image in b["image"]] for b in batches][1] == [(3, 30, 40)]
    # no batch (and no error) for a process whose share is empty, or for no images
    assert list(data.loader(samples[:1], pre, resize=False, shard=(1, 2, "none"))) == []
    assert list(data.loader([], pre, resize=False)) == []


def test_jpegs_read_on_several_threads_each_get_their_own_verdict_and_leave_stderr_where_it_was(
    tmp_path: Path,
) -> None:
    """``otx predict`` reads images for its overlays on threads while the main thread reads others: each read
    catches its own libjpeg complaint, and descriptor 2 ends where it was (before: restores out of order left
    it on a deleted temporary file, and the run's error line went nowhere)."""
    from concurrent.futures import ThreadPoolExecutor

    image = cv2.GaussianBlur(np.random.default_rng(2).integers(0, 256, (600, 800, 3), dtype=np.uint8), (5, 5), 0)
    data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    good.write_bytes(data)
    for share in np.linspace(0.5, 0.95, 46):  # a byte of the image data whose flip libjpeg notices
        damaged = bytearray(data)
        damaged[int(len(data) * share)] ^= 0x10
        bad.write_bytes(bytes(damaged))
        try:
            read_image(bad)
        except OTXDataError:
            break
    else:
        pytest.fail("no flipped byte made libjpeg complain")

    def verdict(path: Path) -> str:
        try:
            read_image(path)
        except OTXDataError:
            return "damaged"
        return "read"

    before = os.fstat(2)
    with ThreadPoolExecutor(4) as pool:
        said = list(pool.map(verdict, [good, bad] * 24))
    after = os.fstat(2)
    assert said == ["read", "damaged"] * 24
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)

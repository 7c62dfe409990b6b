"""Tests of the synthetic MVTec-style sample dataset generator."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from otx.data.sample import CATEGORIES, DEFECT_TYPES, _render, make_sample_dataset

SMALL = {"n_train": 5, "n_test_good": 3, "n_test_defect": 4, "image_size": 96}


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    make_sample_dataset(out, **SMALL)
    return out


def test_categories_and_defect_types() -> None:
    assert CATEGORIES == ("bottle_like", "carpet_like", "tile_like")
    assert set(DEFECT_TYPES) == set(CATEGORIES)
    assert all(len(set(defects)) == 2 for defects in DEFECT_TYPES.values())


def test_layout_and_counts(small_dataset: Path) -> None:
    assert _names(small_dataset) == sorted(CATEGORIES)
    for category in CATEGORIES:
        root = small_dataset / category
        defects = DEFECT_TYPES[category]
        assert _names(root) == [".otx-sample", "ground_truth", "test", "train"]  # the marker: its folder to update
        assert _names(root / "train") == ["good"]
        assert _names(root / "test") == sorted(["good", *defects])
        assert _names(root / "ground_truth") == sorted(defects)
        assert _names(root / "train" / "good") == [f"{i:03d}.png" for i in range(SMALL["n_train"])]
        assert _names(root / "test" / "good") == [f"{i:03d}.png" for i in range(SMALL["n_test_good"])]
        for defect in defects:
            n = SMALL["n_test_defect"]
            assert _names(root / "test" / defect) == [f"{i:03d}.png" for i in range(n)]
            assert _names(root / "ground_truth" / defect) == [f"{i:03d}_mask.png" for i in range(n)]


def test_returns_category_roots_in_requested_order(tmp_path: Path) -> None:
    roots = make_sample_dataset(tmp_path, ["tile_like", "bottle_like", "tile_like"], 1, 0, 0, 32)
    assert roots == [tmp_path / "tile_like", tmp_path / "bottle_like"]
    assert _names(tmp_path) == ["bottle_like", "tile_like"]


def test_image_sizes_and_channels(small_dataset: Path) -> None:
    size = SMALL["image_size"]
    for category in CATEGORIES:
        for path in sorted((small_dataset / category).glob("test/*/*.png")) + sorted(
            (small_dataset / category).glob("train/good/*.png")
        ):
            image = _read(path)
            assert image.dtype == np.uint8
            if category == "tile_like":
                assert image.shape == (size, size), path
            else:
                assert image.shape == (size, size, 3), path


def test_normal_images_vary(small_dataset: Path) -> None:
    for category in CATEGORIES:
        images = [_read(p).astype(np.float32) for p in sorted((small_dataset / category / "train" / "good").iterdir())]
        for a, b in zip(images, images[1:], strict=False):
            assert np.abs(a - b).mean() > 2.0, category


def test_masks_match_defects(small_dataset: Path) -> None:
    for category in CATEGORIES:
        for defect in DEFECT_TYPES[category]:
            for image_path in sorted((small_dataset / category / "test" / defect).iterdir()):
                image = _read(image_path).astype(np.float32)
                mask = _read(small_dataset / category / "ground_truth" / defect / f"{image_path.stem}_mask.png")
                assert mask.ndim == 2 and mask.shape == image.shape[:2] and mask.dtype == np.uint8
                assert set(np.unique(mask)) <= {0, 255}
                positive = mask > 0
                assert positive.sum() >= 40, image_path
                pixels = image.reshape(*image.shape[:2], -1)
                median = np.median(pixels, axis=(0, 1))
                deviation = np.abs(pixels - median).mean(axis=-1)
                gap = deviation[positive].mean() - deviation[~positive].mean()
                assert abs(gap) > 15, (image_path, gap)


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("size", [32, 64, 128])
def test_mask_is_exactly_the_changed_pixels(category: str, size: int) -> None:
    for split in (2, 3):
        for index in range(6):
            clean, image, mask = _render(category, split, index, size, 7)
            assert mask is not None
            changed = clean != image if clean.ndim == 2 else (clean != image).any(axis=-1)
            np.testing.assert_array_equal(changed, mask > 0)
            strongest = np.abs(clean.astype(int) - image.astype(int)).reshape(size, size, -1).max(axis=-1)
            assert strongest[mask > 0].min() >= 60


def test_defect_images_derive_from_their_clean_image(small_dataset: Path) -> None:
    for category in CATEGORIES:
        for split, defect in enumerate(DEFECT_TYPES[category], start=2):
            clean, image, mask = _render(category, split, 0, SMALL["image_size"], 0)
            np.testing.assert_array_equal(_read(small_dataset / category / "test" / defect / "000.png"), image)
            np.testing.assert_array_equal(
                _read(small_dataset / category / "ground_truth" / defect / "000_mask.png"), mask
            )


def test_deterministic_and_byte_identical(tmp_path: Path) -> None:
    make_sample_dataset(tmp_path / "a", **SMALL)
    make_sample_dataset(tmp_path / "b", **SMALL)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert files_a == files_b and files_a
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_category_independent_of_selection_and_seed_matters(tmp_path: Path) -> None:
    make_sample_dataset(tmp_path / "all", n_train=2, n_test_good=0, n_test_defect=1, image_size=32)
    make_sample_dataset(tmp_path / "one", ["carpet_like"], n_train=2, n_test_good=0, n_test_defect=1, image_size=32)
    make_sample_dataset(tmp_path / "other", ["carpet_like"], 2, 0, 1, 32, seed=1)
    rel = Path("carpet_like/train/good/001.png")
    assert (tmp_path / "all" / rel).read_bytes() == (tmp_path / "one" / rel).read_bytes()
    assert (tmp_path / "one" / rel).read_bytes() != (tmp_path / "other" / rel).read_bytes()


def test_regenerating_overwrites_in_place(tmp_path: Path) -> None:
    make_sample_dataset(tmp_path, ["bottle_like"], n_train=6, n_test_good=2, n_test_defect=3, image_size=48)
    keep = tmp_path / "bottle_like" / "notes.txt"
    keep.write_text("user file")
    first = {p: p.read_bytes() for p in tmp_path.rglob("*.png")}
    make_sample_dataset(tmp_path, ["bottle_like"], n_train=6, n_test_good=2, n_test_defect=3, image_size=48)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.png")} == first
    make_sample_dataset(tmp_path, ["bottle_like"], n_train=2, n_test_good=2, n_test_defect=1, image_size=48)
    assert _names(tmp_path / "bottle_like" / "train" / "good") == ["000.png", "001.png"]
    assert _names(tmp_path / "bottle_like" / "ground_truth" / "scratch") == ["000_mask.png"]
    assert keep.read_text() == "user file"


@pytest.mark.parametrize("category", ["bottle_like", "strip_like"])
def test_images_named_like_its_own_copied_into_a_sample_folder_are_not_overwritten_or_removed(
    category: str, tmp_path: Path
) -> None:
    # Before: its marker made the folder the generator's, so a user's 100.png there was removed and a
    # 001.png overwritten, exit 0 (bug bash); my_photo.png was left alone and still is.
    from otx.cli import main

    def write() -> None:
        if category == "strip_like":
            from otx.data.strip import make_strip_dataset

            make_strip_dataset(tmp_path / category, height=64, width=128, n_train=2, n_test_good=1, n_test_defect=1)
        else:
            make_sample_dataset(tmp_path, [category], n_train=2, n_test_good=1, n_test_defect=1, image_size=32)

    write()
    good = tmp_path / category / "train" / "good"
    (good / "my_photo.png").write_bytes(b"left alone")
    write()  # updated in place: its own files again, the other one kept
    assert (good / "my_photo.png").read_bytes() == b"left alone"
    for name in ("100.png", "001.png"):  # one it would remove, one it would overwrite
        mine = good / name
        saved = mine.read_bytes() if mine.exists() else None
        mine.write_bytes(b"the user's own image")
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        with pytest.raises(ValueError, match=f"named like the ones otx data make-sample writes.*train/good/{name}"):
            write()
        if category != "strip_like":
            assert main(["data", "make-sample", str(tmp_path), "--categories", f"[{category}]"]) == 1
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing changed
        mine.unlink() if saved is None else mine.write_bytes(saved)
    write()  # its own files as it listed them: updated again


@pytest.mark.parametrize("other_name", [True, False])
@pytest.mark.parametrize("category", ["bottle_like", "strip_like"])
def test_a_folder_it_did_not_write_is_refused_and_left_as_it_was(
    category: str, other_name: bool, tmp_path: Path
) -> None:
    from otx.cli import main

    mine = tmp_path / category / "train" / "good" / "100.png"  # a generated name (MVTec AD's too): it would be removed
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's own image")
    if other_name:  # before, only a name the generator never writes made it refuse
        (mine.parent / "part_17.png").write_bytes(b"another one")
    (tmp_path / "tile_like").mkdir()  # another category, empty: would be written
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="did not write"):
        if category == "strip_like":
            from otx.data.strip import make_strip_dataset

            make_strip_dataset(tmp_path / category)
        else:
            make_sample_dataset(
                tmp_path, ["tile_like", category], n_train=2, n_test_good=0, n_test_defect=1, image_size=32
            )
    assert main(["data", "make-sample", str(tmp_path), "--categories", f"[{category}]"]) == 1
    assert mine.read_bytes() == b"the user's own image"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written anywhere


def test_unknown_category_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Unknown sample category 'wood'"):
        make_sample_dataset(tmp_path, ["bottle_like", "wood"])
    assert not (tmp_path / "bottle_like").exists()


@pytest.mark.parametrize(
    "kwargs", [{"n_train": 0}, {"n_test_defect": -1}, {"image_size": 16}, {"seed": -1}, {"image_size": 64.0}]
)
def test_invalid_arguments_raise(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_sample_dataset(tmp_path, **kwargs)


def test_a_data_root_is_not_filled_with_sample_categories(tmp_path: Path, capsys) -> None:
    from otx.cli import main

    (tmp_path / "train" / "good").mkdir(parents=True)  # a user's data root (before: categories written inside)
    with pytest.raises(ValueError, match=r"is a data root \(it holds train/\)"):
        make_sample_dataset(tmp_path, ["tile_like"], n_train=2, n_test_good=0, n_test_defect=1, image_size=32)
    assert main(["data", "make-sample", str(tmp_path)]) == 1
    assert "is a data root" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]

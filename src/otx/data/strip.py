"""A synthetic long-strip dataset: brushed-metal strips, several times longer than high, with thin defects.

It stands for a line camera's output (e.g. 500x1500 pixels) and shows what the ``resize`` input
mode loses: squashing a strip to a square input narrows a scratch across it below a pixel. Same
MVTec AD layout as ``otx.data.sample`` (``train/good``, ``test/good``, ``test/scratch``,
``test/pit``, ``ground_truth/<defect>/NNN_mask.png``); the same seed gives the same files.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from otx.data.sample import _remove_stale, _write_png, check_own_folder, finish_own_folder, mark_own_folder

DEFECTS = ("scratch", "pit")


def make_strip_dataset(
    out_dir: str | Path,
    height: int = 128,
    width: int = 512,
    n_train: int = 30,
    n_test_good: int = 10,
    n_test_defect: int = 8,
    seed: int = 0,
) -> Path:
    """Write the strip dataset into ``out_dir`` (created if missing) and return it.

    Args:
        out_dir: the dataset's root folder.
        height: strip height in pixels (at least 64).
        width: strip length in pixels (at least ``height``).
        n_train: normal training images.
        n_test_good: normal test images.
        n_test_defect: test images per defect type (thin scratches across the strip; small pits).
        seed: the same seed gives byte-identical files.
    """
    if height < 64 or width < height:
        raise ValueError(f"strips must be at least 64 pixels high and no shorter than high (got {height}x{width})")
    root = Path(out_dir)
    check_own_folder(root)
    mark_own_folder(root)
    splits = [("train/good", None, n_train), ("test/good", None, n_test_good)]
    splits += [(f"test/{defect}", defect, n_test_defect) for defect in DEFECTS]
    for number, (folder, defect, count) in enumerate(splits):
        image_dir = root / folder
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir = root / "ground_truth" / defect if defect else None
        if mask_dir is not None:
            mask_dir.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            rng = np.random.default_rng([seed, number, index])
            image = _strip(rng, height, width)
            if defect is not None and mask_dir is not None:
                mask = _defect_mask(rng, defect, height, width)
                shade = rng.uniform(15, 20)
                image = np.clip(image - shade * (mask > 0)[..., None], 0, 255).astype(np.uint8)
                _write_png(mask_dir / f"{index:03d}_mask.png", mask)
            _write_png(image_dir / f"{index:03d}.png", image)
        _remove_stale(image_dir, {f"{i:03d}.png" for i in range(count)})
        if mask_dir is not None:
            _remove_stale(mask_dir, {f"{i:03d}_mask.png" for i in range(count)})
    finish_own_folder(root)
    return root


def _strip(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Brushed metal: streaks along the strip, fine grain, a slow change of light along it."""
    streaks = cv2.GaussianBlur(rng.normal(0, 1, (height, 1)).astype(np.float32), (1, 5), 0)
    light = np.linspace(0, rng.uniform(-15, 15), width, dtype=np.float32)[None, :]
    gray = 150 + 12 * streaks + light + rng.normal(0, 5, (height, width)).astype(np.float32)
    tint = np.array([1.0, 0.98, 0.95], np.float32)
    return np.clip(gray[..., None] * tint, 0, 255).astype(np.uint8)


def _defect_mask(rng: np.random.Generator, defect: str, height: int, width: int) -> np.ndarray:
    """A uint8 0/255 mask: a 1-pixel scratch across the strip, or a filled pit of radius 2 (5 pixels across)."""
    mask = np.zeros((height, width), np.uint8)
    x = int(rng.integers(width // 10, width - width // 10))
    if defect == "scratch":
        length = int(rng.uniform(0.4, 0.8) * height)
        top = int(rng.integers(4, height - length - 4))
        slant = int(rng.integers(-height // 16, height // 16 + 1))
        cv2.line(mask, (x, top), (x + slant, top + length), 255, thickness=1)
    else:
        y = int(rng.integers(height // 5, height - height // 5))
        cv2.circle(mask, (x, y), 2, 255, thickness=-1)
    return mask

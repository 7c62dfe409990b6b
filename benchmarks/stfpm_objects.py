"""STFPM's recipe on centred objects: every epoch (the recipe since 2026-12-06) against early stopping (before).

Writes two synthetic MVTec-layout datasets of 224x224 colour bottle caps (``cap``: centred, a
missing chunk of the rim or a blue spot; ``cap_shift``: moved up to 40 pixels and turned, a faint
dent or a hue-only spot), then for each trains the STFPM segmentation recipe twice, as it is and
with the early stopping it had until 2026-12-06 (``val/image_AUROC``, patience 4, min_delta 0.001,
beside its best-epoch callback), and tests each run. Prints and writes one JSON row per run: the
epochs trained, the epoch kept, and the test metrics.

Usage::

    OTX_OFFLINE=1 .venv/bin/python benchmarks/stfpm_objects.py --work_dir /tmp/stfpm-objects \\
        --out benchmarks/results/stfpm_objects.jsonl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

BACKGROUND = (200, 205, 210)  # BGR
EARLY_STOPPING = (
    "[{class_path: lightning.pytorch.callbacks.EarlyStopping, init_args: {monitor: val/image_AUROC, mode: max, "
    "patience: 4, min_delta: 0.001}}, {class_path: otx.training.BestEpoch, init_args: {monitor: val/image_AUROC, "
    "mode: max, save_top_k: 1, filename: best}}]"
)


def lighting(rng: np.random.Generator, image: np.ndarray, strength: float) -> np.ndarray:
    """A random gain and gentle gradient over the image, as a camera's lighting varies."""
    height, width = image.shape[:2]
    gain = 1 + rng.uniform(-strength, strength)
    gx, gy = rng.uniform(-strength / 2, strength / 2, 2)
    yy, xx = np.mgrid[0:height, 0:width]
    field = gain + gx * (xx / width - 0.5) + gy * (yy / height - 0.5)
    return np.clip(image.astype(np.float32) * field[..., None], 0, 255).astype(np.uint8)


def cap(rng: np.random.Generator, shift: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A red cap with a ridged rim on a grey background; ``shift``: how far it may move (and it turns)."""
    size = 224
    image = np.full((size, size, 3), BACKGROUND, np.float32) + rng.normal(0, 3, (size, size, 3))
    cx, cy = 112 + int(rng.integers(-shift, shift + 1)), 112 + int(rng.integers(-shift, shift + 1))
    radius = 70 if shift < 10 else 55
    turn = rng.uniform(0, 2 * np.pi) if shift >= 10 else 0.0
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    inside = r < radius
    ridge = 1 + 0.15 * np.sin((np.arctan2(yy - cy, xx - cx) + turn) * 40) * (r > radius - 8)
    shade = 1 - 0.3 * (r / radius) ** 2
    colour = np.array([30, 40, 190], np.float32)
    image[inside] = colour[None] * (shade * ridge)[inside][:, None] + rng.normal(0, 3, (int(inside.sum()), 3))
    if shift < 10:
        cv2.circle(image, (cx, cy), 30, (40, 50, 160), 2)
    else:  # a mark that turns with the cap
        mark = (int(cx + 20 * np.cos(turn)), int(cy + 20 * np.sin(turn)))
        cv2.ellipse(image, mark, (12, 4), float(np.degrees(turn)), 0, 360, (200, 200, 230), -1)
    return lighting(rng, np.clip(image, 0, 255).astype(np.uint8), 0.1 if shift < 10 else 0.15), (cx, cy, radius)


def defect(rng: np.random.Generator, image: np.ndarray, where: tuple[int, int, int], kind: str) -> tuple:
    """``(image, mask)`` with one defect of ``kind`` on the cap."""
    cx, cy, radius = where
    mask = np.zeros(image.shape[:2], np.uint8)
    image = image.copy()
    angle = rng.uniform(0, 2 * np.pi)
    if kind == "missing_chunk":  # a bite out of the rim, background showing
        cv2.circle(
            mask, (int(cx + radius * np.cos(angle)), int(cy + radius * np.sin(angle))), int(rng.integers(14, 24)), 1, -1
        )
        yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
        mask = ((mask > 0) & (np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) < radius)).astype(np.uint8)
        image[mask > 0] = BACKGROUND
        return image, mask
    distance = rng.uniform(10, 50 if kind == "spot" else 40)
    centre = (int(cx + distance * np.cos(angle)), int(cy + distance * np.sin(angle)))
    cv2.circle(mask, centre, int(rng.integers(6, 12)), 1, -1)
    pixels = image.astype(np.float32)
    chosen = mask > 0
    if kind == "spot":  # a blue spot
        pixels[chosen] = pixels[chosen] * 0.4 + np.array([180, 140, 40]) * 0.6
    elif kind == "dent":  # a faint darker patch
        pixels[chosen] *= 0.78
    else:  # hue_spot: more green, less red, about the same brightness
        pixels[chosen, 1] += 45
        pixels[chosen, 2] -= 25
    return np.clip(pixels, 0, 255).astype(np.uint8), mask


def write(root: Path, make: Callable[[], tuple], kinds: list[str], rng: np.random.Generator, counts: tuple) -> None:
    """An MVTec-layout dataset: ``counts`` = (training, good test, defective test) images."""
    train, good, defective = counts
    for split, folder, number in (("train", "good", train), ("test", "good", good)):
        (root / split / folder).mkdir(parents=True, exist_ok=True)
        for index in range(number):
            cv2.imwrite(str(root / split / folder / f"{index:03d}.png"), make()[0])
    for kind in kinds:
        (root / "test" / kind).mkdir(parents=True, exist_ok=True)
        (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
        for index in range(defective // len(kinds)):
            image, mask = defect(rng, *make(), kind)
            cv2.imwrite(str(root / "test" / kind / f"{index:03d}.png"), image)
            cv2.imwrite(str(root / "ground_truth" / kind / f"{index:03d}_mask.png"), mask * 255)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default="/tmp/stfpm-objects")
    parser.add_argument("--out", default="benchmarks/results/stfpm_objects.jsonl")
    args = parser.parse_args()
    work = Path(args.work_dir)
    rng = np.random.default_rng(0)
    datasets = {
        "cap": (lambda: cap(rng, 4), ["missing_chunk", "spot"], (100, 16, 16)),
        "cap_shift": (lambda: cap(rng, 40), ["dent", "hue_spot"], (120, 20, 20)),
    }
    otx = [sys.executable, "-m", "otx.cli"]
    recipe = ["--config", "recipe/anomaly_segmentation/stfpm.yaml", "--data.num_workers", "0"]
    rows = []
    for name, (make, kinds, counts) in datasets.items():
        root = work / "data" / name
        if not root.exists():
            write(root, make, kinds, rng, counts)
        for label, extra in (
            ("every epoch (the recipe)", []),
            ("early stopping, patience 4 (before)", ["--trainer.callbacks", EARLY_STOPPING]),
        ):
            work_dir = work / "ws" / f"{name}-{'stop' if extra else 'all'}"
            common = [*recipe, "--data_root", str(root), "--work_dir", str(work_dir)]
            subprocess.run([*otx, "train", *common, *extra], check=True, capture_output=True)
            subprocess.run([*otx, "test", *common], check=True, capture_output=True)
            trained = json.loads(next(work_dir.glob("*-train/metrics.json")).read_text())
            tested = json.loads(next(work_dir.glob("*-test/metrics.json")).read_text())["metrics"]
            row = {
                "data": name,
                "callbacks": label,
                "epochs": trained["epochs"],
                "kept_epoch": trained["best_epoch"],
                **{key: round(tested[key], 4) for key in ("image_AUROC", "image_F1", "pixel_AUROC", "AUPRO")},
                "train_s": trained["timing_s"].get("fit_s"),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    Path(args.out).write_text("".join(json.dumps(row) + "\n" for row in rows))


if __name__ == "__main__":
    main()

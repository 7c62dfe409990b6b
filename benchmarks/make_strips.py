"""Long strips cut from a real MVTec-layout dataset: the same parts and defects, shaped like a strip camera's.

Every image is cut to a band along its longer side, ``--aspect`` times as long as it is thick
(thinner images keep their whole short side), turned so that the band lies horizontally, and
written with its mask in the same layout (``train/good``, ``test/<type>``,
``ground_truth/<type>/<name>_mask.png``). A defective image's band is centred on its mask's
centre of mass, a normal image's at a position drawn from ``--seed``; a defective image whose band
holds no mask pixel is left out. Used to compare the input modes on real textures of a long
shape (``docs/input-modes.md``, "input_mode auto")::

    .venv/bin/python benchmarks/make_strips.py --src ../shared/data/magnetic_tile --dst /tmp/mt_strips
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def band(length: int, thickness: int, centre: float) -> tuple[int, int]:
    """Start and end of a ``thickness`` band centred on ``centre`` within ``[0, length)``."""
    start = int(round(centre - thickness / 2))
    start = min(max(0, start), length - thickness)
    return start, start + thickness


def cut(image: np.ndarray, mask: np.ndarray | None, aspect: float, rng: np.random.Generator) -> tuple:
    """The image's band (and its mask's), horizontal."""
    height, width = image.shape[:2]
    if height > width:  # portrait: a vertical band, turned to lie horizontally below
        image = np.ascontiguousarray(np.rot90(image))
        mask = None if mask is None else np.ascontiguousarray(np.rot90(mask))
        height, width = width, height
    thickness = min(height, max(8, int(round(width / aspect))))
    if mask is not None and mask.any():
        centre = float(np.nonzero(mask)[0].mean())
    else:
        centre = rng.uniform(thickness / 2, height - thickness / 2)
    top, bottom = band(height, thickness, centre)
    return image[top:bottom], None if mask is None else mask[top:bottom]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="a dataset in MVTec AD layout")
    parser.add_argument("--dst", required=True)
    parser.add_argument("--aspect", type=float, default=3.0, help="length / thickness of the bands")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    src, dst = Path(args.src), Path(args.dst)
    rng = np.random.default_rng(args.seed)
    counts: dict[str, int] = {}
    dropped = 0
    images = (p for p in src.glob("*/*/*") if p.suffix.lower() in EXTENSIONS and p.parts[-3] != "ground_truth")
    for path in sorted(images):
        split, kind = path.parts[-3], path.parts[-2]
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        mask_path = src / "ground_truth" / kind / f"{path.stem}_mask.png"
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) if split == "test" and kind != "good" else None
        strip, strip_mask = cut(image, mask, args.aspect, rng)
        if mask is not None and not strip_mask.any():
            dropped += 1
            continue
        out = dst / split / kind / path.name
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), strip)
        if strip_mask is not None:
            (dst / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(dst / "ground_truth" / kind / f"{path.stem}_mask.png"), strip_mask)
        counts[f"{split}/{kind}"] = counts.get(f"{split}/{kind}", 0) + 1
    print(json.dumps({"written": counts, "defective_left_out": dropped}), file=sys.stderr)


if __name__ == "__main__":
    main()

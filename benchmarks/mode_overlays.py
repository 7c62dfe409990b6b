"""One image under each input mode: ``otx predict`` overlays of models trained in each mode, stacked.

Runs ``otx predict`` on ``--image`` with the latest training run of each work dir (as written by
``benchmarks/input_modes.py``), draws the ground-truth outline (green) on each overlay, titles it
with the mode and writes the stack as one PNG (for ``docs/input-modes.md``).

Usage::

    .venv/bin/python benchmarks/mode_overlays.py --image IMAGE --mask MASK \\
        --runs resize=/tmp/otx-modes/padim_resize keep_aspect=/tmp/otx-modes/padim_keep_aspect \\
        --out docs/images/input_modes_crack.jpg
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True)
    parser.add_argument("--mask", required=True)
    parser.add_argument("--runs", nargs="+", required=True, help="MODE=WORK_DIR pairs")
    parser.add_argument("--config", default="recipe/anomaly_detection/padim.yaml")
    parser.add_argument("--width", type=int, default=600)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    mask = cv2.imread(args.mask, cv2.IMREAD_GRAYSCALE) > 0
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    panels = []
    for pair in args.runs:
        mode, work_dir = pair.split("=", 1)
        cmd = [sys.executable, "-m", "otx.cli", "predict", "--config", args.config, "--work_dir", work_dir]
        subprocess.run([*cmd, "--source", args.image, "--data.num_workers", "0"], check=True, capture_output=True)
        run = sorted(Path(work_dir).glob("*-predict"))[-1]
        panel = cv2.imread(str(run / "predictions" / "overlays" / Path(args.image).name))
        cv2.drawContours(panel, contours, -1, (0, 255, 0), 1, lineType=cv2.LINE_AA)
        scale = args.width / panel.shape[1]
        panel = cv2.resize(panel, (args.width, round(panel.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        title = np.zeros((26, args.width, 3), np.uint8)
        cv2.putText(title, mode, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
        panels.append(np.vstack([title, panel]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), np.vstack(panels), [cv2.IMWRITE_JPEG_QUALITY, 82])
    print(out)


if __name__ == "__main__":
    main()

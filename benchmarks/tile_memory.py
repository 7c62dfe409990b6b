"""Peak memory of ``otx predict`` on a 4000x3000 image in the ``tile`` mode (PADIM by default), and of train and export.

Writes a small synthetic dataset of 3000x4000 (height x width; ``--height``, ``--width``) brushed-metal images
(``otx.data.strip``), trains PADIM with ``input_mode tile``, ``input_size [3000,4000]`` and
256-pixel tiles (12 x 16 = 192 tiles per image), predicts one image, exports the FP32 IR and predicts
the image with it (all of an image's tiles in one batch). Each command runs in its
own process with ``--data.num_workers 0`` (so its peak resident memory is all the memory it uses)
and is timed around.

Usage::

    .venv/bin/python benchmarks/tile_memory.py --work_dir /tmp/otx-tile-memory \\
        --out benchmarks/results/tile_memory.json
    # another image size (images and input alike):
    .venv/bin/python benchmarks/tile_memory.py --work_dir /tmp/otx-tile-memory-3mp --height 1500 --width 2000 \\
        --out /tmp/tile_memory_3mp.json
    # a model trained with gradients, its training alone, one epoch:
    .venv/bin/python benchmarks/tile_memory.py --work_dir /tmp/otx-tile-memory-stfpm --train_only \\
        --recipe recipe/anomaly_segmentation/stfpm.yaml --out /tmp/stfpm.json --trainer.max_epochs 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from otx.data.strip import make_strip_dataset

sys.path.insert(0, str(Path(__file__).parent))
from run_recipes import run  # noqa: E402 - the same subprocess timing as the recipe benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default="/tmp/otx-tile-memory")
    parser.add_argument("--tile_size", type=int, default=256)
    parser.add_argument("--height", type=int, default=3000, help="of the images and the model's input")
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument(
        "--recipe", default="recipe/anomaly_segmentation/padim.yaml", help="(other arguments: to otx train)"
    )
    parser.add_argument("--train_only", action="store_true", help="measure otx train alone")
    parser.add_argument("--out", default="benchmarks/results/tile_memory.json")
    args, args.train_args = parser.parse_known_args()  # the rest goes to otx train (e.g. --trainer.max_epochs 1)

    work = Path(args.work_dir)
    data = make_strip_dataset(
        work / "data", height=args.height, width=args.width, n_train=4, n_test_good=2, n_test_defect=1
    )
    otx = [sys.executable, "-m", "otx.cli"]
    common = ["--data_root", str(data), "--work_dir", str(work / "ws"), "--data.num_workers", "0"]
    model = [
        "--model.init_args.input_mode",
        "tile",
        "--model.init_args.input_size",
        f"[{args.height},{args.width}]",
        "--model.init_args.tile_size",
        str(args.tile_size),
    ]
    train_s, train_mb = run([*otx, "train", "--config", args.recipe, *common, *model, *args.train_args])
    result = {
        "recipe": args.recipe,
        "train_args": args.train_args,
        "image": f"{args.height}x{args.width} (height x width)",
        "tile_size": args.tile_size,
        "tiles_per_image": (-(-args.height // args.tile_size)) * (-(-args.width // args.tile_size)),
        "train_s": round(train_s, 1),
        "train_peak_mb": round(train_mb),
    }
    if not args.train_only:
        result.update(predict_export_and_ir(otx, common, data, work, args.recipe))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def predict_export_and_ir(otx: list[str], common: list[str], data: Path, work: Path, recipe: str) -> dict:
    """``otx predict`` of one image from the checkpoint, ``otx export``, and ``otx predict`` of it with the IR."""
    image = sorted((data / "test" / "scratch").glob("*.png"))[0]
    predict_s, predict_mb = run([*otx, "predict", "--config", recipe, *common, "--source", str(image)])
    export_s, export_mb = run([*otx, "export", *common])
    ir = sorted((work / "ws").glob("*-export/exported_model.xml"))[-1]
    ir_s, ir_mb = run([*otx, "predict", "--checkpoint", str(ir), *common, "--source", str(image), "--device", "CPU"])
    return {
        "predict_s": round(predict_s, 1),
        "predict_peak_mb": round(predict_mb),
        "export_s": round(export_s, 1),
        "export_peak_mb": round(export_mb),
        "ir_predict_s": round(ir_s, 1),
        "ir_predict_peak_mb": round(ir_mb),
    }


if __name__ == "__main__":
    main()

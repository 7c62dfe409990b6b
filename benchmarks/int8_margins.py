"""How far INT8 keeps the validation images from the threshold, per model (``otx optimize``'s margin check).

Trains each model on a category, exports it, quantises it with its scheme and prints the decisions
table's ``image_margin_anomalous`` / ``image_margin_normal`` for FP32 and INT8, the share INT8
keeps and whether ``otx optimize`` warned of a squeeze (``docs/deploy.md``, "Squeezed onto the
threshold"):

    OTX_OFFLINE=1 .venv/bin/python benchmarks/int8_margins.py --data_root otx-demo/data \\
        --categories bottle_like carpet_like tile_like --models Padim Patchcore Stfpm Patchflow \\
        --work_dir /tmp/otx-margins --out margins.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from otx.data import AnomalyDataModule
from otx.engine import Engine
from otx.models import model_class

KEYS = ("image_margin_anomalous", "image_margin_normal")


def margins(root: Path, name: str, work_dir: Path, size: int) -> dict[str, Any]:
    """Train, export and optimize ``name`` on ``root``; the FP32 and INT8 margins and the squeeze warning."""
    data = AnomalyDataModule(str(root), num_workers=0)
    engine = Engine(model=model_class(name)(input_size=(size, size)), data=data, work_dir=work_dir)
    exported = engine.export(engine.train()["checkpoint"])["exported_model"]
    summary = engine.optimize(checkpoint=exported)
    table = summary["decisions"]["table"]
    warned = any("squeezes" in warning for warning in summary.warnings)
    row: dict[str, Any] = {"scheme": summary["scheme"], "squeeze_warned": warned}
    for key in KEYS:
        fp32, int8 = table["fp32"].get(key), table["candidate"].get(key)
        row[key] = {"fp32": fp32, "int8": int8, "kept": int8 / fp32 if fp32 and int8 is not None else None}
    return row


def main() -> None:
    """Parse the arguments, run every model on every category, print and write the margins."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", type=Path, required=True, help="folder holding the MVTec-style categories")
    parser.add_argument("--categories", nargs="+", required=True)
    parser.add_argument("--models", nargs="+", default=["Padim", "Patchcore", "Stfpm", "Patchflow"])
    parser.add_argument("--input_size", type=int, default=128)
    parser.add_argument("--work_dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = {}
    for category in args.categories:
        for name in args.models:
            row = margins(args.data_root / category, name, args.work_dir / f"{category}_{name}", args.input_size)
            results[f"{category}/{name}"] = row
            warned = row["squeeze_warned"]
            shares = ", ".join(
                f"{key.split('_')[-1]} {row[key]['fp32']:.3f} -> {row[key]['int8']:.3f}"
                for key in KEYS
                if row[key]["fp32"] is not None
            )
            print(f"{category:<14} {name:<10} {row['scheme']:<22} {shares}  warned: {warned}", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

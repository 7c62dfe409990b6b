"""Of epochs tied at the best score, Lightning keeps the first, ``otx.training.BestEpoch`` the latest.

For each data root and model the segmentation recipe is trained twice, once as shipped
(``otx.training.BestEpoch``) and once with its checkpoint callback replaced by Lightning's
``ModelCheckpoint`` (a copy of the recipe in ``--work_dir``), then tested. One JSON line per run:
the validation curve of image AUROC, the epoch kept and the test metrics. Small validation splits
of clean data reach image AUROC 1.0 in several epochs, where the two rules keep different ones.

    OTX_OFFLINE=1 .venv/bin/python benchmarks/best_epoch_ties.py --data_roots /tmp/sets/big_jpg /tmp/sets/tiny \\
        --models patchflow stfpm --work_dir /tmp/ties --out benchmarks/results/best_epoch_ties.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from otx.cli import main as otx

RECIPES = Path(__file__).resolve().parents[1] / "src" / "otx" / "recipes" / "anomaly_segmentation"
LIGHTNING = "lightning.pytorch.callbacks.ModelCheckpoint"
METRICS = ("image_AUROC", "image_F1", "pixel_AUROC", "AUPRO", "pixel_F1")


def run(recipe: Path, data_root: Path, work_dir: Path) -> dict:
    """Train and test one recipe; the kept epoch, the validation curve and the test metrics."""
    assert otx(["train", "--config", str(recipe), "--data_root", str(data_root), "--work_dir", str(work_dir)]) == 0
    assert otx(["test", "--work_dir", str(work_dir), "--data_root", str(data_root)]) == 0
    train = json.loads((sorted(work_dir.glob("*-train"))[-1] / "metrics.json").read_text())
    test = json.loads((sorted(work_dir.glob("*-test"))[-1] / "metrics.json").read_text())["metrics"]
    return {
        "kept_epoch": train["best_epoch"],
        "val_image_AUROC": [row["image_AUROC"] for row in train["validation_curve"]],
        **{key: round(test[key], 4) for key in METRICS},
    }


def main() -> None:
    """Both rules on every data root and model; print and append JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_roots", type=Path, nargs="+", required=True)
    parser.add_argument("--models", nargs="+", default=["patchflow", "stfpm"])
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/best_epoch_ties"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    for model in args.models:
        shipped = RECIPES / f"{model}.yaml"
        first = args.work_dir / f"{model}_lightning.yaml"
        first.write_text(shipped.read_text().replace("otx.training.BestEpoch", LIGHTNING))
        for root in args.data_roots:
            for rule, recipe in (("first of a tie (Lightning)", first), ("latest of a tie (BestEpoch)", shipped)):
                row = {"model": model, "data": root.name, "rule": rule}
                name = f"{model}_{root.name}_{'first' if recipe == first else 'latest'}"
                row.update(run(recipe, root, args.work_dir / name))
                print(json.dumps(row), flush=True)
                if args.out:
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

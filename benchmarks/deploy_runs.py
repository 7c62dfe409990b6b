"""Export, quantise and test trained runs: FP32 and INT8 IR figures, label agreement and throughput.

For each ``--work_dirs`` folder (an ``otx train`` work_dir, its newest training run is used):
``otx export``, ``otx optimize``, ``otx test`` of both IRs at f32, ``otx benchmark`` (``run_recipes.deploy``,
the steps of ``run_recipes.py --deploy`` without training again)::

    OTX_OFFLINE=1 .venv/bin/python benchmarks/deploy_runs.py --data_root /tmp/mt_strips \\
        --work_dirs /tmp/am/w/padim_auto /tmp/am/w/patchcore_auto --out benchmarks/results/deploy_runs.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from run_recipes import deploy  # noqa: E402 - the recipe benchmark's export / optimize / test / benchmark steps

SHOWN = ("image_AUROC", "image_F1", "pixel_AUROC", "pixel_F1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--work_dirs", nargs="+", required=True)
    parser.add_argument("--out", default="benchmarks/results/deploy_runs.json")
    args = parser.parse_args()
    otx = [sys.executable, "-m", "otx.cli"]
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.exists() else {}
    for work_dir in args.work_dirs:
        row = deploy(otx, Path(work_dir), args.data_root)
        rows[work_dir] = row
        shown = {ir: {m: round(row[ir][m], 4) for m in SHOWN if m in row[ir]} for ir in ("fp32_ir", "int8_ir")}
        print(work_dir, row["int8_labels_equal"], row["int8_labels_differ"], shown, file=sys.stderr, flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

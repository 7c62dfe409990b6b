"""Wall time and peak memory of ``otx predict`` over a folder with an exported model, alternated between checkouts.

Runs ``otx predict --checkpoint <IR> --source <folder> --device CPU`` in a fresh process, once with
this checkout's ``src`` and once with ``--before_src`` (another checkout's ``src``), in turn,
``--repeats`` times, and prints the medians and their ratios. Made for the parallel requests of a
tiled model of large images: how many requests run, and how many images a batch hands them.

Usage (a tiled 3000x4000 PADIM from ``benchmarks/tile_memory.py``, its images copied to one folder)::

    git worktree add /tmp/oldtree <rev>
    .venv/bin/python benchmarks/ir_folder_predict.py --ir /tmp/otx-tm/ws/<run>-export/exported_model.xml \\
        --source /tmp/otx-tm/folder --before_src /tmp/oldtree/src --out benchmarks/results/ir_folder_predict.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def run_once(src: Path, ir: Path, source: Path, work_dir: Path) -> dict[str, float]:
    """One ``otx predict`` with ``src`` first on the path: wall seconds and peak resident MB (its workers too)."""
    env = {**os.environ, "PYTHONPATH": str(src), "OTX_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "otx.cli", "predict", "--checkpoint", str(ir), "--source", str(source)]
    cmd += ["--device", "CPU", "--work_dir", str(work_dir)]
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            sys.exit(f"failed: {' '.join(cmd)}\n{err.read().decode()[-2000:]}")
    return {"wall_s": elapsed, "peak_mb": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ir", type=Path, required=True)
    parser.add_argument("--source", type=Path, required=True, help="a folder of images")
    parser.add_argument("--before_src", type=Path, help="another checkout's src, run in turn with this one's")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/otx-ir-folder"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    sources = {"this": SRC, **({"before": args.before_src.resolve()} if args.before_src else {})}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in sources}
    for repeat in range(args.repeats):
        for name, src in sources.items():
            runs[name].append(run_once(src, args.ir, args.source, args.work_dir))
            print(f"{repeat + 1}/{args.repeats} {name}: {runs[name][-1]}", flush=True)
    result: dict = {
        "ir": str(args.ir),
        "images": len([p for p in args.source.iterdir() if p.is_file()]),
        "cpu_count": os.cpu_count(),
        "runs": runs,
    }
    for name, done in runs.items():
        result[name] = {key: round(statistics.median(r[key] for r in done), 1) for key in ("wall_s", "peak_mb")}
    if "before" in result:
        result["ratio_this_over_before"] = {
            key: round(result["this"][key] / result["before"][key], 3) for key in ("wall_s", "peak_mb")
        }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

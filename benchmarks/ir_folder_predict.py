"""Wall time and peak memory of ``otx predict`` (or ``otx test``) with an exported model, alternated between checkouts.

Runs ``otx predict --checkpoint <IR> --source <folder> --device CPU`` in a fresh process, once with
this checkout's ``src`` and once with ``--before_src`` (another checkout's ``src``), in turn,
``--repeats`` times, and prints the medians and their ratios. Made for the parallel requests of a
tiled model of large images: how many requests run, and how many images a batch hands them.

Usage (a tiled 3000x4000 PADIM from ``benchmarks/tile_memory.py``, its images copied to one folder)::

    git worktree add /tmp/oldtree <rev>
    .venv/bin/python benchmarks/ir_folder_predict.py --ir /tmp/otx-tm/ws/<run>-export/exported_model.xml \\
        --source /tmp/otx-tm/folder --before_src /tmp/oldtree/src --out benchmarks/results/ir_folder_predict.json

Large photos through a small model (``make demo``'s 256x256 PADIM export; ``--make 64`` first writes
64 JPEG photos of ``--height`` x ``--width``, the sample data's test images enlarged with noise, into
an empty ``--source``)::

    .venv/bin/python benchmarks/ir_folder_predict.py --ir otx-demo/workspace/<run>-export/exported_model.xml \\
        --source /tmp/photos --make 64 --before_src /tmp/oldtree/src

``--verb test`` runs ``otx test --data_root <source>`` instead (with ``--make``: the sample data's
``bottle_like`` category at ``--height`` x ``--width``, 12 training images, 28 test images and masks).
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
KEYS = ("wall_s", "peak_mb", "tree_pss_mb")


def tree_pss(pid: int) -> int:
    """Proportional set size of a process and its children (loading workers), bytes; 0 once it is gone."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_full_info().pss  # (shared batches counted once between the processes)
        except psutil.Error:
            continue
    return total


def run_once(
    src: Path, ir: Path, source: Path, work_dir: Path, extra: list[str], verb: str = "predict"
) -> dict[str, float]:
    """One ``otx predict`` with ``src`` first on the path: wall seconds, the largest process's peak
    resident MB, and the peak summed PSS of the process and its loading workers (sampled every 0.1 s)."""
    env = {**os.environ, "PYTHONPATH": str(src), "OTX_OFFLINE": "1"}
    where = ["--source", str(source)] if verb == "predict" else ["--data_root", str(source)]
    cmd = [sys.executable, "-m", "otx.cli", verb, "--checkpoint", str(ir), *where]
    cmd += ["--device", "CPU", "--work_dir", str(work_dir), *extra]
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        tree_peak = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            tree_peak = max(tree_peak, tree_pss(proc.pid))
            time.sleep(0.1)
        elapsed = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            sys.exit(f"failed: {' '.join(cmd)}\n{err.read().decode()[-2000:]}")
    return {"wall_s": elapsed, "peak_mb": usage.ru_maxrss / 1024, "tree_pss_mb": tree_peak / 2**20}


def make_photos(folder: Path, count: int, height: int, width: int) -> None:
    """``count`` JPEG photos of ``height`` x ``width``: the sample data's test images enlarged, with noise."""
    import cv2
    import numpy as np

    from otx.data.sample import make_sample_dataset

    with tempfile.TemporaryDirectory() as tmp:
        make_sample_dataset(Path(tmp))
        sources = sorted((Path(tmp) / "bottle_like" / "test").rglob("*.png"))
        rng = np.random.default_rng(0)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = cv2.imread(str(sources[i % len(sources)]))
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
            image = np.clip(image.astype(np.int16) + rng.integers(-6, 7, image.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / f"photo_{i:03d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])


def make_root(root: Path, height: int, width: int, train: int = 12) -> None:
    """The sample data's ``bottle_like`` category at ``height`` x ``width`` (its first ``train`` training images)."""
    import cv2
    import numpy as np

    from otx.data.sample import make_sample_dataset

    with tempfile.TemporaryDirectory() as tmp:
        make_sample_dataset(Path(tmp))
        category = Path(tmp) / "bottle_like"
        rng = np.random.default_rng(0)
        for path in sorted(category.rglob("*.png")):
            relative = path.relative_to(category)
            if relative.parts[0] == "train" and sorted(path.parent.iterdir()).index(path) >= train:
                continue
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            if relative.parts[0] == "ground_truth":
                mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
                cv2.imwrite(str(root / relative), cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST))
                continue
            image = cv2.resize(cv2.imread(str(path)), (width, height), interpolation=cv2.INTER_CUBIC)
            image = np.clip(image.astype(np.int16) + rng.integers(-6, 7, image.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / relative), image, [cv2.IMWRITE_PNG_COMPRESSION, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ir", type=Path, required=True)
    parser.add_argument("--source", type=Path, required=True, help="a folder of images")
    parser.add_argument("--before_src", type=Path, help="another checkout's src, run in turn with this one's")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/otx-ir-folder"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--visualize", default="true", help="otx predict's --visualize (false: no overlays)")
    parser.add_argument(
        "--verb", choices=("predict", "test"), default="predict", help="test: otx test with --data_root <source>"
    )
    parser.add_argument("--make", type=int, default=0, help="first write this many photos into an empty --source")
    parser.add_argument("--height", type=int, default=3000, help="the photos' height (--make)")
    parser.add_argument("--width", type=int, default=4000, help="the photos' width (--make)")
    args = parser.parse_args()
    if args.make:
        if args.source.exists() and any(args.source.iterdir()):
            sys.exit(f"--make writes into an empty --source; {args.source} has files")
        if args.verb == "test":  # a data root: the sample category enlarged (--make: any count)
            make_root(args.source, args.height, args.width)
        else:
            make_photos(args.source, args.make, args.height, args.width)

    sources = {"this": SRC, **({"before": args.before_src.resolve()} if args.before_src else {})}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in sources}
    for repeat in range(args.repeats):
        for name, src in sources.items():
            extra = ["--visualize", args.visualize] if args.verb == "predict" else []
            runs[name].append(run_once(src, args.ir, args.source, args.work_dir, extra, args.verb))
            print(f"{repeat + 1}/{args.repeats} {name}: {runs[name][-1]}", flush=True)
    images_in = args.source / "test" if args.verb == "test" else args.source
    result: dict = {
        "ir": str(args.ir),
        "images": len([p for p in images_in.rglob("*") if p.is_file()]),
        "verb": args.verb,
        "visualize": args.visualize,
        "cpu_count": os.cpu_count(),
        "runs": runs,
    }
    for name, done in runs.items():
        result[name] = {key: round(statistics.median(r[key] for r in done), 1) for key in KEYS}
    if "before" in result:
        result["ratio_this_over_before"] = {key: round(result["this"][key] / result["before"][key], 3) for key in KEYS}
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Time and peak memory of one tiled training step (forward and backward) of a large image.

STFPM and PatchFlow train with gradients; in the ``tile`` mode a step of a large image runs in
chunks under activation checkpointing (``AnomalyModel.training_loss``). Each step runs in a fresh
process (its peak resident set is the step's), on one random 3008x4000 image in 256-pixel tiles
(192 tiles) by default, untrained weights. With ``--before_src`` (the ``src`` folder of another
checkout, e.g. ``git worktree add /tmp/old <rev>``) the same step of that code runs alternately
with this checkout's, and with ``--whole`` this checkout's step with all tiles at once (no chunks,
``TRAIN_CHUNK_PIXELS`` unbounded: gigabytes); the medians and their ratios to this checkout's are
printed and written as JSON:

    .venv/bin/python benchmarks/tile_train_step.py --models stfpm patchflow --repeats 3 \\
        --before_src /tmp/old/src --whole --out benchmarks/results/tile_train_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parent.parent / "src"


def one_step(model: str, height: int, width: int, tile_size: int, whole: bool) -> dict[str, Any]:
    """One ``training_step`` and ``backward`` in this process: its loss, seconds and peak resident MB."""
    import torch

    import otx
    import otx._torchvision_fix  # noqa: F401 - the registry's torchvision on a CPU torch
    import otx.models.base
    from otx.models import Patchflow, Stfpm

    if whole:
        otx.models.base.TRAIN_CHUNK_PIXELS = 2**62  # every tile of the step at once

    torch.manual_seed(0)
    net = {"stfpm": Stfpm, "patchflow": Patchflow}[model](
        input_size=[height, width], input_mode="tile", tile_size=tile_size, pretrained=False
    )
    net.train()
    for frozen in net.pretrained_modules():  # as in a fit: the frozen backbones stay in eval mode
        frozen.eval()
    net.log_train_loss = lambda loss, images: None  # (no Trainer to log to)
    images = torch.rand(1, 3, height, width)
    start = time.perf_counter()
    loss = net.training_step({"image": images}, 0)
    loss.backward()
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"loss": float(loss), "step_s": round(seconds, 2), "peak_mb": round(peak_mb), "otx": otx.__file__}


def run_child(src: Path, model: str, args: argparse.Namespace, whole: bool = False) -> dict[str, Any]:
    """``one_step`` in a fresh process importing otx from ``src``."""
    command = [sys.executable, __file__, "--child", model, "--height", str(args.height), "--width", str(args.width)]
    command += ["--tile_size", str(args.tile_size), *(["--whole"] if whole else [])]
    env = {**os.environ, "PYTHONPATH": str(src), "OTX_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(result.pop("otx")).is_relative_to(src):  # (an editable install elsewhere would answer silently)
        raise SystemExit(f"the step ran another otx than the one in {src}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["stfpm", "patchflow"], choices=["stfpm", "patchflow"])
    parser.add_argument("--height", type=int, default=3008)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--tile_size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before_src", type=Path, help="another checkout's src, timed alternately with this one's")
    parser.add_argument("--whole", action="store_true", help="also this checkout's step with all tiles at once")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_step(args.child, args.height, args.width, args.tile_size, args.whole)))
        return
    sources = {"this": SRC, **({"before": args.before_src.resolve()} if args.before_src else {})}
    if args.whole:
        sources["whole"] = SRC
    runs: dict[str, dict[str, list[dict[str, float]]]] = {m: {name: [] for name in sources} for m in args.models}
    for repeat in range(args.repeats):
        for model in args.models:
            order = list(sources) if repeat % 2 == 0 else list(reversed(sources))
            for name in order:
                runs[model][name].append(run_child(sources[name], model, args, whole=name == "whole"))
                print(f"{model} {name} #{repeat + 1}: {runs[model][name][-1]}", flush=True)
    result = {"image": f"{args.height}x{args.width}", "tile_size": args.tile_size, "models": {}}
    for model, by_source in runs.items():
        medians = {
            name: {key: statistics.median(r[key] for r in rs) for key in ("step_s", "peak_mb")}
            for name, rs in by_source.items()
        }
        entry = {"runs": by_source, "medians": medians}
        for other in ("before", "whole"):
            if other in medians:
                entry[f"this_over_{other}"] = {
                    key: round(medians["this"][key] / medians[other][key], 3) for key in ("step_s", "peak_mb")
                }
        result["models"][model] = entry
        print(f"{model}: {json.dumps({k: v for k, v in entry.items() if k != 'runs'})}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""INT8 against FP32, and otx's INT8 against anomalib 2.7's INT8_PTQ, on one dataset, in one run.

For PADIM and STFPM (EfficientNet-Lite0, 256x256, the segmentation recipes' settings), and for
PatchCore and PatchFlow from a given checkpoint (``--patchcore_ckpt``, ``--patchflow_ckpt``; with
``--no_anomalib`` for PatchFlow, whose anomalib twin this script does not build):

1. otx trains the model once (or takes ``--padim_ckpt`` / ``--stfpm_ckpt``).
2. For each task, otx exports the FP32 IR, ``otx optimize`` quantises it (default settings: 300
   train/good images, the model's scheme, and its fallback where that one moves the validation
   decisions: what a user gets; ``optimize.scheme`` and ``optimize.attempts`` in each row say which),
   and ``otx test`` evaluates both on the test split.
3. Throughput and latency of both IRs (``otx.deploy.benchmark``: the test images at their own
   sizes, CPU, f32 inference precision, batch 1, the device's optimal number of parallel requests;
   FP32 and INT8 alternate pass by pass, medians of ``--repeats`` passes).
4. anomalib 2.7 gets the *same trained weights*: its Lightning model is built with the same
   backbone, layers, channel selection and pre-processing (``compare_anomalib.build_anomalib_model``),
   the trained state dict is loaded into it, anomalib's validation pass fits its own thresholds on
   the same validation split, and anomalib exports an FP32 IR and an ``INT8_PTQ`` IR (anomalib
   calibrates on its validation loader). Both are evaluated on the same test images (image AUROC
   from ``pred_score``, pixel AUROC from ``anomaly_map`` against the masks at 256x256) through
   anomalib's inferencer, once on the images as they are and once on images pre-resized with the
   training pipeline's resize (anomalib's IR resizes without antialiasing).
5. Head to head: otx's FP32 and INT8 segmentation IRs and anomalib's two IRs are timed in one
   loop, one pass of each per repeat in alternating order (the same timing for all four: fresh
   compilation, latency pass, throughput pass, each IR on its own pre-processed inputs), so that
   the machine's slow phases hit all of them alike.

Usage::

    .venv/bin/python benchmarks/optimize_int8.py --data_root ../shared/data/magnetic_tile \
        --work_dir /tmp/otx-int8 --stfpm_epochs 10 --repeats 5 --out benchmarks/results/optimize_int8.json
"""

from __future__ import annotations

# ruff: noqa: E402 - warnings are silenced before the noisy imports below.
import warnings

warnings.filterwarnings("ignore")

import argparse
import json
import logging
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
import compare_anomalib as cmp  # noqa: I001 - the sibling benchmark builds anomalib's identical models

from anomalib.deploy import CompressionType, ExportType
from anomalib.deploy import OpenVINOInferencer as AnomalibInferencer
from anomalib.engine import Engine as AnomalibEngine

from otx.data import AnomalyDataModule
from otx.data.datamodule import resize_image, resize_mask
from otx.data.io import read_image, read_mask
from otx.deploy.benchmark import benchmark_openvino, latency_pass, percentile_ms, throughput_passes
from otx.checkpoint import load_checkpoint
from otx.engine import Engine
from otx.metrics import roc_auc

TASKS = ("classification", "detection", "segmentation")
METRICS = ("image_AUROC", "pixel_AUROC", "image_F1", "pixel_F1", "AUPRO", "box_AP")
QUIET = Console(stderr=True, quiet=True)


def settings(args: argparse.Namespace) -> cmp.Settings:
    return cmp.split_settings(args.data_root, args.work_dir, args.stfpm_epochs)


def engine(args: argparse.Namespace, name: str, task: str, model: Any = None) -> Engine:
    data = AnomalyDataModule(str(args.data_root), batch_size=16, num_workers=2)
    return Engine(model=model, data=data, task=task, work_dir=args.work_dir / name, console=QUIET, device="CPU")


def train_otx(name: str, s: cmp.Settings, args: argparse.Namespace) -> Path:
    given = getattr(args, f"{name}_ckpt")
    if given:
        return Path(given)
    if name == "patchflow":  # trained by its recipe (five epochs, the best validation epoch kept)
        raise SystemExit("patchflow: pass --patchflow_ckpt (the model.ckpt of `otx train --config .../patchflow.yaml`)")
    start = time.perf_counter()
    e = engine(args, name, "segmentation", cmp.build_otx_model(name, s))
    e.max_epochs = s.epochs(name)
    checkpoint = Path(e.train()["checkpoint"])
    print(f"{name}: otx trained in {time.perf_counter() - start:.0f} s ({s.epochs(name)} epochs)", flush=True)
    return checkpoint


def test_images(s: cmp.Settings) -> tuple[list[Any], list[Any]]:
    _, test = cmp.otx_split(s)
    return [read_image(x.path) for x in test], test


def anomalib_exports(name: str, checkpoint: Path, s: cmp.Settings, args: argparse.Namespace) -> dict[str, Path]:
    """anomalib's FP32 and INT8_PTQ IRs of the same trained weights."""
    root = args.work_dir / name / "anomalib"
    done = {kind: root / kind / "weights" / "openvino" / "model.xml" for kind in ("fp32", "int8_ptq")}
    if all(p.is_file() for p in done.values()):
        return done
    trained, _ = load_checkpoint(checkpoint)
    theirs = cmp.build_anomalib_model(name, s, layers=list(trained.layers))  # the checkpoint's layers
    theirs.model.load_state_dict(trained.model.state_dict(), strict=True)
    if hasattr(theirs, "_is_fitted"):  # PADIM: the Gaussian is in the loaded state; do not refit on validation
        theirs._is_fitted = torch.tensor([True])
    datamodule = cmp._anomalib_datamodule(s)
    ae = AnomalibEngine(accelerator="cpu", devices=1, logger=False, default_root_dir=root, enable_progress_bar=False)
    ae.validate(model=theirs, datamodule=datamodule, verbose=False)  # anomalib's thresholds on the same split
    for kind, compression in (("fp32", None), ("int8_ptq", CompressionType.INT8_PTQ)):
        start = time.perf_counter()
        ae.export(
            model=theirs,
            export_type=ExportType.OPENVINO,
            export_root=root / kind,
            compression_type=compression,
            datamodule=datamodule,
        )
        print(f"{name}: anomalib export {kind} in {time.perf_counter() - start:.0f} s", flush=True)
    return done


def anomalib_outputs(
    xml: Path, images: list[Any], input_size: tuple[int, int], presize: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ``pred_score [N]`` and ``anomaly_map [N, h, w]`` of one of anomalib's IRs, through its inferencer.

    With ``presize`` each image is first resized to the input size with the training pipeline's
    resize (``otx.data.datamodule.resize_image``, bilinear with antialiasing), so the IR sees the
    pixels the model was trained on; its own ``Interpolate`` (bilinear without antialiasing) then
    maps 256x256 to itself.
    """
    inferencer = AnomalibInferencer(xml, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32", "CACHE_DIR": ""})
    scores, maps = [], []
    for image in images:
        if presize:
            chw = torch.from_numpy(image).permute(2, 0, 1).float().div(255.0)
            # clamped: a float rounded above 1.0 would make anomalib's pre_process divide by 255 again
            image = resize_image(chw, input_size).clamp(0.0, 1.0).permute(1, 2, 0).numpy()
        out = inferencer.predict(image.copy())
        scores.append(float(np.asarray(out.pred_score).reshape(-1)[0]))
        maps.append(np.asarray(out.anomaly_map, dtype=np.float32).reshape(input_size))
    return np.asarray(scores, dtype=np.float64), np.stack(maps)


def anomalib_metrics(
    xml: Path,
    images: list[Any],
    labels: list[int],
    masks: np.ndarray,
    input_size: tuple[int, int],
    presize: bool = False,
) -> dict:
    """Image AUROC (``pred_score``) and pixel AUROC (``anomaly_map`` against ``masks`` at the input size)."""
    scores, maps = anomalib_outputs(xml, images, input_size, presize)
    return {"image_AUROC": roc_auc(scores, labels), "pixel_AUROC": roc_auc(maps, masks)}


def test_masks(images: list[Any], samples: list[Any], input_size: tuple[int, int]) -> np.ndarray:
    """Ground-truth masks ``[N, h, w]`` (bool) at the input size, where pixel AUROC is computed (as ``otx test``)."""
    masks = []
    for image, sample in zip(images, samples, strict=True):
        mask = read_mask(sample.mask_path) if sample.mask_path else np.zeros(image.shape[:2], np.uint8)
        masks.append(resize_mask(torch.from_numpy(mask), input_size).numpy())
    return np.stack(masks)


def anomalib_inputs(images: list[Any]) -> list[np.ndarray]:
    """The images as anomalib's inferencer feeds them to its IR: float ``[1, 3, H, W]`` in [0, 1]."""
    return [AnomalibInferencer.pre_process(image.copy()) for image in images]


def benchmark_plain_ir(xml: Path, inputs: list[np.ndarray], warmup: int = 10) -> dict[str, Any]:
    """One latency pass and one throughput pass of an IR without otx metadata (anomalib's).

    The same timing as ``otx.deploy.benchmark.benchmark_openvino`` with ``repeats=1``: CPU, f32
    inference precision, a fresh compilation with the ``LATENCY`` hint (one request at a time) and
    one with the ``THROUGHPUT`` hint (the device's optimal number of asynchronous requests).
    """
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(xml))
    config = {"INFERENCE_PRECISION_HINT": "f32", "CACHE_DIR": ""}
    latency = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "LATENCY"})
    durations = latency_pass(latency, inputs, warmup)
    del latency
    compiled = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "THROUGHPUT"})
    requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    rates = throughput_passes(compiled, inputs, requests, warmup, 1)
    return {
        "runtime": "openvino",
        "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
        "latency_ms_median": statistics.median(durations) * 1000.0,
        "latency_ms_p95": percentile_ms(durations, 95),
        "throughput_img_s": statistics.median(rates),
        "requests": requests,
        "input": str(model.input(0).get_partial_shape()),
    }


def anomalib_in_child(xml: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate one of anomalib's IRs in a child process (OpenVINO may crash compiling it).

    The child also runs one timing pass, so that the parent only times IRs known to compile.
    """
    out = xml.with_suffix(".otx-eval.json")
    out.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--data_root", str(args.data_root)]
    command += ["--eval_anomalib_ir", str(xml), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not out.is_file():
        reason = f"signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
        tail = " ".join(done.stderr.strip().splitlines()[-1:])[:200]
        return {"error": f"OpenVINO could not run it ({reason}; {tail})", "image_AUROC": None, "pixel_AUROC": None}
    return json.loads(out.read_text())


def eval_anomalib_ir(args: argparse.Namespace) -> int:
    s = settings(args)
    images, samples = test_images(s)
    labels, masks = [sample.label for sample in samples], test_masks(images, samples, cmp.INPUT_SIZE)
    result = {
        **anomalib_metrics(args.eval_anomalib_ir, images, labels, masks, cmp.INPUT_SIZE),
        "presized": anomalib_metrics(args.eval_anomalib_ir, images, labels, masks, cmp.INPUT_SIZE, presize=True),
        "check_pass": benchmark_plain_ir(args.eval_anomalib_ir, anomalib_inputs(images[:20]), warmup=2),
    }
    args.out.write_text(json.dumps(result))
    return 0


def alternating_speed(timers: dict[str, Callable[[], dict[str, Any]]], repeats: int) -> dict[str, dict[str, Any]]:
    """One timing pass of each model per repeat, alternating the models and their order.

    Each timer runs one latency pass and one throughput pass on a fresh compilation; the figures
    are medians over the repeats, so slow phases of a noisy machine hit every model alike.
    """
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in timers}
    names = list(timers)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            runs[name].append(timers[name]())
    speed = {}
    for name, rows in runs.items():
        speed[name] = {
            **rows[0],
            "throughput_img_s": statistics.median(r["throughput_img_s"] for r in rows),
            "throughput_runs": [round(r["throughput_img_s"], 2) for r in rows],
            "latency_ms_median": statistics.median(r["latency_ms_median"] for r in rows),
            "latency_ms_p95": statistics.median(r["latency_ms_p95"] for r in rows),
        }
    return speed


def otx_timer(path: Path, images: list[Any]) -> Callable[[], dict[str, Any]]:
    return lambda: benchmark_openvino(path, images, "CPU", "f32", warmup=10, repeats=1)


def head_to_head(
    ours: dict[str, Path], theirs: dict[str, Path], results: dict[str, dict], images: list[Any], repeats: int
) -> dict[str, dict[str, Any]]:
    """otx's FP32 and INT8 segmentation IRs and anomalib's FP32 and INT8_PTQ IRs, timed in one loop."""
    timers = {f"otx_{kind}": otx_timer(path, images) for kind, path in ours.items()}
    inputs = anomalib_inputs(images)
    for kind, xml in theirs.items():
        if results[kind].get("image_AUROC") is not None:  # it compiled and ran in the child process
            timers[f"anomalib_{kind}"] = lambda xml=xml: benchmark_plain_ir(xml, inputs)
    return alternating_speed(timers, repeats)


def test_labels(result: Any) -> dict[str, int]:
    """Image labels of one ``otx test`` run (its predictions.json), by image path."""
    records = json.loads((Path(result["report"]).parent / "predictions.json").read_text())
    return {r["image"]: r["label"] for r in records}


def run_model(name: str, s: cmp.Settings, args: argparse.Namespace, images: list[Any], samples: list[Any]) -> dict:
    checkpoint = train_otx(name, s, args)
    rows = []
    for task in TASKS:
        fp32 = Path(engine(args, name, task).export(checkpoint)["exported_model"])
        optimized = engine(args, name, task).optimize(checkpoint=fp32)
        int8 = Path(optimized["optimized_model"])
        t32 = engine(args, name, task).test(checkpoint=fp32)
        t8 = engine(args, name, task).test(checkpoint=int8)
        m32, m8 = t32["metrics"], t8["metrics"]
        labels32, labels8 = (test_labels(t) for t in (t32, t8))
        speed = alternating_speed({"fp32": otx_timer(fp32, images), "int8": otx_timer(int8, images)}, args.repeats)
        row = {
            "model": name,
            "task": task,
            "fp32": {k: m32[k] for k in METRICS if k in m32},
            "int8": {k: m8[k] for k in METRICS if k in m8},
            "speed": speed,
            "throughput_ratio": speed["int8"]["throughput_img_s"] / speed["fp32"]["throughput_img_s"],
            "latency_ratio": speed["fp32"]["latency_ms_median"] / speed["int8"]["latency_ms_median"],
            "label_agreement": float(np.mean([labels8[k] == v for k, v in labels32.items()])),
            "optimize": {
                k: optimized.get(k)
                for k in ("scheme", "weight_bits", "calibration_images", "decisions", "timing_s", "attempts")
            },
            "paths": {"fp32": fp32, "int8": int8},
        }
        rows.append(row)
        print(
            f"{name} {task}: image AUROC {row['fp32']['image_AUROC']:.4f} -> {row['int8']['image_AUROC']:.4f}, "
            f"pixel AUROC {row['fp32'].get('pixel_AUROC', float('nan')):.4f} -> "
            f"{row['int8'].get('pixel_AUROC', float('nan')):.4f}, throughput "
            f"{speed['fp32']['throughput_img_s']:.1f} -> {speed['int8']['throughput_img_s']:.1f} img/s "
            f"({row['throughput_ratio']:.2f}x), test labels equal {row['label_agreement']:.1%}",
            flush=True,
        )
    paths = {row["task"]: row.pop("paths") for row in rows}
    if args.no_anomalib:
        return {"rows": rows, "anomalib": "not run (--no_anomalib)", "checkpoint": str(checkpoint)}
    try:
        exports = anomalib_exports(name, checkpoint, s, args)
    except Exception as exc:  # noqa: BLE001 - e.g. anomalib's ONNX export without onnxscript: keep otx's rows
        print(f"{name}: anomalib's export failed ({type(exc).__name__}: {exc})", flush=True)
        return {"rows": rows, "anomalib": f"export failed: {type(exc).__name__}: {exc}", "checkpoint": str(checkpoint)}
    theirs = {kind: anomalib_in_child(xml, args) for kind, xml in exports.items()}
    for kind, result in theirs.items():
        print(f"{name} anomalib {kind}: {result}", flush=True)
    speed = head_to_head(paths["segmentation"], exports, theirs, images, args.repeats)
    for label, row in speed.items():
        print(f"{name} {label}: {row['throughput_img_s']:.1f} img/s, {row['latency_ms_median']:.1f} ms", flush=True)
    return {"rows": rows, "anomalib": theirs, "head_to_head": speed, "checkpoint": str(checkpoint)}


def _num(value: float | None, digits: int = 4) -> str:
    return "crashed" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| model | task | image AUROC FP32 / INT8 | pixel AUROC FP32 / INT8 | image F1 FP32 / INT8 "
        "| img/s FP32 / INT8 | INT8 / FP32 | latency ms FP32 / INT8 | test labels equal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results.values():
        for r in result["rows"]:
            a, b, sp = r["fp32"], r["int8"], r["speed"]
            pixel = f"{a['pixel_AUROC']:.4f} / {b['pixel_AUROC']:.4f}" if "pixel_AUROC" in a else "-"
            lines.append(
                f"| {r['model']} | {r['task']} | {a['image_AUROC']:.4f} / {b['image_AUROC']:.4f} | {pixel} "
                f"| {a['image_F1']:.4f} / {b['image_F1']:.4f} "
                f"| {sp['fp32']['throughput_img_s']:.1f} / {sp['int8']['throughput_img_s']:.1f} "
                f"| {r['throughput_ratio']:.2f}x "
                f"| {sp['fp32']['latency_ms_median']:.1f} / {sp['int8']['latency_ms_median']:.1f} "
                f"| {r.get('label_agreement', float('nan')):.1%} |"
            )
    lines += [
        "",
        "| model | IR | image AUROC | pixel AUROC | image / pixel AUROC, pre-resized input | img/s | latency ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        if "head_to_head" not in result:  # anomalib not run or its export failed
            lines.append(f"| {name} | anomalib 2.7 | {result['anomalib']} | | | | |")
            continue
        seg = next(r for r in result["rows"] if r["task"] == "segmentation")
        speed = result["head_to_head"]
        for kind in ("fp32", "int8"):
            sp = speed[f"otx_{kind}"]
            lines.append(
                f"| {name} | otx {kind.upper()} | {seg[kind]['image_AUROC']:.4f} | {seg[kind]['pixel_AUROC']:.4f} "
                f"| (the IR resizes as in training) | {sp['throughput_img_s']:.1f} | {sp['latency_ms_median']:.1f} |"
            )
        for kind, label in (("fp32", "FP32"), ("int8_ptq", "INT8_PTQ")):
            m, sp = result["anomalib"][kind], speed.get(f"anomalib_{kind}")
            pre = m.get("presized", {})
            lines.append(
                f"| {name} | anomalib 2.7 {label} | {_num(m['image_AUROC'])} | {_num(m['pixel_AUROC'])} "
                f"| {_num(pre.get('image_AUROC'))} / {_num(pre.get('pixel_AUROC'))} "
                f"| {_num(sp and sp['throughput_img_s'], 1)} | {_num(sp and sp['latency_ms_median'], 1)} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", type=Path, required=True)
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/otx-int8"))
    models = ["padim", "stfpm", "patchcore", "patchflow"]
    parser.add_argument("--models", nargs="+", default=["padim", "stfpm"], choices=models)
    parser.add_argument("--stfpm_epochs", type=int, default=10)
    parser.add_argument("--padim_ckpt", default=None, help="reuse a trained otx PADIM checkpoint")
    parser.add_argument("--stfpm_ckpt", default=None, help="reuse a trained otx STFPM checkpoint")
    parser.add_argument("--patchcore_ckpt", default=None, help="reuse a trained otx PatchCore checkpoint")
    parser.add_argument("--patchflow_ckpt", default=None, help="a PatchFlow checkpoint (its recipe's `otx train`)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no_anomalib", action="store_true", help="otx's FP32 and INT8 only (no anomalib exports)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--eval_anomalib_ir", type=Path, default=None, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.eval_anomalib_ir:
        return eval_anomalib_ir(args)
    logging.getLogger("otx").setLevel(logging.ERROR)
    cmp._quiet_logging(False)
    logging.getLogger("nncf").setLevel(logging.ERROR)
    s = settings(args)
    images, samples = test_images(s)
    print(f"{len(images)} test images of {args.data_root}", flush=True)
    results = {name: run_model(name, s, args, images, samples) for name in args.models}
    table = markdown(results)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "data_root": str(args.data_root),
            "test_images": len(images),
            "machine": platform.processor() or platform.machine(),
            "results": results,
            "table": table,
        }
        args.out.write_text(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Deployment throughput: otx's exported PADIM beside anomalib 2.7's export of the same model.

One process, same data, backbone (EfficientNet-Lite0 with the same ImageNet weights and the same
random channel selection), input size 256x256, same device (CPU) and the same inference precision
(f32 for both by default; ``--precision bf16`` for both otherwise). Four figures, repeated
``--repeats`` times in alternating order and reported as medians:

- **otx end-to-end**: ``Engine.predict(source=<test folder>, checkpoint=exported_model.xml)``:
  image files on disk -> decoded (2 loader workers) -> OpenVINO asynchronous request queue ->
  task adapter -> mask PNGs and predictions.json written. Python start-up is not included.
- **otx raw inference**: ``OpenVINOInferencer.infer`` on the same images already decoded.
- **anomalib end-to-end**: anomalib's ``OpenVINOInferencer.predict(path)`` per file on anomalib's own
  export (``Engine.export(export_type=OPENVINO)``), writing a mask PNG per image and a JSON list.
  Its masks stay at the model's input size (its inferencer does not resize them back), so it does
  less work per image than otx, which writes masks at each image's own size.
- **anomalib raw inference**: its compiled model called on the same images already pre-processed.

Usage::

    .venv/bin/python benchmarks/deploy_throughput.py --data_root ../shared/data/magnetic_tile \
        --work_dir /tmp/deploy_bench --repeats 3 --out benchmarks/results/deploy_throughput.json
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
import sys
import time
from pathlib import Path

import cv2
import lightning as L
import numpy as np
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
import compare_anomalib as cmp  # noqa: I001 - the sibling benchmark builds anomalib's identical PADIM

from anomalib.deploy import ExportType
from anomalib.deploy import OpenVINOInferencer as AnomalibInferencer
from anomalib.engine import Engine as AnomalibEngine

from otx.data import AnomalyDataModule
from otx.data.datamodule import samples_from_source
from otx.data.io import read_image
from otx.deploy import OpenVINOInferencer
from otx.engine import Engine


def settings(args: argparse.Namespace) -> cmp.Settings:
    return cmp.split_settings(args.data_root, args.work_dir, stfpm_epochs=1)


def train_and_export_otx(s: cmp.Settings, args: argparse.Namespace) -> tuple[Path, Path]:
    done = sorted((args.work_dir / "otx").glob("*-export/exported_model.xml"))
    if done:  # a previous run of this script in the same work_dir
        return sorted((args.work_dir / "otx").glob("*-train/model.ckpt"))[-1], done[-1]
    quiet = Console(stderr=True, quiet=True)
    data = AnomalyDataModule(str(s.data_root), batch_size=16, num_workers=2)
    engine = Engine(cmp.build_otx_model("padim", s), data, "segmentation", args.work_dir / "otx", console=quiet)
    checkpoint = engine.train()["checkpoint"]
    xml = Path(engine.export(checkpoint)["exported_model"])
    return Path(checkpoint), xml


def train_and_export_anomalib(s: cmp.Settings, args: argparse.Namespace) -> Path:
    done = sorted((args.work_dir / "anomalib" / "export").rglob("*.xml"))
    if done:
        return done[-1]
    L.seed_everything(cmp.SEED, verbose=False)
    model = cmp.build_anomalib_model("padim", s)
    datamodule = cmp._anomalib_datamodule(s)
    root = args.work_dir / "anomalib"
    engine = AnomalibEngine(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, default_root_dir=root, enable_progress_bar=False
    )
    engine.fit(model=model, datamodule=datamodule)
    path = engine.export(model=model, export_type=ExportType.OPENVINO, export_root=root / "export")
    return Path(path)


def otx_end_to_end(xml: Path, source: Path, work_dir: Path, precision: str) -> float:
    engine = Engine(
        data=AnomalyDataModule(batch_size=16, num_workers=2),
        work_dir=work_dir,
        console=Console(stderr=True, quiet=True),
        device="CPU",
        inference_precision=precision,
    )
    start = time.perf_counter()
    predictions = engine.predict(source=source, checkpoint=xml, visualize=False)  # anomalib draws none either
    elapsed = time.perf_counter() - start
    return len(predictions) / elapsed


def anomalib_end_to_end(xml: Path, files: list[Path], out_dir: Path, precision: str) -> float:
    start = time.perf_counter()
    inferencer = AnomalibInferencer(xml, device="CPU", config={"INFERENCE_PRECISION_HINT": precision})
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i, path in enumerate(files):
        result = inferencer.predict(path)
        mask = np.squeeze(np.asarray(result.pred_mask)).astype(np.uint8) * 255  # at the model's input size
        cv2.imwrite(str(out_dir / f"{i:05d}_mask.png"), mask)
        records.append({"image": str(path), "score": float(np.asarray(result.pred_score).reshape(-1)[0])})
    (out_dir / "predictions.json").write_text(json.dumps(records))
    return len(files) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", type=Path, required=True)
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/otx-deploy-bench"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="f32", choices=["f32", "bf16"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.getLogger("otx").setLevel(logging.ERROR)
    cmp._quiet_logging(False)
    s = settings(args)
    _, otx_xml = train_and_export_otx(s, args)
    anomalib_xml = train_and_export_anomalib(s, args)
    source = s.data_root / "test"
    files = [Path(x.path) for x in samples_from_source(source)]
    images = [read_image(f) for f in files]
    print(f"{len(files)} test images; otx IR {otx_xml}; anomalib IR {anomalib_xml}", flush=True)

    ours = OpenVINOInferencer(otx_xml, device="CPU", precision_hint=args.precision)
    theirs = AnomalibInferencer(anomalib_xml, device="CPU", config={"INFERENCE_PRECISION_HINT": args.precision})
    theirs_inputs = [theirs.pre_process(image.copy()) for image in images]
    print(f"anomalib IR input: {theirs.model.input(0).get_partial_shape()}; otx IR input: [?,3,?,?]", flush=True)

    figures: dict[str, list[float]] = {k: [] for k in ("otx_e2e", "otx_raw", "anomalib_e2e", "anomalib_raw")}
    scores: dict[str, np.ndarray] = {}
    for repeat in range(args.repeats):
        order = ["otx", "anomalib"] if repeat % 2 == 0 else ["anomalib", "otx"]
        for tool in order:
            if tool == "otx":
                figures["otx_e2e"].append(
                    otx_end_to_end(otx_xml, source, args.work_dir / "otx_predict", args.precision)
                )
                start = time.perf_counter()
                out = ours.infer(images)
                figures["otx_raw"].append(len(images) / (time.perf_counter() - start))
                scores["otx"] = out["pred_score"]
            else:
                figures["anomalib_e2e"].append(
                    anomalib_end_to_end(
                        anomalib_xml, files, args.work_dir / f"anomalib_predict{repeat}", args.precision
                    )
                )
                start = time.perf_counter()
                outs = [theirs.model({theirs.input_blob.any_name: x}) for x in theirs_inputs]
                figures["anomalib_raw"].append(len(images) / (time.perf_counter() - start))
                scores["anomalib"] = np.array(
                    [float(o[theirs.model.output("pred_score")].reshape(-1)[0]) for o in outs]
                )
        print(f"repeat {repeat}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in figures.items()), flush=True)

    medians = {k: statistics.median(v) for k, v in figures.items()}
    summary = {
        "images": len(files),
        "precision": args.precision,
        "otx_inference_precision": ours.inference_precision,
        "otx_requests": ours.num_requests,
        "images_per_s": figures,
        "median_images_per_s": medians,
        "ratio_otx_over_anomalib": {
            "end_to_end": medians["otx_e2e"] / medians["anomalib_e2e"],
            "raw": medians["otx_raw"] / medians["anomalib_raw"],
        },
        "max_abs_score_diff_otx_vs_anomalib_ir": float(np.abs(scores["otx"] - scores["anomalib"]).max()),
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(summary, indent=1))
    print("\n| figure | otx (img/s) | anomalib 2.7 (img/s) | otx / anomalib |\n|---|---|---|---|")
    for kind in ("e2e", "raw"):
        label = "end-to-end (files -> written results)" if kind == "e2e" else "raw inference (decoded images)"
        a, b = medians[f"otx_{kind}"], medians[f"anomalib_{kind}"]
        print(f"| {label} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

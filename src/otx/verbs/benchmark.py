"""``otx benchmark``: latency and throughput of a model in torch and OpenVINO (FP32, FP16, INT8)."""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape

from otx.checkpoint import latest_checkpoint, load_checkpoint
from otx.data.datamodule import AnomalyDataModule
from otx.data.io import read_image
from otx.deploy.inferencer import is_exported_model
from otx.deploy.metadata import ModelInfo
from otx.errors import for_caller
from otx.models.base import AnomalyModel
from otx.results import BenchmarkResult, recorded_path
from otx.verbs.context import VerbContext, write_result
from otx.verbs.resolve import data_root_for, unfinished_run, warn_other_model
from otx.workdir import Run

log = logging.getLogger("otx")


def plan(
    ctx: VerbContext, run: Run, checkpoint: str | Path | None, models: list[str | Path] | None
) -> tuple[list[tuple[str, Any]], AnomalyModel | None, dict[str, Any], Path | None]:
    """``(label, model or path)`` to time, the torch model (if any), its checkpoint record and path."""
    from otx.deploy.export import export_model
    from otx.deploy.inferencer import check_model_path
    from otx.deploy.metadata import read_model_info

    exported = [Path(recorded_path(check_model_path(m))) for m in models or []]  # recorded absolute, as test's model
    for path in [*exported, *([Path(checkpoint)] if checkpoint is not None else [])]:
        if message := unfinished_run(path):
            ctx.warn(message)
    if checkpoint is not None and is_exported_model(checkpoint):
        exported.insert(0, Path(recorded_path(check_model_path(checkpoint))))
        info = read_model_info(exported[0])
        warn_other_model(ctx, exported[0], info.model_name, info.backbone)
        checkpoint = None
    elif checkpoint is None and not exported:
        checkpoint = latest_checkpoint(ctx.workdir)
    targets: list[tuple[str, Any]] = []
    model, ckpt = None, {}
    if checkpoint is not None:
        model, ckpt = load_checkpoint(checkpoint)
        warn_other_model(ctx, checkpoint, type(model).__name__, model.spec.name)
        task = ctx.adapter(ckpt.get("task")).task.value
        ctx.console.print(f"checkpoint: {escape(str(checkpoint))} (exporting FP32 and FP16 IRs to time them)")
        targets.append(("torch FP32", model))
        for precision in ("FP32", "FP16"):
            out = run.path / f"exported_{precision.lower()}"
            path = export_model(model, out, task, "OPENVINO", precision, data=ckpt.get("data"))
            targets.append((f"OpenVINO {precision}", path))
        latest = ctx.workdir.latest("optimize")
        int8 = latest / "optimized_model.xml" if latest is not None else None
        if not models and int8 is not None and int8.is_file():
            if same_trained_model(read_model_info(int8), model, ckpt.get("thresholds") or {}):
                targets.append(("OpenVINO INT8", int8))
            else:
                ctx.warn(
                    f"the latest optimized model ({int8}) comes from another trained model; not timed "
                    "(run `otx optimize` on this one first)"
                )
        elif not models:
            ctx.console.print("no INT8 model: run `otx optimize` first (or pass --models optimized_model.xml)")
    exported = list(dict.fromkeys(exported))  # a file named twice (--checkpoint and --models) is timed once
    targets.extend((f"({name})", path) for name, path in zip(short_names(exported), exported, strict=True))
    # (given files are labelled with their precision once timed)
    return targets, model, ckpt, Path(checkpoint) if checkpoint is not None else None


SPREAD = 1.25  # throughput passes of one model further apart than this (fastest / slowest) get a warning


def spread_warning(rows: list[dict[str, Any]]) -> str | None:
    """One line when a model's throughput passes disagree by more than ``SPREAD``: its figures are noise.

    A bug bash on a busy 2-core machine: the FP16 IR (the same f32 arithmetic as the FP32 IR) read
    0.59x to 1.62x of the FP32 IR from run to run, its passes up to 1.9x apart, said only in the JSON.
    """
    spread = {
        r["model"]: max(r["throughput_runs"]) / min(r["throughput_runs"])
        for r in rows
        if len(r.get("throughput_runs") or []) > 1 and min(r["throughput_runs"]) > 0
    }
    noisy = {name: ratio for name, ratio in spread.items() if ratio > SPREAD}
    if not noisy:
        return None
    worst = max(noisy, key=noisy.get)
    return (
        f"the throughput passes of {len(noisy)} of the {len(rows)} models disagree by more than {SPREAD:g}x "
        f"({worst}: {noisy[worst]:.2f}x, throughput_runs in metrics.json), so their figures and ratios are "
        "noise: time on a quiet machine, with more --num_images (longer passes) and --repeats"
    )


def fp32_reference(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row the ratios divide by: the checkpoint's FP32 IR, else the first FP32 IR given (``--models``)."""
    exported = next((r for r in rows if r["model"] == "OpenVINO FP32"), None)
    return exported or next(
        (
            r
            for r in rows
            if r["runtime"] == "openvino" and r.get("model_precision") == "FP32" and r.get("quantization") == "none"
        ),
        None,
    )


def short_names(paths: list[Path]) -> list[str]:
    """The paths' endings of one length (file name, then with its folders), the shortest that tells them apart.

    Every export is called ``exported_model.xml``: two runs' exports are told apart by their run folders.
    """
    depth = 1
    while True:
        names = ["/".join(path.parts[-depth:]) for path in paths]
        if len(set(names)) == len(set(paths)) or all(depth >= len(path.parts) for path in paths):
            return names
        depth += 1


def same_trained_model(info: ModelInfo, model: AnomalyModel, thresholds: dict[str, float]) -> bool:
    """Whether an exported model (its ``ModelInfo``) comes from ``model`` with these fitted ``thresholds``.

    The class, the backbone and every statistic the training fitted (thresholds, minima and
    maxima, recorded before any recalibration): thresholds given by hand are the same for
    every model trained with them, the fitted minima and maxima are not.
    """
    stats = info.source_stats()
    return (
        info.model_name == type(model).__name__
        and info.backbone == model.spec.name
        and bool(thresholds)
        and all(key in stats and np.isclose(stats[key], value, equal_nan=True) for key, value in thresholds.items())
    )


def processor_name(core: Any) -> str:
    """The CPU's name as OpenVINO reports it (``AMD EPYC``, ``Intel(R) Xeon(R) ...``), else the architecture."""
    try:
        return str(core.get_property("CPU", "FULL_DEVICE_NAME")) or platform.machine()
    except Exception:  # noqa: BLE001 - a build without the CPU plugin
        return platform.processor() or platform.machine()


def given_data(ctx: VerbContext) -> AnomalyDataModule | None:
    """The ``--data_root`` folder indexed (its errors said before anything is exported or timed), if one was given."""
    if ctx.data.data_root is None:
        return None
    data = ctx.data.replace(data_root=ctx.data.data_root)
    data.setup()
    return data


def images_to_time(
    ctx: VerbContext, ckpt: dict[str, Any], input_size: tuple[int, int], count: int, data: AnomalyDataModule | None
) -> tuple[list, str, AnomalyDataModule | None]:
    """``count`` test images spread over the test split (decoded), or synthetic ones without data; the data used.

    ``data``: the given data root, indexed (``given_data``); else the one the model was trained on, if it is there.
    """
    from otx.deploy.benchmark import synthetic_images

    if data is None:
        root = data_root_for(ctx, ckpt.get("data") or {}, must_exist=True)
        if root is None:
            size = f"{input_size[1]}x{input_size[0]} (width x height)"
            return synthetic_images(count, input_size), f"{count} synthetic images at {size}", None
        data = ctx.data.replace(data_root=root)
        data.setup()
    root = data.data_root
    test = [s for s in data.splits["test"] if s.path not in data.index.unreadable] or data.splits["train"]
    picks = np.linspace(0, len(test) - 1, num=min(count, len(test))).round().astype(int)
    images = [read_image(test[i].path) for i in sorted(set(picks.tolist()))]
    fewer = for_caller(f" (all there are; --num_images {count})") if len(images) < count else ""
    return images, f"{len(images)} images of {root} at their own sizes{fewer}", data


def run(
    ctx: VerbContext,
    run: Run,
    checkpoint: str | Path | None,
    models: list[str | Path] | None,
    num_images: int,
    warmup: int,
    repeats: int,
) -> BenchmarkResult:
    """Time every model of the plan on the same images; rows also say the precision actually used."""
    import openvino as ov
    import torch

    from otx.deploy.benchmark import benchmark_openvino, benchmark_torch
    from otx.deploy.inferencer import check_device
    from otx.deploy.metadata import read_model_info

    core = ov.Core()
    check_device(core, ctx.device)  # before the torch timing and the exports, not after them
    given = given_data(ctx)  # a mistyped --data_root: refused before the exports, not after them
    targets, model, ckpt, checkpoint = plan(ctx, run, checkpoint, models)
    first = targets[0][1]
    input_size = first.input_size if model is not None else read_model_info(first).input_size
    task = ctx.adapter(ckpt.get("task") if model is not None else read_model_info(first).task).task.value
    if model is None:  # exported models only: the data the first was trained on (its run folders say where)
        from otx.workdir import training_data_root

        ckpt = {"data": {"data_root": training_data_root(first)}}
    images, described, data = images_to_time(ctx, ckpt, input_size, num_images, given)
    ctx.save_config(
        run,
        task,
        {"timed": [str(target) if isinstance(target, Path) else label for label, target in targets]},
        {"num_images": num_images, "warmup": warmup, "repeats": repeats},
        data=data,  # the data timed on (before: data_root null when it was the model's own)
    )
    ctx.console.print(
        f"[bold]otx benchmark[/]: {len(targets)} model(s) on {escape(described)}; OpenVINO on {ctx.device} at "
        f"{ctx.inference_precision}, warm-up {warmup}, {repeats} throughput repeats"
    )
    rows = []
    for label, target in targets:
        if isinstance(target, Path) and label.startswith("("):  # a given model file: precision from its metadata
            label = f"OpenVINO {read_model_info(target).precision} {label}"
        ctx.console.print(f"  timing {escape(label)} ...")
        if isinstance(target, Path):
            row = benchmark_openvino(target, images, ctx.device, ctx.inference_precision, warmup, repeats)
            row["path"] = str(target)
            row["size_mb"] = sum(f.stat().st_size for f in (target, target.with_suffix(".bin")) if f.is_file()) / 1e6
        else:
            row = benchmark_torch(target, images, warmup, repeats)
            row["size_mb"] = sum(t.numel() * t.element_size() for t in target.state_dict().values()) / 1e6
        rows.append({"model": label, **row})
    reference = fp32_reference(rows)
    for row in rows:
        if reference is not None:
            row["throughput_vs_fp32_ir"] = row["throughput_img_s"] / reference["throughput_img_s"]
    if message := spread_warning(rows):
        ctx.warn(message)
    if model is not None:
        name, backbone, input_config = type(model).__name__, model.spec.name, model.preprocessor.config()
    else:
        info = read_model_info(first)
        name, backbone, input_config = info.model_name, info.backbone, info.preprocessor().config()
    result = BenchmarkResult(
        task=task,
        images=described,
        device_requested=ctx.device,
        inference_precision_requested=ctx.inference_precision,
        warmup=warmup,
        repeats=repeats,
        rows=rows,
        machine={
            "processor": processor_name(core),
            "cpus": os.cpu_count(),
            "openvino": ov.get_version(),
            "torch": torch.__version__,
        },
        warnings=list(ctx.warnings),
        checkpoint=str(checkpoint) if checkpoint is not None else None,
        model=name,
        backbone=backbone,
        input=input_config,
        reference=reference["model"] if reference is not None else None,
    )
    write_result(run, result)
    return result

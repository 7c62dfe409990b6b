"""Console rendering of the verbs' results (``rich`` tables); the verbs themselves only compute.

``render(console, result)`` prints the summary of any ``otx.results`` result; ``progress`` is the
bar the verbs show over long loops.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from otx.boxes import score_words
from otx.errors import for_caller
from otx.results import BenchmarkResult, ExportResult, OptimizeResult, PredictResult, Result, TestResult, TrainResult
from otx.scoring import OpenVINOScorer, Scorer


def progress(console: Console) -> Progress:
    """A progress bar with count, elapsed and remaining time."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def describe_loaded(scorer: Scorer) -> str:
    """One line naming the model a verb runs (and, for an exported one, where OpenVINO runs it)."""
    if isinstance(scorer, OpenVINOScorer):
        inf = scorer.inferencer
        precision = inf.inference_precision
        if precision in ("bf16", "f16"):  # measured: normalised scores 0.098 (PADIM) and 0.171 (STFPM) from f32's
            precision += (
                ": normalised scores can differ from f32's by 0.1 or more, and labels near the threshold with them; "
                "--inference_precision f32 (the default) runs it as otx checked it"
            )
        return for_caller(f"exported model: {escape(str(scorer.source))} (OpenVINO {inf.device}, {precision})")
    return f"checkpoint: {escape(str(scorer.source))}"


def render(console: Console, result: Result) -> None:
    """Print the summary of a verb's result."""
    if isinstance(result, TrainResult):
        extra = {"checkpoint": result.checkpoint}
        if result.max_epochs > 1:  # (one-pass models train one)
            why = result.stop_reason or ("stopped early" if result.stopped_early else "")
            extra["epochs"] = f"{result.epochs} of up to {result.max_epochs}" + (f" ({why})" if why else "")
            if result.best_epoch is not None:
                extra["epochs"] += f"; kept epoch {result.best_epoch}, the best on the validation split"
        if result.boxes:
            b = result.boxes
            how = "chosen on the validation split" if "box_tuning_s" in result.timing_s else "defaults, not tuned"
            extra[f"boxes ({how})"] = (
                f"map level {b['threshold']:.3f}, pieces within {b['merge']:.0%} of the longer side joined, "
                f"each box around its pixels {b.get('peak', 0.0):.0%} of the way up to its maximum, "
                f"at least {b['min_area']:.2%} of the image, {'also' if b['on_normal'] else 'none'} on normal images, "
                f"each {score_words(b)}"
            )
        _summary(console, result, result.validation_metrics, "validation", extra)
    elif isinstance(result, TestResult):
        extra = {"report": result.report}
        if result.decisions:
            extra = {"decisions": decisions_line(result.decisions), **extra}
        _summary(console, result, result.metrics, "test", extra)
    elif isinstance(result, PredictResult):
        extra = {"predictions": result.predictions_file}
        if result.overlays:
            size = _folder_size(Path(result.overlays))
            extra["overlays"] = f"{result.overlays} ({size}; --visualize false skips them)"
        _summary(console, result, result.counts, "predictions", extra)
    elif isinstance(result, ExportResult):
        if result.decisions is not None:
            _decisions(console, result, "FP16", {}, last=False)
        check = {k: f"{v:.2e}" if k.startswith("max_") else v for k, v in result.check_against_torch.items()}
        extra = {"exported_model": result.exported_model}
        if result.demo_package:
            extra["demo_package"] = result.demo_package
        _summary(console, result, check, f"{result.format} {result.precision} vs torch", extra)
    elif isinstance(result, OptimizeResult):
        console.print(escape(f"scheme: {result.scheme} ({result.scheme_summary})"))
        _decisions(console, result, "INT8", {"optimized_model": result.optimized_model})
    elif isinstance(result, BenchmarkResult):
        _benchmark(console, result)


def decisions_line(decisions: dict[str, Any]) -> str:
    """``found 185 of 196 anomalous, flagged 19 of 95 normal`` (``otx.metrics.image_decisions``), with the rates."""
    parts = []
    for count, whole, rate in (("found", "anomalous", "recall"), ("flagged", "normal", "false_alarm_rate")):
        if decisions[whole]:
            parts.append(f"{count} {decisions[count]} of {decisions[whole]} {whole} ({100 * decisions[rate]:.1f} %)")
    return ", ".join(parts)


def _folder_size(folder: Path) -> str:
    """``N files, X MB`` of a folder's files, said where the overlays are named.

    Full-size overlays of many large images fill a disk (a bug bash: 637 MB for 143 MB of JPEGs).
    """
    sizes = [p.stat().st_size for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    return f"{len(sizes)} file{'s' * (len(sizes) != 1)}, {sum(sizes) / 1e6:.1f} MB"


def _summary(console: Console, result: Result, metrics: dict[str, Any], title: str, extra: dict[str, str]) -> None:
    table = Table(title=f"otx {result.command}: {title} ({result.task})", show_lines=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if isinstance(value, float):
            text = "n/a" if math.isnan(value) else f"{value:.4f}"  # AUROC of one class: null in metrics.json
        else:
            text = str(value)
        table.add_row(key, escape(text))
    console.print(table)
    for key, value in extra.items():  # (paths and names as they are: "w[good] parts" read "w parts", a bug bash)
        console.print(f"{key}: {escape(str(value))}")
    console.print(f"run folder: {escape(str(result.run_folder))}")


def _decisions(
    console: Console, result: ExportResult | OptimizeResult, name: str, extra: dict[str, str], last: bool = True
) -> None:
    """The reference against the converted model on the validation split, before and after recalibration.

    The reference is FP32, or the FP16 IR an INT8 model came from: AUROC, F1 at the thresholds and
    label agreement with it.
    """
    decisions = result.decisions or {}
    reference = decisions.get("reference", "FP32")
    if not decisions.get("checked"):
        console.print(
            f"[yellow]warning[/]: no validation images; {name}'s decisions were not checked against {reference}"
        )
        if last:
            _summary(console, result, {}, name, extra)
        return
    rows = decisions["table"]
    # Pixel figures compare maps at the model's map size (otx train's pixel_AUROC_input, not its pixel_AUROC).
    at_input = any(key.startswith("pixel_") for key in rows["fp32"])
    captions = ["pixel rows at the model's map size (otx train's pixel_AUROC_input)"] if at_input else []
    if getattr(result, "validation_calibration_images", 0):  # (a bug bash: 99.0 % here, 98.3 % on the test split)
        captions.append(
            "the validation images calibrated the INT8 model too: otx test on the test split gives the unbiased figures"
        )
    table = Table(
        title=f"otx {result.command}: {name} vs {reference} on {decisions['images']} validation images",
        caption="; ".join(captions) or None,
    )
    columns = {
        "fp32": reference,
        "candidate_fp32_thresholds": f"{name}, {reference.split()[0]} thresholds",
        "candidate": name,
    }
    table.add_column("metric")
    for title in columns.values():
        table.add_column(title, justify="right")
    for key in rows["fp32"]:
        table.add_row(key, *(f"{rows[c].get(key, float('nan')):.4f}" for c in columns))
    console.print(table)
    from otx.deploy.optimize import decisions_held

    kept = (
        f"none (the {reference.split()[0]} thresholds keep the decisions)"
        if decisions_held(decisions)  # before: said also where a figure fell (helper-40: pixel F1 to 0)
        else f"none (moving them kept no more of the {reference.split()[0]} labels on held-out validation images: "
        "the decisions differ, see the warning)"
    )
    recalibrated = ", ".join(decisions["recalibrated"]) or kept
    console.print(f"recalibrated thresholds: {recalibrated}")
    for key, value in extra.items():
        console.print(f"{key}: {escape(str(value))}")
    if last:  # an FP16 export's torch check follows, and ends with the run folder
        console.print(f"run folder: {escape(str(result.run_folder))}")


def _benchmark(console: Console, result: BenchmarkResult) -> None:
    rows = result.rows
    table = Table(title=f"otx benchmark ({result.task}; latency batch 1, throughput with parallel requests)")
    for column in ("model", "device", "computes in", "median ms", "p95 ms", "images/s", "MB"):
        table.add_column(column, justify="left" if column in ("model", "device") else "right", overflow="fold")
    versus = any("throughput_vs_fp32_ir" in r for r in rows)
    if versus:
        table.add_column("x FP32 IR", justify="right")
    threads = any("threads" in r for r in rows)
    if threads:  # torch's and OpenVINO's CPU threads: they set the figures
        table.add_column("threads", justify="right")
    for r in rows:
        # an INT8 model's quantised layers run in int8, the rest at the inference precision (before: "f32" alone)
        computes = r["inference_precision"]
        if r.get("quantization", "none") != "none" or r.get("model_precision") == "INT8":
            computes = f"int8 + {computes}"
        cells = [escape(str(r["model"])), escape(str(r["device"])), computes]
        cells += [f"{r['latency_ms_median']:.2f}", f"{r['latency_ms_p95']:.2f}", f"{r['throughput_img_s']:.1f}"]
        cells.append(f"{r['size_mb']:.1f}" if "size_mb" in r else "-")
        if versus:
            cells.append(f"{r['throughput_vs_fp32_ir']:.2f}x" if "throughput_vs_fp32_ir" in r else "-")
        if threads:
            cells.append(str(r.get("threads", "-")))
        table.add_row(*cells)
    console.print(table)
    legend = "MB: the model on disk (torch: its weights in memory)"
    if result.reference and versus:
        legend = f"x FP32 IR: images/s over {result.reference}'s; {legend}"
    console.print(escape(legend))
    console.print(f"run folder: {escape(str(result.run_folder))}")

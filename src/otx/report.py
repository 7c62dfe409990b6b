"""The HTML report of ``otx test``: one self-contained file, plus the plots as PNG files.

``report.html`` embeds every image as a data URI, so it opens offline in any browser and can be
mailed as one file. It holds the metrics table, ROC and precision-recall curves, the histogram of
normalised image scores of normal and anomalous images with the threshold drawn, metrics per
defect type, and the worst false positives and false negatives as overlays. Plots come from
matplotlib (its object API, no global pyplot state), overlays from ``otx.visualize``.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from otx import __version__
from otx.boxes import score_words
from otx.data.dataset import Sample
from otx.data.io import read_image, read_mask
from otx.metrics import curves
from otx.tasks import ADAPTERS, AnomalyTask, Prediction
from otx.visualize import overlay, thumbnail, write_overlay

REPORT_NAME = "report.html"
PLOTS_DIR = "report"
WORST = 4  # false positives and false negatives shown
THUMB_WIDTH = 520  # px: overlays are embedded this wide (twice as shown, sharp on high-density screens)


@dataclass
class ReportInput:
    """What ``otx test`` knows after scoring the test split."""

    task: str
    model: str
    backbone: str
    source: str
    runtime: dict[str, str]
    metrics: dict[str, float]
    per_defect: dict[str, dict[str, float]]  # otx.metrics.per_defect of the test split
    splits: dict[str, Any]
    samples: list[Sample]  # labelled test images (label 0 or 1)
    predictions: list[Prediction]  # normalised, one per sample (maps and masks at original size, or None)
    scores: np.ndarray  # raw image scores the metrics use (normalised only for an export by an older otx)
    errors: list[dict[str, str]] = field(default_factory=list)  # images that could not be read
    warnings: list[str] = field(default_factory=list)  # where the numbers could mislead
    thresholds: dict[str, float] = field(default_factory=dict)  # raw units (the scorer's stats)
    threshold_origin: dict[str, str] = field(default_factory=dict)  # how each was set, in words
    data_root: str = ""  # the data tested on (the report is read without the run folder beside it)
    validation: dict[str, Any] = field(default_factory=dict)  # the split kept out (AnomalyDataModule.validation_record)
    input_mode: str = ""  # the model's pre-processing in words (PreProcessor.describe)
    boxes: dict[str, Any] | None = None  # detection: the box settings (otx.boxes.BoxSettings.as_dict)
    date: str = ""  # when the test ran
    unread_types: dict[str, int] = field(default_factory=dict)  # defect types none of whose images could be read
    decisions: dict[str, Any] | None = None  # the image decisions at the threshold (otx.metrics.image_decisions)
    # sample i's prediction with its full-size map and mask, for the overlays, where ``predictions`` dropped them
    full_prediction: Callable[[int], Prediction] | None = None


def _validation(record: dict[str, Any]) -> str:
    """`` (validation: ...)``: how the validation split kept out of the test split was formed, in words."""
    if not record:
        return ""
    if record["from"] == "val/ folder":
        return " (validation: the data's own val/ folder)"
    share = f"{record['val_split']:g} of the test folders, seed {record['seed']}"
    if record["from"] == "recorded files":
        return f" (validation: the images the model was calibrated on, as recorded; drawn as {share})"
    return f" (validation: {share})"


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def operating_point(labels: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float]:
    """``(false positive rate, true positive rate = recall, precision)`` of the labels given (both kinds present).

    Precision is 1.0 when nothing is predicted anomalous (no false positive among none).
    """
    labels, predicted = np.asarray(labels, bool), np.asarray(predicted, bool)
    precision = float(labels[predicted].mean()) if predicted.any() else 1.0
    return float(predicted[~labels].mean()), float(predicted[labels].mean()), precision


def _roc_pr(scores: np.ndarray, labels: np.ndarray, predicted: np.ndarray, image_auroc: float) -> tuple[bytes, bytes]:
    """The ROC and precision-recall curves, each with the threshold's operating point (from the labels given)."""
    c = curves(scores, labels)
    fpr, tpr, precision = operating_point(labels, predicted)
    roc = Figure(figsize=(4.2, 4.0))
    ax = roc.add_subplot()
    ax.plot(c["fpr"], c["tpr"], color="tab:red", lw=2, label=f"image AUROC {image_auroc:.4f}")
    ax.plot([0, 1], [0, 1], color="gray", lw=1, ls="--", label="chance")
    ax.plot([fpr], [tpr], "ko", ms=7, label=f"at the threshold: FPR {fpr:.3f}, TPR {tpr:.3f}")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (images)", xlim=(0, 1), ylim=(0, 1.02))
    # under the axes: inside, the box hid part of the curve (a bug bash: the low false-positive rates that matter)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, frameon=False)
    pr = Figure(figsize=(4.2, 4.0))
    ax = pr.add_subplot()
    ax.plot(c["recall"], c["precision"], color="tab:blue", lw=2)
    ax.axhline(labels.mean(), color="gray", lw=1, ls="--", label=f"anomalous share {labels.mean():.2f}")
    ax.plot([tpr], [precision], "ko", ms=7, label=f"at the threshold: recall {tpr:.3f}, precision {precision:.3f}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (images)", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, frameon=False)
    return _png(roc), _png(pr)


def _histogram(normalized: np.ndarray, labels: np.ndarray) -> bytes:
    fig = Figure(figsize=(6.0, 3.6))
    ax = fig.add_subplot()
    bins = np.linspace(0.0, 1.0, 41)
    ax.hist(normalized[~labels], bins=bins, alpha=0.65, color="tab:green", label=f"normal ({(~labels).sum()})")
    ax.hist(normalized[labels], bins=bins, alpha=0.65, color="tab:red", label=f"anomalous ({labels.sum()})")
    ax.axvline(0.5, color="black", lw=2, ls="--", label="threshold (0.5)")
    ax.set(xlabel="normalised image score", ylabel="images", title="Image scores on the test split")
    ax.legend()
    return _png(fig)


def _per_defect(data: ReportInput, normalized: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for defect, values in data.per_defect.items():
        kind = np.array([s.defect == defect for s in data.samples])
        mean_score = float(normalized[kind].mean())
        rows.append({"defect": defect, "images": values["images"], "mean score": mean_score, **values})
    return rows


def _worst(
    data: ReportInput, labels: np.ndarray, predicted: np.ndarray, out_dir: Path
) -> dict[str, tuple[int, list[tuple[str, bytes, str]]]]:
    """The worst false positives and negatives: how many there are, and up to ``WORST`` overlays of each.

    Ranked by the raw image scores: the normalised ones are clipped to [0, 1], so images far beyond
    the threshold tied at 1 (or 0) and were shown in file order. Each overlay is written at full
    size to ``report/`` and embedded ``THUMB_WIDTH`` wide (a 12-megapixel overlay is 15 MB as PNG).
    """
    order = np.argsort(-data.scores, kind="stable")
    false_pos = [i for i in order if not labels[i] and predicted[i]]
    false_neg = [i for i in order[::-1] if labels[i] and not predicted[i]]
    found: dict[str, tuple[int, list[tuple[str, bytes, str]]]] = {}
    for kind, indices in (("false_positives", false_pos), ("false_negatives", false_neg)):
        shown = []
        for rank, i in enumerate(indices[:WORST]):
            sample = data.samples[i]
            pred = data.full_prediction(i) if data.full_prediction is not None else data.predictions[i]
            gt = read_mask(sample.mask_path) if sample.mask_path else None
            canvas = overlay(read_image(sample.path), pred, gt)
            path = out_dir / f"{kind}_{rank + 1}.png"
            write_overlay(path, canvas)
            name = f"{Path(sample.path).parent.name}/{Path(sample.path).name}"
            shown.append((name, thumbnail(canvas, THUMB_WIDTH), f"{PLOTS_DIR}/{path.name}"))
        found[kind] = (len(indices), shown)
    return found


def _img(data: bytes, alt: str, width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    kind = "jpeg" if data[:3] == b"\xff\xd8\xff" else "png"
    return f'<img alt="{html.escape(alt)}" src="data:image/{kind};base64,{base64.b64encode(data).decode()}"{size}>'


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c, "")
            if isinstance(value, dict):
                value = ", ".join(f"{k} {v}" for k, v in value.items())
            if value is None or (isinstance(value, float) and math.isnan(value)):
                value = "n/a"  # a figure one class cannot give (metrics.json: null), as the console shows it
            cells.append(f"<td>{value:.4f}</td>" if isinstance(value, float) else f"<td>{html.escape(str(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
td, th { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
.plots img { margin-right: 12px; vertical-align: top; }
.cases figure { display: inline-block; margin: 0 12px 12px 0; }
.cases figcaption { font-size: 12px; color: #555; }
.legend { font-size: 13px; color: #444; }
.warn { color: #a40000; }
"""


def write_report(run_dir: Path, data: ReportInput) -> Path:
    """Write ``report.html`` and ``report/*.png`` into ``run_dir``; return the HTML's path."""
    out_dir = run_dir / PLOTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = np.array([s.label == 1 for s in data.samples])
    normalized = np.array([p.pred_score for p in data.predictions])
    predicted = np.array([p.pred_label for p in data.predictions])
    plots: dict[str, bytes] = {}
    if labels.any() and not labels.all():
        plots["roc.png"], plots["precision_recall.png"] = _roc_pr(
            data.scores, labels, predicted.astype(bool), data.metrics["image_AUROC"]
        )
    plots["score_histogram.png"] = _histogram(normalized, labels)
    for name, content in plots.items():
        (out_dir / name).write_bytes(content)
    worst = _worst(data, labels, predicted, out_dir)
    metric_rows = [{"metric": k, "value": None if v is None else float(v)} for k, v in data.metrics.items()]
    split_rows = [{"split": name, **counts} for name, counts in data.splits.items()]
    sections = [
        f"<h1>otx test report: {html.escape(data.model)} ({html.escape(data.backbone)}), {html.escape(data.task)}</h1>",
        f"<p>model: <code>{html.escape(data.source)}</code><br>"
        + (
            f"data: <code>{html.escape(data.data_root)}</code>, test split"
            f"{html.escape(_validation(data.validation))}<br>"
            if data.data_root
            else ""
        )
        + (f"input: {html.escape(data.input_mode)}<br>" if data.input_mode else "")
        + f"runtime: {html.escape(describe_runtime(data.runtime))}<br>otx {__version__}"
        + (f", tested {html.escape(data.date)}" if data.date else "")
        + "</p>",
        *(
            [
                '<h2 class="warn">Warnings</h2><ul class="warn">'
                + "".join(f"<li>{html.escape(w)}</li>" for w in data.warnings)
                + "</ul>"
            ]
            if data.warnings
            else []
        ),
        *(
            [
                f'<h2 class="warn">Images that could not be read ({len(data.errors)}): label "error", '
                "not in the metrics</h2>",
                _table([{"image": e["image"], "label": "error", "reason": e["error"]} for e in data.errors]),
            ]
            if data.errors
            else []
        ),
        "<h2>Metrics (test split)</h2>",
        _table(metric_rows),
        _metric_legend(data.metrics),
        *_decisions(data.decisions),
        *_thresholds(data),
        "<h2>Images per split</h2>",
        _table(split_rows),
        "<h2>Curves and score distribution</h2>",
        '<div class="plots">' + "".join(_img(content, name) for name, content in plots.items()) + "</div>",
        "<h2>Per defect type</h2>",
        '<p class="legend">detected: share of the type\'s images labelled anomalous; flagged: share of the '
        "good images labelled anomalous; image_AUROC, pixel_AUROC and AUPRO: the type's images against the "
        "good ones; defect_pixel_share: the type's share of all defect pixels (the pooled pixel metrics above "
        "weigh every defect pixel alike, so a type with large regions decides them); box_AP50/25/10 "
        "(detection): the type's boxes, with the good images' boxes as false ones; defect_recall: share of "
        "the type's regions that a box overlaps; mean score: the mean normalised image score of the type's "
        "images (0.5 is the threshold; normalised scores stop at 0 and 1).</p>",
        _table(_per_defect(data, normalized)),
        *(
            [
                '<p class="warn">Not in the table, every image unreadable: '
                + html.escape(", ".join(f"{t} ({n})" for t, n in sorted(data.unread_types.items())))
                + " (listed above).</p>"
            ]
            if data.unread_types
            else []
        ),
    ]
    drawn = {  # what overlay() draws for each task
        "classification": "the image",
        "segmentation": "heat map of the anomaly map (blue normal, red anomalous), predicted mask outline in white",
        "detection": "heat map of the anomaly map (blue normal, red anomalous), predicted boxes in magenta with "
        "their scores",
    }.get(data.task, "the image")
    legend = (
        f'<p class="legend">Overlays: {drawn}, ground truth outline in bright green where the data has masks; '
        "the label and normalised score in the corner where they hide the least, with a frame of the label's "
        "colour (red anomalous, dark green normal).</p>"
    )
    for kind, title in (("false_positives", "Worst false positives"), ("false_negatives", "Worst false negatives")):
        total, shown = worst[kind]
        count = f" ({len(shown)} of {total}, by raw image score)" if total > len(shown) else f" ({total})"
        sections.append(f"<h2>{title}{count}</h2>")
        if not shown:
            sections.append("<p>none</p>")
            continue
        sections.append(legend)
        figures = "".join(
            f"<figure>{_img(content, name, 260)}<figcaption>{html.escape(name)} (full size: "
            f"<code>{html.escape(full)}</code>)</figcaption></figure>"
            for name, content, full in shown
        )
        sections.append(f'<div class="cases">{figures}</div>')
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>otx test report</title><style>{STYLE}</style></head><body>" + "\n".join(sections) + "</body></html>"
    )
    path = run_dir / REPORT_NAME
    # a file name that is not valid UTF-8 (kept by Python as surrogates) is shown escaped, not a crash
    path.write_text(page, encoding="utf-8", errors="backslashreplace")
    return path


METRIC_WORDS = {  # what each metric name means, for the report's legend
    "image_AUROC": "how well image scores rank anomalous above normal images (1 perfect, 0.5 chance)",
    "image_F1": "F1 of the image labels at the image threshold",
    "pixel_AUROC": "the same ranking for every pixel, at each image's own size",
    "pixel_F1": "F1 of the predicted masks' pixels at the pixel threshold",
    "AUPRO": "mean overlap of the thresholded map with each defect region, up to a false positive rate of 0.3 "
    "(every region counts alike, small ones too)",
    "box_AP": "box average precision over IoU 0.5 to 0.95 (COCO's AP, pycocotools)",
    "box_AP50": "box average precision at IoU 0.5 (AP25 and AP10: at 0.25 and 0.1, looser overlaps)",
    "defect_recall": "share of the defect regions that a box overlaps",
    "false_boxes_per_normal_image": "boxes on normal images, per normal image",
    "pixel_metrics_divisor": "pixel and box metrics were computed with each image's sides divided by this "
    "(more pixels than the memory allowed at full size; OTX_METRIC_PIXELS sets the budget)",
}


def _metric_legend(metrics: dict[str, Any]) -> str:
    """One line per metric name shown (``_input``: the same at the model's input size)."""
    shown = [name for name in METRIC_WORDS if name in metrics]
    if not shown:
        return ""
    items = "; ".join(f"{name}: {METRIC_WORDS[name]}" for name in shown)
    if any(name.endswith("_input") for name in metrics):
        items += "; names ending in _input: the same at the model's input size (before the maps are resized back)"
    return f'<p class="legend">{html.escape(items)}.</p>'


def _decisions(decisions: dict[str, Any] | None) -> list[str]:
    """The image decisions at the image threshold: found and missed defects, passed and flagged good parts."""
    if not decisions:
        return []

    def share(key: str) -> str:
        return "n/a" if decisions[key] is None else f"{100 * decisions[key]:.1f} %"

    rows = [
        {
            "test images": "anomalous",
            "count": decisions["anomalous"],
            "labelled anomalous": f"{decisions['found']} (found)",
            "labelled normal": f"{decisions['missed']} (missed)",
            "rate": f"recall {share('recall')}",
        },
        {
            "test images": "normal",
            "count": decisions["normal"],
            "labelled anomalous": f"{decisions['flagged']} (false alarms)",
            "labelled normal": f"{decisions['passed']} (passed)",
            "rate": f"false alarms {share('false_alarm_rate')}",
        },
    ]
    note = (
        f'<p class="legend">At the raw image threshold {decisions["threshold"]:.6g}; precision '
        f"{share('precision')} (of the images labelled anomalous, the share that are). To move the operating "
        "point, rank the images by <code>raw_score</code> in this run's predictions.json (each with its "
        "<code>true_label</code>) and train with <code>--model.init_args.image_threshold</code> (docs/deploy.md, "
        '"Choosing the threshold").</p>'
    )
    return ["<h2>Decisions at the image threshold</h2>", _table(rows), note]


def _thresholds(data: ReportInput) -> list[str]:
    """The raw thresholds and how each was set (the scores above are normalised: 0.5 is the threshold)."""
    if not data.thresholds:
        return []
    # classification outputs a score and a label: the pixel threshold it fits all the same is used for nothing
    pixel_level = ADAPTERS[AnomalyTask(data.task)].pixel_level
    rows = [
        {
            "threshold": name,
            "raw value": f"{data.thresholds[f'{name}_threshold']:.6g}",
            "set": data.threshold_origin.get(name, "not recorded"),
        }
        for name in (("image", "pixel") if pixel_level else ("image",))
        if f"{name}_threshold" in data.thresholds
    ]
    note = '<p class="legend">Scores and maps are shown normalised: the raw threshold maps to 0.5. '
    if not pixel_level:
        note += "Classification gives a score and a label per image: no maps, masks or boxes.</p>"
    elif data.boxes is None:
        note += "The pixel threshold draws the masks.</p>"
    else:  # boxes are cut at a level of their own (otx.boxes), not at the pixel threshold
        b = data.boxes
        note += (
            "The pixel threshold draws the masks. Boxes are cut from the normalised map at their own settings "
            f"(chosen on the validation split unless a warning says otherwise): box level {b['threshold']:.3g}, "
            f"components within {100 * b['merge']:.3g} % of the longer side merged, each box around its group's "
            f"core (the pixels at least {100 * b['peak']:.3g} % of the way from the box level to the group's "
            f"maximum), boxes under {100 * b['min_area']:.3g} % of the image dropped, "
            + ("boxes on images labelled normal too" if b["on_normal"] else "no boxes on images labelled normal")
            + f"; each box {score_words(b)}.</p>"
        )
    return ["<h2>Thresholds</h2>", _table(rows), note]


def describe_runtime(runtime: dict[str, str]) -> str:
    """``torch on cpu`` / ``openvino on CPU, inference precision f32`` from a result's ``runtime``."""
    rest = {k: v for k, v in runtime.items() if k not in ("runtime", "device")}
    text = f"{runtime.get('runtime', '?')} on {runtime.get('device', '?')}"
    return text + "".join(f", {k.replace('_', ' ')} {v}" for k, v in rest.items())

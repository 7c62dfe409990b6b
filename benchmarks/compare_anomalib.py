"""Train and test anomalib's own PADIM / STFPM / PatchCore and otx's on the same data, and compare.

Both tools get the same MVTec-layout folder, the same timm backbone with the same ImageNet
weights (otx's offline ``resolve_weights``; anomalib's hard-wired STFPM teacher download is
bypassed), the same random PADIM channel selection / STFPM student initialisation (both
models are built under ``torch.manual_seed(0)``; checked before timing), 256x256 inputs
normalised with the backbone's mean/std, batch size 16, 2 data workers, CPU, and the same
number of epochs. By default anomalib also gets exactly otx's validation/test split (the
validation half of ``test/`` learns the thresholds, the other half is scored); pass
``--split anomalib`` to let anomalib draw its own random half instead.

Timed per tool: train (model construction incl. weight loading, data indexing, fitting,
thresholds, checkpoint) and test (inference and metrics on the test half). Anomalib's
visualizer (result images), logger and, unless ``--verbose``, progress bars are off.
``--repeats N`` alternates the order (anomalib first on even repeats, otx first on odd
ones) and reports medians. ``--isolate`` runs each tool's train+test in a fresh process of its own and
records that process's peak resident memory (data-loader workers not included, for either tool).
PatchCore: both tools get the same coreset ratio (``--coreset_ratio``) and 9 neighbours.

Each tool's metrics come two ways: as the tool reports them (anomalib's Evaluator on its
min-max-normalised scores and maps clamped to [0, 1], at 256x256 against its resized masks; otx's
``*_input`` metrics on raw scores, at 256x256), and by **one scorer** (``same_*`` keys): each
tool's raw image scores and raw 256x256 maps, the maps brought to each image's own size by
``otx.preprocess.PreProcessor.restore`` (bilinear) and scored against the mask files
(``otx.data.io.read_mask``) by ``otx.metrics``, which are what otx's ``otx test`` computes its
own-size pixel metrics with. anomalib's raw outputs come from a second, untimed pass of its
torch model over the test half, after the process's peak memory has been read.

Usage::

    .venv/bin/python benchmarks/compare_anomalib.py --data_root DIR --models padim stfpm \
        --backbone efficientnet_lite0 --stfpm_epochs 10 --repeats 1 --work_dir /tmp/cmp \
        --out benchmarks/results/compare_anomalib.json

Writes JSON to ``--out`` and prints a markdown table to stdout.
"""

from __future__ import annotations

# ruff: noqa: E402 - warnings are silenced before the noisy imports below.
import warnings

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=UserWarning)

import argparse
import contextlib
import io
import json
import logging
import platform
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from queue import Empty
from typing import Any

import anomalib.models.image.stfpm.torch_model as anomalib_stfpm_torch
import lightning as L
import numpy as np
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine as AnomalibEngine
from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Score
from anomalib.models import Padim as AnomalibPadim
from anomalib.models import Patchcore as AnomalibPatchcore
from anomalib.models import Stfpm as AnomalibStfpm
from anomalib.pre_processing import PreProcessor
from rich.console import Console
from torchvision.transforms.v2 import Compose, Normalize, Resize

from otx.data import AnomalyDataModule
from otx.data.dataset import Sample
from otx.data.io import image_size, read_mask
from otx.engine import Engine as OtxEngine
from otx.errors import OTXError
from otx.metrics import image_metrics, pixel_metrics
from otx.models import Padim as OtxPadim
from otx.models import Patchcore as OtxPatchcore
from otx.models import Stfpm as OtxStfpm
from otx.models.backbones import BackboneSpec, get_backbone, load_into, resolve_weights
from otx.preprocess import PreProcessor as OtxPreProcessor

SEED = 42  # otx Engine / datamodule seed (training shuffle, validation split)
MODEL_SEED = 0  # otx's default model seed (PADIM channel selection, STFPM student init)
VAL_SPLIT = 0.5
INPUT_SIZE = (256, 256)
METRICS = ("image_AUROC", "image_F1", "pixel_AUROC", "pixel_F1", "AUPRO")
# one scorer for both tools: raw scores, raw maps at each image's own size, otx.metrics (module docstring)
SAME_SCORER = ("same_image_AUROC", "same_pixel_AUROC", "same_AUPRO")
TIMES = ("train_s", "test_s", "total_s")
OTX_CLASSES = {"padim": OtxPadim, "stfpm": OtxStfpm, "patchcore": OtxPatchcore}
LABELS = {"padim": "PADIM", "stfpm": "STFPM", "patchcore": "PatchCore"}
# anomalib's metric names (prefix + class name) -> otx's names
ANOMALIB_METRIC_NAMES = {
    "image_AUROC": "image_AUROC",
    "image_F1Score": "image_F1",
    "pixel_AUROC": "pixel_AUROC",
    "pixel_F1Score": "pixel_F1",
    "pixel_AUPRO": "AUPRO",
}
ANOMALIB_DISABLED = [
    "visualizer (no result images written)",
    "logger (logger=False)",
    "Lightning model summary",
    "progress bars (unless --verbose)",
]

log = logging.getLogger("compare_anomalib")


# --- settings and results --------------------------------------------------------------------
@dataclass
class Settings:
    """What both tools are run with."""

    data_root: Path
    spec: BackboneSpec
    stfpm_epochs: int
    batch_size: int
    num_workers: int
    work_dir: Path
    split: str
    verbose: bool
    weights: str | None = None
    coreset_ratio: float = 0.01
    val_paths: frozenset[str] = field(default_factory=frozenset)
    test_paths: frozenset[str] = field(default_factory=frozenset)

    def epochs(self, model: str) -> int:
        """Training epochs of ``model`` (the same for both tools)."""
        return self.stfpm_epochs if model == "stfpm" else 1

    def layers(self, model: str) -> list[str]:
        """Feature layers of ``model`` for the backbone (otx's defaults, given to both tools).

        STFPM: the layers of anomalib's student (``student="backbone"``), the one both tools build.
        """
        if model == "stfpm":
            return list(OtxStfpm.pyramid_layers_by_backbone[self.spec.name])
        return list(OTX_CLASSES[model].layers_by_backbone[self.spec.name])


@dataclass
class RunResult:
    """One train+test of one model by one tool."""

    model: str
    tool: str
    repeat: int
    position: int  # 0: ran first in this repeat, 1: ran second
    train_s: float
    test_s: float
    total_s: float
    metrics: dict[str, float]
    splits: dict[str, int]
    peak_rss_mb: float | None = None  # with --isolate: the run's own process


def _resolved(path: str | Path) -> str:
    return str(Path(path).resolve())


# --- otx ---------------------------------------------------------------------------------------
def build_otx_model(model: str, s: Settings) -> OtxPadim | OtxStfpm | OtxPatchcore:
    """otx's model with its defaults for the backbone (weights resolved offline inside)."""
    common = {  # resize, as anomalib's pre-processor does (the models' default auto keeps long images' shape)
        "backbone": s.spec.name,
        "layers": s.layers(model),
        "input_size": INPUT_SIZE,
        "input_mode": "resize",
        "weights": s.weights,
    }
    if model == "patchcore":
        return OtxPatchcore(**common, coreset_ratio=s.coreset_ratio, num_neighbors=9)
    if model == "stfpm":  # anomalib's student and optimiser (otx's default is a small student, Adam)
        return OtxStfpm(
            **common, seed=MODEL_SEED, student="backbone", optimizer="sgd", lr=0.4, score_top_share=None
        )  # anomalib's STFPM: its student, its optimiser, its score (the map's maximum)
    return OTX_CLASSES[model](**common, seed=MODEL_SEED)


Rescore = Callable[[], dict[str, float]]
RunOutput = tuple[float, float, dict[str, float], dict[str, int], Rescore]


def run_otx(model: str, s: Settings, work_dir: Path) -> RunOutput:
    """Train and test with otx; return (train_s, test_s, metrics, split sizes, one-scorer metrics' function)."""
    console = Console(stderr=True, quiet=not s.verbose)
    start = time.perf_counter()
    data = AnomalyDataModule(
        str(s.data_root), val_split=VAL_SPLIT, seed=SEED, batch_size=s.batch_size, num_workers=s.num_workers
    )
    engine = OtxEngine(
        model=build_otx_model(model, s),
        data=data,
        task="segmentation",
        work_dir=work_dir,
        max_epochs=s.epochs(model),
        seed=SEED,
        console=console,
        trainer={"callbacks": []},  # every epoch, the last kept, as anomalib's side trains (no early stopping)
    )
    engine.train()
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    result = engine.test()
    test_s = time.perf_counter() - start
    # anomalib scores pixels at the input size (masks resized to 256x256); otx's pixel_* keys are at
    # each image's own size, its *_input keys on anomalib's grid: compare those
    found = result["metrics"]
    metrics = {k: float(found.get(f"{k}_input", found[k])) for k in METRICS if k in found}
    splits = {name: len(samples) for name, samples in data.splits.items()}
    # otx test's own-size pixel metrics and raw-score image AUROC are the one scorer's computation
    same = {"same_image_AUROC": "image_AUROC", "same_pixel_AUROC": "pixel_AUROC", "same_AUPRO": "AUPRO"}
    return train_s, test_s, metrics, splits, lambda: {ours: float(found[key]) for ours, key in same.items()}


# --- anomalib ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _no_stfpm_teacher_download() -> Iterator[None]:
    """anomalib's STFPMModel hard-wires ``pre_trained=True`` for the teacher (a hub download); build it
    without, the ImageNet weights are loaded afterwards from otx's offline source."""
    original = anomalib_stfpm_torch.TimmFeatureExtractor

    def offline(*args: Any, **kwargs: Any) -> Any:
        kwargs["pre_trained"] = False
        return original(*args, **kwargs)

    anomalib_stfpm_torch.TimmFeatureExtractor = offline  # type: ignore[assignment, misc]
    try:
        yield
    finally:
        anomalib_stfpm_torch.TimmFeatureExtractor = original  # type: ignore[misc]


def build_anomalib_model(
    model: str, s: Settings, layers: list[str] | None = None
) -> AnomalibPadim | AnomalibStfpm | AnomalibPatchcore:
    """anomalib's Padim / Stfpm with otx's backbone, layers, weights, pre-processing and seed.

    ``layers`` overrides the backbone's default feature layers (to match a given otx checkpoint).
    """
    layers = list(layers) if layers is not None else s.layers(model)
    pre_processor = PreProcessor(
        transform=Compose([Resize(INPUT_SIZE, antialias=True), Normalize(mean=s.spec.mean, std=s.spec.std)])
    )
    evaluator = Evaluator(
        test_metrics=[
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        ]
    )
    common: dict[str, Any] = {"pre_processor": pre_processor, "evaluator": evaluator, "visualizer": False}
    with torch.random.fork_rng():
        torch.manual_seed(MODEL_SEED)
        if model == "padim":
            core = AnomalibPadim(
                backbone=s.spec.timm_name,
                layers=layers,
                pre_trained=False,
                n_features=OtxPadim.n_features_by_backbone[s.spec.name],
                **common,
            )
        elif model == "patchcore":
            core = AnomalibPatchcore(
                backbone=s.spec.timm_name,
                layers=layers,
                pre_trained=False,
                coreset_sampling_ratio=s.coreset_ratio,
                num_neighbors=9,
                **common,
            )
        else:
            with _no_stfpm_teacher_download():
                core = AnomalibStfpm(backbone=s.spec.timm_name, layers=layers, **common)
    state, _ = resolve_weights(s.spec, s.weights)
    pretrained = core.model.teacher_model if model == "stfpm" else core.model.feature_extractor
    load_into(pretrained.feature_extractor, state, s.spec.name)
    return core


def _anomalib_datamodule(s: Settings) -> MVTecAD:
    class OtxSplitMVTecAD(MVTecAD):
        """MVTecAD whose validation/test halves of ``test/`` are exactly otx's."""

        def _create_val_split(self) -> None:
            paths = [_resolved(p) for p in self.test_data.samples.image_path]
            val_idx = [i for i, p in enumerate(paths) if p in s.val_paths]
            test_idx = [i for i, p in enumerate(paths) if p in s.test_paths]
            if (
                len(val_idx) != len(s.val_paths)
                or len(test_idx) != len(s.test_paths)
                or len(paths) != len(val_idx) + len(test_idx)
            ):
                raise RuntimeError(
                    f"anomalib's MVTecAD sees {len(paths)} test images, otx splits them into {len(s.val_paths)} val + "
                    f"{len(s.test_paths)} test and only {len(val_idx)} + {len(test_idx)} match (anomalib reads .png "
                    "only, otx more formats and val/ folders); rerun with --split anomalib"
                )
            self.val_data = self.test_data.subsample(val_idx)
            self.test_data = self.test_data.subsample(test_idx)

    cls = OtxSplitMVTecAD if s.split == "otx" else MVTecAD
    return cls(
        root=s.data_root.parent,
        category=s.data_root.name,
        train_batch_size=s.batch_size,
        eval_batch_size=s.batch_size,
        num_workers=s.num_workers,
        val_split_mode="from_test",  # anomalib 2.7's MVTecAD default is same_as_test (thresholds on the test set)
        val_split_ratio=VAL_SPLIT,
        seed=SEED,
    )


def run_anomalib(model: str, s: Settings, work_dir: Path) -> RunOutput:
    """Train and test with anomalib; return (train_s, test_s, metrics, split sizes, one-scorer metrics' function)."""
    start = time.perf_counter()
    L.seed_everything(SEED, verbose=False)  # as otx's Engine does before training
    core = build_anomalib_model(model, s)
    datamodule = _anomalib_datamodule(s)
    engine = AnomalibEngine(
        max_epochs=s.epochs(model),
        accelerator="cpu",
        devices=1,
        logger=False,
        default_root_dir=work_dir,
        enable_progress_bar=s.verbose,
        enable_model_summary=False,
    )
    engine.fit(model=core, datamodule=datamodule)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    results = engine.test(model=core, datamodule=datamodule, verbose=s.verbose)
    test_s = time.perf_counter() - start
    raw = results[0] if results else {}
    metrics = {ours: float(raw[theirs]) for theirs, ours in ANOMALIB_METRIC_NAMES.items() if theirs in raw}
    splits = {name: len(getattr(datamodule, f"{name}_data")) for name in ("train", "val", "test")}
    return train_s, test_s, metrics, splits, lambda: anomalib_same_scorer(core, datamodule)


def anomalib_same_scorer(core: Any, datamodule: MVTecAD) -> dict[str, float]:
    """anomalib's raw test outputs (its torch model, before its normalisation) through otx's scorer."""
    restore = OtxPreProcessor(INPUT_SIZE, "resize").restore
    core.model.eval()
    scores: list[float] = []
    labels: list[int] = []
    maps: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    # from the dataset, not the batches: anomalib's collate drops a batch's mask paths when it mixes
    # normal and anomalous images
    samples = datamodule.test_data.samples
    mask_of = dict(zip(samples.image_path, samples.mask_path, strict=True))
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            out = core.model(core.pre_processor.transform(batch.image))
            scores += out.pred_score.flatten().tolist()
            labels += batch.gt_label.int().tolist()
            for amap, label, image_path in zip(
                out.anomaly_map[:, 0].numpy(), batch.gt_label.tolist(), batch.image_path, strict=True
            ):
                size = image_size(image_path)
                maps.append(restore(amap, size))  # normal images have no mask file
                masks.append(read_mask(mask_of[image_path]) if label else np.zeros(size, bool))
    found = pixel_metrics(maps, masks, [m > np.inf for m in maps])  # no thresholds here: F1 is not used
    return {
        "same_image_AUROC": image_metrics(scores, labels, labels)["image_AUROC"],
        "same_pixel_AUROC": found["pixel_AUROC"],
        "same_AUPRO": found["AUPRO"],
    }


def _rescored(tool: str, rescore: Rescore) -> dict[str, float]:
    """The one-scorer metrics, or none (with a warning) if they fail: the run's own results are kept."""
    try:
        return rescore()
    except Exception as exc:  # noqa: BLE001 - an extra must not cost an hour-long run its results
        print(
            f"warning: {tool}'s one-scorer metrics failed ({type(exc).__name__}: {exc}); kept its own", file=sys.stderr
        )
        return {}


# --- checks ------------------------------------------------------------------------------------
def check_same_init(model: str, s: Settings) -> dict[str, bool]:
    """Build both models (untimed) and check that they start from identical weights and channels."""
    ours = build_otx_model(model, s).model.state_dict()
    theirs = build_anomalib_model(model, s).model.state_dict()
    same_keys = ours.keys() == theirs.keys()
    same_values = same_keys and all(torch.equal(ours[k], theirs[k]) for k in ours)
    return {"same_state_dict_keys": same_keys, "same_initial_weights": bool(same_values)}


def otx_split(s: Settings) -> tuple[list[Sample], list[Sample]]:
    """otx's validation and test halves of ``test/`` (what otx's Engine will use)."""
    data = AnomalyDataModule(str(s.data_root), val_split=VAL_SPLIT, seed=SEED, check_files=False)
    data.setup()
    return data.splits["val"], data.splits["test"]


# --- reporting ---------------------------------------------------------------------------------
def split_settings(data_root: Path, work_dir: Path, stfpm_epochs: int) -> Settings:
    """Settings for EfficientNet-Lite0 at batch 16 with otx's validation/test split of ``data_root`` fixed."""
    s = Settings(
        data_root=data_root.resolve(),
        spec=get_backbone("efficientnet_lite0"),
        stfpm_epochs=stfpm_epochs,
        batch_size=16,
        num_workers=2,
        work_dir=work_dir,
        split="otx",
        verbose=False,
    )
    val, test = otx_split(s)
    s.val_paths = frozenset(_resolved(x.path) for x in val)
    s.test_paths = frozenset(_resolved(x.path) for x in test)
    return s


def _median(values: list[float]) -> float:
    clean = [v for v in values if v == v]  # drop NaN
    return statistics.median(clean) if clean else float("nan")


def summarise(runs: list[RunResult], models: list[str]) -> dict[str, Any]:
    """Medians per model and tool, and otx/anomalib time ratios."""
    summary: dict[str, Any] = {}
    for model in models:
        entry: dict[str, Any] = {}
        for tool in ("anomalib", "otx"):
            mine = [r for r in runs if r.model == model and r.tool == tool]
            if not mine:
                continue
            entry[tool] = {
                **{k: _median([r.metrics.get(k, float("nan")) for r in mine]) for k in METRICS + SAME_SCORER},
                **{k: _median([getattr(r, k) for r in mine]) for k in TIMES},
                "runs": len(mine),
                "splits": mine[0].splits,
            }
        if "anomalib" in entry and "otx" in entry:
            entry["ratio_otx_over_anomalib"] = {
                k: entry["otx"][k] / entry["anomalib"][k] if entry["anomalib"][k] else float("nan") for k in TIMES
            }
        summary[model] = entry
    return summary


def _fmt(value: float, digits: int) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def markdown_table(
    summary: dict[str, Any], s: Settings, repeats: int, init_checks: dict[str, Any], args_first: str = "anomalib"
) -> str:
    """The comparison as a markdown table plus the caveats."""
    head = ["model", "tool", "image AUROC", "image F1", "pixel AUROC", "pixel F1", "AUPRO", "train s", "test s"]
    head.append("train+test s")
    with_peak = any("peak_rss_mb" in entry.get(tool, {}) for entry in summary.values() for tool in ("anomalib", "otx"))
    if with_peak:
        head.append("peak MB")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for model, entry in summary.items():
        label = f"{LABELS[model]} ({s.epochs(model)} ep)"
        for tool in ("anomalib", "otx"):
            if tool not in entry:
                continue
            row = entry[tool]
            cells = [label, tool, *(_fmt(row[k], 3) for k in METRICS), *(_fmt(row[k], 1) for k in TIMES)]
            if with_peak:
                cells.append(_fmt(row.get("peak_rss_mb", float("nan")), 0))
            lines.append("| " + " | ".join(cells) + " |")
        if "ratio_otx_over_anomalib" in entry:
            ratio = entry["ratio_otx_over_anomalib"]
            cells = [label, "**otx / anomalib**", *[""] * len(METRICS), *(f"{_fmt(ratio[k], 2)}x" for k in TIMES)]
            if with_peak:
                peaks = [entry[t].get("peak_rss_mb", float("nan")) for t in ("otx", "anomalib")]
                cells.append(f"{_fmt(peaks[0] / peaks[1], 2)}x" if peaks[1] else "n/a")
            lines.append("| " + " | ".join(cells) + " |")
    if summary:
        lines += [
            "",
            "One scorer (each tool's raw scores and raw maps, maps at each image's own size, `otx.metrics`):",
            "",
            "| model | tool | image AUROC | pixel AUROC | AUPRO |",
            "|---|---|---:|---:|---:|",
        ]
        for model, entry in summary.items():
            for tool in ("anomalib", "otx"):
                if tool in entry:
                    values = [_fmt(entry[tool].get(k, float("nan")), 4) for k in SAME_SCORER]
                    lines.append(f"| {LABELS[model]} | {tool} | " + " | ".join(values) + " |")
    split_note = (
        "anomalib scored exactly otx's test half (otx's seeded validation split imposed on anomalib's MVTecAD)"
        if s.split == "otx"
        else "each tool drew its own random validation half from test/, so the scored test halves differ"
    )
    init_note = ", ".join(
        f"{m}: {'identical' if c['same_initial_weights'] else 'DIFFERENT'}" for m, c in init_checks.items()
    )
    notes = [
        "",
        f"Data: `{s.data_root}`; backbone `{s.spec.name}` (timm `{s.spec.timm_name}`), same ImageNet weights, "
        f"{INPUT_SIZE[0]}x{INPUT_SIZE[1]} input, mean/std {s.spec.mean}/{s.spec.std}, batch {s.batch_size}, "
        f"{s.num_workers} workers, CPU, {torch.get_num_threads()} torch threads; medians of {repeats} run(s), "
        f"order alternating ({args_first} first on even repeats).",
        f"Initial weights / PADIM channels ({init_note}).",
        f"Split: {split_note}; thresholds from the validation half (50% of test/).",
        f"anomalib: disabled {', '.join(ANOMALIB_DISABLED)}; it still writes its STFPM checkpoint (2.7 skips it "
        "for PADIM: no optimiser step; otx always writes one) and, for "
        "STFPM, runs validation after every epoch (otx once after training). Its metrics are computed on "
        "min-max-normalised scores clamped to [0, 1] (ties can move AUROC slightly); otx's on raw scores; "
        "the one-scorer table scores both tools' raw outputs alike.",
        "Both resize float tensors the same way (bilinear, antialias; masks nearest). "
        "train s = model construction + weights + data indexing + fit + thresholds + checkpoint.",
    ]
    return "\n".join(lines + notes)


# --- isolation: one process per run, its peak memory -----------------------------------------------
def _child(tool: str, model: str, s: Settings, work_dir: Path, verbose: bool, queue: Any) -> None:
    import resource

    _quiet_logging(verbose)
    runner = run_anomalib if tool == "anomalib" else run_otx
    with _maybe_silenced(verbose):
        *out, rescore = runner(model, s, work_dir)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KB on Linux; before the rescoring
    queue.put((*out, peak))  # sent first: the run's results survive whatever the rescoring does
    with _maybe_silenced(verbose):
        queue.put(_rescored(tool, rescore))


def _receive(queue: Any, process: Any, what: str) -> Any:
    """The child's next message; a child that dies (an exception, killed for memory) sends nothing: stop."""
    while True:
        try:
            return queue.get(timeout=5)
        except Empty:
            if not process.is_alive():
                try:  # sent just before it ended?
                    return queue.get(timeout=1)
                except Empty:
                    raise RuntimeError(f"{what}: its process ended (exit code {process.exitcode})") from None


def _isolated(
    tool: str, model: str, s: Settings, work_dir: Path, verbose: bool
) -> tuple[float, float, dict[str, float], dict[str, int], float]:
    """Run one tool's train+test in a fresh (spawned) process; its results and peak RSS in MB."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(tool, model, s, work_dir, verbose, queue))
    process.start()
    try:
        train_s, test_s, metrics, splits, peak = _receive(queue, process, f"the {tool} run has no result")
        try:
            metrics = {**metrics, **_receive(queue, process, f"{tool}'s one-scorer metrics")}
        except RuntimeError as exc:
            print(f"warning: {exc}; its own results are kept", file=sys.stderr)
        process.join()
        result = train_s, test_s, metrics, splits, peak
    finally:  # stopped (Ctrl-C, SIGTERM): the child must not run on alone
        if process.is_alive():
            process.terminate()
            process.join(10)
    return result


# --- main --------------------------------------------------------------------------------------
def _quiet_logging(verbose: bool) -> None:
    """Silence library INFO logs; re-applied before each run because a late import of the standalone
    ``pytorch_lightning`` / ``lightning_fabric`` packages resets their loggers (and takes over rank_zero_info)."""
    level = logging.INFO if verbose else logging.ERROR
    for name in (
        "lightning",
        "lightning.pytorch",
        "lightning.fabric",
        "pytorch_lightning",
        "lightning_fabric",
        "anomalib",
        "otx",
        "timm",
    ):
        logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _maybe_silenced(verbose: bool) -> Iterator[None]:
    """Swallow stdout (Lightning's test tables) unless verbose; stdout is kept for the final table."""
    if verbose:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_root", required=True, type=Path, help="MVTec-layout category folder")
    parser.add_argument("--models", nargs="+", default=["padim", "stfpm"], choices=["padim", "stfpm", "patchcore"])
    parser.add_argument("--coreset_ratio", type=float, default=0.01, help="PatchCore's coreset ratio, for both tools")
    parser.add_argument("--first", choices=["anomalib", "otx"], default="anomalib", help="which tool runs first")
    parser.add_argument("--isolate", action="store_true", help="each run in its own process; records peak memory")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="otx backbone name")
    parser.add_argument("--stfpm_epochs", type=int, default=10, help="STFPM epochs, for both tools")
    parser.add_argument("--repeats", type=int, default=1, help="timing repeats (order alternates); medians")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument(
        "--split",
        choices=["otx", "anomalib"],
        default="otx",
        help="otx: anomalib uses exactly otx's val/test halves; anomalib: its own random from_test split",
    )
    parser.add_argument("--weights", default=None, help="local ImageNet weights file for the backbone (both tools)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/cmp"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compare_anomalib.json"))
    parser.add_argument("--verbose", action="store_true", help="show both tools' own output and progress bars")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; print the markdown table, write the JSON."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so that --isolate's child is stopped too
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    _quiet_logging(args.verbose)
    log.setLevel(logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    data_root = args.data_root.expanduser().resolve()
    if not (data_root / "train").is_dir() or not (data_root / "test").is_dir():
        sys.exit(f"error: '{data_root}' is not an MVTec-layout folder (needs train/good and test/)")
    try:
        spec = get_backbone(args.backbone)
        _, weights_source = resolve_weights(spec, args.weights)
    except OTXError as exc:
        sys.exit(f"error: {exc}\n(for this script: pass --weights FILE or use --backbone efficientnet_lite0)")
    s = Settings(
        data_root=data_root,
        spec=spec,
        stfpm_epochs=args.stfpm_epochs,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        work_dir=args.work_dir.expanduser().resolve(),
        split=args.split,
        verbose=args.verbose,
        weights=args.weights,
        coreset_ratio=args.coreset_ratio,
    )
    val, test = otx_split(s)
    s.val_paths = frozenset(_resolved(x.path) for x in val)
    s.test_paths = frozenset(_resolved(x.path) for x in test)
    log.info(
        "weights: %s (%s); otx split: %d val / %d test images", spec.timm_name, weights_source, len(val), len(test)
    )

    init_checks: dict[str, Any] = {}
    runs: list[RunResult] = []
    runners: dict[str, Callable[[str, Settings, Path], RunOutput]] = {
        "anomalib": run_anomalib,
        "otx": run_otx,
    }
    for model in args.models:
        _quiet_logging(args.verbose)
        with _maybe_silenced(args.verbose):
            init_checks[model] = check_same_init(model, s)
        log.info("%s: initial weights identical in both tools: %s", model, init_checks[model]["same_initial_weights"])
        for repeat in range(args.repeats):
            order = ["anomalib", "otx"] if (repeat + (args.first == "otx")) % 2 == 0 else ["otx", "anomalib"]
            for position, tool in enumerate(order):
                work_dir = s.work_dir / model / tool / f"repeat{repeat}"
                log.info("%s repeat %d/%d: %s ...", model, repeat + 1, args.repeats, tool)
                _quiet_logging(args.verbose)
                peak = None
                if args.isolate:
                    train_s, test_s, metrics, splits, peak = _isolated(tool, model, s, work_dir, args.verbose)
                else:
                    with _maybe_silenced(args.verbose):
                        train_s, test_s, metrics, splits, rescore = runners[tool](model, s, work_dir)
                        metrics = {**metrics, **_rescored(tool, rescore)}
                        del rescore  # it holds the tool's model and data: free them before the next run
                result = RunResult(
                    model, tool, repeat, position, train_s, test_s, train_s + test_s, metrics, splits, peak
                )
                runs.append(result)
                log.info(
                    "  train %.1fs, test %.1fs, peak %s MB, %s",
                    train_s,
                    test_s,
                    f"{peak:.0f}" if peak else "n/a",
                    ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()),
                )

    summary = summarise(runs, args.models)
    for model, entry in summary.items():  # peak memory per tool (--isolate)
        for tool in ("anomalib", "otx"):
            peaks = [r.peak_rss_mb for r in runs if r.model == model and r.tool == tool and r.peak_rss_mb]
            if tool in entry and peaks:
                entry[tool]["peak_rss_mb"] = _median(peaks)
    table = markdown_table(summary, s, args.repeats, init_checks, args.first)
    report = {
        "config": {
            **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "data_root": str(data_root),
            "timm_backbone": spec.timm_name,
            "layers": {m: s.layers(m) for m in args.models},
            "padim_n_features": OtxPadim.n_features_by_backbone[spec.name],
            "coreset_ratio": args.coreset_ratio,
            "input_size": list(INPUT_SIZE),
            "mean": list(spec.mean),
            "std": list(spec.std),
            "weights_source": weights_source,
            "seed": SEED,
            "model_seed": MODEL_SEED,
            "val_split": VAL_SPLIT,
            "torch_threads": torch.get_num_threads(),
            "anomalib_disabled": ANOMALIB_DISABLED,
        },
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            **{pkg: version(pkg) for pkg in ("otx", "anomalib", "torch", "torchvision", "lightning", "timm")},
        },
        "init_checks": init_checks,
        "runs": [asdict(r) for r in runs],
        "summary": summary,
        "markdown": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(table)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``otx predict``: labels, masks, boxes and overlays for a file, folder or glob (or the test split)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import time
import unicodedata
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from otx import distributed
from otx.checks import input_file_warnings
from otx.data.datamodule import samples_from_source
from otx.data.dataset import Sample, layout_mask
from otx.data.io import read_image, read_mask
from otx.errors import OTXDataError, OTXError
from otx.results import PredictResult
from otx.tasks import Prediction
from otx.verbs.context import VerbContext, peak_memory_mb, write_result
from otx.verbs.inference import (
    batches,
    iter_predictions,
    marks_nothing,
    prediction_counts,
    unmarked_key,
    unmarked_note,
)
from otx.verbs.resolve import eval_data, resolve_model, untuned_boxes
from otx.visualize import overlay, write_overlay, write_png
from otx.workdir import Run

log = logging.getLogger("otx")


# Room for the suffixes output_stems and the writers add ("_jpeg", a counter, "_mask.png") within
# the 255 bytes most file systems allow in a name.
MAX_STEM_BYTES = 200


def fit_stem(stem: str) -> str:
    """``stem`` when it fits in ``MAX_STEM_BYTES`` (UTF-8), else its start, ``_`` and 10 hex digits of its SHA-1."""
    raw = stem.encode("utf-8", "surrogatepass")
    if len(raw) <= MAX_STEM_BYTES:
        return stem
    digest = hashlib.sha1(raw).hexdigest()[:10]
    return f"{raw[: MAX_STEM_BYTES - 11].decode('utf-8', 'ignore')}_{digest}"


def _folded(name: str) -> str:
    """``name`` as a file system that ignores case and Unicode normal forms compares it."""
    return unicodedata.normalize("NFC", name).casefold()


def output_stems(paths: list[str]) -> dict[str, str]:
    """Each image's name for its mask and overlay files, unique among ``paths``.

    The path under the images' common folder, ``__`` for each ``/``, without the extension; where
    that would name two images (``a.png`` and ``a.jpg``), each keeps its extension (``a_png``,
    ``a_jpg``), then a counter if still needed. A name longer than ``MAX_STEM_BYTES`` keeps its
    start and ends in a digest of the whole (``fit_stem``): file names hold at most 255 bytes.
    The same for every process of a distributed run (it depends on the whole list only).
    """
    root = Path(os.path.commonpath([str(Path(p).parent) for p in paths]))
    plain = [fit_stem("__".join(Path(p).relative_to(root).with_suffix("").parts)) for p in paths]
    # names compared as a file system that ignores case and Unicode forms does (macOS, Windows): a.png and A.jpg
    # named one overlay there, before
    shared = {stem for stem, count in Counter(map(_folded, plain)).items() if count > 1}
    stems: dict[str, str] = {}
    used: set[str] = set()
    for path, stem in zip(paths, plain, strict=True):
        if _folded(stem) in shared:
            stem = f"{stem}_{Path(path).suffix.lstrip('.')}"
        name, count = stem, 1
        while _folded(name) in used:
            count += 1
            name = f"{stem}_{count}"
        used.add(_folded(name))
        stems[path] = name
    return stems


def outline_mask(mask_path: str | None, image_hw: tuple[int, int]) -> np.ndarray | None:
    """The ground-truth mask to outline on an overlay; None without one, or when unreadable or not the image's size."""
    if not mask_path:
        return None
    try:
        mask = read_mask(mask_path)
    except OTXDataError:
        return None
    return mask if mask.shape == tuple(image_hw) else None


# threads drawing overlays: half the cores this process may use, 1 to 4 (1 on 2 cores; a container's own)
OVERLAY_THREADS = max(1, min(4, len(os.sched_getaffinity(0)) // 2 if hasattr(os, "sched_getaffinity") else 1))


@contextlib.contextmanager
def written(target: Path) -> Iterator[None]:
    """Writes ``target`` inside: an ``OSError`` (a full disk mid-run) becomes one line that names the file."""
    try:
        yield
    except OSError as exc:
        advice = (
            "use a shorter --work_dir (the run's other files are kept)"
            if exc.errno == errno.ENAMETOOLONG
            else "check the free space and permissions of the work dir (the run's other files are kept)"
        )
        # the file named also where the write itself does not say it (a full disk: os.write; a bug bash)
        what = f"could not write '{exc.filename or target}' ({exc.strerror or exc})"
        raise OTXError(f"{what}; {advice}") from exc


def draw_overlay(target: Path, prediction: Prediction, sample: Sample) -> None:
    """Draw ``prediction`` on its image, the ground truth outlined where there is one, and write it to ``target``."""
    image = read_image(prediction.image_path)
    gt = outline_mask(sample.mask_path or layout_mask(sample.path), image.shape[:2])
    canvas = overlay(image, prediction, gt)
    with written(target):
        write_overlay(target, canvas)


class OverlayWriter:
    """``draw_overlay`` on ``threads`` threads (0: at once, in the caller's), at most twice as many pending.

    A failed overlay raises its error in the caller at the next ``submit`` or on leaving the
    ``with`` block, which waits for the rest; on an error the ones not started are dropped.
    """

    def __init__(self, threads: int) -> None:
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="otx-overlay") if threads else None
        self.pending: deque[Future[None]] = deque()
        self.limit = 2 * threads

    def submit(self, target: Path, prediction: Prediction, sample: Sample) -> None:
        """Draw and write one overlay (on a thread, once fewer than the limit are pending)."""
        if self.pool is None:
            draw_overlay(target, prediction, sample)
            return
        while len(self.pending) >= self.limit:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(draw_overlay, target, prediction, sample))

    def __enter__(self) -> OverlayWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        if self.pool is None:
            return
        try:
            while kind is None and self.pending:
                self.pending.popleft().result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


def run(
    ctx: VerbContext,
    run: Run,
    source: str | Path | None,
    checkpoint: str | Path | None,
    visualize: bool,
    devices: int = 1,
    num_nodes: int = 1,
    keep_masks: bool = True,
    keep_maps: bool = False,
) -> PredictResult:
    """Predict every image; an unreadable one gets the label ``error`` and the rest are still predicted.

    With ``devices`` x ``num_nodes`` > 1 the images are split between that many processes
    (``otx.distributed.launch``); rank 0 writes the same files one process writes.

    Writes ``predictions/predictions.json``, mask PNGs (each record names its ``mask``) and (with
    ``visualize``) overlays; raises one ``OTXDataError`` line after writing when no image could be
    read (``latest.json`` unchanged). Without ``keep_masks`` the returned predictions drop each mask
    once it is written, so memory does not grow by a full-size mask per image (the CLI's choice).
    The anomaly maps are dropped unless ``keep_maps`` (a float per pixel of each image).
    """
    scorer = resolve_model(ctx, checkpoint)  # a missing model is reported before other processes start
    distributed.launch(devices, num_nodes)
    adapter = ctx.adapter(scorer.task)
    if message := untuned_boxes(scorer, adapter):
        ctx.warn(message)
    if source is not None:
        samples = samples_from_source(source)
        data = ctx.data
    else:
        found = eval_data(ctx, scorer.data_info, purpose="predict")
        if found is None:
            raise OTXError("nothing to predict; pass --source (an image, folder or glob) or --data_root DIR")
        data = found
        samples = data.splits["test"]
        if not samples:
            raise OTXError(
                f"no images under {Path(data.data_root or '.') / 'test'} to predict; "
                "pass --source (an image, folder or glob)"
            )
    ctx.save_config(
        run,
        adapter.task.value,
        scorer.model_entry(),
        {"checkpoint": str(scorer.source), "source": str(source) if source else None},
        data=data,
    )
    # files are named under the source folder (under the data root without a source), else as given
    folder = Path(source).expanduser() if source is not None else Path(data.data_root or ".")
    root = folder if folder.is_dir() and all(Path(s.path).is_relative_to(folder) for s in samples) else None
    # (pages and EXIF orientation: a data root's index says these, as in train and test)
    paths = [s.path for s in samples]
    for message in input_file_warnings(scorer.data_info.get("profile"), paths, root, headers=source is not None):
        ctx.warn(message)
    stems = output_stems([s.path for s in samples])
    # rank 0's folder: in a distributed run every process writes its images' masks and overlays there
    out_dir = distributed.broadcast(run.path / "predictions")
    (out_dir / "masks" if adapter.pixel_level else out_dir).mkdir(parents=True, exist_ok=True)  # classification: none
    predictions: list[Prediction] = []
    positions: list[int] = []
    unmarked: list[int] = []  # the positions of images labelled anomalous that mark nothing (before masks are dropped)
    start = time.perf_counter()
    # Overlays are drawn and written on threads (PNG encoding takes 0.4 s for 3000x4000 and releases the
    # GIL) while the next images are scored, a bounded number at a time.
    with OverlayWriter(OVERLAY_THREADS if visualize else 0) as overlays:
        for outputs, batch_samples, errors in batches(ctx, data, scorer, samples, "predict", skip_errors=True):
            indices = outputs["index"].tolist()
            positions.extend(indices)
            # one at a time: each image's full-size map is made, written (its overlay's copy kept until drawn)
            # and dropped before the next one's
            batch_preds = iter_predictions(adapter, scorer, outputs, batch_samples, errors)
            for index, pred, sample, error in zip(indices, batch_preds, batch_samples, errors, strict=True):
                predictions.append(pred)
                if marks_nothing(adapter, pred):
                    unmarked.append(index)
                if error:  # no decision for an unreadable image (Prediction.unreadable); the folder's rest is predicted
                    continue  # (said below, by rank 0 for every process's images)
                stem = stems[pred.image_path]
                if pred.pred_mask is not None:
                    pred.mask_file = f"masks/{stem}_mask.png"
                    with written(out_dir / pred.mask_file):
                        write_png(out_dir / pred.mask_file, pred.pred_mask.astype(np.uint8) * 255)
                if visualize:  # (a copy: the map and mask it draws stay with it, whatever is dropped below)
                    pred.overlay_file = f"overlays/{stem}.png"
                    overlays.submit(out_dir / pred.overlay_file, replace(pred), sample)
                if not keep_maps:  # maps are large (4 bytes a pixel); keep the mask and boxes only
                    pred.anomaly_map = None
                if not keep_masks:  # written: the file is the mask (a 4000x3000 mask holds 12 MB)
                    pred.pred_mask = None
    # every process's predictions, in input order
    gathered = distributed.gather((positions, predictions, unmarked))
    if distributed.rank_and_world()[0] != 0:
        raise distributed.SecondaryRankDone
    by_position = {i: p for process in gathered for i, p in zip(process[0], process[1], strict=True)}
    predictions = [by_position[i] for i in range(len(samples))]
    unmarked = sorted(i for process in gathered for i in process[2])
    for prediction in predictions:  # before: a distributed run showed only rank 0's
        if prediction.error:
            log.warning("not predicted: %s", prediction.error)
    predict_s = time.perf_counter() - start
    run.write_json("predictions/predictions.json", [p.to_json() for p in predictions])
    if unmarked:
        more = "; their overlays show where the map is highest" if visualize else ""
        ctx.console.print(unmarked_note(adapter, [predictions[i] for i in unmarked], more))
    failed = [p for p in predictions if p.label_name == "error"]
    result = PredictResult(
        task=adapter.task.value,
        predictions=predictions,
        model=scorer.name,
        backbone=scorer.backbone,
        checkpoint=str(scorer.source),
        runtime=scorer.runtime_info(),
        source=str(source) if source is not None else str(data.data_root),
        counts=prediction_counts(predictions) | ({key: len(unmarked)} if (key := unmarked_key(adapter)) else {}),
        errors=[{"image": p.image_path, "error": p.error} for p in failed],
        timing_s={"predict_s": round(predict_s, 2)},
        images_per_s=round(len(predictions) / predict_s, 2) if predict_s > 0 else None,
        peak_memory_mb=peak_memory_mb(),
        warnings=list(ctx.warnings),
        predictions_file=str(out_dir / "predictions.json"),
        overlays=str(out_dir / "overlays") if visualize else None,
        input=scorer.preprocessor.config(),
        thresholds=scorer.stats(),
        threshold_origin=scorer.threshold_origin(),
    )
    write_result(run, result)
    if len(failed) == len(predictions):
        raise OTXDataError(
            f"none of the {len(predictions)} image(s) could be read (first: {failed[0].error}); "
            f"nothing was predicted, latest.json is unchanged (details: {result.predictions_file})"
        )
    return result

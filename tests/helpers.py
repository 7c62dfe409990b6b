"""Helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lightning.pytorch import Callback, LightningModule, Trainer

from otx.tasks import Prediction


def run_otx(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real ``otx`` command line in a fresh interpreter (offline)."""
    full_env = {**os.environ, "OTX_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "otx.cli", *args], cwd=cwd, capture_output=True, text=True, env=full_env, timeout=600
    )


def start_otx_group(*args: str, cwd: Path, env: dict | None = None, stdout: Any = subprocess.PIPE) -> subprocess.Popen:
    """Start ``otx`` as a terminal's command: its own process group, stderr piped, the tests folder importable."""
    full_env = {**os.environ, "OTX_OFFLINE": "1", **(env or {})}
    # the helpers' callbacks importable, whatever PYTHONPATH the suite or ``env`` has
    full_env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), full_env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-m", "otx.cli", *args],
        cwd=cwd,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=full_env,
        preexec_fn=_as_from_a_terminal,
    )


def _as_from_a_terminal() -> None:
    """In the command's process before it starts: SIGHUP at its default, as a terminal's command has it.

    Under ``nohup`` the suite ignores SIGHUP, and otx keeps an ignored SIGHUP ignored on purpose; the
    tests of a hung-up terminal stop the command with it (SIGINT: conftest).
    """
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def run_otx_group(*args: str, cwd: Path, timeout: float, env: dict | None = None) -> tuple[int, str]:
    """Run ``otx`` as a terminal's command (``start_otx_group``); ``(rc, stderr)``.

    Whatever is left of the group afterwards (a process that outlived the command) is killed, also
    when ``timeout`` passes (then ``subprocess.TimeoutExpired`` is raised, and the test fails).
    """
    process = start_otx_group(*args, cwd=cwd, env=env)
    try:
        _, err = process.communicate(timeout=timeout)  # the pipe closes once every process that holds it has ended
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return process.returncode, err


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes, from first principles."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def reference_ap(gts: list[np.ndarray], dets: list[np.ndarray], scores: list[np.ndarray], thr: float) -> float:
    """101-point interpolated AP, greedy matching by descending score within each image (COCO style)."""
    records = []  # (score, is_tp)
    n_gt = sum(len(g) for g in gts)
    for g, d, s in zip(gts, dets, scores, strict=True):
        matched = np.zeros(len(g), bool)
        for j in np.argsort(-s, kind="stable")[:100]:
            best, best_iou = -1, thr
            for k in range(len(g)):
                iou = box_iou(d[j], g[k])
                if not matched[k] and iou >= best_iou:
                    best, best_iou = k, iou
            if best >= 0:
                matched[best] = True
            records.append((float(s[j]), best >= 0))
    records.sort(key=lambda r: -r[0])
    tp = np.cumsum([r[1] for r in records])
    fp = np.cumsum([not r[1] for r in records])
    recall = tp / n_gt
    precision = tp / (tp + fp)
    for i in range(len(precision) - 1, 0, -1):  # precision envelope
        precision[i - 1] = max(precision[i - 1], precision[i])
    total = 0.0
    for r in np.linspace(0.0, 1.0, 101):
        idx = int(np.searchsorted(recall, r, side="left"))
        total += precision[idx] if idx < len(precision) else 0.0
    return total / 101


def run_main(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``otx.cli.main`` in this process (seconds faster than ``run_otx``), capturing its output."""
    import contextlib
    import io

    from otx.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.chdir(previous)
    return subprocess.CompletedProcess(["otx", *args], code, out.getvalue(), err.getvalue())


_DIGESTS: dict[tuple[int, int, int, int], str] = {}


def digest(folder: Path) -> dict[str, str]:
    """Each file's SHA-256 under ``folder``, by relative path: to check that nothing already written changed.

    A hash is kept by (device, inode, size, modification time), so the hard-linked copies of one
    workspace are hashed once; a file written since (a new modification time) or another file in
    its place (a new inode) is hashed again. Before: 190 workspaces hashed twice each, 20 GB read.
    """
    digests = {}
    for path in folder.rglob("*"):
        if path.is_file():
            stat = path.stat()
            key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if key not in _DIGESTS:
                _DIGESTS[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            digests[str(path.relative_to(folder))] = _DIGESTS[key]
    return digests


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def assert_same_predictions(
    expected: list[Prediction], got: list[Prediction], task: str, score_tol: float, min_iou: float = 0.99
) -> None:
    assert [p.image_path for p in expected] == [p.image_path for p in got]
    scores_e = np.array([p.pred_score for p in expected])
    scores_g = np.array([p.pred_score for p in got])
    assert np.abs(scores_e - scores_g).max() <= score_tol
    labels_e = np.array([p.pred_label for p in expected])
    labels_g = np.array([p.pred_label for p in got])
    decided = np.abs(scores_e - 0.5) > score_tol  # a score within the tolerance of 0.5 may land either side
    assert decided.mean() > 0.9
    assert (labels_e[decided] == labels_g[decided]).all()
    if task == "classification":
        assert all(p.pred_mask is None for p in got)
        return
    for e, g in zip(expected, got, strict=True):
        assert e.pred_mask.shape == g.pred_mask.shape
        assert mask_iou(e.pred_mask, g.pred_mask) >= min_iou
    if task == "detection":  # boxes follow the label: an image whose label may land either side is skipped
        for e, g, sure in zip(expected, got, decided, strict=True):
            if not sure and e.pred_label != g.pred_label:
                continue
            assert len(e.pred_boxes) == len(g.pred_boxes)
            for box in e.pred_boxes:
                assert max((box_iou(box, other) for other in g.pred_boxes), default=0.0) >= 0.9


def demo_package():
    """The demo package's predict.py as a module (it runs without otx installed)."""
    import importlib.util

    import otx.deploy

    spec = importlib.util.spec_from_file_location(
        "demo_predict", Path(otx.deploy.__file__).parent / "demo" / "predict.py"
    )
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


class StopAfterEpochs(Callback):
    """A Lightning callback that presses Ctrl+C once ``epochs`` epochs are finished and saved.

    It signals its own process group, as a terminal does (the data-loading workers too), at the start
    of the next epoch: a stop at a known point. A test polling for a saved epoch from outside could
    send it after a fast run had finished (a loaded CI machine). Pass it with
    ``--trainer.callbacks "[{class_path: helpers.StopAfterEpochs, init_args: {epochs: 2}}]"`` and the
    tests folder on ``PYTHONPATH``.
    """

    def __init__(self, epochs: int, stop: str = "SIGINT", group: bool = True, rank: int = 0) -> None:
        self.epochs = epochs
        self.stop = signal.Signals[stop]  # SIGTERM: as `timeout`, `docker stop` or a scheduler sends it
        self.group = group  # False: to the first process alone, as `timeout` sends it (mid-epoch, its 2nd batch)
        self.rank = rank  # with group False: the process that gets it (SIGKILL to rank 1: the OOM killer's way)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        if trainer.current_epoch == self.epochs and trainer.global_rank == 0 and self.group:  # once, for all
            os.killpg(os.getpgrp(), self.stop)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: object, index: int) -> None:  # noqa: D102
        if trainer.current_epoch == self.epochs and trainer.global_rank == self.rank and not self.group and index == 1:
            time.sleep(2.0)  # the other processes go on to the step's gradient exchange and wait there
            os.kill(os.getpid(), self.stop)


class StopWhileLoaderStarts(Callback):
    """A Lightning callback that sends SIGINT to its own process while epoch ``epochs`` + 1's data loader starts.

    The stop lands inside the loader iterator's start, after its first batch went to a worker: the
    sampler, which the main process reads there, sends it and waits for it. ``stamp``: a file that
    gets the time the stop was sent (``time.time()``).
    """

    def __init__(self, epochs: int, stamp: str) -> None:
        self.epochs = epochs
        self.stamp = stamp

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        batches = trainer.train_dataloader.batch_sampler
        batches.sampler = _StopInSampler(batches.sampler, batches.batch_size, self.epochs + 1, self.stamp)


class _StopInSampler:
    def __init__(self, sampler: Any, batch_size: int, at: int, stamp: str) -> None:
        self.sampler, self.batch_size, self.at, self.stamp = sampler, batch_size, at, stamp
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Any:
        self.epoch += 1
        for n, index in enumerate(self.sampler):
            if self.epoch == self.at and n == self.batch_size:  # the second batch: the first is with a worker
                Path(self.stamp).write_text(repr(time.time()))
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(30)  # otx's handler raises the stop here
            yield index


def check_demo_package(package: Path, source: Path, ours: list, tmp_path: Path) -> None:
    """Run the demo package's predict.py (openvino, numpy and OpenCV only) and compare with otx."""
    import zipfile

    with zipfile.ZipFile(package) as archive:
        archive.extractall(tmp_path / "demo")
    out = tmp_path / "demo_out"
    run = subprocess.run(
        [sys.executable, str(tmp_path / "demo" / "predict.py"), str(source), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path / "demo",
    )
    assert run.returncode == 0, run.stderr
    demo = json.loads((out / "results.json").read_text())
    assert [Path(r["image"]).name for r in demo] == [Path(p.image_path).name for p in ours]
    for record, prediction in zip(demo, ours, strict=True):
        assert record["label"] == prediction.label_name
        assert abs(record["score"] - prediction.pred_score) <= 1e-5
        boxes = [[round(float(v), 2) for v in box] for box in prediction.pred_boxes]
        assert [b["xyxy"] for b in record["boxes"]] == boxes
        scores = [float(s) for s in prediction.box_scores]
        assert [b["score"] for b in record["boxes"]] == pytest.approx(scores, abs=1e-5)  # each group's mean

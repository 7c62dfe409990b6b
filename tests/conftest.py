"""Shared fixtures: the synthetic sample dataset and a trained PADIM checkpoint, made once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Tests never download: a missing backbone must fail fast instead of trying the network.
os.environ.setdefault("OTX_OFFLINE", "1")


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in synthetic dataset (three categories); treat as read-only."""
    from otx.data.sample import make_sample_dataset

    out = tmp_path_factory.mktemp("sample")
    make_sample_dataset(out)
    return out


@pytest.fixture
def dataset_copy(sample_root: Path, tmp_path: Path):
    """A writable copy of one category, for tests that damage the data."""

    def copy(category: str = "bottle_like") -> Path:
        target = tmp_path / category
        shutil.copytree(sample_root / category, target)
        return target

    return copy


def _train(sample_root: Path, work_dir: Path, model, max_epochs: int | None = None) -> dict:
    """Train ``model`` through the Engine on bottle_like (segmentation); the training summary and paths."""
    from otx.data import AnomalyDataModule
    from otx.engine import Engine

    engine = Engine(
        model=model,
        data=AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0),
        task="segmentation",
        work_dir=work_dir,
        max_epochs=max_epochs,
    )
    summary = engine.train()
    return {"work_dir": work_dir, "summary": summary, "checkpoint": Path(summary["checkpoint"])}


@pytest.fixture(scope="session")
def trained_padim(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A PADIM segmentation model trained through the Engine on bottle_like."""
    from otx.models import Padim

    return _train(sample_root, tmp_path_factory.mktemp("ws"), Padim(input_size=(128, 128)))


@pytest.fixture(scope="session")
def trained_stfpm(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An STFPM model trained one epoch through the Engine on bottle_like (enough for parity checks)."""
    from otx.models import Stfpm

    return _train(sample_root, tmp_path_factory.mktemp("ws_stfpm"), Stfpm(input_size=(128, 128)), max_epochs=1)


@pytest.fixture(scope="session")
def trained_stfpm10(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """STFPM trained 10 epochs on bottle_like: image AUROC 1.0 there (one epoch leaves it near 0.5,
    too weak to show that INT8 keeps accuracy)."""
    from otx.models import Stfpm

    return _train(sample_root, tmp_path_factory.mktemp("ws_stfpm10"), Stfpm(input_size=(128, 128)), max_epochs=10)


@pytest.fixture(scope="session")
def exported(
    trained_padim: dict,
    trained_stfpm: dict,
    sample_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
):
    """Export (once per session) a trained model (padim, stfpm, stfpm10) for a task and format; returns the file."""
    from otx.data import AnomalyDataModule
    from otx.engine import Engine

    cache: dict[tuple[str, str, str, str], Path] = {}
    trained = {"padim": trained_padim, "stfpm": trained_stfpm}

    def export(
        model: str = "padim", task: str = "segmentation", fmt: str = "OPENVINO", precision: str = "FP32"
    ) -> Path:
        key = (model, task, fmt, precision)
        if key not in cache:
            engine = Engine(
                data=AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0),
                task=task,
                work_dir=tmp_path_factory.mktemp(f"export_{model}_{task}_{fmt}_{precision}"),
            )
            source = trained[model] if model in trained else request.getfixturevalue(f"trained_{model}")  # lazy
            summary = engine.export(source["checkpoint"], export_format=fmt, precision=precision)
            cache[key] = Path(summary["exported_model"])
        return cache[key]

    return export

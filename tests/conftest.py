"""Shared fixtures: the synthetic sample dataset and a trained PADIM checkpoint, made once per session."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import signal
import sys
import tempfile
import types
from pathlib import Path

import jsonargparse._core as jsonargparse_core
import pytest

# Tests never download: a missing backbone must fail fast instead of trying the network.
os.environ.setdefault("OTX_OFFLINE", "1")

# Ctrl-C reaches the suite's processes, and the commands they start, as it does from a terminal, whatever started
# the suite: a background job of a script (`make test &`) inherits SIGINT ignored, which otx keeps ignored on
# purpose (the shell's intent), and the tests that stop a command with SIGINT found it going on to its end (two
# tests failed when run so, or passed when an earlier test in the same worker happened to reset the handler).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _caller_frames(context: int = 1) -> list[tuple]:
    """``inspect.stack()`` as jsonargparse's parser reads it (``[1][0]``, its caller's frame), without source lines.

    jsonargparse asks ``inspect.stack()`` which module calls ``parse_known_args`` on each parse; the
    full call builds every frame's source context, and for a frame of no file (pytest-xdist's
    ``<string>``) looks through all ~6,000 loaded modules, several times: 82 ms a call in a test
    worker (3 ms in the ``otx`` command), 18 % of a profile of three test files; a failing ``otx
    train`` in a worker took 567 ms, 334 ms with this. Same frames, same caller found, same parse.
    """
    del context
    frame, frames = sys._getframe(1), []
    while frame is not None:
        frames.append((frame, frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name, None, None))
        frame = frame.f_back
    return frames


jsonargparse_core.inspect = types.SimpleNamespace(**{**vars(inspect), "stack": _caller_frames})


def pytest_configure(config: pytest.Config) -> None:
    """Before the workers start: the bytecode of otx's and the tests' modules is written once.

    Where ``PYTHONDONTWRITEBYTECODE`` is set (as on the development machine), no ``.pyc`` of an
    editable install's sources is ever written, so each of the ~120 processes of the suite that
    import otx compiled its sources again as it started (all 63 modules: 0.3 s). Reading ``.pyc``
    files is not affected by the setting; ``compileall`` writes them whatever it says, and skips
    those already up to date.
    """
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the controller has done it
        return
    # pytest-xdist >= 3.8 hands out the files in ``HEAVIEST_FIRST``'s order with its ``--no-loadscope-reorder``,
    # set here rather than in pytest's addopts, where an older xdist, or ``-p no:xdist``, refused the option
    given = [*config.invocation_params.args, *os.environ.get("PYTEST_ADDOPTS", "").split()]
    if hasattr(config.option, "loadscopereorder") and "--loadscope-reorder" not in given:
        config.option.loadscopereorder = False
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("otx")
    for folder in [*(spec.submodule_search_locations or [] if spec else []), str(Path(__file__).parent)]:
        compileall.compile_dir(folder, quiet=2)


# The test files that take longest, heaviest first (seconds summed over both workers, `make test`, 2026-12-07).
# pytest-xdist's ``--dist loadfile`` hands each worker its next file as it nears the end of one; by default it
# takes the files with most tests first, which left test_optimize or test_distributed for the end: one worker ran
# on alone for ~110 s of an 890 s run. Heaviest first, the two workers end within a short file of each other.
HEAVIEST_FIRST = (
    "test_optimize.py",  # 289 s
    "test_distributed.py",  # 274 s
    "test_trust.py",  # 226 s
    "test_input_modes.py",  # 157 s
    "test_engine.py",  # 119 s
    "test_cli.py",  # 115 s
    "test_deploy.py",  # 109 s
    "test_training.py",  # 85 s
    "test_bad_input.py",  # 53 s
    "test_install.py",  # 35 s
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files in ``HEAVIEST_FIRST``'s order, then the others as collected; each file's tests keep their order."""
    rank = {name: index for index, name in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort


@pytest.fixture(scope="session", autouse=True)
def _temporary_files_under_basetemp(tmp_path_factory: pytest.TempPathFactory):
    """Temporary files of the tests and of the processes they start go under pytest's basetemp.

    Processes a test kills on purpose (the distributed tests) cannot remove their own
    (multiprocessing's ``pymp-*``, torchrun's ``torchelastic_*``); under the basetemp they go with it
    when every test passes (``tmp_path_retention_policy``) instead of piling up in /tmp.
    """
    folder = tmp_path_factory.mktemp("tmp")
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(folder)
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    yield
    if before is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = before
    tempfile.tempdir = None


@pytest.fixture(autouse=True)
def _usable_signal_stack(request: pytest.FixtureRequest):
    """After each test, the main thread's signal stack is made usable again where OpenVINO left it unmapped.

    The product does it after each verb (``otx._signal_stack``); a test that calls OpenVINO directly
    could leave it for the next test's first subprocess (a worker died so, SIGSEGV, in 7 full runs).
    """
    yield
    from otx._signal_stack import repair_signal_stack

    if repair_signal_stack() and (record := os.environ.get("OTX_SIGNAL_STACK_LOG")):
        with open(record, "a") as out:
            out.write(f"{request.node.nodeid}\n")


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
    """Train ``model`` through the Engine on bottle_like (segmentation); the training summary and paths.

    The epochs asked, all of them, and the last kept: no early stopping or best-epoch checkpoint
    (the model's default callbacks), so that a fixture's model does not depend on when its
    validation AUROC peaked (STFPM's can peak at epoch 2 on this data, then stop at 6).
    """
    from otx.data import AnomalyDataModule
    from otx.engine import Engine

    engine = Engine(
        model=model,
        data=AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0),
        task="segmentation",
        work_dir=work_dir,
        max_epochs=max_epochs,
        trainer={"callbacks": []},
    )
    summary = engine.train()
    return {"work_dir": work_dir, "summary": summary, "checkpoint": Path(summary["checkpoint"])}


@pytest.fixture(scope="session")
def trained(sample_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """Train any model class by name once per session (input 128x128); ``max_epochs`` None: the model's default."""
    from otx.models import model_class

    cache: dict[tuple[str, int | None], dict] = {}

    def train(name: str, max_epochs: int | None = 1) -> dict:
        key = (name, max_epochs)
        if key not in cache:
            work_dir = tmp_path_factory.mktemp(f"ws_{name.lower()}{max_epochs or ''}")
            cache[key] = _train(sample_root, work_dir, model_class(name)(input_size=(128, 128)), max_epochs)
        return cache[key]

    return train


@pytest.fixture(scope="session")
def trained_padim(trained) -> dict:
    """A PADIM segmentation model trained through the Engine on bottle_like."""
    return trained("Padim", 1)


@pytest.fixture(scope="session")
def trained_stfpm(trained) -> dict:
    """An STFPM model trained one epoch through the Engine on bottle_like (enough for parity checks)."""
    return trained("Stfpm", 1)


@pytest.fixture(scope="session")
def exported(
    trained,
    sample_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
):
    """Export (once per session) a trained model for a task and format; returns the file.

    ``model`` is a class name or its lower-case form with the epochs appended (padim, stfpm10):
    one epoch unless given. STFPM needs ten on bottle_like for image AUROC 1.0 (one leaves it near
    0.5, too weak to show that INT8 keeps accuracy).
    """
    from otx.data import AnomalyDataModule
    from otx.engine import Engine
    from otx.models import available_models

    names = {name.lower(): name for name in available_models()}

    def resolve(model: str) -> tuple[str, int]:
        match = re.fullmatch(r"([A-Za-z_]+?)(\d*)", model)
        if match is None or match.group(1).lower() not in names:
            raise ValueError(f"no model {model!r}")
        return names[match.group(1).lower()], int(match.group(2) or 1)

    cache: dict[tuple[str, str, str, str], Path] = {}

    def export(
        model: str = "padim", task: str = "segmentation", fmt: str = "OPENVINO", precision: str = "FP32"
    ) -> Path:
        name, epochs = resolve(model)
        key = (f"{name}{epochs}", task, fmt, precision)
        if key not in cache:
            engine = Engine(
                data=AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0),
                task=task,
                work_dir=tmp_path_factory.mktemp(f"export_{model}_{task}_{fmt}_{precision}"),
            )
            source = trained(name, epochs)
            summary = engine.export(source["checkpoint"], export_format=fmt, precision=precision)
            cache[key] = Path(summary["exported_model"])
        return cache[key]

    return export


@pytest.fixture(scope="session")
def optimized(exported, sample_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """INT8 models (once per session) of the segmentation exports, with the optimize summary."""
    from otx.data import AnomalyDataModule
    from otx.engine import Engine

    cache: dict[str, dict] = {}

    def make(model: str = "padim") -> dict:
        if model not in cache:
            data = AnomalyDataModule(str(sample_root / "bottle_like"), num_workers=0)
            engine = Engine(data=data, work_dir=tmp_path_factory.mktemp(f"optimize_{model}"))
            cache[model] = engine.optimize(checkpoint=exported(model))
        return cache[model]

    return make

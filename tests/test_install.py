"""How otx installs: the torchvision fix's compiler-free fallback and ``python -m otx``."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

from otx._torchvision_fix import STUB_PACKAGE, apply, undo

SITE = sysconfig.get_paths()["purelib"]


def test_python_m_otx_is_the_otx_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "otx", "find", "--what", "recipes"], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "recipe/anomaly_segmentation/padim.yaml" in done.stdout


# Ctrl-C as the command line loads: a finder that sends SIGINT to its own process when jsonargparse is first
# looked for (otx.cli imports it at once); Python's default handler raises there, inside the import.
_STOP_WHILE_LOADING = """
import importlib.abc, os, signal, sys
class StopOnLoad(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "jsonargparse":
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, StopOnLoad())
sys.argv = ["otx", "find", "--what", "recipes"]
from otx.__main__ import main
sys.exit(main())
"""


def test_a_ctrl_c_while_the_command_line_loads_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    # Before: a Ctrl-C in the command's first 0.15 s printed the traceback of the import under way.
    done = subprocess.run(
        [sys.executable, "-c", _STOP_WHILE_LOADING], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 130 and done.stdout == "", (done.returncode, done.stdout, done.stderr)
    assert done.stderr == "otx: SIGINT received, stopping; earlier runs and latest.json stay as they were\n"
    # the console script is this entry point (pip writes it from pyproject.toml)
    assert entry_points(group="console_scripts")["otx"].value == "otx.__main__:main"


def test_torchvision_fix_without_a_compiler_lets_the_stack_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No C++ compiler: Python definitions let torchvision, timm and anomalib import; nms computes as torchvision's."""
    bare = [sys.executable, "-S", "-c", f"import sys; sys.path.append({SITE!r}); import torchvision"]
    if subprocess.run(bare, capture_output=True).returncode == 0:
        pytest.skip("torchvision loads its extension on this torch without otx's stand-ins")
    # a site folder with this environment's torch and torchvision, and no compiler (nor ldd) on PATH
    site = tmp_path / "site"
    site.mkdir()
    for name in ("torch", "torchvision"):
        (site / name).symlink_to(Path(SITE) / name)
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    assert "no C++ compiler" in apply(site)
    assert (site / f"{STUB_PACKAGE}.pth").read_text() == f"import {STUB_PACKAGE}\n"
    assert undo(site).startswith("removed ") and sorted(p.name for p in site.iterdir()) == ["torch", "torchvision"]
    apply(site)

    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(60, 2, generator=generator) * 50
    boxes = torch.cat([corners, corners + 5 + torch.rand(60, 2, generator=generator) * 20], dim=1)
    scores = torch.randperm(60, generator=generator) / 100  # no ties, before or after quantisation
    code = (  # the stand-ins load as an installed environment loads them: its .pth at start-up
        f"import site, sys; site.addsitedir({str(site)!r}); sys.path.append({SITE!r})\n"
        "import json, torch, torchvision, timm, anomalib\n"
        f"boxes, scores = torch.tensor({boxes.tolist()}), torch.tensor({scores.tolist()})\n"
        "keep = torch.ops.torchvision.nms(boxes, scores, 0.3)\n"
        "q = torch.ops.torchvision.qnms(torch.quantize_per_tensor(boxes, 0.5, 0, torch.quint8),\n"
        "                                torch.quantize_per_tensor(scores, 0.01, 0, torch.quint8), 0.3)\n"
        "print(json.dumps([keep.tolist(), q.tolist()]))\n"
    )
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]  # before: operator torchvision::qnms does not exist
    keep, q = json.loads(done.stdout.strip().splitlines()[-1])
    import torchvision  # noqa: F401 - its own kernels, in this process (loaded through the compiled stand-ins)

    assert keep == torch.ops.torchvision.nms(boxes, scores, 0.3).tolist()
    quantised = (  # qnms: nms of the quantised values (this torchvision has no QuantizedCPU kernel to compare)
        torch.quantize_per_tensor(boxes, 0.5, 0, torch.quint8).dequantize(),
        torch.quantize_per_tensor(scores, 0.01, 0, torch.quint8).dequantize(),
    )
    assert q == torch.ops.torchvision.nms(*quantised, 0.3).tolist()


def _otx_in_a_child(code: str, *args: str, site_packages: bool = True) -> subprocess.CompletedProcess:
    """``otx find`` (or ``args``) in a fresh interpreter after ``code``; with ``site_packages`` False, the
    environment's packages come without its .pth files (no torchvision stand-ins, no editable install)."""
    import otx

    source = str(Path(otx.__file__).parents[1])
    path = "" if site_packages else f"import sys; sys.path += [{SITE!r}, {source!r}]\n"
    script = f"{path}{code}\nimport sys\nfrom otx.cli import main\nsys.exit(main({list(args or ['find'])!r}))\n"
    flags = [] if site_packages else ["-S"]
    return subprocess.run([sys.executable, *flags, "-c", script], capture_output=True, text=True)


def test_a_missing_package_is_one_line_naming_it_not_a_bug_in_otx() -> None:
    done = _otx_in_a_child("import sys; sys.modules['matplotlib'] = None  # as if uninstalled")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    # before: "internal error (ModuleNotFoundError ...); a bug in otx: the run's otx.log has the traceback"
    assert done.stderr.strip() == (
        "error: the Python package 'matplotlib' is missing from this environment, and otx needs it: pip install "
        "matplotlib (with the constraints otx was installed with), or reinstall otx"
    )


def test_a_torchvision_for_another_torch_is_one_line_saying_how_to_fix_it() -> None:
    bare = [sys.executable, "-S", "-c", f"import sys; sys.path.append({SITE!r}); import torchvision"]
    if subprocess.run(bare, capture_output=True).returncode == 0:
        pytest.skip("torchvision loads its extension on this torch without otx's stand-ins")
    done = _otx_in_a_child("", site_packages=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: torchvision cannot load its operators on this torch (torch 2.")
    assert "run python -m otx._torchvision_fix" in done.stderr


def test_an_internal_error_says_where_its_traceback_is(
    trained_padim: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import otx.deploy.export as export_module
    from otx.cli import main

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a stand-in for a bug")

    monkeypatch.setattr(export_module, "export_model", broken)
    assert main(["export", "--checkpoint", str(trained_padim["checkpoint"]), "--work_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    (log,) = tmp_path.glob("*-export/otx.log")
    # before: "the run's otx.log has the traceback", whichever run that was, or with none made
    assert err == (
        f"error: internal error (RuntimeError: a stand-in for a bug); a bug in otx: {log} has the traceback "
        "(OTX_DEBUG=1 shows it here)"
    )
    assert "Traceback" in log.read_text() and "a stand-in for a bug" in log.read_text()
    monkeypatch.setattr("otx.cli._find", broken)
    assert main(["find"]) == 1
    assert "a bug in otx: no run folder was made (OTX_DEBUG=1 shows it here)" in capsys.readouterr().err
    # OTX_DEBUG=0 (a CI template's "off") keeps the one line (before: any value showed the traceback; a bug bash)
    for off in ("0", "false", "no", "off", ""):
        monkeypatch.setenv("OTX_DEBUG", off)
        assert main(["find"]) == 1 and "a bug in otx" in capsys.readouterr().err
    monkeypatch.setenv("OTX_DEBUG", "On")
    with pytest.raises(RuntimeError, match="a stand-in for a bug"):
        main(["find"])


def test_offline_takes_the_true_words_huggingface_hub_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    # before: HF_HUB_OFFLINE=on left otx online (downloads allowed) where huggingface_hub was offline (a bug bash)
    from huggingface_hub import constants

    from otx import offline

    for word, expected in (("1", True), ("ON", True), ("on", True), ("True", True), ("0", False), ("off", False)):
        monkeypatch.delenv("OTX_OFFLINE", raising=False)
        monkeypatch.setenv("HF_HUB_OFFLINE", word)
        assert offline() is expected, word
        assert constants._is_true(word) is expected  # huggingface_hub's own reading of its flags
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setenv("OTX_OFFLINE", word)
        assert offline() is expected, word


def test_a_package_lightning_finds_missing_is_one_line_not_an_accelerator_hint(
    sample_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from lightning.fabric.loggers import tensorboard

    from otx.cli import main

    monkeypatch.setattr(tensorboard, "_TENSORBOARD_AVAILABLE", False)  # as Lightning sees an uninstalled tensorboard
    monkeypatch.setattr(tensorboard, "_TENSORBOARDX_AVAILABLE", False)
    args = ["--data_root", str(sample_root / "bottle_like"), "--work_dir", str(tmp_path)]
    assert main(["train", "--config", "recipe/anomaly_segmentation/padim.yaml", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Neither `tensorboard` nor `tensorboardX` is available") and "\n" not in err
    # before: "... (accelerator 'auto', devices 1); --trainer.accelerator cpu runs anywhere"
    assert err.endswith("a package otx needs is missing from this environment: install it, or reinstall otx")
    assert not (tmp_path / "latest.json").exists()


def test_only_a_package_that_is_not_installed_is_called_missing() -> None:
    from otx.errors import broken_install

    assert broken_install(ModuleNotFoundError("no", name="not_installed_anywhere")) is not None
    # a module missing inside an installed package is a bug, not a missing package (torch is installed)
    assert broken_install(ModuleNotFoundError("no", name="torch._not_a_module")) is None
    try:  # a bug while handling an optional import's absence is that bug
        try:
            import not_installed_anywhere  # noqa: F401
        except ModuleNotFoundError:
            {}["key"]  # noqa: B018
    except KeyError as exc:
        assert broken_install(exc) is None


def test_a_home_matplotlib_cannot_write_adds_nothing_to_stderr(tmp_path: Path) -> None:
    # Before: in a container with a read-only home, matplotlib's two lines (a temporary folder, set MPLCONFIGDIR)
    # came before every command's output and broke the one-line error (a bug bash). A config home under a file
    # cannot be made, as a read-only one (a root user can write anywhere else).
    import os
    import subprocess
    import sys

    (tmp_path / "a_file").write_text("")
    env = {k: v for k, v in os.environ.items() if k != "MPLCONFIGDIR"}
    env |= {"XDG_CONFIG_HOME": str(tmp_path / "a_file" / "config"), "XDG_CACHE_HOME": str(tmp_path / "a_file" / "c")}
    env |= {"OTX_OFFLINE": "1", "TMPDIR": str(tmp_path)}
    command = [sys.executable, "-c", "import otx.cli, matplotlib.pyplot; raise SystemExit(otx.cli.main(['find']))"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert not list(tmp_path.glob("otx-matplotlib-*"))  # its temporary folder removed at exit

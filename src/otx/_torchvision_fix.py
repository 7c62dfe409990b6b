"""Make the registry's CUDA-built torchvision wheel load on a CPU-only torch build.

The only torchvision wheel for torch 2.13 on the package index is a CUDA build whose
extension libraries link ``libtorch_cuda.so`` and ``libc10_cuda.so``. A ``+cpu`` torch
has neither, so ``import torchvision`` (and with it timm, lightning and anomalib) fails
with ``operator torchvision::nms does not exist``.

``python -m otx._torchvision_fix`` detects that situation and, only then, compiles two
tiny stand-in libraries (the CUDA-side symbols torchvision references; ``device_count``
answers 0 and everything else raises) into ``site-packages/_otx_tv_cpu_stub/`` and adds a
``.pth`` file that preloads them at interpreter start. torchvision's real CPU kernels
(nms, roi_align, image decoding) then work. Where torch and torchvision match (both CUDA
or both CPU builds) it does nothing. Without a C++ compiler it falls back to defining
``torchvision::nms`` and ``torchvision::qnms`` in Python (torchvision 0.28 registers fake kernels
for both at import), enough for timm, lightning and anomalib to import.

``python -m otx._torchvision_fix --undo`` removes both (``pip uninstall otx`` does not: pip did
not install them). This module must not import torchvision: it runs exactly when that import is broken.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

STUB_PACKAGE = "_otx_tv_cpu_stub"
_CUDA_SYMBOL_PREFIXES = ("_ZN3c104cuda", "_ZNK3c104cuda", "_ZN2at4cuda", "_ZNK2at4cuda")

_STUB_INIT = '''"""Preload stand-ins for libc10_cuda.so / libtorch_cuda.so (written by otx._torchvision_fix)."""
import ctypes
import glob
import os

_here = os.path.dirname(os.path.abspath(__file__))
_site = os.path.dirname(_here)
if os.path.isdir(os.path.join(_site, "torchvision")) and not os.path.exists(
    os.path.join(_site, "torch", "lib", "libtorch_cuda.so")
):
    for _lib in sorted(glob.glob(os.path.join(_site, "torchvision.libs", "libcudart*.so*"))):
        ctypes.CDLL(_lib, mode=ctypes.RTLD_GLOBAL)
    for _name in ("libc10_cuda.so", "libtorch_cuda.so"):
        _path = os.path.join(_here, _name)
        if os.path.exists(_path):
            ctypes.CDLL(_path, mode=ctypes.RTLD_GLOBAL)
'''

_SHIM_INIT = '''"""Define torchvision::nms and ::qnms in Python (written by otx._torchvision_fix: no compiler)."""
import importlib.abc
import sys


def _define_ops():
    import torch

    if hasattr(torch.ops.torchvision, "nms"):
        return
    lib = torch.library.Library("torchvision", "DEF")

    def nms(dets, scores, iou_threshold):
        if dets.numel() == 0:
            return torch.empty((0,), dtype=torch.long, device=dets.device)
        x1, y1, x2, y2 = dets.unbind(1)
        areas = (x2 - x1) * (y2 - y1)
        order = scores.argsort(descending=True)
        keep, suppressed = [], torch.zeros(dets.shape[0], dtype=torch.bool)
        for i in order.tolist():
            if suppressed[i]:
                continue
            keep.append(i)
            w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
            h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
            inter = w * h
            suppressed |= inter / (areas[i] + areas - inter) > iou_threshold
        return torch.tensor(keep, dtype=torch.long, device=dets.device)

    def qnms(dets, scores, iou_threshold):
        return nms(dets.dequantize(), scores.dequantize(), iou_threshold)

    # torchvision registers fake kernels for both at import, whether or not its extension loaded
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", nms, "CompositeExplicitAutograd")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("qnms", qnms, "CompositeExplicitAutograd")
    sys.modules[__name__]._lib = lib


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            _define_ops()
        return None


sys.meta_path.insert(0, _Finder())
'''


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def needs_fix(site: Path) -> bool:
    """True when torchvision's extension links CUDA libraries that this torch lacks."""
    if not (site / "torchvision" / "_C.so").exists():
        return False
    if (site / "torch" / "lib" / "libtorch_cuda.so").exists():
        return False
    out = _run(["ldd", str(site / "torchvision" / "_C.so")])
    return out is None or "libtorch_cuda.so" in out or "libc10_cuda.so" in out


def _run(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def _stub_source(libraries: list[Path]) -> str:
    symbols: set[str] = set()
    for lib in libraries:
        out = _run(["nm", "-D", "--undefined-only", str(lib)]) or ""
        for line in out.splitlines():
            name = line.split()[-1] if line.split() else ""
            if name.startswith(_CUDA_SYMBOL_PREFIXES):
                symbols.add(name)
    lines = ["#include <stdexcept>"]
    for i, sym in enumerate(sorted(symbols)):
        readable = (_run(["c++filt", sym]) or sym).strip().replace('"', "'")
        if readable.endswith("::allocator"):
            lines.append(f'extern "C" {{ void* otx_stub_data_{i} __asm__("{sym}") = 0; }}')
        elif readable.startswith("c10::cuda::device_count"):
            lines.append(f'extern "C" int otx_stub_{i}() __asm__("{sym}");')
            lines.append(f'extern "C" int otx_stub_{i}() {{ return 0; }}')
        else:
            lines.append(f'extern "C" void otx_stub_{i}() __asm__("{sym}");')
            lines.append(
                f'extern "C" void otx_stub_{i}() {{ throw std::runtime_error("torch has no CUDA here: {readable}"); }}'
            )
    return "\n".join(lines) + "\n"


def apply(site: Path | None = None) -> str:
    """Apply the fix where needed; return a one-line description of what was done."""
    site = site or _site_packages()
    if not needs_fix(site):
        return "torchvision matches torch: nothing to do"
    dest = site / STUB_PACKAGE
    dest.mkdir(exist_ok=True)
    compiler = shutil.which("g++") or shutil.which("c++")
    tools = shutil.which("nm") and shutil.which("c++filt")
    if compiler and tools:
        libs = [p for p in (site / "torchvision" / "_C.so", site / "torchvision" / "image.so") if p.exists()]
        src = dest / "cuda_stubs.cpp"
        src.write_text(_stub_source(libs))
        empty = dest / "empty.cpp"
        empty.write_text("\n")
        for soname, source in (("libc10_cuda.so", src), ("libtorch_cuda.so", empty)):
            subprocess.run(
                [compiler, "-shared", "-fPIC", "-O2", f"-Wl,-soname,{soname}", "-o", str(dest / soname), str(source)],
                check=True,
            )
        (dest / "__init__.py").write_text(_STUB_INIT)
        how = "compiled CUDA stand-in libraries"
    else:
        (dest / "__init__.py").write_text(_SHIM_INIT)
        how = "no C++ compiler: defined torchvision::nms and ::qnms in Python"
    (site / f"{STUB_PACKAGE}.pth").write_text(f"import {STUB_PACKAGE}\n")
    return f"torchvision is a CUDA build on a CPU torch: {how} in {dest}"


def undo(site: Path | None = None) -> str:
    """Remove what ``apply`` wrote (``pip uninstall otx`` leaves it); return a one-line description."""
    site = site or _site_packages()
    written = [path for path in (site / f"{STUB_PACKAGE}.pth", site / STUB_PACKAGE) if path.exists()]
    for path in written:  # the .pth first: an interpreter starting meanwhile does not import a half-removed package
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return f"removed {', '.join(str(path) for path in written)}" if written else f"nothing to remove in {site}"


def main(argv: list[str] | None = None) -> int:
    """Apply the fix and check that torchvision imports in a fresh interpreter (``--undo``: remove it)."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--undo"]:
        print(f"otx: {undo()}")
        return 0
    if args:
        print("usage: python -m otx._torchvision_fix [--undo]", file=sys.stderr)
        return 2
    print(f"otx: {apply()}")
    if importlib.util.find_spec("torchvision") is None:
        return 0
    check = subprocess.run([sys.executable, "-c", "import torchvision, timm"], capture_output=True, text=True)
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["unknown error"])[-1]
        print(f"otx: torchvision still fails to import: {last}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Predict with an otx-exported anomaly model; needs only openvino, numpy and opencv.

Usage:
    python predict.py IMAGES [--model model/exported_model.xml] [--device CPU] [--output results]

IMAGES is an image file, a folder (searched recursively) or a glob pattern. Writes
``results.json`` (score in [0, 1] with 0.5 the threshold, label, boxes for detection models) and,
for segmentation and detection models, one mask PNG per image. Reproduces ``otx predict``.

An image that cannot be decoded gets ``"label": "error"`` with the reason, never a normal/anomalous
label; the exit code is then 1 (``--allow_errors`` gives 0 when at least one image was predicted).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import re
import stat
import sys
import unicodedata
from collections import Counter
from pathlib import Path

try:
    import cv2
    import numpy as np
    import openvino as ov
except ImportError as exc:  # one line, not a traceback: this script runs where otx is not installed
    _NEEDED = {"cv2": "opencv-python-headless (cv2)", "numpy": "numpy", "openvino": "openvino"}
    _WHY = " ".join(str(exc).split())[:300]  # a library that failed to load (libGL.so.1 ...) says which
    sys.exit(
        f"error: predict.py cannot import {_NEEDED.get(exc.name or '', 'openvino, numpy or opencv')} ({_WHY}); "
        f"install what it needs with: {sys.executable} -m pip install -r {Path(__file__).with_name('requirements.txt')}"
        " (opencv-python-headless: the plain opencv-python needs libGL)"
    )

EXTENSIONS = (  # otx's IMAGE_EXTENSIONS: the files otx trains on and predicts from a folder
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".jpe", ".dib", ".pbm", ".pgm",
    ".ppm", ".pnm", ".pxm", ".pfm", ".sr", ".ras", ".exr", ".hdr", ".pic", ".tga",
)  # fmt: skip


def folder_masks(files: list) -> set:
    """Files in a ``masks/`` or ``gt/`` folder named as images in a folder beside it (otx's rule)."""
    names = ("ground_truth", "groundtruth", "ground-truth", "gt", "mask", "masks")
    stems = {}  # image names in each folder's subfolders other than a mask folder
    for path in files:
        if path.parent.name.lower() not in names:
            stems.setdefault(path.parent.parent, set()).add(path.stem)
    return {
        path
        for path in files
        if path.parent.name.lower() in names
        and {path.stem, path.stem.removesuffix("_mask")} & stems.get(path.parent.parent, set())
    }


def without_folder_masks(files: list) -> list:
    """``files`` less ``folder_masks``, said in one line (otx predict's warning)."""
    named = folder_masks(files)
    if named:
        folders = sorted({str(m.parent) for m in named})
        more = f" and {len(folders) - 1} other mask folder(s)" if len(folders) > 1 else ""
        print(f"left out {len(named)} file(s) in {folders[0]}{more}, named as the images beside it (masks)")
    return [p for p in files if p not in named]


def is_layout_mask(path: Path) -> bool:
    """``<root>/ground_truth/<defect>/<name>_mask.<ext>`` beside ``<root>/test`` or ``<root>/train`` (otx's rule)."""
    folder = path.parent.parent
    return (
        folder.name == "ground_truth"
        and path.stem.endswith("_mask")
        and any((folder.parent / split).is_dir() for split in ("test", "train"))
    )


def is_tool_folder(name: str) -> bool:
    """A folder that tools leave beside images (macOS zips, notebooks, NAS thumbnails), as ``otx predict`` skips."""
    return name.startswith(".") or name in ("__MACOSX", "@eaDir")


RUN_FOLDER = re.compile(r"^\d{8}-\d{6}-(train|test|predict|export|optimize|benchmark)(-\d+)?$")  # otx.workdir's


def special(path: Path) -> bool:
    """A pipe, socket, device or folder under an image's name (reading a pipe would wait for ever); as otx."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # a link to nothing: listed, and said unreadable when read
        return False


def earlier_output(top: str, names: list[str]) -> bool:
    """Whether a folder is an earlier output: otx's work folder or run folder, or this script's results."""
    if "latest.json" in names or (RUN_FOLDER.match(os.path.basename(top)) and "otx.log" in names):
        return True
    if "results.json" not in names:
        return False
    try:  # this script's own (a list of records with image and label), not any results.json a camera writes
        path = Path(top, "results.json")
        records = json.loads(path.read_text(encoding="utf-8")) if path.stat().st_size <= 64 << 20 else None
    except (OSError, ValueError):
        return False
    return isinstance(records, list) and all(isinstance(r, dict) and "image" in r and "label" in r for r in records)


def find_images(source: str, output: Path | None = None) -> list[Path]:
    """Image files at a file path, in a folder (recursively) or matching a glob.

    A data root in MVTec layout given as the folder: its ground-truth masks are left out, as
    ``otx predict`` leaves them out. So are the ``output`` folder (its ``masks/`` too when it is the
    source itself), earlier outputs of this script (folders with ``results.json``) and otx's work
    folders (with ``latest.json``): their masks are not new images.
    """
    path = Path(os.path.expanduser(source))
    if path.exists() and not path.is_dir() and special(path):
        print(f"error: {path} is not an image file or a folder (a device, pipe or socket)", file=sys.stderr)
        return []
    if path.is_file():
        return [path]
    if path.is_dir():
        files, others, skipped, leftovers, visited = [], [], [], [], set()
        output = output.resolve() if output is not None else None
        for top, dirs, names in os.walk(path, followlinks=True):  # symlinked folders too, each once
            here = Path(top).resolve()
            earlier = earlier_output(top, names)
            if here in visited:  # a link back up (a loop), or one folder linked twice
                dirs.clear()
                continue
            if (top != str(path) and (earlier or here == output)) or (output and here == output / "masks"):
                skipped.append(top)
                dirs.clear()
                continue
            visited.add(here)
            leftovers.extend(Path(top, d) for d in sorted(dirs) if is_tool_folder(d))
            dirs[:] = sorted(d for d in dirs if not is_tool_folder(d))
            hidden = [n for n in sorted(names) if n.startswith(".")]  # as otx: ._<name> and hidden images left out
            leftovers.extend(
                Path(top, n) for n in hidden if n.startswith("._") or os.path.splitext(n)[1].lower() in EXTENSIONS
            )
            for name in names:
                if name.startswith("."):
                    continue
                if os.path.splitext(name)[1].lower() in EXTENSIONS:
                    if not special(Path(top, name)):  # (a pipe hung the read, as otx leaves it out)
                        files.append(Path(top, name))
                else:
                    others.append(Path(top, name))
        if others:  # as otx predict says it
            kinds = Counter(p.suffix.lower() or "no extension" for p in others)
            listed = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items(), key=lambda k: (-k[1], k[0]))[:4])
            print(
                f"left out {len(others)} file(s) of other types ({listed}; e.g. {min(others).as_posix()}); convert "
                "any images among them (to PNG) to predict them"
            )
        if skipped:
            more = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
            print(f"left out {skipped[0]}{more} (earlier results, not images to predict)")
        if leftovers:
            more = f" and {len(leftovers) - 1} more" if len(leftovers) > 1 else ""
            print(f"left out {leftovers[0]}{more} (macOS, notebook, NAS or other hidden files, not images to predict)")
        files.sort()
        masks = [p for p in files if is_layout_mask(p)]
        if masks:
            folders = sorted({str(m.parent.parent) for m in masks})
            more = f" and {len(folders) - 1} other ground_truth folder(s)" if len(folders) > 1 else ""
            print(f"left out {len(masks)} mask file(s) under {folders[0]}{more} (ground truth, not images)")
        return without_folder_masks([p for p in files if p not in set(masks)])
    found, seen, again = [], set(), 0  # one image under two paths (a symbolic link) once, as otx predicts it
    pattern = os.path.expanduser(source)
    matched = [Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).suffix.lower() in EXTENSIONS]
    for path in sorted(p for p in matched if not special(p)):  # (a folder named a.png was "unreadable", a pipe hung)
        real = os.path.realpath(path)
        again += real in seen
        if real not in seen:
            found.append(path)
        seen.add(real)
    if again:
        print(f"left out {again} path(s) of images already found under another path (a symbolic link)")
    if output is not None:  # this script's own results are not images to predict (nor deleted as stale, then read)
        output = output.resolve()
        ours = [p for p in found if output in p.resolve().parents]
        if ours:
            print(f"left out {len(ours)} file(s) under {output} (results, not images to predict)")
            found = [p for p in found if p not in set(ours)]
    return without_folder_masks(found)  # a pattern over a folder with masks/ beside its images, as otx


PIXELS_IN_FLIGHT = 8_000_000  # otx.deploy.inferencer.PIXELS_IN_FLIGHT: input pixels the parallel requests hold


def throughput_config(input_hw: list[int], devices: list[str]) -> dict:
    """otx.deploy.inferencer.throughput_config: on the CPU, fewer and wider requests for large inputs."""
    if not devices or not all(device.split(".")[0].upper() == "CPU" for device in devices):
        return {"PERFORMANCE_HINT": "THROUGHPUT"}
    limit = max(1, PIXELS_IN_FLIGHT // (input_hw[0] * input_hw[1]))
    if limit == 1:
        return {"PERFORMANCE_HINT": "LATENCY"}
    return {"PERFORMANCE_HINT": "THROUGHPUT", "PERFORMANCE_HINT_NUM_REQUESTS": limit}


MAX_STEM_BYTES = 200  # as otx.verbs.predict: room for "_mask.png" and the rest in a 255-byte name


def fit_stem(stem: str) -> str:
    """``stem``, or its start and a digest when it is too long for a file name (``otx.verbs.predict.fit_stem``)."""
    raw = stem.encode("utf-8", "surrogatepass")
    if len(raw) <= MAX_STEM_BYTES:
        return stem
    return raw[: MAX_STEM_BYTES - 11].decode("utf-8", "ignore") + "_" + hashlib.sha1(raw).hexdigest()[:10]


def _folded(name: str) -> str:
    """``name`` as a file system that ignores case and Unicode normal forms compares it."""
    return unicodedata.normalize("NFC", name).casefold()


def output_stems(paths: list[Path]) -> dict[Path, str]:
    """Each image's name for its mask file, as ``otx predict`` names them (``otx.verbs.predict.output_stems``).

    The path under the images' common folder with ``__`` for each ``/``, without the extension;
    where that names two images, each keeps its extension (``a_png``), then a counter if needed;
    a name past ``MAX_STEM_BYTES`` is shortened by ``fit_stem``.
    """
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    plain = [fit_stem("__".join(p.relative_to(root).with_suffix("").parts)) for p in paths]
    # names compared as a file system that ignores case and Unicode forms does (macOS, Windows): a.png and A.jpg
    # named one overlay there, before
    shared = {stem for stem, count in Counter(map(_folded, plain)).items() if count > 1}
    stems: dict[Path, str] = {}
    used: set[str] = set()
    for path, stem in zip(paths, plain):  # noqa: B905 - equal lengths; the demo runs on older Pythons too
        if _folded(stem) in shared:
            stem = f"{stem}_{path.suffix.lstrip('.')}"
        name, count = stem, 1
        while _folded(name) in used:
            count += 1
            name = f"{stem}_{count}"
        used.add(_folded(name))
        stems[path] = name
    return stems


def decode(path: Path) -> np.ndarray | None:
    """The file's pixels as stored (any depth and channel count); None when it cannot be decoded."""
    return decode_why(path)[0]


JPEG_DAMAGE = ("Corrupt JPEG data", "Premature end of JPEG file")  # otx.data.io.JPEG_DAMAGE


def decode_jpeg_said(data: bytes) -> tuple[np.ndarray | None, str]:
    """``cv2.imdecode`` of JPEG bytes and libjpeg's complaints on stderr (other lines written back)."""
    import tempfile

    flags = cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        saved = os.dup(2)
    except OSError:
        return cv2.imdecode(np.frombuffer(data, np.uint8), flags), ""
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                array = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
            finally:
                os.dup2(saved, 2)
            sink.seek(0)
            said = sink.read().decode("utf-8", "replace")
    finally:
        os.close(saved)
    rest = "".join(line for line in said.splitlines(keepends=True) if not line.startswith(JPEG_DAMAGE))
    if rest:
        os.write(2, rest.encode("utf-8", "replace"))
    return array, said


MAX_IMAGE_PIXELS = 2**28  # otx.data.io.MAX_IMAGE_PIXELS; OTX_MAX_IMAGE_PIXELS sets another limit, as in otx


def too_many_pixels(height: int, width: int) -> str:
    """Why an image of ``height x width`` is not read (more pixels than otx reads of one image), or ""."""
    given = os.environ.get("OTX_MAX_IMAGE_PIXELS", "").strip()
    try:
        limit = int(float(given)) if given else MAX_IMAGE_PIXELS
    except (ValueError, OverflowError):
        limit = MAX_IMAGE_PIXELS
    if height * width <= limit:
        return ""

    def pixels(count: int) -> str:  # otx.data.io._pixels
        return f"{count / 1e6:.0f} MP" if count >= 10**7 else f"{count:,} pixels"

    return (
        f"{width}x{height} is {pixels(height * width)}, above the {pixels(limit)} otx decodes of one image "
        "(a small file can declare a huge image); scale it down, or set OTX_MAX_IMAGE_PIXELS to more pixels"
    )


def header_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` from the file header by Pillow, where it is installed and knows the format."""
    try:
        import io

        from PIL import Image
    except ImportError:
        return None
    raise_pillow_limit(Image)
    try:
        with Image.open(io.BytesIO(data)) as pil:
            return pil.size[1], pil.size[0]
    except Exception:  # noqa: BLE001 - the decoders say what is wrong with the file
        return None


PNM_TOKEN = re.compile(rb"(?:\s|#[^\n\r]*)*(\S+)")  # a header field, after blanks and comments (otx.data.io's)


def pam_header(data: bytes) -> bytes:
    """A PAM file's header lines (before ``ENDHDR``, in its first 4 KB); empty when there is none (otx.data.io's)."""
    end = data.find(b"ENDHDR", 0, 4096)
    return data[:end] if end >= 0 else b""


def pnm_maxval(data: bytes) -> int | None:
    """The largest level a PGM, PPM or PAM file declares, None for other files (otx.data.io.pnm_maxval)."""
    if data[:2] in (b"P2", b"P3", b"P5", b"P6"):
        fields, at = [], 2
        for _ in range(3):  # width, height, maxval, after blanks and comments
            if not (match := PNM_TOKEN.match(data, at)):
                return None
            fields.append(match.group(1))
            at = match.end()
        value = fields[2]
    elif data[:3] == b"P7\n":
        found = re.search(rb"^MAXVAL\s+(\S+)", pam_header(data), re.MULTILINE)
        value = found.group(1) if found else b""
    else:
        return None
    return int(value) if value.isdigit() else None


def pnm_pixels(array: np.ndarray, data: bytes) -> np.ndarray:
    """OpenCV's pixels of a PGM, PPM or PAM file as otx reads them (otx.data.io._pnm_pixels).

    Levels scaled from maxval to the depth's full range; a PAM file's RGB samples to BGR.
    """
    if data[:3] == b"P7\n" and array.ndim == 3 and array.shape[2] in (3, 4):
        if re.search(rb"^TUPLTYPE\s+RGB(_ALPHA)?\s*$", pam_header(data), re.MULTILINE):
            array = np.ascontiguousarray(array[..., [2, 1, 0, 3][: array.shape[2]]])
    maxval = pnm_maxval(data)
    full = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}.get(array.dtype)
    if data[:2] in (b"P2", b"P3") and full == 255:  # OpenCV scales a plain (ASCII) 8-bit file itself, not others
        return array
    if not maxval or full is None or maxval == full:
        return array
    return np.minimum(np.rint(array.astype(np.float64) * (full / maxval)), full).astype(array.dtype)


def decode_why(path: Path) -> tuple[np.ndarray | None, str]:
    """``decode``, with the reason when the file cannot be decoded (as ``otx predict`` names it, where it can).

    As otx: an image whose header declares more pixels than otx reads is refused before it is
    decoded (where Pillow reads the header; else once decoded), and a file OpenCV cannot decode is
    given to Pillow where it is installed (a TGA file, a TIFF with extra channels).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"cannot read the file ({exc.strerror or exc})"
    if not data:  # an empty file (imdecode asserts on an empty buffer)
        return None, "the file is empty, 0 bytes"
    if (declared := header_size(data)) and (why := too_many_pixels(*declared)):
        return None, why
    exr_on = os.environ.get("OPENCV_IO_ENABLE_OPENEXR", "").strip().lower() in ("1", "true", "on", "yes")
    if data[:4] == b"v/1\x01" and not exr_on:  # as otx.data.io.EXR_OFF
        return None, (
            "an OpenEXR file: OpenCV reads these only with OPENCV_IO_ENABLE_OPENEXR=1 in the environment otx "
            "starts in; set it, or convert the file to a 16-bit TIFF or PNG"
        )
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data.rfind(b"IEND\xaeB`\x82") < 0:  # no end chunk: Pillow's, as otx
        array, why = pillow_decode(path)  # (its pixels may all be there: otx reads it then; before: refused here)
        return (array, "") if array is not None else (None, "image file is truncated (a PNG without its end)")
    # from the bytes, as otx: imread would decode a JPEG cut short with its missing rows grey
    said = ""
    try:
        if data[:3] == b"\xff\xd8\xff":  # as otx.data.io: libjpeg's complaints say when it made part of it up
            array, said = decode_jpeg_said(data)
        else:
            array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        array = None
    damage = [line.strip() for line in said.splitlines() if line.startswith(JPEG_DAMAGE)]
    if damage and array is not None:
        return None, f"damaged JPEG data, the decoder would make up part of it: {damage[0]}"
    if array is not None:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[25:26] == b"\x04" and array.ndim == 3:
            array = array[..., 0]  # grayscale with alpha (IHDR colour type 4): OpenCV gives BGRA; otx reads it gray
        return (None, why) if (why := too_many_pixels(*array.shape[:2])) else (pnm_pixels(array, data), "")
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-32:]:
        return None, "image file is truncated (a JPEG without its end)"
    array, why = pillow_decode(path)  # as otx: Pillow decodes what OpenCV cannot
    if array is not None or path.suffix.lower() == ".tga":  # the one type otx lists that OpenCV has no decoder for
        return array, why
    return None, "cannot decode image (not an image format OpenCV reads, or damaged)"


def raise_pillow_limit(image_module: object) -> None:
    """Pillow's image-size limit raised to OpenCV's 2^30 pixels, as otx.data.io raises it (never lowered).

    Pillow's default (179 MP) refused a 180 MP TGA otx reads, and read no size from a larger header, so the
    check of otx's own limit before decoding never ran for one.
    """
    limit = getattr(image_module, "MAX_IMAGE_PIXELS", None)
    if limit is not None and limit < 2**30:
        image_module.MAX_IMAGE_PIXELS = 2**30  # type: ignore[attr-defined]


def pillow_decode(path: Path) -> tuple[np.ndarray | None, str]:
    """A file OpenCV cannot decode (a TGA file) by Pillow where it is installed, as otx reads it (BGR like OpenCV)."""
    try:
        from PIL import Image
    except ImportError:
        why = "OpenCV does not read TGA files; otx reads them with Pillow: pip install pillow"
        return None, f"cannot decode image ({why})"
    raise_pillow_limit(Image)
    try:
        with Image.open(path) as pil:  # as otx.data.io: modes other than these become RGB
            array = np.asarray(pil if pil.mode in ("L", "RGB", "RGBA", "I;16", "I", "F", "1") else pil.convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - any file Pillow cannot read either
        return None, f"cannot decode image ({exc})"
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype.byteorder == ">":  # a big-endian 16-bit file (I;16B)
        array = array.astype(array.dtype.newbyteorder("="))
    if array.ndim == 3:
        array = array[..., 2::-1] if array.shape[2] == 3 else array[..., [2, 1, 0, 3]]  # to BGR(A) like OpenCV
    return array, ""


def read_rgb(path: Path) -> np.ndarray | None:
    """H x W x 3 RGB uint8, as otx reads images (16-bit and float scaled, gray repeated, alpha dropped).

    None when the file cannot be decoded (a JPEG cut short included); ``ValueError`` for values otx
    does not read as levels.
    """
    array = decode(path)
    return None if array is None else to_rgb(array)


GRAY_LEVELS = 2  # otx.checks.GRAY_LEVELS
PROFILE_CHECKS = 32  # otx.checks.PROFILE_CHECKS


def channel_kind(array: np.ndarray) -> str:
    """What decoded pixels hold, as otx tells them apart.

    ``gray`` (one channel, or gray with alpha), ``stored_gray`` (colour channels equal within
    ``GRAY_LEVELS``: a grayscale image in a colour file) or ``color``.
    """
    if array.ndim == 2 or array.shape[2] <= 2:
        return "gray"
    if array.dtype != np.uint8:  # compared at the levels otx reads (a [0, 1] float image's are not 0 and 1)
        try:
            array = to_rgb(array)
        except ValueError:  # refused when read
            return "color"
    colour = array[..., :3].astype(np.int32)
    same = np.abs(colour[..., 0] - colour[..., 1]).max(initial=0) <= GRAY_LEVELS and (
        np.abs(colour[..., 1] - colour[..., 2]).max(initial=0) <= GRAY_LEVELS
    )
    return "stored_gray" if same else "color"


def to_rgb(array: np.ndarray) -> np.ndarray:
    """``read_rgb`` of pixels already decoded."""
    if array.dtype == np.uint16:
        array = (array.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        as_float = array.astype(np.float32)
        low, high = (float(as_float.min()), float(as_float.max())) if as_float.size else (0.0, 0.0)
        floating = np.issubdtype(array.dtype, np.floating)
        if floating and low >= -0.01 and high <= 1.01:
            as_float = as_float * 255.0  # a float image in [0, 1]
        elif floating and low >= -0.5 and high < 2.0:  # otx.data.io.FLOAT_LEVELS_MIN: [0, 1] scaled or shifted
            raise ValueError(
                f"its float values run from {low:g} to {high:g}: not a [0, 1] image (read as 0-255 levels it would "
                "be black); clip or scale it to [0, 1] or 0-255 first"
            )
        elif not (low >= -0.5 and high < 255.5):  # as otx: not clipped to white without a word
            kind = "float" if np.issubdtype(array.dtype, np.floating) else str(array.dtype)
            raise ValueError(
                f"its {kind} values run from {low:g} to {high:g}, outside [0, 1] and 0-255, which otx reads "
                "as image levels; convert it to 8 or 16 bits (scaled to its range) first"
            )
        array = np.clip(np.rint(as_float), 0, 255).astype(np.uint8)  # rounded, as otx
    if array.ndim == 2 or array.shape[2] == 1:
        return cv2.cvtColor(array.reshape(array.shape[:2]), cv2.COLOR_GRAY2RGB)
    if array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(array[..., :3], cv2.COLOR_BGR2RGB)


REFINES = ("none", "dark", "bright", "contrast")  # as otx.boxes.REFINES


def snap(image: np.ndarray, box: list[float], refine: str) -> list[float]:
    """A box shrunk to its pixels that stand out from the box's median (as ``otx.boxes.refine_boxes``)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    pixels = np.ascontiguousarray(image[y1:y2, x1:x2])  # per pixel: the same as converting the whole image
    if min(pixels.shape[:2]) < 3:
        return box
    if refine == "contrast":  # the distance from the box's median colour
        patch = cv2.GaussianBlur(pixels.astype(np.float32), (3, 3), 0)
        median = np.median(patch.reshape(-1, 3), axis=0).astype(np.float32)
        difference = np.sqrt(((patch - median) ** 2).sum(axis=2))
    else:  # darker or brighter than the box's median grey level
        patch = cv2.GaussianBlur(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY).astype(np.float32), (3, 3), 0)
        median = np.float32(np.median(patch))
        difference = np.maximum(median - patch if refine == "dark" else patch - median, np.float32(0.0))
    top = float(difference.max())
    if not top > 0.0:
        return box
    scaled = np.round(difference * np.float32(255.0 / top)).astype(np.uint8)
    _, chosen = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    ys, xs = np.nonzero(chosen)
    if not len(ys):
        return box
    return [float(x1 + xs.min()), float(y1 + ys.min()), float(x1 + xs.max() + 1), float(y1 + ys.max() + 1)]


def boxes_of(score_map: np.ndarray, anomalous: bool, settings: dict, image: np.ndarray | None = None) -> list[dict]:
    """Boxes as otx cuts them (``otx.boxes.boxes_from_map``), from the full-size normalised map.

    Pixels at or above the box threshold; components within ``merge`` of the longer side joined;
    each box around its group's pixels at or above ``threshold + peak * (group maximum - threshold)``;
    boxes under ``min_area`` of the image dropped; each scored by the mean of its group's values
    (``score`` "mean") or their maximum ("max"); none on images labelled normal unless ``on_normal``;
    with ``refine`` other than "none", each box snapped to the ``image`` (RGB) as ``snap`` does.
    """
    if not anomalous and not settings["on_normal"]:
        return []
    mask = (score_map >= settings["threshold"]).astype(np.uint8)
    radius = int(round(settings["merge"] * max(mask.shape)))
    # every pixel within radius of the mask (otx.boxes.grown: the exact distance, not a dilation, which is slow)
    grouped = mask
    if radius:
        grouped = (cv2.distanceTransform(1 - mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) <= radius).astype(np.uint8)
    count, groups = cv2.connectedComponents(grouped, connectivity=8, ltype=cv2.CV_32S)
    boxes = []
    # each group's own pixels (not the growth), in the image's order: sorted by group once (before: one pass over
    # the whole map per group, 4.4 s for 150 groups on a 3000x4000 map)
    all_ys, all_xs = np.nonzero(mask)
    ids = groups[all_ys, all_xs]
    order = np.argsort(ids, kind="stable")
    all_ys, all_xs, ids = all_ys[order], all_xs[order], ids[order]
    starts = np.searchsorted(ids, np.arange(1, count), side="left")
    ends = np.searchsorted(ids, np.arange(1, count), side="right")
    for start, end in zip(starts, ends):  # noqa: B905 - equal lengths; the demo runs on older Pythons too
        if start == end:
            continue
        ys, xs = all_ys[start:end], all_xs[start:end]
        values = score_map[ys, xs]
        top = float(values.max())
        # float32, as otx rounds it, so that the 6 decimals written are otx's
        score = float(np.float32(values.astype(np.float64).mean())) if settings["score"] == "mean" else top
        # in float32 as otx compares them (whatever numpy's version does with a Python float)
        core = values >= np.float32(settings["threshold"] + settings["peak"] * (top - settings["threshold"]))
        ys, xs = ys[core], xs[core]
        x1, y1, x2, y2 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
        if (x2 - x1) * (y2 - y1) < settings["min_area"] * mask.size:
            continue
        xyxy = [x1, y1, x2, y2] if settings["refine"] == "none" else snap(image, [x1, y1, x2, y2], settings["refine"])
        boxes.append({"xyxy": xyxy, "score": round(score, 6)})
    return boxes


def restore(small: np.ndarray, size_hw: tuple[int, int], input_hw: list[int], mode: str) -> np.ndarray:
    """The model's map at the image's own size (as otx's ``PreProcessor.restore``).

    ``keep_aspect`` models padded the image at its bottom or right to their input's aspect ratio:
    the map is resized to that padded size and the image's part cut out. Other modes: resized.
    Only the rows and columns of the map that the image's part reads are resized (a long image's
    padded map can be 40 times its size), with the same scale factors: otx's ``resize_crop``.
    """
    height, width = size_hw
    full_h, full_w = height, width
    if mode == "keep_aspect":
        full_h = max(height, -(-width * input_hw[0] // input_hw[1]))
        full_w = max(width, -(-height * input_hw[1] // input_hw[0]))
    small = small.astype(np.float32)  # a copy: ``small`` may be the output buffer the next request reuses
    rows, cols = small.shape[:2]
    if (full_h, full_w) == (rows, cols):
        return small[:height, :width]
    scale_y, scale_x = full_h / rows, full_w / cols
    need_h = min(rows, max(2, math.floor((height - 0.5) / scale_y - 0.5) + 3))
    need_w = min(cols, max(2, math.floor((width - 0.5) / scale_x - 0.5) + 3))
    if (need_h, need_w) != (rows, cols):
        part = np.ascontiguousarray(small[:need_h, :need_w])
        part = cv2.resize(part, (0, 0), fx=scale_x, fy=scale_y, interpolation=cv2.INTER_LINEAR)
        # (a part whose size comes out unchanged is copied by OpenCV, not resampled at the scale: resized whole)
        if part.shape[:2] != (need_h, need_w) and part.shape[0] >= height and part.shape[1] >= width:
            return part[:height, :width].copy()  # not a view: the few lines past the crop go
    full = cv2.resize(small, (full_w, full_h), interpolation=cv2.INTER_LINEAR)
    return full if (height, width) == (full_h, full_w) else full[:height, :width].copy()


SIZE_FACTOR = 2.0  # otx's: images more than this factor smaller or larger than every training image


def profile_notes(train: dict | None, seen: list[tuple[str, int, int]], total: int, where: str = "input") -> list[str]:
    """The warnings otx predict gives when images differ clearly from the training images.

    ``train`` holds the export's ``channels`` and ``height`` / ``width`` ranges; ``seen`` is
    ``(channel_kind, height, width)`` per image decoded, of ``total`` images. The same lines as
    ``otx.checks.profile_warnings``: a colour file holding a grayscale image is no colour image
    for a grayscale model, and colour files holding grayscale images (all of up to
    ``PROFILE_CHECKS`` looked at) are grayscale for a colour model.
    """
    if not train or not seen:
        return []
    found: list[str] = []
    (h_min, h_max), (w_min, w_max) = train["height"], train["width"]
    landscape, portrait = w_min > h_max, h_min > w_max  # every training image stands so

    def too_small(height: int, width: int) -> bool:
        return height * SIZE_FACTOR < h_min or width * SIZE_FACTOR < w_min

    def too_large(height: int, width: int) -> bool:
        return height > h_max * SIZE_FACTOR or width > w_max * SIZE_FACTOR

    gray = sum(kind == "gray" for kind, _, _ in seen)  # grayscale files, for a colour model
    colour = [kind for kind, _, _ in seen if kind != "gray"]
    sampled = colour  # otx.checks.spread: up to PROFILE_CHECKS, evenly from the first to the last
    if len(colour) > PROFILE_CHECKS:
        sampled = [colour[(i * (len(colour) - 1)) // (PROFILE_CHECKS - 1)] for i in range(PROFILE_CHECKS)]
    if train["channels"] == "color" and colour and all(kind == "stored_gray" for kind in sampled):
        gray += len(colour)  # a grayscale camera's images saved as RGB
    color = sum(kind == "color" for kind, _, _ in seen)  # colour images, for a grayscale model
    smaller = larger = turned = reshaped = 0
    for _, height, width in seen:
        if too_small(height, width) or too_large(height, width):
            if not (too_small(width, height) or too_large(width, height)):
                turned += 1
            elif too_small(height, width) and too_large(height, width):
                reshaped += 1
            elif too_small(height, width):
                smaller += 1
            else:
                larger += 1
        elif (landscape and height * h_max >= width * w_min) or (portrait and width * w_max >= height * h_min):
            # within 2x, but standing the other way, at least as far as the training images stand their way
            if not (too_small(width, height) or too_large(width, height)):
                turned += 1  # (before: a 4:3 image stood 3:4 went unnamed, its score moved 0.34 -> 0.999)
    if train["channels"] == "gray" and color:
        found.append(
            f"{color} of {total} {where} images are colour, but the model was trained on grayscale images: "
            "its scores on them are not comparable (convert them, or train on such images)"
        )
    if train["channels"] == "color" and gray:
        found.append(
            f"{gray} of {total} {where} images are grayscale, but the model was trained on colour images: "
            "its scores on them are not comparable (convert them, or train on such images)"
        )

    def span(low: int, high: int) -> str:
        return str(low) if low == high else f"{low}-{high}"

    size_range = f"{span(w_min, w_max)} x {span(h_min, h_max)} (width x height)"
    if turned:
        found.append(
            f"{turned} of {total} {where} images are turned on their side: their height and width are the training "
            f"images' width and height ({size_range}); rotate them as the training images stand, so scores are "
            "comparable"
        )
    if reshaped:
        found.append(
            f"{reshaped} of {total} {where} images are shaped unlike the training images ({size_range}): more than "
            f"{SIZE_FACTOR:g}x larger on one side and {SIZE_FACTOR:g}x smaller on the other, so defects change shape "
            "and scores shift"
        )
    for count, how in ((smaller, "smaller"), (larger, "larger")):
        if count:
            found.append(
                f"{count} of {total} {where} images are more than {SIZE_FACTOR:g}x {how} than the training images "
                f"({size_range}): defects change size with them, so scores shift"
            )
    return found


def main() -> int:
    """Predict on the images named on the command line; return the exit code."""
    for stream in (sys.stdout, sys.stderr):  # a file name that is not valid UTF-8, under a strict UTF-8 locale
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", help="image file, folder or glob pattern")
    parser.add_argument(
        "--model",
        default=str(Path(__file__).parent / "model" / "exported_model.xml"),
        help="the exported OpenVINO IR, .xml (default: the package's model/exported_model.xml)",
    )
    parser.add_argument("--device", default="CPU", help="CPU (the default), GPU, NPU or AUTO")
    parser.add_argument(
        "--precision",
        default="f32",
        type=str.lower,
        choices=("f32", "bf16", "f16", "default"),
        help="inference precision hint: f32 (the default; reproduces otx), bf16, f16, or 'default' for the device's "
        "own choice (as otx --inference_precision)",
    )
    parser.add_argument("--output", default="results", help="folder for results.json and masks")
    parser.add_argument("--allow_errors", action="store_true", help="exit 0 even if some images cannot be read")
    args = parser.parse_args()
    args.device = args.device.upper()  # as otx predict: --device cpu is CPU

    core = ov.Core()
    available = list(core.available_devices)
    # as otx predict: a device this machine has (CPU, GPU, GPU.1), or AUTO/MULTI/HETERO over such devices
    virtual, _, listed = args.device.partition(":")
    physical = [args.device]
    if virtual in ("AUTO", "MULTI", "HETERO"):  # AUTO:GPU,CPU  MULTI:CPU(4),GPU(2)  AUTO:-CPU (all but CPU)
        names = [re.sub(r"\(\d*\)$", "", d.strip()) for d in listed.split(",") if d.strip()]
        excluded = {d[1:] for d in names if d.startswith("-")}
        physical = [d for d in names if not d.startswith("-")] or [
            d for d in available if d not in excluded and d.split(".")[0] not in excluded
        ]
    missing = [d for d in physical if d not in {*available, *(a.split(".")[0] for a in available)}]
    if missing or not physical:
        print(
            f"error: device {missing[0] if missing else args.device} not available (available: "
            f"{', '.join(available)}); pass --device with one of them or AUTO",
            file=sys.stderr,
        )
        return 1
    model_path = Path(args.model)
    if not model_path.is_file():  # (before: a missing .onnx was "an ONNX file")
        what = "a folder" if model_path.is_dir() else "not found"
        print(f"error: the model {args.model} is {what}; pass --model <exported_model.xml>", file=sys.stderr)
        return 1
    suffix = model_path.suffix.lower()
    if suffix not in (".xml", ".onnx"):  # (before: a .bin was read by OpenVINO's other front ends, with their noise)
        beside = model_path.with_suffix(".xml")
        fix = (
            f"pass its .xml: {beside}"
            if suffix == ".bin" and beside.is_file()
            else "pass --model <exported_model.xml> (the OpenVINO IR otx export writes; a model.ckpt needs otx)"
        )
        kind = "the weights file of an OpenVINO IR" if suffix == ".bin" else "not an OpenVINO IR (.xml)"
        print(f"error: the model {args.model} is {kind}; {fix}", file=sys.stderr)
        return 1
    if suffix == ".onnx":
        print(
            f"error: {args.model} is an ONNX file; this demo takes the OpenVINO IR (.xml with its .bin) that "
            "otx export writes with --format OPENVINO (the default)",
            file=sys.stderr,
        )
        return 1
    weights = Path(args.model).with_suffix(".bin")
    if Path(args.model).is_file() and not weights.is_file():  # a half-copied package (OpenVINO: "Incorrect weights")
        print(
            f"error: the model {args.model} has no weights file '{weights.name}' beside it; copy the .bin with "
            "the .xml",
            file=sys.stderr,
        )
        return 1
    try:
        model = core.read_model(args.model)
    except RuntimeError as exc:
        # OpenVINO's message: "Exception from <source file>:" lines, then the cause
        said = [line.strip() for line in str(exc).splitlines() if line.strip()]
        cause = next((line for line in reversed(said) if not line.startswith("Exception from")), "")
        print(
            f"error: cannot read the model {args.model}: OpenVINO cannot read it ({cause[:200]}); copy the .xml "
            "and its .bin again, whole",
            file=sys.stderr,
        )
        return 1
    if not model.has_rt_info(["model_info", "task"]):
        print(
            f"error: the model {args.model} is not an otx export (its metadata names no task); pass --model "
            "<exported_model.xml> written by otx export",
            file=sys.stderr,
        )
        return 1
    task = model.get_rt_info(["model_info", "task"]).astype(str)

    def info(key: str, default: str) -> str:
        return model.get_rt_info(["model_info", key]).astype(str) if model.has_rt_info(["model_info", key]) else default

    try:  # numbers where numbers go (before: a traceback for an edited value, a bug bash)
        mode = info("otx_input_mode", "resize")
        train_profile = None
        if model.has_rt_info(["model_info", "otx_train_channels"]):
            train_profile = {
                "channels": info("otx_train_channels", ""),
                "height": [int(v) for v in info("otx_train_height", "").split()],
                "width": [int(v) for v in info("otx_train_width", "").split()],
            }
            if len(train_profile["height"]) != 2 or len(train_profile["width"]) != 2:  # (a traceback after the masks)
                raise ValueError(
                    f"otx_train_height {info('otx_train_height', '')!r}, width {info('otx_train_width', '')!r}"
                )
        input_hw = [int(v) for v in info("input_size", "256 256").split()]
        if len(input_hw) != 2 or min(input_hw) < 1:
            raise ValueError(f"input_size {info('input_size', '')!r}")

        box_settings = {
            "threshold": float(info("otx_box_threshold", "0.5")),
            "merge": float(info("otx_box_merge", "0.0")),
            "min_area": float(info("otx_box_min_area", "0.0")),
            "on_normal": info("otx_box_on_normal", "False") == "True",
            "peak": float(info("otx_box_peak", "0.0")),
            "score": info("otx_box_score", "max"),  # exports before the key: the maximum
            "refine": info("otx_box_refine", "none"),  # exports before the key: not refined
        }
    except ValueError as exc:
        print(
            f"error: the model {args.model} has a damaged metadata value ({exc}); export the model again",
            file=sys.stderr,
        )
        return 1
    for key, known in (("score", ("mean", "max")), ("refine", REFINES)):
        if box_settings[key] not in known:
            print(
                f"error: the model {args.model} asks for box {key} '{box_settings[key]}', which this script does "
                "not know; export the model again and use the predict.py written with it",
                file=sys.stderr,
            )
            return 1
    try:  # the precision on every device that runs the model, as otx predict sets it
        for device in physical:
            if args.precision != "default" and "INFERENCE_PRECISION_HINT" in core.get_property(
                device, "SUPPORTED_PROPERTIES"
            ):
                core.set_property(device, {"INFERENCE_PRECISION_HINT": args.precision})
        compiled = core.compile_model(model, args.device, throughput_config(input_hw, physical))
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())[:300]
        print(f"error: OpenVINO cannot run the model on {args.device} at {args.precision} ({reason})", file=sys.stderr)
        return 1
    try:  # what the device chose (AUTO may not say)
        ran = compiled.get_property("INFERENCE_PRECISION_HINT")
        ran = ran.to_string() if hasattr(ran, "to_string") else str(ran)
    except RuntimeError:
        ran = ""
    if ran in ("bf16", "f16"):  # measured: normalised scores 0.098 (PADIM) and 0.171 (STFPM) from f32's
        print(
            f"note: {args.device} runs the model in {ran}: normalised scores can differ from f32's by 0.1 or more, "
            "and labels near the threshold with them; --precision f32 runs it as otx checked it",
            file=sys.stderr,
        )
    names = [o.get_names() for o in compiled.outputs]  # (an output's names in any order: found by membership)
    found = {
        name: next((i for i, given in enumerate(names) if name in given), None)
        for name in ("pred_score", "anomaly_map")
    }
    if None in found.values():  # before: ValueError, a traceback
        missing = next(name for name, at in found.items() if at is None)
        print(
            f"error: the model {args.model} has no output '{missing}': it was not exported by otx; re-export it "
            "with otx export",
            file=sys.stderr,
        )
        return 1
    score_at, map_at = found["pred_score"], found["anomaly_map"]

    paths = find_images(args.images, Path(args.output))
    if not paths:
        exists = Path(args.images).exists() or any(ch in args.images for ch in "*?[")
        what = "no images found at" if exists else "no such file or folder:"
        print(f"error: {what} {args.images}; pass an image file, a folder or a glob pattern", file=sys.stderr)
        return 1
    stems = output_stems(paths)
    out_dir = Path(args.output)
    try:  # an earlier run's records name its masks
        earlier = json.loads((out_dir / "results.json").read_text())
    except OSError:  # none
        earlier = []
    except ValueError:  # not JSON: not this script's
        earlier = None
    if (out_dir / "results.json").exists() and not (
        isinstance(earlier, list) and all(isinstance(r, dict) and "image" in r for r in earlier)
    ):  # before: a results.json of someone else's overwritten without a word
        print(
            f"error: {out_dir / 'results.json'} was not written by this script, and would be replaced; pass "
            "another --output folder",
            file=sys.stderr,
        )
        return 1
    try:
        (out_dir / "masks" if task in ("segmentation", "detection") else out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot write results to {out_dir} ({exc}); pass --output FOLDER", file=sys.stderr)
        return 1
    earlier = earlier if isinstance(earlier, list) else []
    stale = [out_dir / r["mask"] for r in earlier if isinstance(r, dict) and isinstance(r.get("mask"), str)]
    if stale:  # removed once the new results.json is in place (before: first, so a stopped run lost them)
        print(f"replacing the results of an earlier run in {out_dir}")
    results: dict[int, dict] = {}
    unwritten: list[str] = []

    def done(request: ov.InferRequest, item: tuple[int, Path, np.ndarray]) -> None:
        index, path, image = item
        height, width = image.shape[:2]
        score = float(request.get_output_tensor(score_at).data.reshape(-1)[0])
        record: dict = {
            "image": str(path),
            "score": round(score, 6),
            "label": "anomalous" if score >= 0.5 else "normal",
        }
        if task in ("segmentation", "detection"):
            small = request.get_output_tensor(map_at).data[0, 0]
            full = restore(small, (height, width), input_hw, mode)
            mask = full >= 0.5
            record["mask"] = f"masks/{stems[path]}_mask.png"
            try:  # encoded, then written by Python: cv2.imwrite crashes on a path that is not valid UTF-8
                (out_dir / record["mask"]).write_bytes(cv2.imencode(".png", mask.astype(np.uint8) * 255)[1].tobytes())
            except OSError as exc:  # a full disk: said after the queue has finished
                unwritten.append(f"{out_dir / record['mask']} ({exc.strerror or exc})")
                record["mask"] = None
            if task == "detection":
                record["boxes"] = boxes_of(full, score >= 0.5, box_settings, image)
        results[index] = record

    queue = ov.AsyncInferQueue(compiled)
    queue.set_callback(done)
    seen: list[tuple[str, int, int]] = []  # (channel_kind, height, width) of each image read
    for index, path in enumerate(paths):
        (raw, reason), image = decode_why(path), None
        if raw is not None:
            seen.append((channel_kind(raw), *raw.shape[:2]))
            try:
                image = to_rgb(raw)
            except ValueError as exc:  # out of the levels otx reads
                reason = f"cannot read image: {exc}"
        if image is None:
            results[index] = {"image": str(path), "score": None, "label": "error", "error": reason}
            print(f"not predicted: {path}: {reason}", file=sys.stderr)
            continue
        tensor = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255.0)
        queue.start_async({0: tensor}, userdata=(index, path, image))
    queue.wait_all()
    if unwritten:
        print(
            f"error: could not write {len(unwritten)} mask file(s), e.g. {unwritten[0]}; check the free space and "
            "permissions of --output",
            file=sys.stderr,
        )
        return 1
    for note in profile_notes(train_profile, seen, len(paths)):  # as otx predict: such scores are not comparable
        print(f"warning: {note}", file=sys.stderr)
    records = [results[i] for i in range(len(paths))]
    # through a temporary file and a rename: a full disk leaves the earlier results.json whole, not empty
    written = out_dir / ".results.json.tmp"
    try:
        written.write_text(json.dumps(records, indent=1))
        os.replace(written, out_dir / "results.json")
        named = {out_dir / r["mask"] for r in records if isinstance(r.get("mask"), str)}
        for mask in stale:  # an earlier run's masks that this results.json does not name
            if mask.parent == out_dir / "masks" and mask not in named:
                mask.unlink(missing_ok=True)
    except OSError as exc:  # before: a traceback and a 0-byte results.json (a bug bash)
        written.unlink(missing_ok=True)
        print(
            f"error: could not write {out_dir / 'results.json'} ({exc.strerror or exc}); check the free space and "
            "permissions of --output",
            file=sys.stderr,
        )
        return 1
    anomalous = sum(r["label"] == "anomalous" for r in records)
    failed = sum(r["label"] == "error" for r in records)
    print(f"{len(records)} images, {anomalous} anomalous, {failed} unreadable; results in {out_dir / 'results.json'}")
    if failed == len(records):
        print("error: no image could be read", file=sys.stderr)
        return 1
    if failed and not args.allow_errors:
        print(f"error: {failed} image(s) could not be read (label 'error' in results.json)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

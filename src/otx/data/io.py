"""Reading images and masks of any size, mode and bit depth into one canonical form."""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from otx.errors import OTXConfigError, OTXDataError

# The image files otx reads from a folder, in training (Datumaro's MVTec reader lists these) and in
# `otx predict --source DIR` alike; the common ones first, for messages.
IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".jpe", ".dib", ".pbm", ".pgm",
    ".ppm", ".pnm", ".pxm", ".pfm", ".sr", ".ras", ".exr", ".hdr", ".pic", ".tga",
)  # fmt: skip
LOOKED_FOR = f"{', '.join(IMAGE_EXTENSIONS[:8])} and {len(IMAGE_EXTENSIONS) - 8} rarer image types"


# Pillow refuses images of more than twice ``Image.MAX_IMAGE_PIXELS`` (89 MP by default) as possible
# decompression bombs, which OpenCV, otx's first decoder, reads up to its own limit of 2^30 pixels
# (CV_IO_MAX_IMAGE_PIXELS): a 15000x15000 scan failed otx's header check although its pixels could be
# read. otx raises Pillow's limit to OpenCV's (never lowers one a caller has set higher, or None).
OPENCV_MAX_PIXELS = 2**30
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < OPENCV_MAX_PIXELS:
    Image.MAX_IMAGE_PIXELS = OPENCV_MAX_PIXELS
# The most pixels otx decodes of one image unless OTX_MAX_IMAGE_PIXELS says otherwise: 16384x16384. A
# 20000x20000 PNG of 389 KB took 8.3 GB to predict (about 21 bytes a pixel through otx predict), and one
# of 32000x32000 (2 MB, under OpenCV's 2^30 limit) would have needed the OOM killer (a bug bash).
MAX_IMAGE_PIXELS = 2**28
# what Pillow raises for a file it cannot open or decode
PIL_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)

UNIT_SLACK = 0.01  # a float image within [-0.01, 1.01] is a [0, 1] image with rounding noise
# A float image outside [0, 1] whose levels all lie below this is no 0-255 image (it would be black):
# a [0, 1] image scaled or shifted (x * 1.4, x - 0.5), refused rather than read as black.
FLOAT_LEVELS_MIN = 2.0


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale any integer or float image to uint8 (16-bit by its full range, float by [0, 1] when it fits).

    Floats are rounded to the nearest level, as OpenCV converts them (a float pipeline's 127.999 is 128).
    Other values must lie in [0, 255], and floats outside [0, 1] must reach level ``FLOAT_LEVELS_MIN``
    (else they are a [0, 1] image scaled or shifted, not dark levels): a float height map in
    micrometres or 12-bit data in 32-bit integers would be clipped to white, and a shifted [0, 1]
    image read as black, so they raise ``ValueError`` saying their range instead.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "u" and array.dtype.itemsize == 2:  # either byte order (a big-endian TIFF's I;16B)
        return (array.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    as_float = array.astype(np.float32)
    low, high = (float(as_float.min()), float(as_float.max())) if as_float.size else (0.0, 0.0)
    floating = np.issubdtype(array.dtype, np.floating)
    if floating and low >= -UNIT_SLACK and high <= 1.0 + UNIT_SLACK:
        as_float = as_float * 255.0
    elif floating and low >= -0.5 and high < FLOAT_LEVELS_MIN:
        raise ValueError(
            f"its float values run from {low:g} to {high:g}: not a [0, 1] image (read as 0-255 levels it would be "
            "black); clip or scale it to [0, 1] or 0-255 first"
        )
    elif not (low >= -0.5 and high < 255.5):  # NaN fails both
        kind = "float" if np.issubdtype(array.dtype, np.floating) else str(array.dtype)
        raise ValueError(
            f"its {kind} values run from {low:g} to {high:g}, outside [0, 1] and 0-255, which otx reads "
            "as image levels; convert it to 8 or 16 bits (scaled to its range) first"
        )
    return np.clip(np.rint(as_float), 0, 255).astype(np.uint8)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the end chunk's type and its CRC (it has no data), the same in every PNG


def png_cut_short(data: bytes) -> bool:
    """A PNG file without its end chunk: an interrupted copy (Pillow then names it truncated).

    Anywhere in the file, not only at its end: bytes after the end chunk (a tool's trailer) do
    not make a PNG cut short, and both decoders read it.
    """
    return data[:8] == PNG_SIGNATURE and data.rfind(PNG_END) < 0


# Pillow modes converted before their pixels are taken: to RGB for an image (alpha is dropped anyway),
# keeping alpha for a mask (``read_mask`` reads transparency).
PIL_IMAGE_MODES = dict.fromkeys(("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La", "LA"), "RGB")
PIL_MASK_MODES = {"P": "RGBA", "PA": "RGBA", "1": "L", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB",
                  "RGBX": "RGB", "RGBa": "RGBA", "La": "LA"}  # fmt: skip


def _file_bytes(path: str | Path, what: str) -> bytes:
    """The bytes of an image or mask file; one ``OTXDataError`` line when it cannot be read or is empty."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        why = why_unreadable(path, exc)
        raise OTXDataError(f"cannot read {what} '{path}' ({why}); replace or remove the file") from exc
    if not data:  # imdecode asserts on an empty buffer (an internal error, before)
        raise OTXDataError(f"cannot read {what} '{path}' (the file is empty, 0 bytes); replace or remove the file")
    return data


JPEG_SIGNATURE = b"\xff\xd8\xff"
# What libjpeg says (on stderr, through OpenCV, which still returns an image) when it made up part of
# an image: a flipped byte desynchronises the decoder, which fills the rest of the image with a flat
# block ("Corrupt JPEG data: 30 extraneous bytes before marker 0xd9"). Such a file is unreadable to otx.
JPEG_DAMAGE = ("Corrupt JPEG data", "Premature end of JPEG file")


_STDERR_LOCK = threading.Lock()  # one redirection of descriptor 2 at a time


@contextlib.contextmanager
def native_stderr() -> Iterator[list[str]]:
    """Collect what native code writes to file descriptor 2 inside the block (the list gets it at the end).

    Best effort: where the descriptor cannot be duplicated, nothing is collected. Lines the caller
    does not want are its to write back (``os.write(2, ...)``); other threads' writes in the block
    land here too. Blocks of several threads run one after the other: interleaved, their restores
    came out of order and left descriptor 2 on a deleted file (``otx predict``'s overlay threads).
    """
    with _STDERR_LOCK:
        yield from _native_stderr()


def _native_stderr() -> Iterator[list[str]]:
    said: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:
        yield said
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield said
            finally:
                os.dup2(saved, 2)
                sink.seek(0)
                said.append(sink.read().decode("utf-8", "replace"))
    finally:
        os.close(saved)


def _imdecode_checked(path: str | Path, data: bytes, what: str) -> np.ndarray | None:
    """``cv2.imdecode``; a JPEG libjpeg had to make part of is refused in one ``OTXDataError`` line."""
    flags = cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION
    if data[:3] != JPEG_SIGNATURE:
        return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    with native_stderr() as said:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    lines = "".join(said).splitlines(keepends=True)
    damage = [line.strip() for line in lines if line.startswith(JPEG_DAMAGE)]
    if rest := "".join(line for line in lines if not line.startswith(JPEG_DAMAGE)):
        os.write(2, rest.encode("utf-8", "replace"))  # not libjpeg's: as it was written
    if damage and array is not None:
        raise OTXDataError(
            f"cannot decode {what} '{path}' (damaged JPEG data, the decoder would make up part of it: "
            f"{damage[0]}); replace or remove the file"
        )
    return array


_PNM_TOKEN = re.compile(rb"(?:\s|#[^\n\r]*)*(\S+)")  # a header field, after blanks and comments


def pam_header(data: bytes) -> bytes:
    """A PAM file's header lines (before ``ENDHDR``, within its first 4 KB); empty when there is none."""
    end = data.find(b"ENDHDR", 0, 4096)
    return data[:end] if end >= 0 else b""


def pnm_maxval(data: bytes) -> int | None:
    """The largest level a PGM, PPM or PAM file declares (its ``maxval``); None for other files.

    A 12-bit camera's PGM declares 4095; OpenCV reads its values as they are stored (a 16-bit
    image at most 4095 of 65535, near black), Pillow scales them to the full range.
    """
    if data[:2] in (b"P2", b"P3", b"P5", b"P6"):
        fields, at = [], 2
        for _ in range(3):  # width, height, maxval
            if not (match := _PNM_TOKEN.match(data, at)):
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


def _pnm_pixels(array: np.ndarray, data: bytes) -> np.ndarray:
    """OpenCV's pixels of a PGM, PPM or PAM file as the file means them.

    Levels are scaled from its ``maxval`` to the depth's full range, and a PAM file's RGB samples
    (``TUPLTYPE RGB`` or ``RGB_ALPHA``, red first as the format says) go to OpenCV's BGR order: OpenCV
    copies PAM samples as they are stored (its own writer stores BGR and names no tuple type).
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
    scaled = np.rint(array.astype(np.float64) * (full / maxval))
    return np.minimum(scaled, full).astype(array.dtype)  # (a level past maxval, a damaged file's, is the top)


EXR_SIGNATURE = b"v/1\x01"
EXR_OFF = (
    "an OpenEXR file: OpenCV reads these only with OPENCV_IO_ENABLE_OPENEXR=1 in the environment otx starts in; "
    "set it, or convert the file to a 16-bit TIFF or PNG"
)


def _exr_off(data: bytes) -> bool:
    """An OpenEXR file while OpenCV's EXR reader is off (its default; it says so on stderr, Pillow cannot read it)."""
    return data[:4] == EXR_SIGNATURE and os.environ.get("OPENCV_IO_ENABLE_OPENEXR", "").strip().lower() not in (
        "1", "true", "on", "yes",
    )  # fmt: skip


def _decode(path: str | Path, data: bytes, modes: dict[str, str], what: str) -> np.ndarray:
    """The pixels of an image file, by OpenCV (as stored: any depth, channels in OpenCV's order) or Pillow.

    Pillow decodes what OpenCV cannot (a TGA file, a PNG cut short, which it names truncated);
    its modes are converted by ``modes`` and its channels reordered to OpenCV's (BGR, BGRA).
    TIFF orientation is applied by both (libtiff and Pillow turn the pixels, and report the
    turned size), every other format's EXIF orientation by neither. A PGM, PPM or PAM file's levels
    are scaled from its ``maxval`` to the full 8 or 16 bits by both (``_pnm_pixels``).
    """
    _check_pixels(path, data, what)
    if _exr_off(data):  # (before: OpenCV's warning, then Pillow's "cannot identify image file")
        raise OTXDataError(f"cannot decode {what} '{path}' ({EXR_OFF})")
    array = None
    if not png_cut_short(data):  # (libpng would print its own "PNG input buffer is incomplete" first)
        try:
            array = _imdecode_checked(path, data, what)
        except cv2.error:  # a decoder that fails loudly rather than returning None: Pillow has the last word
            array = None
    if array is not None:
        return _pnm_pixels(_within_pixels(path, array, what), data)
    try:
        with Image.open(path) as pil:
            array = np.asarray(pil.convert(modes[pil.mode]) if pil.mode in modes else pil)
    except PIL_ERRORS as exc:
        raise OTXDataError(f"cannot decode {what} '{path}' ({exc}); replace or remove the file") from exc
    if array.ndim == 3 and array.shape[2] >= 3:
        array = array[..., 2::-1] if array.shape[2] == 3 else array[..., [2, 1, 0, 3]]  # to BGR(A) like cv2
    return array


def max_image_pixels() -> int:
    """The most pixels otx decodes of one image: ``OTX_MAX_IMAGE_PIXELS``, else ``MAX_IMAGE_PIXELS``."""
    given = os.environ.get("OTX_MAX_IMAGE_PIXELS", "").strip()
    if not given:
        return MAX_IMAGE_PIXELS
    try:
        value = int(float(given))
    except (ValueError, OverflowError):  # (inf: OverflowError, a review)
        value = 0
    if value < 1:
        raise OTXConfigError(f"OTX_MAX_IMAGE_PIXELS must be a number of pixels, such as 400000000 (got {given!r})")
    return value


def _check_pixels(path: str | Path, data: bytes, what: str) -> None:
    """One line, before decoding, for an image whose header declares more pixels than ``max_image_pixels``.

    A small file can declare a huge image (a decompression bomb, or a scan far larger than the
    model needs); decoding it first could take all of the machine's memory. A header Pillow
    cannot read is left to the decoders.
    """
    try:
        with Image.open(io.BytesIO(data)) as pil:
            width, height = pil.size
    except Exception:  # noqa: BLE001 - the decoders say what is wrong with the file
        return
    _refuse_past_limit(
        path, width, height, what, " (a small file can declare a huge image, which takes gigabytes to decode)"
    )


def _within_pixels(path: str | Path, array: np.ndarray, what: str) -> np.ndarray:
    """``array``, or ``_check_pixels``'s line where its header could not say its size (an HDR or float TIFF)."""
    _refuse_past_limit(path, array.shape[1], array.shape[0], what)
    return array


def _refuse_past_limit(path: str | Path, width: int, height: int, what: str, why: str = "") -> None:
    """One ``OTXDataError`` line for an image of more pixels than ``max_image_pixels`` (``why`` after the limit)."""
    if width * height > (limit := max_image_pixels()):
        raise OTXDataError(
            f"cannot read {what} '{path}': {width}x{height} is {_pixels(width * height)}, above the "
            f"{_pixels(limit)} otx decodes of one image{why}; scale it down, or set OTX_MAX_IMAGE_PIXELS to more pixels"
        )


def _pixels(count: int) -> str:
    """``400 MP``, or ``2,000 pixels`` for a count under ten million."""
    return f"{count / 1e6:.0f} MP" if count >= 10**7 else f"{count:,} pixels"


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as an ``H x W x 3`` RGB ``uint8`` array.

    Grayscale becomes three equal channels, the alpha channel is dropped, 16-bit and float
    images are scaled to 8 bits. Raises ``OTXDataError`` naming the file if it cannot be decoded.
    """
    data = _file_bytes(path, "image")
    # From the bytes: imread decodes a JPEG cut short to an image with its missing rows grey (libjpeg's
    # warning on stderr only); imdecode refuses it, and Pillow's fallback then names it truncated.
    array = _decode(path, data, PIL_IMAGE_MODES, "image")
    try:
        array = to_uint8(np.asarray(array))
    except ValueError as exc:
        raise OTXDataError(f"cannot read image '{path}': {exc}") from None
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    if array.shape[2] == 1:
        return cv2.cvtColor(array[..., 0], cv2.COLOR_GRAY2RGB)
    if array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(array[..., :3], cv2.COLOR_BGR2RGB)


def why_unreadable(path: str | Path, exc: OSError) -> str:
    """Why a file cannot be opened: a broken symbolic link names where it points."""
    if Path(path).is_symlink() and not Path(path).exists():
        return f"a broken symbolic link to '{os.readlink(path)}'"
    return str(exc.strerror or exc)


def sixteen_bit_peak(path: str | Path) -> int | None:
    """The largest value of a 16-bit image file, None for other depths or a file that cannot be decoded.

    Decoded as otx reads images (``_decode``), so a damaged file prints nothing of its own (libpng's
    "PNG input buffer is incomplete") and is said where it is read, not here.
    """
    try:
        array = _decode(path, _file_bytes(path, "image"), PIL_IMAGE_MODES, "image")
    except OTXDataError:
        return None
    return int(array.max()) if array.dtype == np.uint16 and array.size else None


def read_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask as an ``H x W`` bool array (True: defect).

    Every mode reads to the same binary mask: a pixel is a defect when its colour is not black,
    that is when any colour channel is non-zero (grayscale 0/255 as in MVTec AD, 0/1 label masks,
    16-bit, RGB, palette masks by their palette colours, 1-bit). Soft or noisy values (antialiased
    edges, JPEG artefacts) count as defect wherever they are above 0. An alpha channel (RGBA, LA,
    palette transparency) hides what it makes fully transparent, as a viewer shows it: an image
    transparent everywhere is an empty mask; where alpha varies and the visible pixels are one
    flat colour (a defect drawn in one pen, black included, on a transparent background), the
    visible pixels are the defect; otherwise the visible pixels that are not black. So a labelling
    tool's transparent white background is not a defect. A constant alpha above 0 is ignored.

    Decoded as images are (``read_image``'s decoders, depth kept), so a mask is turned exactly as
    its image (a TIFF orientation), and a 16-bit colour mask of 0/1 labels keeps them.
    """
    array = _decode(path, _file_bytes(path, "mask"), PIL_MASK_MODES, "mask")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return array > 0
    channels = array.shape[2]
    if channels in (2, 4):  # LA or RGBA: colour channels, then alpha
        colour, alpha = array[..., : channels - 1], array[..., channels - 1]
        flat = colour.reshape(-1, channels - 1)
        visible = alpha > 0
        if alpha.min() == alpha.max():  # opaque (or half-transparent) alike: the colours; transparent: nothing
            return colour.max(axis=2) > 0 if visible.all() else visible
        shown = flat[visible.reshape(-1)]
        if (shown.min(axis=0) == shown.max(axis=0)).all():  # one pen on a transparent background
            return visible
        return (colour.max(axis=2) > 0) & visible
    return array.max(axis=2) > 0


EXIF_ORIENTATION = 0x0112  # 1: as stored; 2-8: a viewer flips or turns the image to show it


class ImageHeader(NamedTuple):
    """What an image file's header says (``image_header``)."""

    height: int
    width: int
    orientation: int  # EXIF orientation the pixels are read without: 1 when none, and for TIFF (read turned)
    pages: int  # frames of a multi-page TIFF or an animation; otx reads the first


def image_header(path: str | Path) -> ImageHeader:
    """``(height, width, EXIF orientation, pages)`` from the file header, without decoding pixels.

    The orientation is 1 when the file has none. otx reads pixels as they are stored, like
    anomalib and MVTec AD's tools, not turned as photo viewers show them (``index_mvtec`` warns).
    ``pages`` is above 1 for a multi-page TIFF (or an animated GIF, PNG or WebP): otx reads the
    first page only (``pages_warning``). Raises ``OTXDataError`` naming the file when it is not a
    readable image.
    """
    try:
        with Image.open(path) as pil:
            width, height = pil.size
            # libtiff (OpenCV) and Pillow turn a TIFF's pixels by its orientation, and its size is the turned one
            orientation = 1 if pil.format == "TIFF" else _orientation(pil)
            pages = _pages(pil)
    except PIL_ERRORS as exc:
        with contextlib.suppress(OSError), open(path, "rb") as file:
            if _exr_off(file.read(4)):
                raise OTXDataError(f"cannot read image '{path}' ({EXR_OFF})") from exc
        if isinstance(exc, UnidentifiedImageError) and (size := _decoded_size(path)) is not None:
            return ImageHeader(*size, 1, 1)  # a format only OpenCV reads (Radiance HDR, PFM, a float TIFF)
        why = str(exc) if isinstance(exc, Image.DecompressionBombError) else exc.__class__.__name__
        if isinstance(exc, OSError) and not Path(path).exists():
            why = why_unreadable(path, exc)
        if Path(path).is_file() and Path(path).stat().st_size == 0:
            why = "the file is empty, 0 bytes"
        raise OTXDataError(f"cannot read image '{path}' ({why}); replace or remove the file") from exc
    return ImageHeader(height, width, orientation, pages)


def _decoded_size(path: str | Path) -> tuple[int, int] | None:
    """``(height, width)`` of a file Pillow cannot identify but OpenCV decodes, decoded for it; else None.

    Radiance HDR, PFM, float or 16-bit grey-and-alpha TIFF (and EXR where OpenCV's reader is on):
    ``read_image`` reads them through OpenCV, so ``otx train`` and ``otx test`` index them too (before:
    "cannot read image (UnidentifiedImageError)" for a file ``otx predict`` scored). Their size is only
    known once decoded, so the pixel limit applies after decoding (``_decode``), and only their first
    page is counted (pages 1, orientation 1: libtiff turns a TIFF's pixels).
    """
    try:
        data = Path(path).read_bytes()
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    except (OSError, cv2.error):  # (imdecode asserts on an empty buffer)
        return None
    return None if array is None else (int(array.shape[0]), int(array.shape[1]))


PAGED_FORMATS = ("TIFF", "GIF", "PNG", "WEBP")  # not MPO: a camera JPEG's second frame is a preview or depth map


def _pages(pil: Image.Image) -> int:
    """Pages of a multi-page TIFF or frames of an animation (TIFF walks its directories only); else 1."""
    if pil.format not in PAGED_FORMATS:
        return 1
    try:
        return max(1, int(getattr(pil, "n_frames", 1)))
    except Exception:  # noqa: BLE001 - a damaged later page: the first is checked when it is read
        return 1


def shown_path(path: str | Path, root: str | Path | None) -> str:
    """A file as a warning names it: under ``root`` (POSIX form) where it lies there, else as given."""
    inside = root is not None and Path(path).is_relative_to(root)
    return (Path(path).relative_to(root) if inside else Path(path)).as_posix()


def pages_warning(paths: list[str], root: str | Path | None = None) -> str | None:
    """One line for image files with several pages (``paths``: those files), of which otx reads the first."""
    if not paths:
        return None
    first = Path(paths[0])
    shown = first.relative_to(root).as_posix() if root is not None else first.name
    return (
        f"{len(paths)} image file(s) hold several pages or frames (e.g. {shown}): otx reads the first page of each; "
        "save each page as an image of its own if the others are to be inspected"
    )


def turned_warning(paths: list[str], root: str | Path | None = None, masks: str = "must match") -> str | None:
    """One line for image files with an EXIF orientation (``paths``: those files), whose pixels otx reads as stored.

    ``masks``: what the line says of masks, "must match" (a data root's ground truth) or "written
    by otx match" (``otx predict``'s).
    """
    if not paths:
        return None
    first = Path(paths[0])
    shown = first.relative_to(root).as_posix() if root is not None else first.name
    turn = (
        "if the masks were drawn on the turned view"
        if masks == "must match"
        else "to have them scored and their masks written as viewers show them"
    )
    return (
        f"{len(paths)} image(s) carry an EXIF orientation (e.g. {shown}): otx reads their pixels as stored, not "
        f"turned as photo viewers show them, and masks {masks} the stored pixels; turn the files themselves "
        f"(e.g. PIL's ImageOps.exif_transpose) {turn}"
    )


def _orientation(pil: Image.Image) -> int:
    """The EXIF orientation of an opened image, 1 when it has none or its metadata cannot be read."""
    try:
        if pil.format == "PNG":  # getexif() would decode the pixels to look past them: the header's chunk only
            raw = pil.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
            return int(exif.get(EXIF_ORIENTATION, 1) or 1)
        return int(pil.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # noqa: BLE001 - metadata only; the pixels are checked when they are read
        return 1


def image_size(path: str | Path) -> tuple[int, int]:
    """Return ``(height, width)`` from the file header, without decoding pixels (``image_header``)."""
    header = image_header(path)
    return header.height, header.width


def header_pixels(path: str | Path) -> int | None:
    """An image's pixel count from its file header (Pillow: no pixels decoded, no pages walked).

    None where Pillow cannot say: a format only OpenCV reads (EXR, HDR, ...) or a file that is no
    image (its read says what is wrong).
    """
    try:
        with Image.open(path) as pil:
            width, height = pil.size
    except Exception:  # noqa: BLE001 - a count to batch by, nothing is reported here
        return None
    return width * height

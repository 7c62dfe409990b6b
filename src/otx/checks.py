"""Warnings where the numbers would mislead: a model that learned nothing, inputs unlike the training data.

Each check returns plain sentences; the Engine logs them (stderr and ``otx.log``) and writes them to
``metrics.json`` (``warnings``) and the test report. None of them stops a run.

- ``threshold_warnings``: an AUROC near chance (0.5) and a threshold at the edge of the scores,
  where the model flags every image (or pixel) as anomalous, or none.
- ``image_profile`` / ``profile_warnings``: the training images' channels (grayscale or colour,
  from the file headers; a colour file holding a grayscale image, its channels equal, counts as
  grayscale) and size range, recorded at training time, against the images a model is tested or
  predicted on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from otx.data.io import PIL_ERRORS, shown_path

CHANCE_MARGIN = 0.1  # AUROC within this of 0.5 is "near chance"
SIZE_FACTOR = 2.0  # images more than this factor smaller or larger than every training image
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def unmasked_warning(samples: list[Any], split: str) -> str | None:
    """One line when anomalous images of ``split`` have no mask file (in data that has ``ground_truth/``).

    Their pixels are left out of the pixel threshold (validation), the pixel metrics and box tuning,
    since a missing mask says nothing about where the defect is.
    """
    missing = [s for s in samples if s.label == 1 and not s.mask_path]
    if not missing:
        return None
    first = Path(missing[0].path)
    threshold = "the pixel threshold and " if split == "validation" else ""  # test fits no threshold
    return (
        f"{len(missing)} anomalous {split} image(s) have no mask (e.g. {first.parent.name}/{first.name}: no "
        f"ground_truth/{first.parent.name}/{first.stem}_mask.png); their pixels are left out of {threshold}"
        "the pixel and box metrics; add the masks to use them"
    )


MASK_COVERAGE = 0.5  # masks that mark more than this share of their images' pixels on average: inverted


def mask_coverage_warning(masks: Any, labels: Any, known: Any, split: str) -> str | None:
    """One line when the masks of a split's anomalous images mark most of their pixels as defect.

    ``masks [N, H, W]``, ``labels [N]`` (1: anomalous), ``known [N]`` (the image has a mask file;
    None: all of them). Masks that mark more than half of every image on average are nearly always
    inverted (the defect black on white) or drawn on a background that is not black; the pixel
    AUROC then still looks good (it follows the image scores), so nothing else would say so.
    """
    masks, labels = np.asarray(masks), np.asarray(labels).reshape(-1) == 1
    rows = labels if known is None else labels & np.asarray(known).reshape(-1).astype(bool)
    if masks.ndim != 3 or not rows.any():
        return None
    share = float((masks[rows] > 0).reshape(int(rows.sum()), -1).mean(axis=1).mean())  # those rows only
    if share <= MASK_COVERAGE:
        return None
    fitted = "the pixel threshold was learned on them" if split == "validation" else "pixel metrics use them"
    return (
        f"the masks of the {split} split's anomalous images mark {share:.0%} of their pixels as defect on average: "
        "a mask marks defect pixels non-zero on a black (0) background, so these look inverted or drawn on a white "
        f"or coloured background, and {fitted}; check the masks (invert them, or make the background black)"
    )


def copies_warning(train: list[str], others: list[str], root: str | Path | None = None) -> str | None:
    """One line when validation or test images are byte-for-byte copies of training images.

    A copy scores as an image the model was fitted on (near zero): in the validation split it pulls
    the thresholds down, in the test split it flatters the metrics. Copies have equal sizes and equal
    bytes: only files of a training file's size are read, first 64 KiB from their middle (images of one
    shape in an uncompressed format, BMP, all have one size), and in full only where those agree.
    """
    import hashlib
    import os

    def size(path: str) -> int:
        try:
            return os.stat(path).st_size
        except OSError:
            return -1

    def digest(path: str, sample: bool) -> str | None:
        try:
            with open(path, "rb") as file:
                if sample:
                    file.seek(max(0, file.seek(0, os.SEEK_END) // 2 - SAMPLE_BYTES // 2))
                    return hashlib.blake2b(file.read(SAMPLE_BYTES), digest_size=16).hexdigest()
                return hashlib.blake2b(file.read(), digest_size=16).hexdigest()
        except OSError:
            return None

    by_size: dict[int, list[str]] = {}
    for path in train:
        by_size.setdefault(size(path), []).append(path)
    candidates = [(path, n) for path in others if (n := size(path)) > 0 and n in by_size]
    copies: list[tuple[str, str]] = []
    samples: dict[str, str | None] = {}  # each file read once per kind: a sample, then (if needed) whole
    wholes: dict[str, str | None] = {}

    def cached(path: str, sample: bool) -> str | None:
        store = samples if sample else wholes
        if path not in store:
            store[path] = digest(path, sample)
        return store[path]

    for path, n in candidates:
        mine = cached(path, sample=True)
        for original in by_size[n]:
            if mine is not None and cached(original, True) == mine and cached(path, False) == cached(original, False):
                copies.append((path, original))
                break
    if not copies:
        return None

    copy, original = copies[0]
    return (
        f"{len(copies)} validation/test image(s) are byte-for-byte copies of training images (e.g. "
        f"{shown_path(copy, root or None)} = {shown_path(original, root or None)}): the model scores them as "
        "images it was fitted on, which pulls the thresholds down (validation) and flatters the metrics (test); "
        "remove them from test/ (or val/)"
    )


SAMPLE_BYTES = 1 << 16  # what copies_warning reads of a file before it reads the whole


def threshold_warnings(
    scores: np.ndarray,
    labels: np.ndarray | None,
    threshold: float,
    what: str,
    split: str,
    learned: bool = False,
    folder: str = "test",
    auroc: float | None = None,
    given: bool = False,
) -> list[str]:
    """Warnings about one level (``what``: ``image`` or ``pixel``) on one split.

    ``scores`` are raw scores (or map values), ``labels`` their ground truth (None: unknown),
    ``threshold`` the decision threshold in the same units; ``learned``: it was just fitted on
    these scores (F1-adaptive on the validation split), so a split without anomalies left it unlearned.
    ``folder``: where the split's images come from (``val`` for data with its own val/ folder), named
    in the advice to add images. ``auroc``: the AUROC of these scores and labels when the caller
    has it already (a sort of every pixel saved), else it is computed here. ``given``: the threshold
    was set by hand: a warning of many false alarms then says what it finds instead of advising one.
    """
    from otx.metrics import roc_auc

    found: list[str] = []
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        return found
    plural = "images" if what == "image" else "pixels"
    if labels is not None:
        labels = np.asarray(labels).reshape(-1).astype(bool)
        if learned and not labels.any():
            return [  # "flags nothing" would say the same thing less clearly
                f"the {split} split has no anomalous {plural}: the {what} threshold ({threshold:.6g}) was not "
                f"learned, it sits just above the highest normal {what} score; add defect images "
                f"({folder}/<defect>{', with ground_truth/ masks' if what == 'pixel' else ''}) to learn one"
            ]
        if learned and labels.all() and what == "image":
            return [  # "flags every image" would hide the cause (and is not what it does)
                f"the {split} split has no normal images: the image threshold ({threshold:.6g}) was not learned "
                f"against any, it sits just below the lowest anomalous {split} score, so only images scoring "
                f"lower are called normal; add normal images ({folder}/good) to learn one"
            ]
        if not learned and what == "image" and not labels.any():
            found.append(
                f"the {split} split has only normal images: image AUROC cannot be measured, so it is n/a, and F1 is 0 "
                "with any false alarm, else n/a (per_defect's good 'flagged' is the share of false alarms); add "
                f"defect images ({folder}/<defect>) to measure them"
            )
        elif not learned and what == "image" and labels.all():
            found.append(
                f"the {split} split has only anomalous images: image AUROC cannot be measured, so it is n/a; add "
                f"normal images ({folder}/good) to measure it"
            )
        if labels.any() and not labels.all():
            auroc = roc_auc(scores, labels) if auroc is None else auroc
            if abs(auroc - 0.5) < CHANCE_MARGIN:
                found.append(
                    f"{split} {what} AUROC is {auroc:.3f}, near chance (0.5): the model barely tells anomalous "
                    f"from normal {plural}; its labels are not reliable (train longer, or try another model)"
                )
            elif auroc <= 0.5 - CHANCE_MARGIN:  # worse than chance: ranked the wrong way round
                check = (
                    f"check that the {split} images look like the training images (camera, lighting, position) "
                    "and that good and defect images are in the right folders"
                    if what == "image"
                    else "check that the masks mark the defects (white on black, not inverted) and line up with "
                    "their images"
                )
                found.append(
                    f"{split} {what} AUROC is {auroc:.3f}, below chance (0.5): the model scores normal {plural} "
                    f"above anomalous ones; {check}"
                )
            normal = ~labels
            alarms = int((scores[normal] >= threshold).sum())
            if what == "image" and not found and 0 < alarms < normal.sum() and 2 * alarms >= normal.sum():
                # (before: said only when every image was flagged; a bug bash's models flagged 15 of 16, and half
                # of the good test images, in silence)
                flags = f"flags {alarms} of the {int(normal.sum())} normal {split} images as anomalous"
                if given:  # on purpose (a low threshold to miss no defect): what it buys, not advice to set one
                    hits = int((scores[labels] >= threshold).sum())
                    found.append(
                        f"the image threshold set by hand ({threshold:.6g}) {flags} and finds {hits} of the "
                        f"{int(labels.sum())} anomalous ones (image AUROC {auroc:.3f}); raise it for fewer false "
                        "alarms, at the cost of missed defects"
                    )
                else:
                    found.append(
                        f"the image threshold ({threshold:.6g}) {flags} (image AUROC {auroc:.3f}): its decisions on "
                        f"good parts are not reliable; more validation images ({folder}/), another model "
                        "(docs/models.md), or a threshold set by hand"
                    )
    flagged = float(np.mean(scores >= threshold))
    all_anomalous = labels is not None and bool(labels.all())  # flagging every one is then right
    all_normal = labels is not None and not labels.any()  # and flagging none
    if flagged == 1.0 and not all_anomalous:
        found.append(
            f"the {what} threshold ({threshold:.6g}) is at or below every {split} score: this model flags every "
            f"{what if what == 'pixel' else 'image'} as anomalous"
        )
    elif flagged == 0.0 and not all_normal:
        found.append(
            f"the {what} threshold ({threshold:.6g}) is above every {split} score: this model flags nothing as "
            "anomalous"
            + (
                " at the pixel level (every mask is empty; the image threshold labels the images)"
                if what == "pixel"
                else ""
            )
        )
    return found


def _header(path: str | Path) -> tuple[bool, int, int] | None:
    """``(grayscale, height, width)`` from an image file's header; None when it cannot be read."""
    try:
        with Image.open(path) as pil:
            return pil.mode in GRAY_MODES, pil.size[1], pil.size[0]
    except PIL_ERRORS:
        return None


GRAY_LEVELS = 2  # a colour file whose channels differ by at most this many levels holds a grayscale image
PROFILE_CHECKS = 32  # colour files of the training images whose pixels image_profile looks at


T = TypeVar("T")


def stored_gray(path: str | Path) -> bool:
    """Whether a colour image file holds a grayscale image (its channels equal, within ``GRAY_LEVELS``).

    A grayscale camera's images saved as RGB (a JPEG, a PNG written by a colour pipeline) read
    as colour from their header, yet give the model the same input as a one-channel file: otx
    repeats a grayscale image's channel three times. False when the file cannot be decoded.
    """
    try:
        with Image.open(path) as pil:
            rgb = np.asarray(pil.convert("RGB"))
    except PIL_ERRORS:
        return False
    return equal_channels(rgb)


def equal_channels(rgb: np.ndarray) -> bool:
    """Whether an ``H x W x 3`` image's channels are equal within ``GRAY_LEVELS``: a grayscale image in colour."""
    rgb = rgb.astype(np.int16)
    return bool(
        np.abs(rgb[..., 0] - rgb[..., 1]).max(initial=0) <= GRAY_LEVELS
        and np.abs(rgb[..., 1] - rgb[..., 2]).max(initial=0) <= GRAY_LEVELS
    )


def all_stored_gray(colour_files: Sequence[str | Path]) -> bool:
    """Whether colour files hold grayscale images (``stored_gray``), judged on up to ``PROFILE_CHECKS`` of them.

    The files looked at are spread over the list; a camera's images are alike, and decoding all of
    them would read every image twice. The demo package's ``profile_notes`` looks at the same ones.
    """
    return bool(colour_files) and all(stored_gray(path) for path in spread(colour_files))


def spread(items: Sequence[T]) -> list[T]:
    """Up to ``PROFILE_CHECKS`` of ``items``, evenly spread from the first to the last.

    (Before: every ``len // PROFILE_CHECKS``-th from the start, cut at ``PROFILE_CHECKS``: of 40
    files the first 32, of 95 the first 64's, so the last ones were never looked at; a review.)
    """
    if len(items) <= PROFILE_CHECKS:
        return list(items)
    return [items[(i * (len(items) - 1)) // (PROFILE_CHECKS - 1)] for i in range(PROFILE_CHECKS)]


def mixed_channels_warning(paths: Sequence[str | Path], root: str | Path | None = None) -> str | None:
    """One line when training images mix grayscale and colour files (``image_profile``'s ``mixed``).

    Names one file of each kind (relative to ``root`` where given). Such a model learns both looks
    as normal, and the later grayscale-or-colour check of test and predict images has nothing to
    compare with.
    """
    gray = colour = None
    colour_files = []
    for path in paths:
        header = _header(path)
        if header is not None and header[0]:
            gray = gray or path
        elif header is not None:
            colour_files.append(path)
    for path in spread(colour_files):  # decoded, as all_stored_gray does: the same few at most
        if stored_gray(path):
            gray = gray or path
        else:
            colour = colour or path
        if gray and colour:
            break
    if not (gray and colour):
        return None
    return (
        f"the training images mix grayscale and colour files (e.g. {shown_path(gray, root)} and "
        f"{shown_path(colour, root)}): the model "
        "learns both looks as normal, which blunts it, and test or predict images of the other kind are not "
        "noticed; convert them to one kind before training"
    )


def image_profile(paths: Iterable[str | Path]) -> dict[str, Any]:
    """Channels and size range of images, read from their headers.

    Returns ``channels`` (``gray``, ``color`` or ``mixed``), ``height`` and ``width`` as
    ``[min, max]``, the median ``aspect`` ratio (width / height) and the number of ``images``
    (empty when none could be read). Colour files whose pixels hold grayscale images count as
    grayscale: when every one of up to ``PROFILE_CHECKS`` of them, spread over the set, does
    (``stored_gray``; a camera's images are alike, and decoding all of them would read the
    training set twice).
    """
    gray = 0
    colour_files: list[str | Path] = []
    heights: list[int] = []
    widths: list[int] = []
    for path in paths:
        header = _header(path)
        if header is None:
            continue  # unreadable files are reported where they are decoded
        is_gray, height, width = header
        if is_gray:
            gray += 1
        else:
            colour_files.append(path)
        heights.append(height)
        widths.append(width)
    if not heights:
        return {}
    color = len(colour_files)
    if color and all_stored_gray(colour_files):
        gray, color = gray + color, 0
    channels = "gray" if not color else ("color" if not gray else "mixed")
    aspects = np.array(widths) / np.array(heights)
    return {
        "channels": channels,
        "height": [min(heights), max(heights)],
        "width": [min(widths), max(widths)],
        "aspect": round(float(np.median(aspects)), 4),  # width / height
        # the 10th and 90th percentiles, each an image's own (not interpolated): a tenth of the images or
        # more shaped unlike the median is said (otx.verbs.train.spread_note)
        "aspect_spread": [
            round(float(np.percentile(aspects, 10, method="lower")), 4),
            round(float(np.percentile(aspects, 90, method="higher")), 4),
        ],
        "images": len(heights),
    }


def profile_warnings(train: dict[str, Any] | None, paths: list[str], where: str) -> list[str]:
    """Warnings when the images at ``paths`` differ clearly from the training images' profile."""
    if not train or not paths:
        return []
    rows = [(*header, path) for path in paths if (header := _header(path)) is not None]
    return _profile_findings(train, rows, len(paths), where, stored_gray, all_stored_gray)


def input_file_warnings(
    train: dict[str, Any] | None, paths: list[str], root: Path | None, where: str = "input", headers: bool = True
) -> list[str]:
    """What ``otx predict`` warns of image files to predict.

    Images unlike the training images (``profile_warnings``), 12 bits or fewer in 16-bit files, and
    (``headers``) several pages or an EXIF orientation.

    ``root``: the folder the files are named under in the messages (None: by their names).
    """
    from otx.data.dataset import narrow_sixteen_bit_warning
    from otx.data.io import image_header, pages_warning, turned_warning
    from otx.errors import OTXDataError

    found = profile_warnings(train, paths, where)
    if narrow := narrow_sixteen_bit_warning(paths, root, where):
        found.append(narrow)
    if not headers:
        return found
    pages, turned = [], []
    for path in paths:
        try:
            header = image_header(path)
        except OTXDataError:  # unreadable: labelled "error" where it is read
            continue
        if header.pages > 1:
            pages.append(path)
        if header.orientation != 1:
            turned.append(path)
    if paged := pages_warning(pages, root):
        found.append(paged)
    if message := turned_warning(turned, root, masks="written by otx match"):
        found.append(message)
    return found


def array_profile_warnings(
    train: dict[str, Any] | None, sizes: Sequence[tuple[bool, int, int]], rgb: Any, where: str
) -> list[str]:
    """``profile_warnings`` of images in memory.

    ``sizes``: ``(one channel, height, width)`` of each image; ``rgb(i)`` gives image ``i`` as
    ``H x W x 3`` RGB ``uint8`` (called only where its channels are compared).
    """
    if not train or not len(sizes):
        return []

    def stored(index: int) -> bool:
        return equal_channels(rgb(index))

    def all_equal(colour: list[int]) -> bool:
        return bool(colour) and all(map(stored, colour))

    rows = [(gray, height, width, index) for index, (gray, height, width) in enumerate(sizes)]
    return _profile_findings(train, rows, len(sizes), where, stored, all_equal)


def _profile_findings(
    train: dict[str, Any],
    rows: list[tuple[bool, int, int, Any]],
    total: int,
    where: str,
    stored: Any,
    all_stored: Any,
) -> list[str]:
    """``profile_warnings`` of ``(grayscale header, height, width, image)`` rows, ``total`` images in all.

    ``stored`` tells whether a colour image holds a grayscale one, ``all_stored`` whether the colour
    images (a list) all do (judged on a sample, for files).
    """
    found: list[str] = []
    gray_trained = train.get("channels") == "gray"
    color_trained = train.get("channels") == "color"
    counts = {"gray": 0, "color": 0}
    smaller = larger = turned = reshaped = 0
    (h_min, h_max), (w_min, w_max) = train["height"], train["width"]
    landscape, portrait = w_min > h_max, h_min > w_max  # every training image stands so

    def too_small(height: int, width: int) -> bool:
        return height * SIZE_FACTOR < h_min or width * SIZE_FACTOR < w_min

    def too_large(height: int, width: int) -> bool:
        return height > h_max * SIZE_FACTOR or width > w_max * SIZE_FACTOR

    colour_files: list[Any] = []
    for is_gray, height, width, item in rows:
        counts["gray" if is_gray else "color"] += 1
        if not is_gray:
            colour_files.append(item)
        if too_small(height, width) or too_large(height, width):
            if not (too_small(width, height) or too_large(width, height)):
                turned += 1  # the training images' size, on its side
            elif too_small(height, width) and too_large(height, width):
                reshaped += 1  # a 1:10 portrait strip for a model of 4:1 landscape ones: neither smaller nor larger
            elif too_small(height, width):
                smaller += 1
            else:
                larger += 1
        elif (landscape and height * h_max >= width * w_min) or (portrait and width * w_max >= height * h_min):
            # within 2x, but standing the other way, at least as far as the training images stand their way
            if not (too_small(width, height) or too_large(width, height)):
                turned += 1  # (before: a 4:3 image stood 3:4 went unnamed, its score moved 0.34 -> 0.999)
    if gray_trained and colour_files:  # (decoded only here: a grayscale model given colour files)
        # grayscale images stored in colour files give the input a grayscale file gives
        counts["color"] = sum(not stored(item) for item in colour_files)
    if color_trained and colour_files and all_stored(colour_files):  # a grayscale camera's, saved as RGB
        counts["gray"] += len(colour_files)
    if gray_trained and counts["color"]:
        found.append(
            f"{counts['color']} of {total} {where} images are colour, but the model was trained on grayscale images: "
            "its scores on them are not comparable (convert them, or train on such images)"
        )
    if color_trained and counts["gray"]:
        found.append(
            f"{counts['gray']} of {total} {where} images are grayscale, but the model was trained on colour images: "
            "its scores on them are not comparable (convert them, or train on such images)"
        )
    size_range = f"{_span(w_min, w_max)} x {_span(h_min, h_max)} (width x height)"
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


def _span(low: int, high: int) -> str:
    """``240`` for one size, ``200-400`` for a range."""
    return str(low) if low == high else f"{low}-{high}"

"""Deterministic synthetic anomaly-detection datasets in MVTec AD layout, for the demo and the tests.

``make_sample_dataset`` writes small, fully reproducible datasets so that ``make demo`` and the test
suite can train and evaluate anomaly models without downloading MVTec AD. Each category follows the
MVTec AD folder layout::

    <out>/<category>/train/good/000.png
    <out>/<category>/test/good/000.png
    <out>/<category>/test/<defect>/000.png
    <out>/<category>/ground_truth/<defect>/000_mask.png    (uint8, 0 or 255, same size as the image)

Three categories exercise different inputs:

* ``bottle_like``: an object; a bright rimmed round part, centred with a little position jitter on a dark
  background, under varying lighting (colour, 3 channels).
* ``carpet_like``: a periodic woven texture with stripes and fibre noise (colour, 3 channels).
* ``tile_like``: a blotchy stone-like texture saved as a single-channel grayscale PNG.

Normal images vary (noise, shifts, brightness, lighting gradients) so that the task is not trivial.
Every category has two defect types: a thin line (scratch, cut, crack; 2-4 px thick) and a filled blob
(contamination, stain, hole). Defects have strong contrast and cover at least 40 pixels. The ground-truth
mask is drawn with the same OpenCV call and parameters as the defect, and the defect is composited only
where the mask is set, so mask and image agree pixel for pixel: a pixel is in the mask exactly when the
defect changed it.

Generation is deterministic: every image draws from its own ``numpy.random.default_rng`` seeded by
``(seed, category, split, index)``, so a given seed gives byte-identical files on every run, and the images
of one category do not depend on which other categories are generated.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from otx.validate import SEED_MAX

__all__ = ["CATEGORIES", "DEFECT_TYPES", "make_sample_dataset"]

CATEGORIES: tuple[str, ...] = ("bottle_like", "carpet_like", "tile_like")
"""Names of the categories ``make_sample_dataset`` can generate."""

DEFECT_TYPES: dict[str, tuple[str, str]] = {
    "bottle_like": ("scratch", "contamination"),
    "carpet_like": ("cut", "stain"),
    "tile_like": ("crack", "hole"),
}
"""The two defect types of each category: a thin line defect, then a filled blob defect."""

MIN_IMAGE_SIZE = 32
"""Smallest supported ``image_size``; below it the defects no longer fit with their minimum size."""

MIN_DEFECT_AREA = 40
"""Every defect covers at least this many pixels."""

_MIN_CONTRAST = 60  # a defect pixel differs from the clean pixel by at least this much in some channel
_FALLBACK_SHIFT = 96  # applied to defect pixels that would otherwise come out too close to the clean pixel
_MAX_PLACEMENT_TRIES = 200

_TRAIN_SPLIT = 0
_TEST_GOOD_SPLIT = 1
_FIRST_DEFECT_SPLIT = 2
_STREAM_NORMAL = 0
_STREAM_DEFECT = 1

_GENERATED_NAME = re.compile(r"^\d{3,}(_mask)?\.png$")


def make_sample_dataset(
    out_dir: str | Path,
    categories: Sequence[str] | None = None,
    n_train: int = 40,
    n_test_good: int = 12,
    n_test_defect: int = 8,
    image_size: int = 128,
    seed: int = 0,
) -> list[Path]:
    """Write synthetic anomaly-detection datasets in MVTec AD layout.

    Category folders written before by this function are updated in place: files are overwritten, and
    earlier generated images (names like ``000.png`` or ``000_mask.png``) that this call does not produce
    again are removed, so the result does not depend on what was there before. Other files are left alone.
    A category folder that holds files it did not write (no ``SAMPLE_MARKER``), or files named like
    its own that the marker does not list, is refused before anything is written.

    Args:
        out_dir: Folder that receives one sub-folder per category; created if missing.
        categories: Categories to generate, a subset of ``CATEGORIES``; ``None`` generates all of them.
        n_train: Number of normal training images per category (at least 1).
        n_test_good: Number of normal test images per category.
        n_test_defect: Number of test images per defect type (two defect types per category).
        image_size: Side length in pixels of the square images (at least ``MIN_IMAGE_SIZE``).
        seed: Non-negative seed; the same seed gives byte-identical files.

    Returns:
        The root folder of each generated category, in the order requested.

    Raises:
        ValueError: If a category is unknown, a count, the image size or the seed is out of range, or a
            category folder holds files this function did not write.
    """
    names = _resolve_categories(categories)
    _check_int("n_train", n_train, 1)
    _check_int("n_test_good", n_test_good, 0)
    _check_int("n_test_defect", n_test_defect, 0)
    _check_int("image_size", image_size, MIN_IMAGE_SIZE)
    _check_int("seed", seed, 0, SEED_MAX)

    roots = []
    if (split := next((s for s in ("train", "test") if (Path(out_dir) / s).is_dir()), None)) is not None:
        raise ValueError(  # before: the categories were written inside a user's data root, without a word
            f"'{out_dir}' is a data root (it holds {split}/): the sample categories would be written inside it; "
            "pass a new or empty folder (nothing was changed)"
        )
    for name in names:  # all checked before anything is written
        check_own_folder(Path(out_dir) / name)
    for name in names:
        root = Path(out_dir) / name
        mark_own_folder(root)
        _write_split(root / "train" / "good", name, _TRAIN_SPLIT, n_train, image_size, seed, None)
        _write_split(root / "test" / "good", name, _TEST_GOOD_SPLIT, n_test_good, image_size, seed, None)
        for k, defect in enumerate(DEFECT_TYPES[name]):
            split = _FIRST_DEFECT_SPLIT + k
            masks = root / "ground_truth" / defect
            _write_split(root / "test" / defect, name, split, n_test_defect, image_size, seed, masks)
        finish_own_folder(root)
        roots.append(root)
    return roots


SAMPLE_MARKER = ".otx-sample"  # in each category folder the generators wrote: theirs to update


_MARKER_HEADER = "written by otx data make-sample; it updates this folder in place\n"
_BEING_WRITTEN = "files: (being written)\n"  # an interrupted run's marker: every file there counts as its own


def _digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes(), usedforsecurity=False).hexdigest()[:16]


def _listed_files(marker: Path) -> dict[str, str] | None:
    """The files a marker lists as written, with their digests (``files:``, then ``<digest> <path>`` lines).

    None when it lists none: a marker of an otx from before the list (its header alone) or of an
    interrupted run; every file in the folder is then taken as the generator's, as before.
    """
    lines = marker.read_text(encoding="utf-8", errors="replace").splitlines()
    if "files:" not in lines:
        return None
    return dict(reversed(line.split(" ", 1)) for line in lines[lines.index("files:") + 1 :] if " " in line)


def check_own_folder(root: Path) -> None:
    """``ValueError`` (one line) when ``root`` holds files a sample generator did not write there.

    The generators overwrite and remove files by name (``000.png`` ...), so they only update
    folders they wrote themselves (``SAMPLE_MARKER``, which lists the files they wrote), never a
    user's images: a folder without the marker that holds files, or one with files named like the
    generator's that the marker does not list (images a user copied in: before, overwritten or
    removed without a word), is refused before anything is written. Other files are left alone.
    """
    marker = root / SAMPLE_MARKER
    if not root.is_dir():
        return
    if marker.is_file():
        listed = _listed_files(marker)
        if listed is None:
            return
        others = [  # named like its own, and not written by it, or changed since
            p
            for p in sorted(root.rglob("*"))
            if p.is_file() and _GENERATED_NAME.match(p.name) and listed.get(_posix(p, root)) != _digest(p)
        ]
        if others:
            raise ValueError(
                f"'{root}' holds {len(others)} file(s) named like the ones otx data make-sample writes but not "
                f"written by it, or changed since (e.g. {_posix(others[0], root)}), which it would overwrite or "
                "remove; move or rename them, or pass a new or empty folder (nothing was changed)"
            )
        return
    # Without the marker nothing is taken as the generator's, not even its own names: MVTec AD's
    # images are named 000.png ... as well (before: such files were overwritten or removed).
    first = next((path for path in sorted(root.rglob("*")) if path.is_file()), None)
    if first is not None:
        raise ValueError(
            f"'{root}' holds files (e.g. {_posix(first, root)}) and no {SAMPLE_MARKER} file, so otx data "
            "make-sample did not write it (or an otx from before the marker did); pass a new or empty folder, or "
            "delete this one (nothing was changed)"
        )


def _posix(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def mark_own_folder(root: Path) -> None:
    """Create ``root`` and mark it as a generator's, being written (see ``check_own_folder``)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / SAMPLE_MARKER).write_text(_MARKER_HEADER + _BEING_WRITTEN, encoding="utf-8")


def finish_own_folder(root: Path) -> None:
    """List in the marker, with their digests, the files named like its own in ``root``: all its own now."""
    marker = root / SAMPLE_MARKER
    files = sorted(
        (_posix(p, root), _digest(p)) for p in root.rglob("*") if p.is_file() and _GENERATED_NAME.match(p.name)
    )
    listing = "".join(f"{digest} {name}\n" for name, digest in files)
    marker.write_text(_MARKER_HEADER + "files:\n" + listing, encoding="utf-8")


def _resolve_categories(categories: Sequence[str] | None) -> list[str]:
    """Validate the requested categories and drop duplicates, keeping their order."""
    if categories is None:
        return list(CATEGORIES)
    if isinstance(categories, str):
        categories = [categories]
    names: list[str] = []
    for name in categories:
        if name not in CATEGORIES:
            raise ValueError(f"Unknown sample category {name!r}; choose from {', '.join(CATEGORIES)}.")
        if name not in names:
            names.append(name)
    return names


def _check_int(name: str, value: int, minimum: int, maximum: int | None = None) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer of at least ``minimum`` (and at most ``maximum``)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
        raise ValueError(f"{name} must be an integer {bounds}, got {value!r}.")


def _write_split(
    image_dir: Path, category: str, split: int, count: int, size: int, seed: int, mask_dir: Path | None
) -> None:
    """Render and write ``count`` images of one split (with masks into ``mask_dir`` for defect splits)."""
    image_dir.mkdir(parents=True, exist_ok=True)
    if mask_dir is not None:
        mask_dir.mkdir(parents=True, exist_ok=True)
    image_names, mask_names = set(), set()
    for index in range(count):
        _, image, mask = _render(category, split, index, size, seed)
        stem = f"{index:03d}"
        _write_png(image_dir / f"{stem}.png", image)
        image_names.add(f"{stem}.png")
        if mask_dir is not None and mask is not None:
            _write_png(mask_dir / f"{stem}_mask.png", mask)
            mask_names.add(f"{stem}_mask.png")
    _remove_stale(image_dir, image_names)
    if mask_dir is not None:
        _remove_stale(mask_dir, mask_names)


def _write_png(path: Path, array: np.ndarray) -> None:
    """Encode ``array`` as PNG and write it (``imencode`` also handles non-ASCII paths)."""
    ok, buffer = cv2.imencode(".png", array)
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 arrays
        raise OSError(f"Could not encode {path} as PNG.")
    path.write_bytes(buffer.tobytes())


def _remove_stale(folder: Path, keep: set[str]) -> None:
    """Delete earlier generated files (``NNN.png``, ``NNN_mask.png``) in ``folder`` that are not in ``keep``."""
    for path in folder.iterdir():
        if path.is_file() and _GENERATED_NAME.match(path.name) and path.name not in keep:
            path.unlink()


def _rng(seed: int, category: str, split: int, index: int, stream: int) -> np.random.Generator:
    """Return the generator of one image's stream; independent of every other image and category."""
    return np.random.default_rng([seed, CATEGORIES.index(category), split, index, stream])


def _render(
    category: str, split: int, index: int, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Render one image.

    Args:
        category: Category name.
        split: ``0`` train, ``1`` test good, ``2 + k`` test images of defect type ``k``.
        index: Image index within the split.
        size: Image side length.
        seed: Dataset seed.

    Returns:
        The clean (defect-free) image, the final image and, for defect splits, the uint8 0/255 mask.
        For normal splits the final image is the clean image and the mask is ``None``.
    """
    normal, valid = _NORMAL_RENDERERS[category](_rng(seed, category, split, index, _STREAM_NORMAL), size)
    if split < _FIRST_DEFECT_SPLIT:
        return normal, normal, None
    rng = _rng(seed, category, split, index, _STREAM_DEFECT)
    defect = DEFECT_TYPES[category][split - _FIRST_DEFECT_SPLIT]
    if split == _FIRST_DEFECT_SPLIT:
        mask = _line_mask(rng, size, valid, crack=defect == "crack")
    else:
        mask = _blob_mask(rng, size, valid)
    image = _composite(rng, normal, mask, category, line=split == _FIRST_DEFECT_SPLIT)
    return normal, image, mask


# --------------------------------------------------------------------------------------------------------------
# Normal images. Each renderer returns the uint8 image and a boolean map of where defects may be centred.
# --------------------------------------------------------------------------------------------------------------


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the pixel-centre coordinates ``(yy, xx)`` of a square image as float32 arrays."""
    axis = np.arange(size, dtype=np.float32)
    return np.meshgrid(axis, axis, indexing="ij")


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Return zero-mean, roughly unit-variance noise that varies smoothly over ``cells`` cells per side."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _lighting(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
    """Return a multiplicative lighting field: a global gain times a linear gradient of random direction."""
    yy, xx = _grid(size)
    gain = rng.uniform(1.0 - strength, 1.0 + strength)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    slope = rng.uniform(0.0, strength)
    ramp = ((xx - size / 2) * np.cos(angle) + (yy - size / 2) * np.sin(angle)) / size
    return (gain * (1.0 + slope * ramp)).astype(np.float32)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Round and clip float values to uint8."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _render_bottle(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render a bright rimmed round part, seen from above, on a dark background."""
    yy, xx = _grid(size)
    cx = size / 2 + rng.uniform(-0.03, 0.03) * size
    cy = size / 2 + rng.uniform(-0.03, 0.03) * size
    radius = 0.36 * size * rng.uniform(0.97, 1.03)
    r = np.hypot(xx - cx, yy - cy)

    def inside(limit: float) -> np.ndarray:
        return np.clip(limit - r + 0.5, 0.0, 1.0)  # anti-aliased disc of radius ``limit``

    luminance = 22.0 + (185.0 - 22.0) * inside(radius)  # rim
    luminance += (120.0 - 185.0) * inside(0.82 * radius)  # body
    ring = np.exp(-(((r - 0.55 * radius) / (0.035 * radius)) ** 2))
    luminance += 45.0 * ring  # reflection ring
    luminance += (45.0 - 120.0) * inside(0.22 * radius)  # opening
    luminance *= _lighting(rng, size, 0.12)
    tint = np.array([0.82, 1.0, 0.9], dtype=np.float32) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    image = luminance[..., None] * tint + rng.normal(0.0, 3.0, (size, size, 3)).astype(np.float32)
    image = cv2.GaussianBlur(image, (3, 3), 0.6)
    valid = (r > 0.3 * radius) & (r < 0.85 * radius)
    return _to_uint8(image), valid


def _render_carpet(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render a periodic woven texture with stripes and fibre noise."""
    yy, xx = _grid(size)
    period = 8.0 * size / 128 * rng.uniform(0.97, 1.03)
    warp = np.sin(2 * np.pi * xx / period + rng.uniform(0, 2 * np.pi))
    weft = np.sin(2 * np.pi * yy / period + rng.uniform(0, 2 * np.pi))
    stripes = np.sin(2 * np.pi * xx / (4 * period) + rng.uniform(0, 2 * np.pi))
    fibre = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 0.8)
    luminance = 0.6 + 0.16 * warp * weft + 0.07 * stripes + 0.05 * fibre + 0.03 * _smooth_noise(rng, size, 4)
    luminance *= _lighting(rng, size, 0.08)
    colour = np.array([95.0, 120.0, 200.0], dtype=np.float32) * rng.uniform(0.96, 1.04, 3).astype(np.float32)
    image = luminance[..., None] * colour + rng.normal(0.0, 5.0, (size, size, 3)).astype(np.float32)
    return _to_uint8(image), np.ones((size, size), dtype=bool)


def _render_tile(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render a blotchy grayscale stone texture (single channel)."""
    luminance = 150.0 + 16.0 * _smooth_noise(rng, size, max(2, size // 32)) + 9.0 * _smooth_noise(rng, size, size // 8)
    luminance *= _lighting(rng, size, 0.08)
    speckle = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 0.7)
    image = luminance + 6.0 * speckle + rng.normal(0.0, 2.5, (size, size)).astype(np.float32)
    return _to_uint8(image), np.ones((size, size), dtype=bool)


_NORMAL_RENDERERS: dict[str, Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]] = {
    "bottle_like": _render_bottle,
    "carpet_like": _render_carpet,
    "tile_like": _render_tile,
}


# --------------------------------------------------------------------------------------------------------------
# Defects. The mask is drawn first (LINE_8, no anti-aliasing); the defect is then painted only inside it.
# --------------------------------------------------------------------------------------------------------------


def _pick_centre(rng: np.random.Generator, size: int, valid: np.ndarray, margin: float) -> tuple[float, float]:
    """Return a random ``(x, y)`` at least ``margin`` from the border where ``valid`` is set."""
    low, high = margin, size - 1 - margin
    if high < low:
        return (size - 1) / 2, (size - 1) / 2
    for _ in range(_MAX_PLACEMENT_TRIES):
        x, y = rng.uniform(low, high, 2)
        if valid[int(y), int(x)]:
            return float(x), float(y)
    return float(rng.uniform(low, high)), float(rng.uniform(low, high))


def _line_mask(rng: np.random.Generator, size: int, valid: np.ndarray, crack: bool) -> np.ndarray:
    """Draw a scratch (straight) or crack (jagged polyline) of thickness 2-4 px into a new mask."""
    for _ in range(_MAX_PLACEMENT_TRIES):
        length = max(24.0, rng.uniform(0.25, 0.45) * size)
        thickness = int(rng.integers(2, 5))
        angle = rng.uniform(0.0, np.pi)
        cx, cy = _pick_centre(rng, size, valid, min(length / 2 + thickness, (size - 1) / 2))
        direction = np.array([np.cos(angle), np.sin(angle)])
        normal = np.array([-direction[1], direction[0]])
        n_points = 5 if crack else 2
        offsets = np.linspace(-length / 2, length / 2, n_points)
        points = np.array([cx, cy]) + offsets[:, None] * direction
        if crack:
            points[1:-1] += rng.uniform(-0.06, 0.06, (n_points - 2, 1)) * length * normal
        points = np.clip(np.rint(points), 0, size - 1).astype(np.int32)
        mask = np.zeros((size, size), dtype=np.uint8)
        cv2.polylines(mask, [points.reshape(-1, 1, 2)], False, 255, thickness, cv2.LINE_8)
        if np.count_nonzero(mask) >= MIN_DEFECT_AREA:
            return mask
    raise RuntimeError("Could not place a line defect of the minimum area.")  # pragma: no cover


def _blob_mask(rng: np.random.Generator, size: int, valid: np.ndarray) -> np.ndarray:
    """Draw an irregular blob, the union of one to three filled ellipses, into a new mask."""
    for _ in range(_MAX_PLACEMENT_TRIES):
        axes = [(max(4.0, rng.uniform(0.05, 0.1) * size), max(4.0, rng.uniform(0.03, 0.07) * size))]
        axes += [(a * rng.uniform(0.5, 0.9), b * rng.uniform(0.5, 0.9)) for a, b in axes * int(rng.integers(0, 3))]
        reach = max(a for a, _ in axes) * 1.6
        cx, cy = _pick_centre(rng, size, valid, min(reach, (size - 1) / 2))
        mask = np.zeros((size, size), dtype=np.uint8)
        for k, (a, b) in enumerate(axes):
            dx, dy = (0.0, 0.0) if k == 0 else rng.uniform(-0.6, 0.6, 2) * axes[0][0]
            centre = (int(round(cx + dx)), int(round(cy + dy)))
            cv2.ellipse(mask, centre, (int(round(a)), int(round(b))), rng.uniform(0, 180), 0, 360, 255, -1, cv2.LINE_8)
        if np.count_nonzero(mask) >= MIN_DEFECT_AREA:
            return mask
    raise RuntimeError("Could not place a blob defect of the minimum area.")  # pragma: no cover


_BLOB_COLOURS: dict[str, tuple[tuple[float, ...], ...]] = {  # BGR (or gray) colours of the blob defects
    "bottle_like": ((25.0, 55.0, 110.0), (30.0, 30.0, 30.0), (215.0, 235.0, 245.0)),
    "carpet_like": ((200.0, 160.0, 25.0), (40.0, 190.0, 60.0), (235.0, 235.0, 235.0)),
    "tile_like": ((22.0,), (35.0,), (240.0,)),
}


def _composite(rng: np.random.Generator, clean: np.ndarray, mask: np.ndarray, category: str, line: bool) -> np.ndarray:
    """Paint a defect into a copy of ``clean`` inside ``mask`` only, with strong contrast at every pixel."""
    where = mask > 0
    pixels = clean[where].reshape(-1, 1 if clean.ndim == 2 else clean.shape[2]).astype(np.float32)
    local = pixels.mean(axis=0)
    if line:  # bright or dark scratch, whichever stands out more from what lies under it
        level = rng.uniform(225, 250) if local.mean() < 128 else rng.uniform(5, 30)
        colour = np.full(pixels.shape[1], level, dtype=np.float32)
    else:  # a colour far from the local colour, picked at random among the far ones
        palette = np.array(_BLOB_COLOURS[category], dtype=np.float32)
        distance = np.abs(palette - local).mean(axis=1)
        far = np.flatnonzero(distance >= 90)
        choice = int(rng.choice(far)) if far.size else int(np.argmax(distance))
        colour = palette[choice]
    painted = colour + rng.normal(0.0, 4.0, pixels.shape).astype(np.float32)
    weak = np.abs(painted - pixels).max(axis=1) < _MIN_CONTRAST
    painted[weak] = np.where(pixels[weak] >= 128, pixels[weak] - _FALLBACK_SHIFT, pixels[weak] + _FALLBACK_SHIFT)
    image = clean.copy()
    image[where] = _to_uint8(painted).reshape(image[where].shape)
    return image

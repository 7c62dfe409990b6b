"""MVTec AD layout indexed, checked up front, split into train/val/test.

Layout::

    <root>/train/good/*                        normal training images
    <root>/val/{good,<defect>}/*               optional: validation split for thresholds
    <root>/test/good/*  <root>/test/<defect>/*  test images
    <root>/test/unknown/*                       predicted, left out of metrics
    <root>/ground_truth/<defect>/<name>_mask.png   optional pixel masks

The images are listed from ``<split>/<type>/`` with the image extensions of Datumaro's MVTec reader
(``_check_layout``: the reader itself kept one of two images of one folder and file name two
levels down, by listing order); mask paths follow Datumaro's MVTec naming (``MvtecPath``). Masks
are read lazily by the dataset, not at indexing time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np
from datumaro.plugins.data_formats.mvtec.format import MvtecPath

from otx.data.io import (
    IMAGE_EXTENSIONS,
    LOOKED_FOR,
    image_header,
    image_size,
    pages_warning,
    shown_path,
    sixteen_bit_peak,
    turned_warning,
    why_unreadable,
)
from otx.errors import OTXDataError
from otx.workdir import LATEST, is_run_folder

log = logging.getLogger(__name__)

GOOD = "good"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Sample:
    """One image of the dataset.

    ``label`` is 0 (normal), 1 (anomalous) or -1 (unknown: predicted, never scored);
    ``defect`` is the folder name (``good``, a defect type or ``unknown``).
    """

    path: str
    label: int
    defect: str
    mask_path: str | None = None


@dataclass
class MvtecIndex:
    """The indexed dataset: samples per subset folder, and whether pixel masks exist."""

    root: Path
    subsets: dict[str, list[Sample]]
    has_masks: bool
    unreadable: dict[str, str] = field(default_factory=dict)  # test/ image path -> why its header cannot be read

    def fingerprint(self) -> str:
        """Short hash of the training file names and sizes (identifies the training data)."""
        digest = hashlib.sha256()
        for sample in self.subsets.get("train", []):
            path = Path(sample.path)
            # in NFC and with / (the same on any file system and OS); surrogateescape: a name that is not valid
            # UTF-8 (a Windows zip's) hashes as its bytes
            name = unicodedata.normalize("NFC", path.relative_to(self.root).as_posix())
            try:
                size = path.stat().st_size
            except OSError as exc:  # a link to nothing (a FileNotFoundError before, "internal error")
                raise OTXDataError(
                    f"cannot read training image '{path}' ({why_unreadable(path, exc)}); replace or remove it"
                ) from None
            digest.update(f"{name}:{size}\n".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()[:16]


def is_tool_folder(name: str) -> bool:
    """A folder tools leave beside images: ``.ipynb_checkpoints`` and other dot-folders, ``__MACOSX``, ``@eaDir``."""
    return name.startswith(".") or name in ("__MACOSX", "@eaDir")


def is_resource_file(name: str) -> bool:
    """A macOS AppleDouble file (``._000.png``): the metadata of ``000.png``, never an image."""
    return name.startswith("._")


def _label_of(defect: str) -> int:
    return 0 if defect == GOOD else (-1 if defect == UNKNOWN else 1)


def _is_listed_image(name: str) -> bool:
    """Whether Datumaro's MVTec reader takes a file of this name as an image (its extensions, any case)."""
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in IMAGE_EXTENSIONS  # Datumaro's list (a test compares them)


def _otx_work_dir(folder: Path) -> bool:
    """Whether ``folder`` is an otx work dir (its ``latest.json``, or a run folder in it)."""
    try:
        return (folder / LATEST).exists() or any(is_run_folder(run) for run in folder.iterdir() if run.is_dir())
    except OSError:  # a folder otx may not list (lost+found of a mounted disk): no work dir (a traceback before)
        return False


def _holds_images(folder: str) -> bool:
    return any(any(_is_listed_image(name) for name in names) for _, _, names in os.walk(folder))


# Folder names that usually hold masks: ground_truth/ in another spelling beside train/ (said, not read
# as data), a mask folder beside the images of an `otx predict` source (anomalib's Folder layout).
MASK_FOLDER_NAMES = frozenset({"ground_truth", "groundtruth", "ground-truth", "gt", "mask", "masks"})

# Folder names that usually mean "no defect" (their images would count as anomalous in test/ or val/).
NORMAL_LOOKING = frozenset({"ok", "normal", "pass", "passed", "nominal", "defect_free", "no_defect", "nodefect"})


def loose_name(name: str) -> str:
    """A file or folder name as a person reads it: composed Unicode (NFC), no spaces around it, any case."""
    return unicodedata.normalize("NFC", name).strip().casefold()


def how_names_differ(*pairs: tuple[str, str]) -> str:
    """What tells apart names ``loose_name`` makes equal, ``(given, meant)`` pairs, in words (for "rename")."""
    ways: list[str] = []
    for given, meant in pairs:
        if given != given.strip() or meant != meant.strip():
            ways.append("spaces at the start or end")
        if any(unicodedata.normalize("NFC", n) != n for n in (given, meant)):
            ways.append("the Unicode form of a letter (decomposed, as macOS writes names, against composed)")
        if unicodedata.normalize("NFC", given).strip() != unicodedata.normalize("NFC", meant).strip():
            ways.append("case")  # (equal by loose_name: only the case is left)
    return " and ".join(dict.fromkeys(ways)) or "case"


COMPANION_FILES = frozenset({"thumbs.db", "desktop.ini"})  # Windows writes these beside images


def other_types(paths: Sequence[Path], root: Path | None = None) -> str:
    """``3 file(s) of other types (2 .jfif, 1 .gif; e.g. train/good/a.jfif)``, for a "left out" warning."""
    kinds = Counter(p.suffix.lower() or "no extension" for p in paths)
    listed = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items(), key=lambda k: (-k[1], k[0]))[:4])
    more = f" and {len(kinds) - 4} other types" if len(kinds) > 4 else ""
    first = min(paths)
    shown = first.relative_to(root).as_posix() if root is not None else first.as_posix()
    return f"{len(paths)} file(s) of other types ({listed}{more}; e.g. {shown})"


def special_file(path: str | Path) -> bool:
    """A pipe, socket or device (through links); False for a regular file and for what cannot be stat'ed."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # a broken link: refused where it is read, with its reason
        return False


@dataclass
class PassedOver:
    """What indexing leaves out of a data root, each said in one warning by ``index_mvtec``."""

    resource_files: list[Path] = field(default_factory=list)  # macOS ._<name> files
    tool_folders: list[Path] = field(default_factory=list)  # .ipynb_checkpoints, __MACOSX, @eaDir
    other_types: list[Path] = field(default_factory=list)  # .jfif, .gif, a readme
    hidden: list[Path] = field(default_factory=list)  # .<name>.png: a tool's file, not meant as an image
    empty: list[str] = field(default_factory=list)  # test/<type>/ or val/<type>/ without images
    other_folders: list[Path] = field(default_factory=list)  # validation/, test_public/: not MVTec AD's names
    mask_folders: list[Path] = field(default_factory=list)  # ground_truth/<type>/<name>/: MVTec LOCO's masks


def _check_layout(folder: Path, passed: PassedOver | None = None) -> list[Path]:
    """The files named as images in ``<folder>/<type>/``, type folders in name order; one line for a bad layout.

    Refused: an image directly in ``<subset>/`` or in a subfolder of ``<subset>/<type>/``, and two
    images of one name with different extensions in one folder (a mask is named after its image's
    stem). Tools' folders (``is_tool_folder``) are passed over, into ``passed`` where they hold images.
    otx lists the images here itself: Datumaro's MVTec reader (``MvtecClassificationBase``), which it
    used before, keyed an image by its folder's and file's names two levels down, so
    ``test/.old/scratch/000.png`` (a tool's or a user's hidden copy) and ``test/scratch/000.png`` were
    one item, which of them it kept followed the file system's listing order, and when it kept the
    copy, otx dropped it as a tool folder's: the real image was gone without a word (a review).
    """
    subset = folder.name
    images: list[Path] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir() and is_tool_folder(entry.name):  # the reader would take it for a defect type: left out
            if passed is not None and _holds_images(entry.path):  # (said by index_mvtec)
                passed.tool_folders.append(Path(entry.path))
            continue
        if not entry.is_dir():
            if _is_listed_image(entry.name):
                if is_resource_file(entry.name):  # Datumaro's reader fails on it
                    raise OTXDataError(
                        f"'{subset}/{entry.name}' is a macOS resource file (._<name>: a file's metadata, not an "
                        f"image) directly in {subset}/, where the MVTec reader cannot take it; remove it"
                    )
                where = "train/good/" if subset == "train" else f"{subset}/good/ or {subset}/<defect type>/"
                raise OTXDataError(
                    f"image '{subset}/{entry.name}' is directly in {subset}/: MVTec layout puts each image in "
                    f"{where}; move it there"
                )
            continue
        if entry.name not in (GOOD, UNKNOWN) and loose_name(entry.name) in (GOOD, UNKNOWN):
            meant = loose_name(entry.name)
            if entry.name.lower() == meant:
                raise OTXDataError(
                    f"'{subset}/{entry.name}/' would be a defect type: otx reads {subset}/{meant}/ in "
                    "lower case (MVTec layout); rename the folder"
                )
            raise OTXDataError(
                f"{subset}/{entry.name!r}/ would be a defect type: otx reads {subset}/{meant}/ exactly, and the "
                f"name differs from it by {how_names_differ((entry.name, meant))}; rename the folder to {meant}"
            )
        if subset != "train" and entry.name.lower().replace("-", "_") in NORMAL_LOOKING:
            log.warning(
                "'%s/%s/' is scored as a defect type (every folder but good/ and unknown/ is): if it holds "
                "normal images, move them to %s/good/",
                subset,
                entry.name,
                subset,
            )
        if os.path.isfile(os.path.join(entry.path, LATEST)):  # a --work_dir inside the data root
            raise OTXDataError(
                f"'{subset}/{entry.name}/' is otx's work folder ({LATEST}), which would be read as a defect type: "
                f"move it out of the data root, and pass --work_dir outside {subset}/"
            )
        stems: dict[str, str] = {}
        try:
            inners = sorted(os.scandir(entry.path), key=lambda e: e.name)
        except OSError as exc:
            raise OTXDataError(f"cannot list '{subset}/{entry.name}/' ({exc.strerror}); fix its permissions") from None
        for inner in inners:
            where = f"{subset}/{entry.name}"
            if inner.is_dir():
                # a tool's folder (.ipynb_checkpoints, Synology's @eaDir thumbnails two levels down): only
                # images directly in it matter, as the reader would take them for a defect type
                if is_tool_folder(inner.name):
                    try:
                        found = any(e.is_file() and _is_listed_image(e.name) for e in os.scandir(inner.path))
                    except OSError:  # a tool's folder otx may not list: not read, as none of a tool's is
                        found = False
                else:
                    found = _holds_images(inner.path)
                if found:
                    raise OTXDataError(
                        f"'{where}/{inner.name}/' holds images in a subfolder: otx reads only the images directly in "
                        f"{where}/ (MVTec layout; masks belong in ground_truth/<defect>/<name>_mask.png); move the "
                        "images up or remove the subfolder"
                    )
            elif _is_listed_image(inner.name):
                if special_file(inner.path):  # before: reading it waited for ever (a pipe) or read a device
                    raise OTXDataError(
                        f"'{where}/{inner.name}' is not a regular file (a pipe, socket or device), which otx cannot "
                        "read as an image; remove it"
                    )
                stem = os.path.splitext(inner.name)[0]
                if stem in stems:
                    raise OTXDataError(
                        f"{where}/ holds '{stems[stem]}' and '{inner.name}': two images of one name (MVTec layout "
                        f"names an image's mask after it, {stem}_mask.png), so one would be left out; "
                        "rename or remove one"
                    )
                stems[stem] = inner.name
                images.append(Path(inner.path))
            elif passed is not None and not inner.name.startswith(".") and inner.name.lower() not in COMPANION_FILES:
                passed.other_types.append(Path(inner.path))  # (hidden files: a tool's, not meant as images)
        cut = len(MvtecPath.MASK_POSTFIX)
        beside = sorted(stem for stem in stems if stem.endswith(MvtecPath.MASK_POSTFIX) and stem[:-cut] in stems)
        if beside:  # before: scored as defect images of their own, without a word (a review)
            image, mask = stems[beside[0][:-cut]], stems[beside[0]]
            raise OTXDataError(
                f"{subset}/{entry.name}/ holds '{mask}' beside '{image}' ({len(beside)} such pair(s)): a mask there "
                f"would be read as an image; move the masks to {MvtecPath.MASK_DIR}/{entry.name}/ (MVTec layout)"
            )
        if passed is not None and subset != "train" and not any(not n.startswith(".") for n in stems.values()):
            passed.empty.append(f"{subset}/{entry.name}/")  # a type without images: none of it is scored
    return images


def _path_order(sample: Sample) -> tuple[str, str]:
    """Samples in the order of their paths in composed Unicode (NFC), the same whichever form the file system keeps.

    macOS's HFS+ (and a zip made there) stores ``é`` decomposed (NFD): sorted by the raw names, the
    same images were in another order there, and the seeded validation split took other images.
    """
    return unicodedata.normalize("NFC", sample.path), sample.path


def _index_subset(folder: Path, mask_dir: Path | None, passed: PassedOver) -> list[Sample]:
    """The images of one subset folder; what it leaves out goes to ``passed``.

    macOS resource files (``._000.png``), the folders of tools (``test/.ipynb_checkpoints``,
    ``test/__MACOSX``; ``is_tool_folder``: the MVTec reader would take such a folder for a defect
    type and score its images as anomalous), hidden files (``.000.png``), files of types otx does
    not read (``.jfif``, ``.gif``, a readme) and type folders without images.
    """
    samples, listings = [], {}
    for path in _check_layout(folder, passed):
        defect = path.parent.name
        if is_resource_file(path.name):
            passed.resource_files.append(path)
            continue
        if path.name.startswith("."):  # before: trained on and scored without a word (a glob leaves them out)
            passed.hidden.append(path)
            continue
        mask_path = None
        if mask_dir is not None and defect not in (GOOD, UNKNOWN):
            mask_path = _mask_of(mask_dir, defect, path, listings)
        samples.append(Sample(str(path), _label_of(defect), defect, mask_path))
    return sorted(samples, key=_path_order)


MASK_SUFFIXES = tuple(dict.fromkeys((MvtecPath.MASK_EXT, *IMAGE_EXTENSIONS)))  # any case; .png first


def _mask_of(
    mask_dir: Path, defect: str, image: Path, listings: dict[Path, frozenset[str]] | None = None
) -> str | None:
    """``<mask_dir>/<defect>/<name>_mask.png`` when that file exists (MVTec's naming).

    A mask in another image format (``_mask.bmp``, ``_mask.tif``) is taken when there is no
    ``.png`` one; the extension in any case (``_mask.PNG``, ``_mask.Tif``), as images' are.
    Names are matched against the folder's listing (kept in ``listings`` across the images of
    one indexing), not probed with ``is_file``: on a case-insensitive file system (macOS,
    Windows) a probe for ``000_mask.png`` finds ``000_mask.PNG`` under the probed spelling,
    which then matches no listed mask.
    """
    listings = {} if listings is None else listings
    if defect not in _listed(
        listings, mask_dir, folders=True
    ):  # the type folders as stored: ground_truth/scratch, not Scratch
        return None
    folder = mask_dir / defect
    prefix = f"{image.stem}{MvtecPath.MASK_POSTFIX}"
    by_suffix: dict[str, str] = {}
    # the suffix in lower case first (000_mask.png before 000_mask.PNG), then by name
    for name in sorted((n for n in _listed(listings, folder, folders=False) if n.startswith(prefix)),
                       key=lambda n: (not n.endswith(n[len(prefix):].lower()), n)):  # fmt: skip
        by_suffix.setdefault(name[len(prefix) :].lower(), name)
    for suffix in MASK_SUFFIXES:
        if suffix in by_suffix:
            return str(folder / by_suffix[suffix])
    return None


def _listed(listings: dict[Path, frozenset[str]], folder: Path, folders: bool) -> frozenset[str]:
    """The names of the subfolders (or files) in ``folder`` as stored, listed once per indexing."""
    if folder not in listings:
        try:
            listings[folder] = frozenset(e.name for e in os.scandir(folder) if (e.is_dir() if folders else e.is_file()))
        except OSError:  # no such folder, or one this user cannot list
            listings[folder] = frozenset()
    return listings[folder]


def layout_mask(image: str | Path) -> str | None:
    """The ground-truth mask of an image that sits in MVTec layout (``<root>/test/<defect>/<name>``), if any.

    For ``otx predict --source``: predicted images are never scored, the mask only draws the
    ground-truth outline on the overlay. The same naming as ``index_mvtec``.
    """
    image = Path(image)
    folder = image.parent
    if folder.parent.name not in ("test", "val") or folder.name in (GOOD, UNKNOWN):
        return None
    return _mask_of(folder.parent.parent / "ground_truth", folder.name, image)


def _categories(root: Path, limit: int = 10_000) -> list[str]:
    """Names of the sub-folders of ``root`` that hold ``train/good`` (a folder above the categories)."""
    found = []
    try:
        for count, entry in enumerate(root.iterdir()):
            if count >= limit:
                break
            try:
                if (entry / "train" / GOOD).is_dir():
                    found.append(entry.name)
            except OSError:  # an entry this user cannot enter (lost+found)
                continue
    except OSError:  # a folder this user cannot list
        return []
    return sorted(found)


def index_mvtec(root: str | Path, check_files: bool = True) -> MvtecIndex:
    """Index an MVTec-layout folder and check it; every problem raises one clear ``OTXDataError``.

    Checks: the root and ``train/good`` exist and hold images; with ``check_files``, every image
    header is readable, every mask belongs to an image, and every mask has its image's size. An
    unreadable image under ``test/`` is recorded in ``unreadable`` instead: in the test split it is
    labelled "error" like an image that fails later (``AnomalyDataModule.check_validation_readable``
    refuses it as a validation image, in train, export and optimize).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise OTXDataError(
            f"data root '{root}' does not exist or is not a folder; pass --data_root pointing to a folder "
            "in MVTec AD layout (train/good, test/good, test/<defect>) or run `otx data make-sample DIR`"
        )
    train_good = root / "train" / GOOD
    if not train_good.is_dir():
        inside = _categories(root)
        if inside:  # the folder above the categories (e.g. a whole MVTec AD download)
            names = ", ".join(inside[:5]) + (", ..." if len(inside) > 5 else "")
            raise OTXDataError(
                f"'{train_good}' is missing: '{root}' holds categories ({names}); pass one of them as --data_root, "
                f"e.g. {root / inside[0]}"
            )
        other_case = [p.name for p in (root / "train").glob("*") if p.is_dir() and loose_name(p.name) == GOOD]
        found = ""
        if other_case and other_case[0].lower() == GOOD:
            found = f" (found train/{other_case[0]}: rename it to good, in lower case)"
        elif other_case:
            why = how_names_differ((other_case[0], GOOD))
            found = f" (found train/{other_case[0]!r}, which differs from good by {why}: rename it to good)"
        if not found and root.name.lower() in ("train", "val", "test") and (root.parent / "train" / GOOD).is_dir():
            found = f" ('{root}' is a split folder: pass the folder above it, '{root.parent}')"
        raise OTXDataError(
            f"'{train_good}' is missing{found}; a data root holds the normal training images in <data_root>/train/good"
        )
    mask_dir = root / MvtecPath.MASK_DIR
    has_masks = mask_dir.is_dir()
    subsets: dict[str, list[Sample]] = {}
    passed = PassedOver()
    for name in ("train", "val", "test"):
        if (root / name).is_dir():
            subsets[name] = _index_subset(root / name, mask_dir if has_masks else None, passed)
    if has_masks:
        passed.resource_files += sorted(path for path in mask_dir.glob("*/._*") if path.is_file())
        passed.tool_folders += sorted(p for p in mask_dir.iterdir() if p.is_dir() and is_tool_folder(p.name))
        passed.mask_folders += sorted(
            p for p in mask_dir.glob("*/*") if p.is_dir() and not is_tool_folder(p.name) and _holds_images(str(p))
        )
    known = {"train", "val", "test", MvtecPath.MASK_DIR}
    passed.other_folders += sorted(  # an otx work dir inside the data root holds overlays, not data
        p
        for p in root.iterdir()
        if p.is_dir()
        and p.name not in known
        and not is_tool_folder(p.name)
        and not _otx_work_dir(p)
        and _holds_images(str(p))
    )
    # an empty folder said only where its split has images (a split without any is said where it is used)
    passed.empty = [folder for folder in passed.empty if subsets.get(folder.split("/")[0])]
    _say_passed_over(root, passed, "val" in subsets and not any(s.label >= 0 for s in subsets["val"]))
    train = [s for s in subsets.get("train", []) if s.defect == GOOD]
    if not train:
        raise OTXDataError(f"no images in '{train_good}' (looked for {LOOKED_FOR}); add normal training images")
    others = sorted({s.defect for s in subsets["train"]} - {GOOD})
    if others:
        log.warning("ignoring train/%s: training uses train/good only", ", train/".join(others))
    subsets["train"] = train
    _refuse_shared_masks(root, subsets)
    unreadable = _check_files(root, subsets, mask_dir if has_masks else None) if check_files else {}
    return MvtecIndex(root=root, subsets=subsets, has_masks=has_masks, unreadable=unreadable)


def _say_passed_over(root: Path, passed: PassedOver, empty_val: bool) -> None:
    """One warning for each kind of file or folder indexing left out of ``root`` (``PassedOver``)."""
    if passed.empty:  # before: passed over without a word (a defect type not tested, a val/ folder not used)
        one = len(passed.empty) == 1
        log.warning(
            "%s hold%s no images: none of %s is scored",
            ", ".join(passed.empty),
            "s" if one else "",
            "that kind" if one else "those kinds",
        )
    if empty_val:
        log.warning(
            "val/ holds no images (or only unknown/ ones, which have no label to set thresholds on): the validation "
            "split is taken from test/ as without it"
        )
    if passed.other_folders:  # before: not read, without a word (MVTec LOCO's validation/ beside test/)
        names = [f"{path.name}/" for path in passed.other_folders]
        hints = []
        if "validation/" in [name.lower() for name in names]:
            hints.append("rename validation/ to val/ to validate on its images")
        if masks := [name for name in names if name.lower().rstrip("/") in MASK_FOLDER_NAMES]:
            hints.append(f"masks are read from {MvtecPath.MASK_DIR}/ (this name exactly), not {', '.join(masks)}")
        log.warning(
            "left out %s: otx reads train/, val/, test/ and %s/ of a data root (MVTec AD layout)%s",
            ", ".join(names),
            MvtecPath.MASK_DIR,
            "; " + "; ".join(hints) if hints else "",
        )
    if passed.mask_folders:  # before: not read, and the images said to have no mask
        log.warning(
            "left out %d mask folder(s) (e.g. %s/): otx reads one mask file per image, %s/<defect type>/<image "
            "name>_mask.png; merge each folder's masks into one such file (MVTec LOCO keeps one folder per image)",
            len(passed.mask_folders),
            passed.mask_folders[0].relative_to(root).as_posix(),
            MvtecPath.MASK_DIR,
        )
    if passed.tool_folders:
        log.warning(
            "ignoring %s: folders that tools leave beside images (notebooks, macOS zips, NAS thumbnails), not "
            "defect types",
            ", ".join(f"{path.relative_to(root).as_posix()}/" for path in passed.tool_folders),
        )
    if passed.resource_files:
        log.warning(
            "ignoring %d macOS resource file(s) (e.g. %s): files named ._<name> hold a file's metadata, not an image",
            len(passed.resource_files),
            passed.resource_files[0].relative_to(root).as_posix(),
        )
    if passed.hidden:
        log.warning(
            "ignoring %d hidden file(s) (e.g. %s): names starting with a dot are tools' files, not images to use; "
            "rename them to use them",
            len(passed.hidden),
            passed.hidden[0].relative_to(root).as_posix(),
        )
    if passed.other_types:  # before: a folder's .jfif or .gif images were passed over without a word
        log.warning(
            "left out %s: otx reads %s; convert any images among them (to PNG) to use them",
            other_types(passed.other_types, root),
            LOOKED_FOR,
        )


def _refuse_shared_masks(root: Path, subsets: dict[str, list[Sample]]) -> None:
    """One line when two images would take the same mask.

    Masks are found by defect type and name only, so ``val/scratch/000.png`` beside
    ``test/scratch/000.png`` (each folder numbered from 000) would both get
    ``ground_truth/scratch/000_mask.png`` (before: silently, a validation image scored against a
    test image's mask, and the pixel threshold learned on it).
    """
    owners: dict[str, list[Sample]] = {}
    for samples in subsets.values():
        for sample in samples:
            if sample.mask_path:
                owners.setdefault(sample.mask_path, []).append(sample)
    shared = [(mask, images) for mask, images in owners.items() if len(images) > 1]
    if not shared:
        return
    mask, images = shared[0]
    more = f" ({len(shared) - 1} more masks are claimed twice)" if len(shared) > 1 else ""
    first, second = (Path(image.path).relative_to(root).as_posix() for image in images[:2])
    renamed = f"{Path(first).parts[0]}_{Path(first).stem}"  # val_000: the subset's name in front
    raise OTXDataError(
        f"{first} and {second} would both take the mask {Path(mask).relative_to(root).as_posix()}{more} "
        "(masks are matched by defect type and name); give one of them another name, with its own "
        f"mask (e.g. {Path(first).parent.as_posix()}/{renamed}{Path(first).suffix} and "
        f"{MvtecPath.MASK_DIR}/{images[0].defect}/{renamed}_mask.png)"
    )


def _check_files(root: Path, subsets: dict[str, list[Sample]], mask_dir: Path | None) -> dict[str, str]:
    """Raise for an unreadable train/ or val/ image or a bad mask; return the unreadable test/ images."""
    sizes, unreadable, turned, paged = {}, {}, [], []
    for subset, samples in subsets.items():
        for sample in samples:
            try:
                header = image_header(sample.path)
            except OTXDataError as exc:
                if subset != "test":
                    raise
                unreadable[sample.path] = str(exc)
                continue
            sizes[sample.path] = (header.height, header.width)
            if header.orientation != 1:
                turned.append(sample.path)
            if header.pages > 1:
                paged.append(sample.path)
    if paged:
        log.warning("%s", pages_warning(paged, root))
    if turned:
        log.warning("%s", turned_warning(turned, root))
    if narrow := narrow_sixteen_bit_warning([sample.path for sample in subsets.get("train", [])], root):
        log.warning("%s", narrow)
    if mask_dir is None:
        return unreadable
    by_mask = {s.mask_path: s for samples in subsets.values() for s in samples if s.mask_path}
    by_name = {(s.defect, Path(s.path).stem): s for samples in subsets.values() for s in samples}
    good_masks = 0
    for mask in sorted(mask_dir.glob("*/*")):
        if (
            mask.suffix.lower() not in IMAGE_EXTENSIONS
            or is_resource_file(mask.name)
            or mask.name.startswith(".")  # a hidden image's (passed over, said): before, "has no image" stopped it
            or is_tool_folder(mask.parent.name)
            or not mask.is_file()  # (a thumbnail tool's folder named 000_mask.png)
        ):
            continue
        sample = by_mask.get(str(mask))
        if sample is None and mask.parent.name in (GOOD, UNKNOWN):  # no defect pixels, or never scored
            good_masks += 1
            continue
        if sample is None:
            _refuse_unmatched_mask(root, mask, by_name)
        if sample.path in sizes:  # an unreadable image is labelled "error", its mask is not read
            check_mask_size(mask, image_size(mask), sample.path, sizes[sample.path])
    if good_masks:
        log.info("ignoring %d mask(s) in ground_truth/good and ground_truth/unknown: never scored", good_masks)
    lossy = [path for path in by_mask if Path(path).suffix.lower() in (".jpg", ".jpeg")]
    if lossy:
        log.warning(
            "%d mask(s) are JPEG files (e.g. %s): every pixel above black counts as defect, so compression noise "
            "around a defect widens it; save masks as PNG",
            len(lossy),
            Path(lossy[0]).relative_to(root),
        )
    return unreadable


SIXTEEN_BIT_TYPES = (".png", ".tif", ".tiff", ".pgm", ".ppm", ".pnm", ".jp2")
NARROW_PEAK = 4096  # 16-bit files whose values stay below this hold 12 bits or fewer (a machine camera's)


NARROW_CHECKS = 5  # 16-bit files decoded per check, spread over the images


def narrow_sixteen_bit_warning(
    paths: Sequence[str | Path], root: str | Path | None = None, where: str = "training"
) -> str | None:
    """One line when 16-bit files among ``paths`` hold 12 bits or fewer (values below ``NARROW_PEAK``).

    otx (like OpenCV and anomalib's readers) scales 16-bit images by 65535: 12-bit data reads as 16
    grey levels of 256, nearly black, and nothing else would say so. Up to ``NARROW_CHECKS`` files
    of a 16-bit capable type, spread over ``paths``, are decoded; the file named is the narrow one
    (relative to ``root`` where given). Other file types are 8-bit and skipped.
    """
    capable = [path for path in paths if Path(path).suffix.lower() in SIXTEEN_BIT_TYPES]
    if not capable:
        return None
    step = max(1, -(-len(capable) // NARROW_CHECKS))
    chosen = [*capable[::step][: NARROW_CHECKS - 1], capable[-1]] if len(capable) > 1 else capable
    peaks = [(peak, path) for path in dict.fromkeys(chosen) if (peak := sixteen_bit_peak(path)) is not None]
    narrow = [(peak, path) for peak, path in peaks if 0 < peak < NARROW_PEAK]
    if not narrow or 3 * len(narrow) < len(peaks):  # (one dark frame among full-range files is no 12-bit data)
        return None
    top, path = max(narrow, key=lambda item: item[0])
    bits = max(top.bit_length(), 1)
    return (
        f"the {where} images include 16-bit files whose values stay at or below {top} ({bits}-bit data: "
        f"{len(narrow)} of {len(peaks)} checked, e.g. {shown_path(path, root)}): otx scales 16-bit images by "
        f"65535, so they read as {top // 257 + 1} of 256 grey levels; scale the files to the full 16-bit range "
        f"first (multiply by {2 ** (16 - bits)})"
    )


_MASK_WORD = re.compile(r"^(?P<stem>.+?)[ ._-]?mask$", re.IGNORECASE)  # 000_MASK, 000-mask, 000 mask, 000mask


def _refuse_unmatched_mask(root: Path, mask: Path, by_name: dict[tuple[str, str], Sample]) -> NoReturn:
    """One line for a mask that belongs to no image, saying why when its image is there.

    Its image is looked for under the mask's own name, under the name without a misspelt mask
    suffix (``000-mask``, ``000_MASK``) and in a type folder of another case (``test/Scratch``).
    """
    defect, stem = mask.parent.name, mask.stem.removesuffix(MvtecPath.MASK_POSTFIX)
    image = by_name.get((defect, stem))
    spelt = _MASK_WORD.match(mask.stem)
    if image is None and spelt and not mask.stem.endswith(MvtecPath.MASK_POSTFIX):
        stem = spelt.group("stem")
        image = by_name.get((defect, stem))
    named = f"{stem}{MvtecPath.MASK_POSTFIX}{MvtecPath.MASK_EXT}"
    if image is None:
        alike = [  # (not good/ or unknown/: masks there are never read)
            (folder, name)
            for folder, name in by_name
            if loose_name(folder) == loose_name(defect)
            and loose_name(name) == loose_name(stem)
            and loose_name(folder) not in (GOOD, UNKNOWN)
        ]
        if alike and alike[0][1] == stem and alike[0][0].lower() == defect.lower():  # the folder's case alone
            found = by_name[alike[0]]
            where = Path(found.path).parent.relative_to(root).as_posix()
            raise OTXDataError(
                f"mask '{mask}' belongs to '{Path(found.path).relative_to(root).as_posix()}', but its folder is "
                f"ground_truth/{defect}/ and the image's {where}/: folder names are matched with their case; "
                f"rename one of the folders so that they match"
            )
        if alike:  # names that look the same: spaces around them, or another Unicode form
            folder, name = alike[0]
            image_path = Path(by_name[alike[0]].path).relative_to(root)
            why = how_names_differ((defect, folder), (stem, name))
            raise OTXDataError(
                f"mask '{mask}' looks like the mask of '{image_path.as_posix()}', but the names "
                f"{f'{defect}/{stem}'!r} and {f'{folder}/{name}'!r} differ by {why}; rename one so that they "
                "match exactly"
            )
    if image is not None and image.mask_path is not None:
        raise OTXDataError(
            f"'{Path(image.path).relative_to(root)}' has two masks, '{image.mask_path}' and '{mask}'; remove one"
        )
    if image is not None:
        raise OTXDataError(
            f"mask '{mask}' is not named as a mask of '{Path(image.path).relative_to(root)}': masks are named "
            f"<image name>{MvtecPath.MASK_POSTFIX}.<ext> (MVTec AD); rename it to {named}"
        )
    unread = [  # its image is there, of a type otx does not read (000.gif, 000.jfif)
        path
        for split in ("test", "val")
        if (root / split / defect).is_dir()
        for path in sorted((root / split / defect).iterdir())
        if path.is_file() and os.path.splitext(path.name)[0] == stem and not _is_listed_image(path.name)
    ]
    if unread:
        raise OTXDataError(
            f"mask '{mask}' belongs to '{unread[0].relative_to(root).as_posix()}', a file type otx does not read "
            f"({unread[0].suffix or 'no extension'}; it reads {LOOKED_FOR}); convert the image to PNG "
            f"({stem}.png) or remove the mask"
        )
    raise OTXDataError(
        f"mask '{mask}' has no image: expected test/{defect}/{stem}.<ext> (or under val/); "
        "remove the mask or add its image"
    )


def check_mask_size(mask: str | Path, mask_hw: tuple[int, int], image: str | Path, image_hw: tuple[int, int]) -> None:
    """Raise ``OTXDataError`` (one line naming both files) when a mask is not its image's ``(height, width)``."""
    if tuple(mask_hw) != tuple(image_hw):
        raise OTXDataError(
            f"mask '{mask}' is {mask_hw[1]}x{mask_hw[0]} but its image '{image}' is "
            f"{image_hw[1]}x{image_hw[0]} (width x height); masks must have their image's size (resize them "
            "with nearest-neighbour interpolation; a classification model reads no masks: moving ground_truth/ "
            "out of the data root also does)"
        )


def split_validation(test: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split test samples into (validation, test), stratified by defect type and seeded.

    ``unknown`` samples always stay in the test part. Each defect type with at least two images
    gives at least one to each side.
    """
    if not 0.0 < fraction < 1.0:
        raise OTXDataError(f"val_split must be between 0 and 1 (exclusive), got {fraction}")
    rng = np.random.default_rng(seed)
    val, rest = [], []
    by_defect: dict[str, list[Sample]] = {}
    for sample in test:
        by_defect.setdefault(sample.defect, []).append(sample)
    for defect in sorted(by_defect):
        group = by_defect[defect]
        if defect == UNKNOWN:
            rest.extend(group)
            continue
        order = rng.permutation(len(group))
        n_val = int(round(len(group) * fraction))
        if len(group) >= 2:
            n_val = min(max(n_val, 1), len(group) - 1)
        val.extend(group[i] for i in sorted(order[:n_val]))
        rest.extend(group[i] for i in sorted(order[n_val:]))
    return val, rest


def relative_names(samples: list[Sample], root: str | Path) -> list[str]:
    """Each sample's path under ``root``, with ``/`` separators (how a checkpoint names its validation images)."""
    base = os.path.abspath(root)  # not resolved: images may be symlinks to files elsewhere
    # in NFC: the same names whichever Unicode form the file system keeps (macOS: NFD)
    names = [Path(os.path.relpath(os.path.abspath(s.path), base)).as_posix() for s in samples]
    return [unicodedata.normalize("NFC", name) for name in names]


def split_by_names(
    test: list[Sample], root: str | Path, val_names: list[str]
) -> tuple[list[Sample], list[Sample], int]:
    """Split test samples into (validation, test) by a stored list of validation images.

    The samples named in ``val_names`` (paths under ``root``, see ``relative_names``) form the
    validation part, the others the test part, so that images added to the test folders after
    training never take a validation image's place. Also returns how many named images are gone.
    """
    wanted = {unicodedata.normalize("NFC", name) for name in val_names}  # (recorded by an older otx: as listed)
    names = relative_names(test, root)
    val = [s for s, name in zip(test, names, strict=True) if name in wanted and s.defect != UNKNOWN]
    rest = [s for s, name in zip(test, names, strict=True) if name not in wanted or s.defect == UNKNOWN]
    return val, rest, len(wanted) - len(val)


def count_kinds(samples: list[Sample]) -> dict[str, int]:
    """Images per folder (``good``, each defect type, ``unknown``) plus normal/anomalous totals."""
    counts = Counter(s.defect for s in samples)
    summary = {
        "normal": counts.get(GOOD, 0),
        "anomalous": sum(v for k, v in counts.items() if k not in (GOOD, UNKNOWN)),
    }
    if counts.get(UNKNOWN):
        summary["unknown"] = counts[UNKNOWN]
    summary["by_folder"] = dict(sorted(counts.items()))  # type: ignore[assignment]
    return summary

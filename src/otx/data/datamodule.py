"""Torch datasets and the datamodule that turns an MVTec-layout folder into train/val/test loaders."""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from otx.data.dataset import (
    MASK_FOLDER_NAMES,
    MvtecIndex,
    Sample,
    count_kinds,
    index_mvtec,
    is_resource_file,
    is_tool_folder,
    other_types,
    relative_names,
    special_file,
    split_by_names,
    split_validation,
)
from otx.data.io import IMAGE_EXTENSIONS, LOOKED_FOR, header_pixels, read_image, read_mask
from otx.distributed import ShardSampler
from otx.errors import OTXDataError
from otx.preprocess import PreProcessor, resize_image, resize_mask  # noqa: F401 - re-exported
from otx.validate import SEED_MAX, check_bool, check_int, check_number, check_path
from otx.workdir import LATEST, is_run_folder

# Pixels of one batch of images handed over as read (``loader(resize=False)``, an exported model's
# batches): 96 MB of RGB uint8. A batch of 16 photos of 3000x4000 was 576 MB, and the loading workers
# keep up to four batches ready (otx predict of 64 such photos through a 256x256 IR: 3.9 GB before).
BATCH_PIXELS = 32_000_000
DEMO_RESULTS = "results.json"  # the demo package's predict.py writes it beside its masks/

log = logging.getLogger(__name__)

# (rank, world size, padding): a process's share of a loader's order in a distributed run
# (padding: "none", "repeat" or "mark", see otx.distributed.ShardSampler).
Shard = tuple[int, int, str]


class AnomalyDataset(Dataset):
    """Images as float ``[3, H, W]`` in [0, 1], pre-processed by the model's ``PreProcessor``, with masks.

    With ``resize_images=False`` images keep their own size (exported models pre-process inside
    their graph); masks are always at the pre-processor's ``map_size``, where pixel metrics are
    computed. ``preprocess`` may also be an ``[height, width]`` (the ``resize`` mode). With
    ``uint8_images`` (and ``resize_images=False``) images stay ``uint8`` ``[3, H, W]`` as read, a
    quarter of the memory (``OpenVINOInferencer`` divides by 255 as this class does, to the same floats).

    A file that fails to decode does not raise inside a worker process (where the message
    would drown in a traceback): the item carries an ``error`` string that the consumer turns
    into one clear ``OTXDataError``.
    """

    def __init__(
        self,
        samples: list[Sample],
        preprocess: PreProcessor | tuple[int, int],
        resize_images: bool = True,
        uint8_images: bool = False,
    ) -> None:
        self.samples = samples
        self.preprocess = preprocess if isinstance(preprocess, PreProcessor) else PreProcessor(preprocess)
        self.resize_images = resize_images
        self.uint8_images = uint8_images and not resize_images

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        padding = index < 0  # a place holder of a distributed split (otx.distributed.ShardSampler)
        if padding:
            index = -index - 1
        sample = self.samples[index]
        height, width = self.preprocess.map_size
        error = ""
        try:
            image = read_image(sample.path)
            orig_hw = image.shape[:2]
            tensor = torch.from_numpy(image).permute(2, 0, 1)
            if not self.uint8_images:
                tensor = tensor.float().div_(255.0)
            if self.resize_images:
                tensor = self.preprocess.image(tensor)
            mask = torch.zeros((height, width), dtype=torch.bool)
            if sample.mask_path:
                mask = self.preprocess.mask(torch.from_numpy(read_mask(sample.mask_path)))
        except OTXDataError as exc:
            error = str(exc)
            tensor = torch.zeros((3, height, width), dtype=torch.uint8 if self.uint8_images else torch.float32)
            mask = torch.zeros((height, width), dtype=torch.bool)
            orig_hw = (height, width)
        return {
            "image": tensor,
            "mask": mask,
            "label": sample.label,
            "index": -index - 1 if padding else index,
            "orig_size": torch.tensor(orig_hw),
            "error": error,
            # whether the mask is the image's truth: not for an anomalous image without a mask file
            "pixel_known": sample.label == 0 or sample.mask_path is not None,
        }


def raise_batch_errors(batch: dict[str, Any]) -> None:
    """Raise the first decode error carried by a batch, as one ``OTXDataError`` line."""
    for error in batch["error"]:
        if error:
            raise OTXDataError(error)


class EpochShuffleSampler(Sampler[int]):
    """A random order that depends on the seed and the epoch only (Lightning calls ``set_epoch``).

    Epoch e's order is the one a ``DataLoader(shuffle=True, generator=Generator().manual_seed(seed))``
    gives in its e-th epoch (per epoch it draws the workers' base seed, then a ``RandomSampler``
    draws two permutations, the second empty-sliced), recomputed from the epoch number, so a
    training resumed at epoch e sees the batches an uninterrupted one sees.
    """

    def __init__(self, length: int, seed: int) -> None:
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epoch):  # the earlier epochs' draws (microseconds each)
            self._draw(generator)
            torch.randperm(self.length, generator=generator)
        return iter(self._draw(generator))

    def _draw(self, generator: torch.Generator) -> list[int]:
        torch.empty((), dtype=torch.int64).random_(generator=generator)  # the loader's worker base seed
        return torch.randperm(self.length, generator=generator).tolist()


class AnomalyDataModule:
    """MVTec-format data: ``train/good`` for training, a validation split for thresholds, a test split.

    Args:
        data_root: folder in MVTec AD layout.
        val_split: fraction of each test folder used for validation when the data has no ``val/``,
            above 0 and below 1 (to keep every test image for testing, put validation images in ``val/``).
        seed: seed of the validation split (the same seed always gives the same split) and of the
            training images' order in each epoch.
        batch_size: images per batch for training and inference (tiles per batch in the ``tile`` mode).
        num_workers: data-loading worker processes.
        check_files: read every image header and check masks before starting (recommended).
    """

    # what a run's config.yaml records of its data, besides data_root, and what a resumed run must keep
    RUN_SETTINGS = ("val_split", "seed", "batch_size")

    def __init__(
        self,
        data_root: str | None = None,
        val_split: float = 0.5,
        seed: int = 42,
        batch_size: int = 16,
        num_workers: int = 2,
        check_files: bool = True,
    ) -> None:
        self.data_root = str(check_path("data_root", data_root, optional=True)) if data_root is not None else None
        self.val_split = check_number("val_split", val_split, low=0.0, high=1.0, open_interval=True)
        self.seed = check_int("seed", seed, minimum=0, maximum=SEED_MAX)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        self.check_files = check_bool("check_files", check_files)
        self.index: MvtecIndex | None = None
        self.splits: dict[str, list[Sample]] = {}
        # a trained model's validation images (paths under data_root): they form the validation
        # split instead of the seeded one (``eval_data``), so test folders may change after training
        self.val_files: list[str] | None = None
        self.split_changes: dict[str, int] = {}  # set up with ``val_files``: how the split differs from training's

    def run_settings(self) -> dict[str, Any]:
        """The settings a run records and a resumed run must keep (``RUN_SETTINGS``)."""
        return {k: getattr(self, k) for k in self.RUN_SETTINGS}

    def replace(self, **changes: Any) -> AnomalyDataModule:
        """A new data module with the same settings but ``changes`` (``data_root``, ``val_split``, ``seed`` ...).

        The copy is not set up; this module is left as it is.
        """
        settings = {
            "data_root": self.data_root,
            **self.run_settings(),
            "num_workers": self.num_workers,
            "check_files": self.check_files,
        }
        return type(self)(**{**settings, **changes})

    def setup(self) -> None:
        """Index and check the folder, then form the train, val and test splits."""
        if self.data_root is None:
            raise OTXDataError("no data given; pass --data_root DIR (a folder in MVTec AD layout)")
        self.index = index_mvtec(self.data_root, check_files=self.check_files)
        self.split()

    def split(self) -> None:
        """Form the train, val and test splits of the indexed folder (again after ``val_files`` is set)."""
        if self.index is None or self.data_root is None:
            raise RuntimeError("split() needs setup() first")
        subsets = self.index.subsets
        test = subsets.get("test", [])
        # (val/ of unknown/ images only: no label to calibrate on, taken from test/ as an empty val/ is; before: an
        # empty validation split, then "each test/ folder holds one image" from otx train, a review)
        if val := [s for s in subsets.get("val", []) if s.label >= 0]:
            log.info("using the data's own val/ folder (%d images) for thresholds", len(val))
            if self.val_files is not None:  # a val/ folder added after training on test images' thresholds:
                # the images the model was calibrated on stay out of the test split all the same
                calibrated, test, gone = split_by_names(test, self.data_root, self.val_files)
                self.split_changes = {"validation_images_gone": gone, "val_folder_added": len(calibrated)}
        elif self.val_files is not None:
            seeded, _ = split_validation(test, self.val_split, self.seed)
            val, test, gone = split_by_names(test, self.data_root, self.val_files)
            self.split_changes = {
                "validation_images_gone": gone,
                "seeded_split_moves": len({s.path for s in seeded} ^ {s.path for s in val}),
            }
        else:
            val, test = split_validation(test, self.val_split, self.seed)
        self.splits = {"train": subsets["train"], "val": val, "test": test}

    def check_validation_readable(self) -> None:
        """Raise one ``OTXDataError`` line when a validation image cannot be read (after the final split).

        Thresholds are fitted, and exports' decisions checked, on the validation split; an
        unreadable image in the test split is labelled "error" instead (``index.unreadable``).
        """
        unreadable = self.index.unreadable if self.index is not None else {}
        broken = [s.path for s in self.splits.get("val", []) if s.path in unreadable]
        if broken:
            more = f"; {len(broken) - 1} more validation image(s) cannot be read either" if len(broken) > 1 else ""
            raise OTXDataError(
                f"{unreadable[broken[0]]} (a validation image: thresholds are fitted and checked on them){more}"
            )

    def validation_names(self) -> list[str] | None:
        """The validation images as paths under ``data_root`` (for the checkpoint), or None with a ``val/`` folder.

        With the data's own ``val/`` folder the split does not depend on the test folders, so
        nothing needs recording.
        """
        if self.index is None or self.data_root is None or self.index.subsets.get("val"):
            return None
        return sorted(relative_names(self.splits["val"], self.data_root))

    @property
    def has_masks(self) -> bool:
        """Whether the data has a ``ground_truth/`` folder (pixel masks)."""
        return bool(self.index and self.index.has_masks)

    def validation_record(self) -> dict[str, Any]:
        """How the validation split was formed, for metrics.json and the test report.

        ``from``: ``val/ folder`` (the data's own), ``recorded files`` (the images a model was
        calibrated on, as its checkpoint or export recorded them) or ``seeded split`` (a share of the
        test folders, drawn with the seed); with ``val_split`` and ``seed`` unless from a folder. Two
        runs' test metrics compare only on the same split.
        """
        if self.index is not None and self.index.subsets.get("val"):
            return {"from": "val/ folder"}
        how = "recorded files" if self.val_files is not None else "seeded split"
        return {"from": how, "val_split": self.val_split, "seed": self.seed}

    def split_summary(self) -> dict[str, dict[str, Any]]:
        """Number of images of each kind per split (written to metrics.json)."""
        return {name: count_kinds(samples) for name, samples in self.splits.items()}

    def dataloader(
        self, split: str, preprocess: PreProcessor, shuffle: bool = False, shard: Shard | None = None
    ) -> DataLoader:
        """A loader over one split (``train``, ``val``, ``test``), pre-processed by the model's ``preprocess``."""
        return self.loader(self.splits[split], preprocess, shuffle=shuffle, shard=shard)

    def images_per_batch(self, preprocess: PreProcessor) -> int:
        """Images in a batch: ``batch_size``, or in the ``tile`` mode as many as give ``batch_size`` tiles (at least 1).

        So a batch holds about as many core inputs in every mode, and a folder of large tiled
        images (a 4000x3000 image is 192 tiles of 256) does not sit in memory 16 at a time.
        """
        return max(1, self.batch_size // preprocess.tiles_per_image)

    def loader(
        self,
        samples: list[Sample],
        preprocess: PreProcessor,
        shuffle: bool = False,
        resize: bool = True,
        shard: Shard | None = None,
        min_images: int = 1,
    ) -> DataLoader:
        """A loader over any list of samples, pre-processed by ``preprocess`` unless ``resize`` is False.

        Without it, a batch's ``image`` is a list of ``uint8`` tensors of each image's own size,
        as read (masks are still at the pre-processor's map size; before: float, 4x the memory:
        16 images of 3000x4000 through a 256x256 IR took 5.4 GB in ``otx predict``). ``shard``
        ``(rank, world, pad)`` gives this process its share of the order
        (``otx.distributed.ShardSampler``), in blocks of ``images_per_batch``. A batch holds
        ``images_per_batch`` images, or up to ``min_images`` (what an exported model's parallel
        requests take at once) where that is more, never more than ``batch_size``: the tile
        mode's one large image a batch fills the requests. Images as read (``resize`` False) are
        also cut into batches of at most ``BATCH_PIXELS`` pixels past ``min_images`` (``PixelBatches``).
        """
        block = self.images_per_batch(preprocess)
        batch_size = max(block, min(min_images, self.batch_size))
        order: Any = EpochShuffleSampler(len(samples), self.seed) if shuffle else None  # resumable shuffle
        if shard is not None and shard[1] > 1:
            # (blocks of the model's batch alone: every process's the same, whatever its device's requests)
            order = ShardSampler(order if order is not None else range(len(samples)), *shard, block=block)
            samples_here = len(order)
        else:
            samples_here = len(samples)
        grouped = None
        if not resize and not shuffle:  # images as read: batches of at most BATCH_PIXELS (at least min_images)
            indices = order if order is not None else range(len(samples))
            pixels = [header_pixels(samples[i if i >= 0 else -i - 1].path) for i in indices]  # (-i - 1: held place)
            grouped = PixelBatches(indices, pixels, batch_size, max(1, min_images), BATCH_PIXELS)
            full_batches = len(grouped) - 1  # (a loading worker for each batch after the first, as below)
        else:
            full_batches = samples_here // batch_size
        workers = min(self.num_workers, max(full_batches, 0))
        if workers:  # the workers' folder for handing batches over is this process's, which removes it at exit
            import multiprocessing.util

            multiprocessing.util.get_temp_dir()  # (before: one pymp-* folder per worker in $TMPDIR after a stop)
        return DataLoader(
            AnomalyDataset(samples, preprocess, resize_images=resize, uint8_images=not resize),  # (for an IR)
            batch_size=1 if grouped is not None else batch_size,  # (an empty share: no batch, not False)
            sampler=None if grouped is not None else order,
            batch_sampler=grouped,
            num_workers=workers,
            persistent_workers=False,
            collate_fn=None if resize else _collate_keep_images,
            worker_init_fn=quiet_broken_handoffs,
        )


class PixelBatches(Sampler[list[int]]):
    """Consecutive indices of ``order`` in batches of at most ``max_images``, and ``budget`` pixels past ``min_images``.

    For images handed over at their own size (an exported model's batches), where the batch's
    image count alone says little about its memory. ``sampler`` is ``order`` (its length: the images).
    An image whose pixels are not known (None: ``header_pixels``) counts as the whole budget.
    """

    def __init__(self, order: Any, pixels: list[int | None], max_images: int, min_images: int, budget: int) -> None:
        self.sampler = order
        self.batches: list[list[int]] = []
        batch: list[int] = []
        held = 0
        for index, known in zip(order, pixels, strict=True):
            count = budget if known is None else known
            if batch and (len(batch) >= max_images or (len(batch) >= min_images and held + count > budget)):
                self.batches.append(batch)
                batch, held = [], 0
            batch.append(index)
            held += count
        if batch:
            self.batches.append(batch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)


def quiet_broken_handoffs(worker_id: int) -> None:
    """In a loading worker: a batch hand-off that the main process broke off is not reported.

    A worker hands each batch's shared memory to the main process over a socket, served by
    ``multiprocessing.resource_sharer`` in a thread of the worker. When the main process stops
    (Ctrl-C, SIGTERM, an error) in the middle of that exchange, the thread's next read fails with
    ``ConnectionResetError`` / ``EOFError`` and it prints a traceback through ``sys.excepthook``,
    below otx's own one-line message. The main process reports whatever stopped it; the worker
    only loses a batch nobody waits for, so these errors, in that thread only, are not printed.
    """
    del worker_id
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, trace: Any) -> None:
        thread = threading.current_thread()
        if (
            thread is not threading.main_thread()
            and thread.name.endswith("(_serve)")
            and issubclass(kind, (EOFError, ConnectionError))
        ):
            return
        previous(kind, value, trace)

    sys.excepthook = hook


def _collate_keep_images(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Default collation for everything but ``image``, which stays a list (sizes differ)."""
    images = [item.pop("image") for item in items]
    batch = default_collate(items)
    batch["image"] = images
    return batch


def _is_layout_mask(path: Path) -> bool:
    """``<root>/ground_truth/<defect>/<name>_mask.<ext>`` beside ``<root>/test`` or ``<root>/train``."""
    folder = path.parent.parent
    return (
        folder.name == "ground_truth"
        and path.stem.endswith("_mask")
        and any((folder.parent / split).is_dir() for split in ("test", "train"))
    )


def _folder_masks(files: list[Path]) -> set[Path]:
    """Files in a folder named like masks (``masks/``, ``gt/``) named as images in a folder beside it are.

    anomalib's ``Folder`` layout keeps ``masks/contamination_000.png`` beside
    ``defect/contamination_000.png``; given as a source, the masks were scored as images (16 of 84
    "anomalous" in a migrants bug bash). A folder of that name without such twins is predicted.
    """
    stems: dict[Path, set[str]] = {}  # image names in each folder's subfolders other than a mask folder
    for path in files:
        if path.parent.name.lower() not in MASK_FOLDER_NAMES:
            stems.setdefault(path.parent.parent, set()).add(path.stem)
    return {
        path
        for path in files
        if path.parent.name.lower() in MASK_FOLDER_NAMES
        and {path.stem, path.stem.removesuffix("_mask")} & stems.get(path.parent.parent, set())
    }


def _demo_results(folder: Path) -> bool:
    """Whether ``folder``'s ``results.json`` is the demo package's (a list of records with image and label)."""
    try:
        path = folder / DEMO_RESULTS
        if path.stat().st_size > 64 << 20:  # not read whole; the demo writes a record of ~100 bytes an image
            return False
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(records, list) and all(isinstance(r, dict) and {"image", "label"} <= r.keys() for r in records)


def _images_under(folder: Path) -> list[Path]:
    """Image files in ``folder`` and its subfolders, leaving out otx's own work folders and tools' files.

    A folder with ``latest.json`` is a ``--work_dir``: its predicted masks and overlays are not
    new parts (``otx predict --source .`` run twice would otherwise predict its first outputs); one
    with the demo package's ``results.json`` holds its outputs (its masks), left out as its script does.
    Symlinked folders are followed, each folder once (a link back up is not a loop); the folders
    and files of ``is_tool_folder`` and ``is_resource_file`` are left out, with a warning, and so
    are files of other types (not ``IMAGE_EXTENSIONS``; hidden ones without a word).
    """
    files, others, skipped, demo, leftovers, visited, again = [], [], [], [], [], set(), []
    for top, dirs, names in os.walk(folder, followlinks=True):
        here = os.path.realpath(top)
        if here in visited:  # a link back up, or one folder linked twice
            again.append(top)
            dirs.clear()
            continue
        visited.add(here)
        if top == str(folder) and (run := next((p for p in (folder, *folder.parents) if is_run_folder(p)), None)):
            raise OTXDataError(  # its images are outputs: masks, overlays
                f"'{folder}' is {'an otx run folder' if run == folder else f'in the otx run folder {run}'}: its images "
                "are otx's outputs (masks, overlays), not images to predict; pass the folder of the images to predict"
            )
        otx_folder = top != str(folder) and (LATEST in names or is_run_folder(top))
        if otx_folder or (top != str(folder) and DEMO_RESULTS in names and _demo_results(Path(top))):
            (skipped if otx_folder else demo).append(top)
            dirs.clear()
            continue
        leftovers += [Path(top, name) for name in sorted(dirs) if is_tool_folder(name)]
        leftovers += [Path(top, name) for name in sorted(names) if is_resource_file(name)]
        # hidden images (.000.png): a tool's, left out as a glob and training leave them (before: predicted)
        leftovers += [
            Path(top, name)
            for name in sorted(names)
            if name.startswith(".")
            and not is_resource_file(name)
            and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
        ]
        dirs[:] = sorted(name for name in dirs if not is_tool_folder(name))
        for name in names:
            if name.startswith("."):  # resource files and hidden images above; other hidden files without a word
                continue
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                if not special_file(Path(top, name)):  # a pipe named .png waited for a writer for ever (bug bash)
                    files.append(Path(top, name))
                else:
                    others.append(Path(top, name))
            else:
                others.append(Path(top, name))
    for left, why in (
        ([f"otx's work or run folder {p}" for p in skipped], " (its outputs are not images to predict)"),
        ([f"the demo package's output folder {p}" for p in demo], " (its masks are not images to predict)"),
        ([p.as_posix() for p in leftovers], " (macOS, notebook, NAS or other hidden files, not images to predict)"),
        (again, ": a folder already read under another path (a symbolic link)"),
    ):
        if left:
            more = f" and {len(left) - 1} more" if len(left) > 1 else ""
            log.warning("left out %s%s%s", left[0], more, why)
    if others:  # before: a folder's GIFs were passed over without a word (a GIF named on its own is read)
        log.warning(
            "left out %s: a folder is searched for %s; convert any images among them (to PNG) to predict them",
            other_types(others),
            LOOKED_FOR,
        )
    return files


def _glob_once(pattern: str) -> list[str]:
    """``glob.glob(pattern, recursive=True)`` for a pattern with ``**``, reading each folder once.

    Python 3.11's glob follows symbolic links to folders without remembering where it has been: a
    link back up repeated every image below it (41 predictions of one image), and two such links
    never ended (a bug bash). Here the folders are walked as ``_images_under`` walks them (links
    followed, each folder once) and each path is matched against the pattern as glob matches it
    (``**`` any number of folders, ``*`` / ``?`` / ``[...]`` within one name, names starting with a dot
    only by a part that starts with one). Python 3.13's ``glob.translate`` would give the matcher.
    """
    parts = pattern.replace(os.sep, "/").split("/")
    first = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
    base = "/".join(parts[:first]) or ("/" if pattern.startswith("/") else "")
    regex = re.compile(
        "".join(
            ("(?:[^/.][^/]*/)*[^/.][^/]*" if i == len(parts) - 1 else "(?:[^/.][^/]*/)*")
            if part == "**"
            else _name_regex(part) + ("" if i == len(parts) - 1 else "/")
            for i, part in enumerate(parts[first:], start=first)
        )
    )
    found, visited = [], set()
    for top, dirs, names in os.walk(base or ".", followlinks=True):
        if (real := os.path.realpath(top)) in visited:  # a link back up, or one folder linked twice
            dirs.clear()
            continue
        visited.add(real)
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(top, name) if base else os.path.relpath(os.path.join(top, name))
            within = os.path.relpath(os.path.join(top, name), base or ".").replace(os.sep, "/")
            if regex.fullmatch(within):
                found.append(path)
    return found


def _name_regex(part: str) -> str:
    """The regular expression of one part of a glob pattern (``*.png``, ``00[0-2]?``), as glob matches names."""
    out, i = "" if part.startswith(".") else "(?!\\.)", 0  # a leading dot only where the pattern has one
    while i < len(part):
        c = part[i]
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[" and (end := part.find("]", i + 2 if part[i + 1 : i + 2] in ("!", "]") else i + 1)) > i:
            inner = part[i + 1 : end]
            inner = "^" + inner[1:] if inner.startswith("!") else inner
            out += "[" + inner.replace("\\", "\\\\") + "]"
            i = end
        else:
            out += re.escape(c)
        i += 1
    return out


def _once_each(files: list[Path]) -> list[Path]:
    """``files`` less those that are another's file under another path (a symbolic link), said in a warning."""
    kept, seen, again = [], set(), []
    for path in files:
        real = os.path.realpath(path)
        (again if real in seen else kept).append(path)
        seen.add(real)
    if again:  # before: the same image predicted once per path it was found under
        more = f" and {len(again) - 1} more" if len(again) > 1 else ""
        log.warning("left out %s%s: an image already found under another path (a symbolic link)", again[0], more)
    return kept


def samples_from_source(source: str | Path) -> list[Sample]:
    """Images to predict from a file, a folder (searched recursively) or a glob pattern."""
    text = str(source)
    if not text.strip():  # Path("") is the current folder: everything under it would be predicted
        raise OTXDataError("source is empty; pass an image file, a folder or a glob pattern")
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir() and special_file(path):  # before: "does not exist" (/dev/null)
        raise OTXDataError(f"source '{text}' is not an image file or a folder (a device, pipe or socket)")
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(_images_under(path))
        masks = [p for p in files if _is_layout_mask(p)]
        if masks:  # a data root given as the source: its ground-truth masks are not images to predict
            files = [p for p in files if not _is_layout_mask(p)]
            folders = sorted({str(m.parent.parent) for m in masks})
            more = f" and {len(folders) - 1} other ground_truth folder(s)" if len(folders) > 1 else ""
            log.warning(
                "left out %d mask file(s) under %s%s (MVTec layout's ground truth, not images to predict)",
                len(masks),
                folders[0],
                more,
            )
    else:
        pattern = os.path.expanduser(text)
        matched = _glob_once(pattern) if "**" in pattern else glob.glob(pattern)
        files = _once_each(
            sorted(Path(p) for p in matched if Path(p).suffix.lower() in IMAGE_EXTENSIONS and not special_file(p))
        )
        if not files and not any(ch in text for ch in "*?["):
            raise OTXDataError(f"source '{text}' does not exist; pass an image file, a folder or a glob pattern")
        if not files:  # a pattern: say whether it matched nothing at all, and why
            prefix = text.split("*")[0].split("?")[0].split("[")[0]  # the part before the first wildcard
            base = Path(prefix).expanduser() if prefix.endswith(("/", "\\")) else Path(prefix).expanduser().parent
            where = f"; its folder '{base}' does not exist" if str(base) not in ("", ".") and not base.is_dir() else ""
            folders = sum(Path(m).is_dir() for m in matched)
            found = (
                "nothing"
                if not matched
                else f"{len(matched) - folders} file(s), none an image"
                + (f", and {folders} folder(s) (a pattern such as 'DIR/**/*.png' looks inside them)" if folders else "")
            )
            raise OTXDataError(
                f"the pattern '{text}' matches {found}{where} (looked for {LOOKED_FOR}); pass an image file, a "
                "folder or a pattern that matches images"
            )
    if masks := _folder_masks(files):  # anomalib's Folder layout: good/, defect/ and masks/ side by side
        files = [p for p in files if p not in masks]  # (a folder or a pattern such as 'DIR/**/*.png')
        folders = sorted({str(m.parent) for m in masks})
        more = f" and {len(folders) - 1} other mask folder(s)" if len(folders) > 1 else ""
        log.warning(
            "left out %d file(s) in %s%s, named as the images beside that folder (masks, not images to "
            "predict); pass that folder itself as --source to predict on its files",
            len(masks),
            folders[0],
            more,
        )
    if not files:
        raise OTXDataError(f"no images found at '{text}' (looked for {LOOKED_FOR})")
    return [Sample(str(f), -1, "unknown") for f in files]

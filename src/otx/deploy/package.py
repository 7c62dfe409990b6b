"""The demo package: an exported model, a requirements file and a standalone prediction script, zipped."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

from otx import __version__
from otx.workdir import atomic_write_bytes

DEMO_DIR = Path(__file__).parent / "demo"

README = """# otx demo package

An anomaly model exported by otx {version} ({model_file}), with everything needed to run it on a
folder of images where only OpenVINO, NumPy and OpenCV are installed (no torch, no otx).

    python -m venv venv && . venv/bin/activate
    pip install -r requirements.txt
    python predict.py path/to/images --device CPU --output results

TGA files, and the few files OpenCV cannot decode that otx reads through Pillow (a TIFF with more
than four channels), also need Pillow: `pip install pillow`; without it they get `"label": "error"`.

`results.json` holds one record per image: `score` in [0, 1] (0.5 is the model's image threshold,
learned on the validation split or set by hand: `otx_thresholds_given` in `model_info` says which; the
score is not a probability, and it stops at 0 and 1),
`label` (`normal` / `anomalous`) and, for detection models, `boxes`. Segmentation and detection
models also write a mask PNG per image to `results/masks/`, which the record names (`mask`). The model's metadata (task,
thresholds, input size, training data fingerprint) is in the `model_info` section of the .xml.

An image that cannot be read gets `"label": "error"` and the reason in `error`, never a
normal/anomalous label; the other images are still predicted, and the script then exits 1
(`--allow_errors`: 0 when at least one image was predicted). Warnings on stderr say when images
differ from the training images (grayscale against colour, much smaller or larger, shaped unlike
them): their scores are not comparable.

Any otx OpenVINO IR runs with this script (FP32, FP16 or INT8; not an ONNX export): `python predict.py IMAGES --model
path/to/optimized_model.xml` (copy its .bin beside it). Copy the .xml and .bin together, whole.
"""


def requirements() -> str:
    """Pinned requirements of the demo script.

    The OpenVINO that exported the model; NumPy and OpenCV within the major versions otx ran with
    (a new major release may change what the script relies on).
    """
    import cv2
    import numpy
    import openvino

    ov_version = openvino.__version__.split("-")[0]
    numpy_major = int(numpy.__version__.split(".")[0])
    cv2_major = int(cv2.__version__.split(".")[0])
    return (
        f"openvino=={ov_version}\n"
        f"numpy>={numpy_major}.0,<{numpy_major + 1}\n"
        f"opencv-python-headless>={cv2_major}.0,<{cv2_major + 1}\n"
    )


def _text_entry(name: str) -> zipfile.ZipInfo:
    """A zip entry written from a string, readable by all like the files beside it (``writestr`` gives 0600)."""
    entry = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
    entry.compress_type = zipfile.ZIP_DEFLATED
    entry.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
    return entry


def write_demo_package(model_path: Path, zip_path: Path) -> Path:
    """Zip ``model/<name>.xml/.bin``, ``predict.py``, ``requirements.txt`` and a README into ``zip_path``."""
    if model_path.suffix.lower() != ".xml":
        raise ValueError("the demo package needs an OpenVINO IR (.xml)")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(model_path, f"model/{model_path.name}")
        archive.write(model_path.with_suffix(".bin"), f"model/{model_path.with_suffix('.bin').name}")
        archive.write(DEMO_DIR / "predict.py", "predict.py")
        archive.writestr(_text_entry("requirements.txt"), requirements())
        archive.writestr(_text_entry("README.md"), README.format(version=__version__, model_file=model_path.name))
    atomic_write_bytes(zip_path, buffer.getvalue())
    return zip_path

"""Run inside a virtual environment that has only openvino-model-api and its dependencies (no otx, no torch).

Usage: python model_api_check.py MODEL.xml IMAGE_DIR OUT.json

Predicts every image under IMAGE_DIR with ``Model.create_model`` twice: with the device's default
inference precision (what a plain ``Model.create_model(xml)`` does) and with f32 requested through
model_api's ``OpenvinoAdapter``; writes score and label per image and per mode to OUT.json.
"""

import json
import sys
from pathlib import Path

import cv2
import openvino as ov
from model_api.adapters import OpenvinoAdapter
from model_api.models import Model

assert "torch" not in sys.modules and "otx" not in sys.modules


def main() -> None:
    """Predict the images in both modes and write the results."""
    xml, image_dir, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    models = {
        "default": Model.create_model(xml, device="CPU"),
        "f32": Model.create_model(
            OpenvinoAdapter(ov.Core(), xml, device="CPU", plugin_config={"INFERENCE_PRECISION_HINT": "f32"})
        ),
    }
    records = {}
    for mode, model in models.items():
        rows = []
        for path in sorted(image_dir.rglob("*.png")):
            image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)  # model_api takes RGB for this wrapper
            result = model(image)
            rows.append({"image": str(path), "score": float(result.pred_score), "label": str(result.pred_label)})
        records[mode] = {"wrapper": type(model).__name__, "predictions": rows}
    out.write_text(json.dumps(records))


if __name__ == "__main__":
    main()

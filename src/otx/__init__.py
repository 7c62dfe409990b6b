"""otx: OpenVINO-centric training toolkit for visual anomaly detection."""

import os
import sys

__version__ = "0.1.0"

# Offline (OTX_OFFLINE=1 or HF_HUB_OFFLINE=1), OpenVINO's and NNCF's usage telemetry stays off: their
# export and quantisation calls otherwise fork a process that tries to reach an analytics server. Both
# fall back to their own no-op stand-in when the package cannot be imported (None in sys.modules makes
# its import fail); a process that imported it before otx keeps it.
if any(os.environ.get(name, "").lower() in ("1", "true", "yes") for name in ("OTX_OFFLINE", "HF_HUB_OFFLINE")):
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]

"""otx: OpenVINO-centric training toolkit for visual anomaly detection."""

__version__ = "0.1.0"

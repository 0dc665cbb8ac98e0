"""dskd: Decoder-based Sense Knowledge Distillation, the pure library (no prefect, ray or mlflow here)."""

__version__ = "0.1.0"

"""Process environment for Prefect, Ray and MLflow, set before any of them is imported."""

from __future__ import annotations

import os
from pathlib import Path


def configure_environment(home: Path) -> None:
    """Local, offline, quiet defaults under DSKD_HOME; anything the user already exported wins."""
    home.mkdir(parents=True, exist_ok=True)
    defaults = {
        "DSKD_HOME": str(home),
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        # The 20 s default is too tight for the ephemeral server on a busy 2-core machine.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TQDM_MININTERVAL": "2",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)

"""Process environment for Prefect, Ray and MLflow, set before any of them is imported."""

from __future__ import annotations

import os
from pathlib import Path


def configure_environment(home: Path, ray_address: str | None = None) -> None:
    """Local, offline, quiet defaults under DSKD_HOME; anything the user already exported wins."""
    home.mkdir(parents=True, exist_ok=True)
    if not (ray_address or os.environ.get("RAY_ADDRESS")):
        # Ray rewrites a 127.0.0.1 node address to the machine's routable IP unless multi-host clustering is
        # off; a local Ray (and a test cluster built with ray.cluster_utils) must stay on loopback.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
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

"""Operational names and ports shared by the code, prefect.yaml, docker/ and infra/ (tests keep them in sync)."""

from __future__ import annotations

FLOW_ENTRYPOINT = "flows/dskd_pipeline.py:dskd_pipeline"
DEPLOYMENT_PIPELINE = "dskd-pipeline"
DEPLOYMENT_RETRAIN = "dskd-retrain-weekly"
RETRAIN_CRON = "0 3 * * 1"  # Mondays 03:00 UTC
WORK_POOL_PROCESS = "dskd-process"
WORK_POOL_K8S = "dskd-k8s"

IMAGE_CPU = "dskd-pipeline:cpu"
IMAGE_CUDA = "dskd-pipeline:cuda"

PREFECT_PORT = 4200
MLFLOW_PORT = 5000
RAY_GCS_PORT = 6379
RAY_CLIENT_PORT = 10001
RAY_DASHBOARD_PORT = 8265
MINIO_PORT = 9000
POSTGRES_PORT = 5432

# Environment variables the code reads (and the containers must set).
ENV_HOME = "DSKD_HOME"
ENV_TRACKING = "MLFLOW_TRACKING_URI"
ENV_RAY = "RAY_ADDRESS"
ENV_PREFECT_API = "PREFECT_API_URL"

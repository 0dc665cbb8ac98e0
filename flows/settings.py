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

# Container and cluster layout shared by docker/ and infra/ (tests/test_infra.py keeps them in sync).
CONTAINER_HOME = "/data/dskd"  # DSKD_HOME in every image, service and pod: one shared volume at one path
CONTAINER_UID = 1000  # the runner image's user = the `ray` user of rayproject/ray: both write the shared volume
PYTHON_VERSION = "3.11"  # both images: a Ray client and its cluster need the same Python minor
RAY_VERSION = "2.60.0"  # pinned in both images and the RayCluster: Ray refuses nodes/clients of another version
K8S_NAMESPACE = "dskd"
RAY_CLUSTER_NAME = "dskd"  # KubeRay RayCluster; its head Service is f"{RAY_CLUSTER_NAME}-head-svc"
MLFLOW_ARTIFACTS_BUCKET = "mlflow"  # MLflow server --artifacts-destination s3://<bucket> (a MinIO bucket in compose)
MINIO_CONSOLE_PORT = 9001

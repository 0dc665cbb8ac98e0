"""Prefect deployments for real: a server on 127.0.0.1, a process work pool, `prefect deploy --all` from
prefect.yaml, a triggered deployment run and a schedule-created run, each executed by a real worker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows import settings
from tests.servers import prefect_server

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parent.parent


def test_prefect_yaml_matches_settings():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {settings.DEPLOYMENT_PIPELINE, settings.DEPLOYMENT_RETRAIN}
    for dep in deployments.values():
        assert dep["entrypoint"] == settings.FLOW_ENTRYPOINT
        assert dep["work_pool"]["name"] == settings.WORK_POOL_PROCESS
        assert set(dep["parameters"]) == {"config_path", "overrides"}
    assert deployments[settings.DEPLOYMENT_RETRAIN]["schedules"][0]["cron"] == settings.RETRAIN_CRON
    assert "schedules" not in deployments[settings.DEPLOYMENT_PIPELINE]


def _cli(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


async def _flow_runs(api: str, deployment: str):
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    # An explicit client: earlier tests in this process may have started Prefect's ephemeral server.
    async with PrefectClient(api) as client:
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment]))
        )


async def _make_due(api: str, run_id) -> None:
    """Move a schedule-created run's start time to now, as the clock would on Monday 03:00."""
    from prefect.client.orchestration import PrefectClient
    from prefect.states import Scheduled

    async with PrefectClient(api) as client:
        await client.set_flow_run_state(run_id, Scheduled(), force=True)


def test_deployment_run_and_scheduled_run(tmp_path, tiny_teacher_dir):
    home = tmp_path / "dskd"
    env = dict(os.environ)
    # The deployments run configs/default.yaml; the worker's environment shrinks it (DSKD_* env overrides).
    env.update(
        DSKD_HOME=str(home),
        DSKD_TEACHER__PATH=str(tiny_teacher_dir),
        DSKD_CORPUS__N_TRAIN_SEQS="8",
        DSKD_CORPUS__N_HELDOUT_SEQS="2",
        DSKD_CORPUS__SEQ_LEN="32",
        DSKD_CORPUS__SHARD_SEQS="8",
        DSKD_TRAIN__BATCH_SIZE="2",
        DSKD_TRAIN__EPOCHS="1",
        DSKD_EVAL__TASKS="[]",
        DSKD_EVAL__PROBE_ITEMS="0",
        DSKD_STUDENT__N_LAYERS="2",
        DSKD_STUDENT__N_TRAINABLE_LAYERS="1",
        PREFECT_HOME=str(tmp_path / "prefect-client"),
    )
    with prefect_server(tmp_path, env) as api:
        env["PREFECT_API_URL"] = api  # for the CLI subprocesses only; this process keeps its own settings
        _cli([sys.executable, "-m", "flows.cli", "deploy"], env)
        name = f"{settings.DEPLOYMENT_PIPELINE}/{settings.DEPLOYMENT_PIPELINE}"
        _cli([sys.executable, "-m", "prefect", "deployment", "run", name], env)
        _cli([sys.executable, "-m", "flows.cli", "worker", "--run-once"], env, timeout=600)
        runs = asyncio.run(_flow_runs(api, settings.DEPLOYMENT_PIPELINE))
        assert [r.state.type.value for r in runs] == ["COMPLETED"], [r.state for r in runs]

        registrations = sorted(home.glob("artifacts/register/*/registration.json"))
        assert len(registrations) == 1
        assert json.loads(registrations[0].read_text())["version"] == 1

        # The scheduler has created the weekly retrain runs; make the first one due and let the worker run it.
        scheduled = []
        for _ in range(60):  # the scheduler service loops every 2 s; allow for a busy machine
            scheduled = asyncio.run(_flow_runs(api, settings.DEPLOYMENT_RETRAIN))
            if scheduled:
                break
            time.sleep(2)
        assert scheduled and all(r.auto_scheduled for r in scheduled)
        first = min(scheduled, key=lambda r: r.expected_start_time)
        asyncio.run(_make_due(api, first.id))
        _cli([sys.executable, "-m", "flows.cli", "worker", "--run-once"], env, timeout=600)
        done = [r for r in asyncio.run(_flow_runs(api, settings.DEPLOYMENT_RETRAIN)) if r.id == first.id]
        assert done[0].state.type.value == "COMPLETED", done[0].state
        # Unchanged inputs: every stage a cache hit, no new model version.
        assert len(sorted(home.glob("artifacts/register/*/registration.json"))) == 1

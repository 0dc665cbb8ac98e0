"""User errors raised inside a Prefect task or a Ray Train worker reach the terminal as one line, exit 2, with the
traceback in a log file; internal errors keep their traceback."""

from __future__ import annotations

import pytest
import typer

from flows.errors import user_error


def _bad_input_flow(kind: str):
    from prefect import flow, task

    @task
    def stage() -> None:
        if kind == "user":
            raise ValueError("corpus 'x' gives 3 train sequences, fewer than asked; add text\nsecond line")
        raise RuntimeError("internal bug")

    @flow(name="errors-test")
    def pipeline() -> None:
        stage()

    return pipeline


def test_prefect_task_user_error_is_one_line_exit_2(tmp_path, capsys):
    from flows.cli import _run_flow

    with pytest.raises(typer.Exit) as exit_info:
        _run_flow(tmp_path, _bad_input_flow("user"))
    assert exit_info.value.exit_code == 2
    out = capsys.readouterr().out.strip()
    assert out.startswith("error: corpus 'x' gives 3 train sequences") and "second line" not in out
    log = tmp_path / "logs" / "last-error.log"
    assert str(log) in out.replace("\n", "") and "Traceback" in log.read_text()


def test_prefect_task_internal_error_keeps_its_traceback(tmp_path):
    from flows.cli import _run_flow

    with pytest.raises(RuntimeError, match="internal bug"):
        _run_flow(tmp_path, _bad_input_flow("internal"))


def _raise_in_worker(config) -> None:
    raise ValueError("student width 32 != teacher width 64: set student.project_to_teacher=true")


def test_ray_worker_user_error_is_found_inside_the_train_wrappers(tmp_path):
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from tasks.ray_train import init_ray

    started = init_ray(None, 2, tmp_path / "ray")
    try:
        trainer = TorchTrainer(
            _raise_in_worker,
            scaling_config=ScalingConfig(num_workers=1),
            run_config=RunConfig(name="err", storage_path=str(tmp_path), failure_config=FailureConfig(max_failures=0)),
        )
        with pytest.raises(Exception) as raised:  # noqa: B017 - Ray's wrapper type is what is under test
            result = trainer.fit()
            if result.error:
                raise result.error
    finally:
        if started:
            ray.shutdown()
    assert "Traceback" in str(raised.value)  # the wrapper's message is a traceback pile
    found = user_error(raised.value)
    assert (
        found is not None and str(found) == "student width 32 != teacher width 64: set student.project_to_teacher=true"
    )

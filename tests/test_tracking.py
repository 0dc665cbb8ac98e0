"""Stage names become MLflow tag names: every arm name `dskd compare` accepts must be a valid tag."""

from tasks.tracking import client_for, ensure_experiment, tag_label


def test_every_compare_stage_name_is_a_valid_mlflow_tag(tmp_path):
    assert tag_label("train:kd:0") == "train.kd.0"
    assert tag_label("train:dskd@0.5:1") == "train.dskd_lam0.5.1"
    client = client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(ensure_experiment(client, "t", tmp_path))
    for stage in ("train:dskd@0.1:0", "evaluate:dskd@1e-3:2", "teacher_cache"):
        client.set_tag(run.info.run_id, f"dskd.{tag_label(stage)}.key", "k")  # "@" raised MlflowException before
    assert client.get_run(run.info.run_id).data.tags["dskd.train.dskd_lam0.1.0.key"] == "k"

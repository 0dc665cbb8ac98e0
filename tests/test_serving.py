"""A registered student is a real MLflow transformers model: it loads as a pipeline, as pyfunc, as a plain HF dir,
and `mlflow models serve` answers /invocations with generated text (MLflow on SQLite, the tiny random Llama with
the real SmolLM2 tokenizer as the student)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tasks.registry import register_version
from tasks.student_model import log_student, pickled_files, using_tracking_uri
from tasks.tracking import client_for, ensure_experiment
from tests.servers import free_port, stop, wait_http

CARD = "---\nlicense: apache-2.0\n---\n\n# tiny student\n"
MODEL = "tiny-student"


@pytest.fixture(scope="module")
def registered(tiny_teacher_dir, tmp_path_factory):
    """The tiny model logged with the teacher dir as tokenizer source and registered as version 1 (champion)."""
    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = client_for(uri)
    run_id = client.create_run(ensure_experiment(client, "serving", root)).info.run_id
    with using_tracking_uri(uri):
        model_id = log_student(
            client, run_id, tiny_teacher_dir, tiny_teacher_dir, CARD, "licence text\n", {"dskd.train_key": "abc"}
        )
        tags, source = {"heldout_perplexity": 9.0}, f"models:/{model_id}"
        info = register_version(client, MODEL, source, run_id, tags, "heldout_perplexity", 9.0, 0.0, model_id=model_id)
    assert info["promoted"] and info["version"] == 1
    return uri, root, client


def test_tracking_uri_switch_restores_the_exported_variable(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///exported.db")
    with using_tracking_uri("sqlite:///other.db"):
        assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///other.db"
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///exported.db"


def test_pipeline_and_pyfunc_loads_generate(registered):
    import mlflow

    uri, _, _ = registered
    with using_tracking_uri(uri):
        pipe = mlflow.transformers.load_model(f"models:/{MODEL}@champion")
        pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    assert pipe.task == "text-generation"
    assert pipe.tokenizer.chat_template  # the teacher's chat template travelled with the tokenizer
    out = pipe("Hello", max_new_tokens=4, do_sample=False)
    assert out[0]["generated_text"].startswith("Hello") and len(out[0]["generated_text"]) > len("Hello")
    predictions = pyfunc.predict(["Hello", "The sky is"], params={"max_new_tokens": 4})
    assert len(predictions) == 2 and all(isinstance(p, str) and p for p in predictions)
    assert [p.name for p in pyfunc.metadata.get_params_schema().params] == ["max_new_tokens", "do_sample"]


def test_downloaded_artifact_is_a_plain_hf_dir_with_a_card_and_no_pickle(registered, tmp_path):
    import mlflow
    import torch
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    uri, _, _ = registered
    with using_tracking_uri(uri):
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion", dst_path=str(tmp_path)))
    assert (local / "README.md").read_text() == CARD == (local / "model" / "README.md").read_text()
    assert (local / "LICENSE.txt").read_text() == "licence text\n"
    assert pickled_files(local) == []
    assert (local / "model" / "model.safetensors").is_file()
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert mlmodel["flavors"]["transformers"]["task"] == "text-generation"
    assert mlmodel["metadata"] == {"dskd.train_key": "abc"}
    requirements = (local / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in requirements} >= {"mlflow", "transformers", "torch"}
    model = AutoModelForCausalLM.from_pretrained(local / "model")
    tokenizer = AutoTokenizer.from_pretrained(local / "model")
    ids = tokenizer("Hello", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 3) and torch.equal(out[:, : ids.shape[1]], ids)


def test_mlflow_models_serve_answers_invocations(registered):
    uri, root, _ = registered
    port = free_port()
    # The scoring server execs `uvicorn` by name: put this interpreter's bin dir first on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": path}
    log = open(root / "serve.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL}@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", timeout=180, alive=lambda: proc.poll() is None)
        body = json.dumps({"inputs": ["Hello"], "params": {"max_new_tokens": 4}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as resp:
            answer = json.loads(resp.read())
    finally:
        stop(proc)
        log.close()
    predictions = answer["predictions"]
    assert len(predictions) == 1 and isinstance(predictions[0], str) and predictions[0], answer

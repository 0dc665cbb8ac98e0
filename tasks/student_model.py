"""Log a trained student as an MLflow ``transformers`` model: weights (safetensors) + the teacher's tokenizer, chat
template and generation config, task ``text-generation``, a signature, pinned pip requirements and the model card.

Loads as a pipeline (``mlflow.transformers.load_model``), as pyfunc (``mlflow.pyfunc.load_model(...).predict``,
``mlflow models serve``), and its ``model/`` folder as a plain HF dir (``AutoModelForCausalLM.from_pretrained``).
Nothing is pickled: the transformers flavour saves with ``save_pretrained`` (safetensors) and YAML/JSON metadata.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

ARTIFACT = "model"  # the logged model's name
# What loading and serving the artifact needs (pinned to what logged it; torch without its local build tag so a
# CUDA machine installs its own wheel).
REQUIREMENTS = ["mlflow", "transformers", "torch", "tokenizers", "safetensors", "jinja2"]
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string")]),
    outputs=Schema([ColSpec("string")]),
    params=ParamSchema([ParamSpec("max_new_tokens", "long", 64), ParamSpec("do_sample", "boolean", False)]),
)
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt")


def pip_requirements() -> list[str]:
    """``name==version`` for every package the served model imports."""
    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            out.append(name)
    return out


@contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking URI set to ``uri`` for a block.

    ``Model.log`` and the SQL registry's check of a ``models:/<model_id>`` source read the global URI, not our
    explicit client's; stages run one at a time in the flow's thread, so a scoped switch is safe. MLflow's helper
    unsets MLFLOW_TRACKING_URI on exit: restore whatever the user exported.
    """
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    exported = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if exported is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = exported


def build_pipeline(student_dir: Path, tokenizer_dir: Path, trust_remote_code: bool = False):
    """A text-generation pipeline over the student with the teacher's tokenizer (chat template included) and the
    teacher's generation config (eos / pad ids of its chat format)."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        student_dir, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=trust_remote_code)
    if (tokenizer_dir / "generation_config.json").is_file():
        model.generation_config = transformers.GenerationConfig.from_pretrained(tokenizer_dir)
    return transformers.pipeline("text-generation", model=model, tokenizer=tokenizer)


def log_student(
    client: MlflowClient,
    run_id: str,
    student_dir: Path,
    tokenizer_dir: Path,
    card: str,
    license_text: str,
    metadata: dict[str, Any],
    trust_remote_code: bool = False,
) -> str:
    """Log the student under ``run_id`` as a transformers model (call inside :func:`using_tracking_uri`); returns
    its logged-model id. The card lands as README.md at the artifact root and in ``model/``, the tokenizer also in
    ``model/`` so that folder alone is a complete HF dir."""
    from huggingface_hub import ModelCard

    experiment_id = client.get_run(run_id).info.experiment_id
    # Created here so it lands in the stage run's experiment (Model.log would pick the global default one).
    logged = client.create_logged_model(experiment_id, name=ARTIFACT, source_run_id=run_id)
    pipe = build_pipeline(student_dir, tokenizer_dir, trust_remote_code)
    mlflow.transformers.log_model(
        pipe,
        name=ARTIFACT,
        task="text-generation",
        signature=SIGNATURE,
        pip_requirements=pip_requirements(),
        model_config={"return_full_text": False},  # serve the completion, not the prompt echoed back
        model_card=ModelCard(card),
        metadata=metadata,
        save_pretrained=True,
        run_id=run_id,
        model_id=logged.model_id,
    )
    with tempfile.TemporaryDirectory() as extra:
        root = Path(extra)
        (root / "README.md").write_text(card)
        (root / "LICENSE.txt").write_text(license_text)  # replaces MLflow's Hub-lookup fallback text
        client.log_model_artifacts(logged.model_id, str(root))
        hf = root / "hf"
        hf.mkdir()
        pipe.tokenizer.save_pretrained(hf)
        (hf / "README.md").write_text(card)
        client.log_model_artifacts(logged.model_id, str(hf), artifact_path="model")
    return logged.model_id


def pickled_files(root: Path) -> list[Path]:
    """Files under ``root`` in a pickle-based format (none should be in a logged student)."""
    return [p for p in root.rglob("*") if p.is_file() and p.name.endswith(PICKLE_SUFFIXES)]

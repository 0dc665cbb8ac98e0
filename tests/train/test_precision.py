"""bf16 where the device has bf16 units: the CPU probe, its override, and what "auto"/"native" resolve to."""

from __future__ import annotations

import pytest
import torch

from dskd.eval.harness import load_hf_model
from dskd.teacher.model import cpu_runs_bf16_natively, resolve_compute_dtype
from dskd.train.loop import autocast_dtype
from tests.train.test_loop import _one_step, make_batch


def _probes(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.delenv("DSKD_CPU_BF16", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "native"), [(False, False, False), (True, False, True), (False, True, True)]
)
def test_the_cpu_probe_reads_avx512_bf16_or_amx(monkeypatch, avx512_bf16, amx, native):
    _probes(monkeypatch, avx512_bf16, amx)
    assert cpu_runs_bf16_natively() is native


def test_the_environment_overrides_the_probe(monkeypatch):
    _probes(monkeypatch, avx512_bf16=True, amx=True)
    monkeypatch.setenv("DSKD_CPU_BF16", "0")
    assert not cpu_runs_bf16_natively()
    _probes(monkeypatch, avx512_bf16=False, amx=False)
    monkeypatch.setenv("DSKD_CPU_BF16", "1")
    assert cpu_runs_bf16_natively()


@pytest.mark.parametrize("native", [False, True])
def test_auto_follows_the_cpu_and_explicit_settings_win(monkeypatch, native):
    monkeypatch.setenv("DSKD_CPU_BF16", "1" if native else "0")
    assert autocast_dtype("auto", "cpu") == (torch.bfloat16 if native else None)
    assert resolve_compute_dtype("auto", "cpu") == ("bfloat16" if native else "float32")
    assert autocast_dtype("fp32", "cpu") is None
    assert autocast_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_compute_dtype("float32", "cpu") == "float32"


@pytest.mark.parametrize(("native", "dtype"), [(False, torch.float32), (True, torch.bfloat16)])
def test_native_eval_dtype_loads_bf16_only_where_the_cpu_has_units(monkeypatch, tiny_teacher_dir, native, dtype):
    monkeypatch.setenv("DSKD_CPU_BF16", "1" if native else "0")
    assert load_hf_model(tiny_teacher_dir, "native").dtype == dtype
    assert load_hf_model(tiny_teacher_dir, "float32").dtype == torch.float32


def test_a_bf16_autocast_step_runs_in_bf16_and_tracks_fp32(tiny_teacher_dir):
    batch, _ = make_batch(49152, 64, 4)
    fp32_model, fp32 = _one_step(tiny_teacher_dir, [batch], precision="fp32")
    bf16_model, bf16 = _one_step(tiny_teacher_dir, [batch], precision="bf16")
    # bf16 matmuls round differently (the losses differ) but train the same thing: within ~1 % of fp32.
    assert bf16["loss_total"] != fp32["loss_total"]
    assert bf16["loss_total"] == pytest.approx(fp32["loss_total"], rel=1e-2)
    assert bf16["grad_norm"] == pytest.approx(fp32["grad_norm"], rel=5e-2)
    # The weights stay fp32 (autocast casts per op), so checkpoints are unchanged by the precision.
    assert all(p.dtype == torch.float32 for p in bf16_model.parameters())
    assert (fp32["bf16_autocast"], bf16["bf16_autocast"]) == (0.0, 1.0)  # logged, and kept in the train manifest

"""dskd.host_memory: glibc keeps freed blocks in the heap, so a repeated large allocation stops page-faulting."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

PROBE = """
import resource
import torch
from dskd.host_memory import keep_freed_memory
applied = keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
hidden, head = torch.randn(512, 576), torch.randn(576, 49152)
def step():  # a training step's shape of work: [512, 49152] logits, their softmax and a gradient, freed after
    logits = hidden @ head
    probs = torch.softmax(logits, -1)
    return float((probs - 1).sum())
for _ in range(10):  # warm-up: the heap grows to the step's peak
    step()
before = faults()
for _ in range(4):
    step()
print(int(applied), faults() - before)
"""


def _probe(keep: str) -> tuple[int, int]:
    env = {"DSKD_MALLOC_KEEP": keep, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout
    applied, faults = out.split()
    return int(applied), int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    kept_applied, kept_faults = _probe("1")
    off_applied, off_faults = _probe("0")
    assert (kept_applied, off_applied) == (1, 0)
    # Three ~96 MiB blocks per step: glibc's default unmaps each on free and faults it in again (~73k pages).
    assert off_faults > 4 * 50_000
    assert kept_faults < off_faults / 4  # 0 once the heap has settled at the step's peak

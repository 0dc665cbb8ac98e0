"""Arm names and paired per-seed differences, by hand."""

from __future__ import annotations

import pytest

from dskd.eval.arms import differences_table, paired_differences, parse_arm


def test_parse_arm():
    assert parse_arm("kd") == {"loss": "kd"}
    assert parse_arm("dskd@0.5") == {"loss": "dskd", "lam": 0.5}
    with pytest.raises(ValueError, match="one of ce, kd, dskd"):
        parse_arm("mse")
    with pytest.raises(ValueError, match="only dskd"):
        parse_arm("kd@0.5")
    with pytest.raises(ValueError, match="not a number"):
        parse_arm("dskd@x")


def test_paired_differences_by_hand():
    runs = [
        {"arm": "kd", "seed": 0, "metrics": {"ppl": 100.0, "acc": 0.30}},
        {"arm": "kd", "seed": 1, "metrics": {"ppl": 110.0, "acc": 0.31}},
        {"arm": "dskd", "seed": 0, "metrics": {"ppl": 98.0, "acc": 0.32}},
        {"arm": "dskd", "seed": 1, "metrics": {"ppl": 106.0, "acc": 0.31}},
        {"arm": "dskd", "seed": 2, "metrics": {"ppl": 1.0, "acc": 0.0}},  # no kd partner: left out
    ]
    d = paired_differences(runs, "dskd", "kd")
    assert d["ppl"]["per_seed"] == [-2.0, -4.0]
    assert d["ppl"]["mean"] == pytest.approx(-3.0) and d["ppl"]["std"] == pytest.approx(2**0.5)
    assert d["acc"]["mean"] == pytest.approx(0.01) and d["acc"]["n"] == 2
    table = differences_table(d, "dskd", "kd")
    # ppl: |−3| vs 2·SE = 2·1.414/1.414 = 2 -> beyond; acc: 0.01 vs 2·0.01414/1.414 = 0.02 -> not beyond.
    assert "| ppl | -3 ± 1.414 | -2, -4 | yes |" in table
    assert "| acc | +0.01 ± 0.01414 | +0.02, +0 | no |" in table

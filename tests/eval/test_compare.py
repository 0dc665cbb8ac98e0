"""`dskd compare` on a tiny config: every arm trained on the same cached stages, a mean ± std report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dskd.eval.comparison import markdown_table, mean_std, summarise

pytestmark = pytest.mark.e2e


def test_mean_std_by_hand():
    # mean(1, 2, 6) = 3; sample variance = ((1-3)^2 + (2-3)^2 + (6-3)^2) / 2 = 14 / 2 = 7
    mean, std = mean_std([1.0, 2.0, 6.0])
    assert mean == 3.0 and std == pytest.approx(7**0.5)
    assert mean_std([4.0]) == (4.0, 0.0)


def test_table_shows_stderr_and_says_when_a_difference_is_inside_it():
    def run(arm, seed, acc, se):
        metrics = {"heldout_perplexity": 10.0, "mc.piqa.acc": acc, "mc.piqa.acc_stderr": se}
        return {"arm": arm, "seed": seed, "metrics": metrics, "step_seconds": 1.0}

    runs = [run("kd", 0, 0.50, 0.03), run("kd", 1, 0.52, 0.05), run("dskd", 0, 0.60, 0.04), run("dskd", 1, 0.62, 0.04)]
    summary = summarise(runs)
    assert summary["kd"]["mc.piqa.acc_stderr"] == pytest.approx((0.04, 0.02**0.5 / 10))
    table = markdown_table(summary, {"teacher": {"mc.piqa.acc": 0.7, "mc.piqa.acc_stderr": 0.02}})
    assert "| teacher | — | 0.700 (se 0.020) |" in table
    assert "0.510 ± 0.014 (se 0.040)" in table  # kd: mean ± std over seeds, mean harness stderr
    # dskd − kd = 0.61 − 0.51 = +0.100; combined se = sqrt(0.04² + 0.04²) = 0.0566 -> outside, 1.8 se
    assert "| dskd − kd | mc.piqa.acc | +0.100 | 0.057 | outside the stderr (1.8 se) |" in table
    runs[2]["metrics"]["mc.piqa.acc"] = runs[3]["metrics"]["mc.piqa.acc"] = 0.55  # +0.04 < 0.057
    assert "| dskd − kd | mc.piqa.acc | +0.040 | 0.057 | inside the stderr |" in markdown_table(summarise(runs), {})


def test_compare_flow(tiny_teacher_dir, tmp_path):
    from flows.compare import dskd_compare

    overrides = [
        f"home={tmp_path}",
        f"teacher.path={tiny_teacher_dir}",
        "corpus.n_train_seqs=8",
        "corpus.n_heldout_seqs=2",
        "corpus.seq_len=32",
        "train.epochs=1",
        "train.batch_size=4",
        "train.num_workers=1",
        "student.n_layers=2",
        "student.n_trainable_layers=1",
        "eval.tasks=[arc_easy]",
        "eval.limit=3",
        "eval.probe_items=0",
    ]
    # Two arms x two seeds keep the test short; the CLI default is ce, kd, dskd x seeds 0, 1, 2.
    summary = dskd_compare(None, overrides, ["kd", "dskd@0.5"], [0, 1])  # a λ arm: "@" must not reach MLflow names
    shared = [r for r in summary["stages"] if r["stage"] in {"teacher", "teacher_cache", "sense_index"}]
    assert len(shared) == 3  # each shared stage ran once for all four students
    trains = [r for r in summary["stages"] if r["stage"] == "train"]
    assert len(trains) == 4 and len({r["key"] for r in trains}) == 4
    report = Path(summary["report"])
    data = json.loads((report / "comparison.json").read_text())
    assert sorted(data["summary"]) == ["dskd@0.5", "kd"]
    assert [(r["arm"], r["seed"]) for r in data["runs"]] == [(a, s) for a in ("kd", "dskd@0.5") for s in (0, 1)]
    table = (report / "comparison.md").read_text()
    assert "| dskd@0.5 |" in table and "±" in table and "dskd@0.5 step time / kd step time" in table
    # the paired dskd - kd difference per seed, for every metric, equals the runs' own difference
    by = {(r["arm"], r["seed"]): r["metrics"] for r in data["runs"]}
    ppl = data["paired_vs_kd"]["dskd@0.5"]["heldout_perplexity"]
    expected = [by[("dskd@0.5", s)]["heldout_perplexity"] - by[("kd", s)]["heldout_perplexity"] for s in (0, 1)]
    assert ppl["per_seed"] == pytest.approx(expected) and ppl["n"] == 2
    assert "mc.arc_easy.acc" in data["paired_vs_kd"]["dskd@0.5"] and "step_seconds" in data["paired_vs_kd"]["dskd@0.5"]
    assert "Paired per-seed differences, dskd@0.5 − kd" in table
    assert (report / "metric_bars.png").stat().st_size > 0 and (report / "loss_curves.png").stat().st_size > 0

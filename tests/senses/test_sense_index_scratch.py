"""The hidden states are transient: the teacher-cache stage puts them in the scratch area, not its artifact; the
sense-index stage reads them, deletes them once its artifact is complete, and regenerates them by a teacher
forward pass (same candidates) when they are gone. An older cache format is refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dskd.config import PipelineConfig
from dskd.data.annotate import TRAIN_SCHEMA, write_shards
from dskd.lexicon.token_map import write_lexicon
from dskd.lexicon.types import SYNONYM, TokenLexicon
from dskd.store.artifacts import read_manifest, sha256_file, write_artifact
from dskd.store.scratch import scratch_dir
from dskd.teacher.model import final_hidden_and_logits, load_causal_lm
from tests.annotated import random_annotated_rows

L, FULL, POSONLY = 16, [2, 6], [6, 10]
TRACKING = {"experiment": "scratch", "tracking_uri": None}


def _predictable_rows(model_dir) -> list[dict]:
    """Random sequences whose next token at every sense position is the one the teacher predicts there, so those
    tokens have senses in the dictionary (the prediction at p depends on tokens <= p only)."""
    model = load_causal_lm(model_dir)
    rows = random_annotated_rows(6, L, FULL, POSONLY, seed=3)
    with torch.no_grad():
        for row in rows:
            for p in sorted(set(FULL) | set(POSONLY)):
                ids = torch.tensor(row["input_ids"][None].astype(np.int64))
                row["input_ids"][p + 1] = int(final_hidden_and_logits(model, ids)[1][0, p].argmax())
    return rows


def _upstream_home(home, model_dir, rows) -> dict[str, str]:
    with write_artifact(home, "teacher", "t0", {}, {}) as (tmp, _):
        (tmp / "teacher.json").write_text(json.dumps({"model_dir": str(model_dir)}))
    with write_artifact(home, "annotate", "a0", {}, {}) as (tmp, extra):
        write_shards(rows, TRAIN_SCHEMA, tmp / "train", "train", 3)  # 2 shards
        extra["metrics"] = {"train_tokens": len(rows) * L}
    predicted = sorted({int(r["input_ids"][p + 1]) for r in rows for p in FULL})
    heads, tails = predicted[:-1], predicted[1:]
    lex = TokenLexicon(49152, np.array(heads), np.array(tails), np.full(len(heads), SYNONYM, np.int8), [])
    with write_artifact(home, "lexicon", "l0", {}, {}) as (tmp, _):
        write_lexicon(lex, tmp)
    return {"teacher": "t0", "annotate": "a0", "lexicon": "l0"}


def _sections():
    cfg = PipelineConfig.model_validate(
        {
            "cache": {
                "topk": 4,
                "batch_size": 2,
                "reservoir_per_token": 3,
                "device": "cpu",
                "compute_dtype": "float32",
            },
            "senses": {"k": 2, "niter": 2, "kappa": 2, "max_related": 3, "use_gpu": "never"},
        }
    )
    return cfg.cache.key_dump(), cfg.senses.model_dump()


def _candidates(index_dir) -> list[list]:
    return [pq.read_table(p).to_pylist() for p in sorted((index_dir / "candidates").glob("*.parquet"))]


@pytest.fixture(scope="module")
def staged(tiny_teacher_dir, tmp_path_factory):
    from tasks.build_sense_index import build_sense_index
    from tasks.cache_teacher_outputs import cache_teacher_outputs

    rows = _predictable_rows(tiny_teacher_dir)
    home, home_default = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("home_default")
    cache_section, senses_section = _sections()
    up = _upstream_home(home, tiny_teacher_dir, rows)
    _upstream_home(home_default, tiny_teacher_dir, rows)
    cache_up = {"teacher": up["teacher"], "annotate": up["annotate"]}
    # ~1 KiB of reservoir vectors: every batch spills; the default budget never does.
    tiny = {"reservoir_memory_gb": 1e-6}
    cache = cache_teacher_outputs.fn(cache_section, cache_up, str(home), TRACKING, None, tiny)
    default = cache_teacher_outputs.fn(cache_section, cache_up, str(home_default), TRACKING, None, {})
    scratch = scratch_dir(home, "teacher_cache", cache["key"])
    scratch_files = sorted(p.relative_to(scratch).as_posix() for p in scratch.rglob("*") if p.is_file())
    scratch_bytes = sum(p.stat().st_size for p in (scratch / "hidden").glob("*.parquet"))
    index_up = {"lexicon": up["lexicon"], "annotate": up["annotate"], "teacher_cache": cache["key"]}

    def index():
        return build_sense_index.fn(senses_section, index_up, str(home), TRACKING, None, {})

    first = index()
    first_candidates = _candidates(Path(first["path"]))
    first_source = read_manifest(Path(first["path"]))["hidden_source"]
    shutil.rmtree(first["path"])  # the scratch copy is gone now: the rebuild must regenerate the states
    second = index()
    return {
        "home": home,
        "cache": cache,
        "default": default,
        "scratch": scratch,
        "scratch_files": scratch_files,
        "scratch_bytes": scratch_bytes,
        "first": first,
        "first_candidates": first_candidates,
        "first_source": first_source,
        "second": second,
        "index": index,
    }


def test_artifact_keeps_no_hidden_state_and_scratch_has_them(staged):
    manifest = read_manifest(Path(staged["cache"]["path"]))
    paths = [f["path"] for f in manifest["files"]]
    assert not [p for p in paths if p.startswith("hidden/") or "spill" in p or p.startswith("parts/")]
    assert len([p for p in paths if p.startswith("shards/")]) == 2
    shard = Path(staged["cache"]["path"]) / "shards" / "cache-00000.parquet"
    assert pq.read_schema(shard).names == ["seq_id", "topk_ids", "topk_logits", "lse"]
    assert staged["scratch_files"] == ["complete.json", "hidden/hidden-00000.parquet", "hidden/hidden-00001.parquet"]
    metrics = manifest["metrics"]
    assert metrics["persistent_hidden_bytes"] == 0 and metrics["scratch_hidden_bytes"] > 0
    assert metrics["scratch_hidden_bytes"] == staged["scratch_bytes"]  # the two hidden shards' sizes
    assert metrics["scratch_hidden_bytes_per_token"] == staged["scratch_bytes"] / (6 * L)
    assert not (staged["home"] / "staging" / "teacher_cache" / staged["cache"]["key"]).exists()


def test_reservoir_is_the_same_for_a_tiny_and_the_default_budget(staged):
    tiny, default = read_manifest(Path(staged["cache"]["path"])), read_manifest(Path(staged["default"]["path"]))
    assert staged["cache"]["key"] == staged["default"]["key"]  # the budget is not part of the key
    assert tiny["execution"]["reservoir_spill_runs"] >= 2 and default["execution"]["reservoir_spill_runs"] == 0
    files = {f["path"]: f["sha256"] for f in tiny["files"] if f["path"].endswith(".parquet")}
    assert files == {f["path"]: f["sha256"] for f in default["files"] if f["path"].endswith(".parquet")}
    assert "reservoir.parquet" in files


def test_sense_index_reads_the_scratch_then_deletes_it(staged):
    assert staged["first"]["computed"] and staged["first_source"] == "scratch"
    assert not staged["scratch"].exists()  # deleted once the first sense index was complete
    second = read_manifest(Path(staged["second"]["path"]))
    assert second["hidden_source"] == "regenerated"  # the second build: the first had consumed the scratch copy
    assert second["metrics"]["entries_with_positives"] > 0


def test_regenerated_states_give_the_same_candidates(staged):
    second = Path(staged["second"]["path"])
    assert staged["second"]["key"] == staged["first"]["key"]
    assert _candidates(second) == staged["first_candidates"]
    assert sum(len(shard) for shard in staged["first_candidates"]) == 6


def test_an_older_cache_is_refused_with_a_one_line_rerun_hint(staged):
    cache = Path(staged["cache"]["path"])
    capture = json.loads((cache / "capture.json").read_text())
    (cache / "capture.json").write_text(json.dumps({k: v for k, v in capture.items() if k != "format"}))
    manifest = read_manifest(cache)
    for f in manifest["files"]:  # keep the manifest consistent: the refusal is the format's, not a checksum's
        if f["path"] == "capture.json":
            f["sha256"], f["bytes"] = sha256_file(cache / "capture.json"), (cache / "capture.json").stat().st_size
    (cache / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(staged["second"]["path"])
    with pytest.raises(ValueError, match=r"made by an older version; rerun the teacher-cache stage \(delete ") as err:
        staged["index"]()
    assert "\n" not in str(err.value) and staged["cache"]["key"] in str(err.value)


def test_a_cached_sense_index_still_deletes_a_rebuilt_caches_scratch(tmp_path: Path):
    """The teacher cache rebuilt under the same key (its artifact was deleted) publishes a new scratch area while
    the sense index is complete: the sense index's cache key misses while that scratch exists, so its task runs,
    reuses its artifact and deletes the scratch, instead of a Prefect cache hit leaving it on disk for good."""
    from dskd.store.artifacts import stage_key
    from tasks.build_sense_index import build_sense_index
    from tasks.common import ArtifactPresent, stage_cache_policy

    section, upstream = {"k": 2}, {"lexicon": "l0", "annotate": "a0", "teacher_cache": "c0"}
    with write_artifact(tmp_path, "sense_index", stage_key("sense_index", section, upstream), section, upstream) as (
        tmp,
        _,
    ):
        (tmp / "senses.safetensors").write_bytes(b"")
    inputs = {"section": section, "upstream": upstream, "home": str(tmp_path)}
    compound = stage_cache_policy("sense_index", consumes_scratch_of="teacher_cache")
    (policy,) = [p for p in compound.policies if isinstance(p, ArtifactPresent)]
    assert policy.compute_key(None, inputs, {}).endswith(":present")
    scratch = scratch_dir(tmp_path, "teacher_cache", "c0")
    (scratch / "hidden").mkdir(parents=True)
    assert ":missing:" in policy.compute_key(None, inputs, {})  # the task runs ...
    result = build_sense_index.fn(section, upstream, str(tmp_path), TRACKING, None, {})
    assert not result["computed"] and not scratch.exists()  # ... reuses its artifact and deletes the scratch
    assert policy.compute_key(None, inputs, {}).endswith(":present")

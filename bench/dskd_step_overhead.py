"""DSKD training step / KD training step on the same batch, sense loss, candidate lookup and sampling included
(target <= 1.05).

Both steps are ``dskd.train.loop.TrainStep`` (the step the Ray workers run: forward, losses, backward, AdamW,
scheduler) on the student of the bench profile (default: the teacher's first 15 layers, top 2 trainable) at the
worker's thread count (``train.threads_per_worker``), on the same batch of cached training rows.

* KD step: collate the rows, step with ``train.loss=kd`` (CE + top-k KD).
* DSKD step: what this pipeline does OFF the training loop, redone here for the batch and counted in the step --
  the sense-position sampling of the annotate stage (``sample_sense_positions`` per sequence) and the exact top-κ
  candidate lookup of the sense-index stage (``select_candidates`` over the teacher hidden states cached at those
  positions) -- then collate rows carrying the fresh candidates and step with ``train.loss=dskd`` (+ sense loss).
  The freshly sampled positions are timed but not used (the cache has hidden states only at the annotate stage's
  positions); the lookup runs on those cached positions.

The details also give the in-loop-only ratio (what a training step of this pipeline costs, lookup precomputed).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import _common as C


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5, tiny 1)")
    args = p.parse_args()
    C.setup(args)
    repeats = args.repeats or (1 if args.tiny else 5)

    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from dskd.data.sampling import sample_sense_positions
    from dskd.lexicon.token_map import read_lexicon
    from dskd.senses.dictionary import SenseTable
    from dskd.train.data import TrainRow, _row, collate, shard_paths

    cfg = C.config(args)
    stages = C.run_stages(cfg, "sense_index")
    torch.set_num_threads(cfg.train.threads_per_worker)
    scratch = tempfile.mkdtemp(prefix="step-", dir=args.home)
    trainer = C.Trainer(cfg, stages, Path(scratch))
    sen, kappa, B = cfg.senses, cfg.senses.kappa, cfg.train.batch_size
    table = SenseTable.load(stages["sense_index"]["path"] / "senses.safetensors")
    lex = read_lexicon(stages["lexicon"]["path"])
    has_lex = lex.has_entries()
    dim = table.dim

    ann_path, cache_path, cand_path = shard_paths(
        stages["annotate"]["path"], stages["teacher_cache"]["path"], stages["sense_index"]["path"]
    )[0]
    ann, cache, cand = pq.read_table(ann_path), pq.read_table(cache_path), pq.read_table(cand_path)
    rows = [_row(ann, cache, cand, i, kappa) for i in range(B)]
    # What the annotate / sense-index stages hold for these rows (inputs of the per-batch sampling + lookup).
    ids = [np.asarray(ann.column("input_ids")[i].values, dtype=np.int64) for i in range(B)]
    full = [np.asarray(ann.column("full_positions")[i].values, dtype=np.int64) for i in range(B)]
    posonly = [np.asarray(ann.column("posonly_positions")[i].values, dtype=np.int64) for i in range(B)]
    union = [np.asarray(cache.column("sense_positions")[i].values, dtype=np.int64) for i in range(B)]
    hidden = [np.asarray(cache.column("sense_hidden")[i].values, dtype=np.float32).reshape(-1, dim) for i in range(B)]
    rng = np.random.default_rng(0)
    prep_times: list[float] = []

    def dskd_rows() -> list[TrainRow]:
        t0 = time.perf_counter()
        for b in range(B):  # sampling (annotate stage), per sequence
            sample_sense_positions(has_lex[ids[b][1:]], rng, max_n=sen.max_positions, frac=sen.frac_positions)
        # Candidate lookup input (sense-index stage): the cached hidden states at the positions.
        entries = [np.concatenate([full[b], posonly[b]]) for b in range(B)]
        per_seq = C.lookup_batch_candidates(
            table,
            lex,
            sen,
            kappa,
            [hidden[b][np.searchsorted(union[b], e)] for b, e in enumerate(entries)],
            [ids[b][e + 1] for b, e in enumerate(entries)],
            [len(f) for f in full],
        )
        out = [
            TrainRow(
                input_ids=r.input_ids,
                topk_ids=r.topk_ids,
                topk_logits=r.topk_logits,
                lse=r.lse,
                kd_packed=r.kd_packed,  # cache.kd_encoding=packed: decoded by collate
                kd_temperature=r.kd_temperature,
                sense_positions=entries[b],
                full=flags,
                pos_rows=pos_rows,
                neg_rows=neg_rows,
            )
            for b, (r, (flags, pos_rows, neg_rows)) in enumerate(zip(rows, per_seq, strict=True))
        ]
        prep_times.append(time.perf_counter() - t0)
        return out

    def kd() -> None:
        trainer.step(collate(rows), "kd")

    def dskd() -> None:
        trainer.step(collate(dskd_rows()), "dskd")

    n_sense = sum(len(f) + len(po) for f, po in zip(full, posonly, strict=True))
    C.log(f"batch {B} x {len(ids[0])} tokens, {n_sense} sense entries, {torch.get_num_threads()} thread(s)")
    times = C.interleave({"kd_step": kd, "dskd_step": dskd}, repeats, warmup=1)
    shutil.rmtree(scratch, ignore_errors=True)
    t_kd, t_dskd = C.median(times["kd_step"]), C.median(times["dskd_step"])
    prep = C.median(prep_times[1:] or prep_times)
    C.result(
        "dskd_step_overhead",
        t_dskd / t_kd,
        "<=",
        1.05,
        {
            "student_layers": cfg.student.n_layers,
            "trainable_layers": cfg.student.n_trainable_layers,
            "threads": torch.get_num_threads(),
            "batch": [B, len(ids[0])],
            "sense_entries": n_sense,
            "repeats": repeats,
            "kd_step_s": times["kd_step"],
            "dskd_step_s": times["dskd_step"],
            "sampling_and_lookup_s": prep,
            "in_loop_ratio": (t_dskd - prep) / t_kd,
        },
    )


if __name__ == "__main__":
    main()

"""Student epoch from the teacher cache / the same epoch with the teacher run online (target <= 0.5).

Both epochs train the same DSKD student (``dskd.train.loop.TrainStep``, the Ray workers' step, at the worker's thread
count) over the same sequences with the same batch size; they differ only in where the teacher signals come from:

* cached (this pipeline): ``dskd.train.data.iter_rows`` reads the annotate + teacher-cache + candidate shards,
  ``collate``, step;
* online (the reference's setup): per batch, the teacher runs (``dskd.teacher.cache.teacher_outputs``: top-k logits,
  logsumexp, final hidden states), the exact candidate lookup runs on its hidden states at the sense positions
  (``dskd.senses.candidates.select_candidates``), then the same ``collate`` and step.

The sense dictionary is prebuilt in both (the online setup needs one too). Epochs are interleaved, medians compared.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import _common as C


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--seqs", type=int, default=None, help="sequences per epoch (default 16, tiny 4)")
    p.add_argument("--repeats", type=int, default=None, help="timed epochs per variant (default 2, tiny 1)")
    args = p.parse_args()
    C.setup(args)
    n_seqs = args.seqs or (4 if args.tiny else 16)
    repeats = args.repeats or (1 if args.tiny else 2)

    import itertools

    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from dskd.lexicon.token_map import read_lexicon
    from dskd.senses.dictionary import SenseTable
    from dskd.teacher.cache import teacher_outputs
    from dskd.teacher.model import load_causal_lm, resolve_compute_dtype, resolve_device
    from dskd.train.data import TrainRow, collate, iter_rows, shard_paths

    cfg = C.config(args)
    stages = C.run_stages(cfg, "sense_index")
    torch.set_num_threads(cfg.train.threads_per_worker)
    scratch = Path(tempfile.mkdtemp(prefix="epoch-", dir=args.home))
    trainer = C.Trainer(cfg, stages, scratch)
    sen, kappa, B = cfg.senses, cfg.senses.kappa, cfg.train.batch_size
    cache_cfg = cfg.cache
    paths = shard_paths(stages["annotate"]["path"], stages["teacher_cache"]["path"], stages["sense_index"]["path"])
    table = SenseTable.load(stages["sense_index"]["path"] / "senses.safetensors")
    lex = read_lexicon(stages["lexicon"]["path"])
    device = resolve_device(cache_cfg.device)
    teacher = load_causal_lm(C.model_dir_of(stages), dtype=resolve_compute_dtype(cache_cfg.compute_dtype, device))

    def batches_of(rows):
        it = iter(rows)
        while chunk := list(itertools.islice(it, B)):
            yield chunk

    def cached_epoch(limit: int = n_seqs) -> None:
        rows = itertools.islice(iter_rows(paths, 0, 1, kappa, epoch_seed=0), limit)
        for chunk in batches_of(rows):
            trainer.step(collate(chunk), "dskd")

    def annotate_rows(limit: int):
        n = 0
        for ann_path, _, _ in paths:
            ann = pq.read_table(ann_path)
            for i in range(ann.num_rows):
                if n == limit:
                    return
                n += 1
                yield (
                    np.asarray(ann.column("input_ids")[i].values, dtype=np.int64),
                    np.asarray(ann.column("full_positions")[i].values, dtype=np.int64),
                    np.asarray(ann.column("posonly_positions")[i].values, dtype=np.int64),
                )

    def online_epoch(limit: int = n_seqs) -> None:
        for chunk in batches_of(annotate_rows(limit)):
            ids = torch.from_numpy(np.stack([c[0] for c in chunk]))
            with torch.inference_mode():
                values, top_ids, lse, _, hidden = teacher_outputs(
                    teacher, ids.to(device), cache_cfg.topk, cache_cfg.kd_temperature
                )
            entries = [np.concatenate([full, posonly]) for _, full, posonly in chunk]
            per_seq = C.lookup_batch_candidates(
                table,
                lex,
                sen,
                kappa,
                [hidden[b, torch.from_numpy(e)].cpu().numpy() for b, e in enumerate(entries)],
                [seq[e + 1] for (seq, _, _), e in zip(chunk, entries, strict=True)],
                [len(full) for _, full, _ in chunk],
            )
            rows = [
                TrainRow(
                    input_ids=seq,
                    topk_ids=top_ids[b].cpu().numpy().astype(np.int64),
                    topk_logits=values[b].cpu().numpy(),
                    lse=lse[b].cpu().numpy(),
                    sense_positions=entries[b],
                    full=flags,
                    pos_rows=pos_rows,
                    neg_rows=neg_rows,
                )
                for b, ((seq, _, _), (flags, pos_rows, neg_rows)) in enumerate(zip(chunk, per_seq, strict=True))
            ]
            trainer.step(collate(rows), "dskd")

    C.log(f"epoch of {n_seqs} sequences, batch {B}, {torch.get_num_threads()} thread(s)")
    # Warm-up: one batch of each, then whole epochs side by side.
    cached_epoch(B)
    online_epoch(B)
    times = C.interleave({"cached_epoch": cached_epoch, "online_epoch": online_epoch}, repeats, warmup=0)
    shutil.rmtree(scratch, ignore_errors=True)
    t_c, t_o = C.median(times["cached_epoch"]), C.median(times["online_epoch"])
    tokens = n_seqs * cfg.corpus.seq_len
    C.result(
        "cache_vs_online_epoch",
        t_c / t_o,
        "<=",
        0.5,
        {
            "sequences": n_seqs,
            "batch_size": B,
            "seq_len": cfg.corpus.seq_len,
            "student_layers": cfg.student.n_layers,
            "trainable_layers": cfg.student.n_trainable_layers,
            "threads": torch.get_num_threads(),
            "repeats": repeats,
            "cached_epoch_s": times["cached_epoch"],
            "online_epoch_s": times["online_epoch"],
            "cached_tokens_per_s": tokens / t_c,
            "online_tokens_per_s": tokens / t_o,
        },
    )


if __name__ == "__main__":
    main()

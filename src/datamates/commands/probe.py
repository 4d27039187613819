"""`datamates probe`: oracle data influence of candidate sequences at a checkpoint (MATES §3.2):
ref_loss_delta = L_ref(after one AdamW step on the sequence) - L_ref(before), lower is better.
Knobs: mates.probe.* (`datamates config show`). Under `torchrun --nproc_per_node N -m datamates probe`
the ranks share the chunks (docs/executor.md)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from datamates.commands._common import add_config_args, positive_int

    p.add_argument("--checkpoint", "-k", required=True, metavar="DIR",
                   help="checkpoint with optimizer state (a `datamates train` output or a stage's checkpoint/)")
    p.add_argument("--pool", metavar="DIR", help="pool folder (default: <run>/pool)")
    p.add_argument("--candidates", metavar="IDS",
                   help="sequence ids to probe (.npy, a text file with one id per line, or a folder with ids.npy); "
                        "default: mates.probe.n_probes ids drawn with mates.probe.probe_seed outside --exclude")
    p.add_argument("--exclude", metavar="IDS", help="ids the sampled probe set must avoid (the training candidates)")
    p.add_argument("--stage", type=positive_int, metavar="N", help="stage number: default --out <run>/stage_NN/probe")
    p.add_argument("--reference", metavar="SET",
                   help="reference set: lambada_openai, flan_cot, dolly, a JSONL(.gz) file or a pool folder "
                        "(mates.probe.reference)")
    p.add_argument("--reference-size", type=int, metavar="N", help="examples of the reference set (mates.probe.reference_size)")
    p.add_argument("--mode", choices=["exact", "first_order", "naive"], help="mates.probe.mode")
    p.add_argument("--lr", type=float, help="learning rate of the probe step (default: the schedule's rate at the next step)")
    p.add_argument("--workers", type=int, metavar="N", help="parallel workers (mates.probe.executor.workers)")
    p.add_argument("--backend", choices=["local", "ray"], help="mates.probe.executor.backend")
    p.add_argument("--out", "-o", metavar="DIR", help="output folder (default: <run>/probe or <run>/stage_NN/probe)")
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    from datamates.commands._common import flag_sets, read_ids, setup

    flag_sets(args, {**{k: k for k in ("mode", "reference", "reference_size", "lr")},
                     "workers": "executor.workers", "backend": "executor.backend"}, "mates.probe.")

    cfg, rd = setup(args, "probe")
    import numpy as np

    from datamates.core.pool import Pool
    from datamates.selection.probe import (
        check_candidates,
        probe,
        read_labels_table,
        read_meta,
        sample_probe_set,
    )

    pcfg = cfg.mates.probe
    pool = Pool(args.pool or rd.pool)
    if args.candidates:
        ids = check_candidates(read_ids(args.candidates, len(pool), "--candidates"), pool, source=args.candidates)
    else:
        exclude = read_ids(args.exclude, flag="--exclude") if args.exclude else None
        ids = sample_probe_set(pool, pcfg.n_probes, seed=pcfg.probe_seed, exclude=exclude, stage=args.stage,
                               resample_each_stage=pcfg.resample_each_stage)
    dest = args.out or (rd.probe(args.stage) if args.stage is not None else rd.root / "probe")
    # under torchrun every rank probes its share of the chunks (datamates.executor), rank 0 writes labels
    from datamates.executor import lead_ranks
    from datamates.log import is_main

    out = lead_ranks(lambda: probe(pcfg, args.checkpoint, pool, ids, dest), device=pcfg.device, logs=rd.logs,
                     distributed=cfg.distributed)
    if not is_main():
        return 0
    meta = read_meta(out)
    t = read_labels_table(out)
    d = t.column("ref_loss_delta").to_numpy()
    order = np.argsort(d, kind="stable")
    print(f"probed {meta['n_probes']} sequences ({meta['mode']}) at step {meta['global_step']}, lr {meta['lr']:.3g}; "
          f"reference {meta['reference']['name']} ({meta['reference']['size']} examples), "
          f"L_ref before {meta['ref_loss_before']:.4f}")
    s = meta["stats"]
    print(f"ref_loss_delta: mean {s['mean']:.4g}  std {s['std']:.4g}  min {s['min']:.4g}  max {s['max']:.4g}  "
          f"({100 * s['fraction_negative']:.0f}% lower the reference loss; lower is better)")
    ids_col = t.column("seq_id").to_numpy()
    k = min(3, len(d))
    print("most helpful: " + ", ".join(f"{ids_col[i]} ({d[i]:.3g})" for i in order[:k]))
    print("least helpful: " + ", ".join(f"{ids_col[i]} ({d[i]:.3g})" for i in order[::-1][:k]))
    print(f"{meta['probes_per_s']:.2f} probes/s; labels: {out}")
    return 0

"""`datamates export`: a checkpoint as a plain Hugging Face folder (weights, config, tokenizer), or
a selection as a Hugging Face dataset folder (`--selection DIR --format hf`, docs/formats.md)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", metavar="DIR", help="datamates checkpoint (format 'model', the default)")
    p.add_argument("--selection", metavar="DIR", help="a selection folder (ids.npy) to export (format 'hf')")
    p.add_argument("--pool", metavar="DIR", help="with --selection: the pool it selects from (default: the one "
                   "its meta.json names, else <run>/pool)")
    p.add_argument("--format", choices=["model", "hf"], help="model: AutoModelForCausalLM folder (from --checkpoint); "
                   "hf: the selected documents as a datasets save_to_disk folder (from --selection)")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")


def run(args: argparse.Namespace) -> int:
    from datamates.errors import ConfigError

    fmt = args.format or ("hf" if args.selection and not args.checkpoint else "model")
    if fmt == "model":
        if not args.checkpoint:
            raise ConfigError("export: give --checkpoint DIR (a model), or --selection DIR --format hf (documents)")
        from datamates.core.checkpoint import export_hf

        out = export_hf(args.checkpoint, args.out)
        print(f"exported: {out} (load with transformers.AutoModelForCausalLM.from_pretrained)")
        return 0
    if not args.selection:
        raise ConfigError("export --format hf: give --selection DIR (a folder `datamates select` wrote)")
    return _export_selection(args)


def _export_selection(args: argparse.Namespace) -> int:
    from pathlib import Path

    from datamates.artifacts import Output, produce
    from datamates.commands._common import read_ids
    from datamates.core.pool import Pool
    from datamates.errors import ArtifactMissing, ConfigError, IncompatibleArtifacts
    from datamates.identity import hash_ids
    from datamates.run_dir import meta_record, read_json

    sel = Path(args.selection)
    meta_f = sel / "meta.json"
    if not (sel / "ids.npy").is_file():
        raise ArtifactMissing(f"{sel}: no selection here (missing ids.npy); run `datamates select`")
    sel_meta = read_json(meta_f) if meta_f.is_file() else {}
    pool_dir = args.pool if args.pool is not None else sel_meta.get("pool")
    if pool_dir is None:
        raise ConfigError(f"{sel}: its meta.json does not name the pool; give --pool DIR")
    pool = Pool(pool_dir)
    if sel_meta.get("pool_id") is not None and sel_meta["pool_id"] != pool.pool_id:
        raise IncompatibleArtifacts(f"--selection {sel}: selected from the pool with pool_id {sel_meta['pool_id']}, "
                                    f"not {pool.path} (pool_id {pool.pool_id}); give --pool the pool it was selected from")
    ids = read_ids(sel, len(pool), "--selection")  # the one id loader (object arrays refused, never unpickled)
    from datamates.integrations.attributes import write_hf_dataset
    out = Path(args.out)
    meta = meta_record("export", format="hf", selection=str(sel), pool=str(pool.path), pool_id=pool.pool_id,
                       n_sequences=int(len(ids)))


    def build(tmp: Path) -> dict:
        scratch = tmp.with_name(tmp.name + ".cache")
        try:
            meta["n_documents"] = write_hf_dataset(pool, ids, tmp, scratch)
        finally:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
        return meta

    produce(Output(out, "export", {"format": "hf", "ids": hash_ids(ids), "pool": pool.pool_id},
                   inputs=(sel, pool.path)), build)
    meta["n_documents"] = read_json(out / "meta.json")["n_documents"]
    print(f"exported: {out} ({meta['n_documents']:,} documents; load with datasets.load_from_disk)")
    return 0

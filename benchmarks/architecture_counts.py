"""The architecture counts of issue 27, before -> after, from the source tree and git alone.

    python benchmarks/architecture_counts.py [--before 69dfbd9] [--after HEAD]

For each commit it extracts the tree (`git archive`) and counts, with one `ast` pass:

- hashing helpers: functions outside identity.py whose body calls hashlib (a digest of content
  an artifact is identified by; DSIR's n-gram hashing and the torchrun mailbox's HMAC signing are
  not identities and are not counted);
- identity checks of probe and score: the distinct mechanisms in selection/probe/oracle.py and
  selection/score.py that compare a finished or partial artifact with the current inputs
  (a `plan_hash`/meta.json comparison, a `plan.json` in the partial, `finished_scores`, an
  `atomic_dir(..., fingerprint=...)`, `finished(...)`);
- function-local imports of the package outside cli.py and commands/ (direct statements of a
  function body);
- functions over 100 lines in src/;
- report line counts (report.py, or report/ in all and its largest module) and ablation/ablate.py's;
- MB of committed files under experiments/ that are not code, configs or Markdown.

The number of files a new baseline touches is read from the newest commit that added the heuristic
filter through the registry (message "registry worked example": first 3f1bb11, redone after the
baselines/__init__.py table went, redone again when the scorer's config section moved into its own
module, config/ untouched); before the registry, the
review's count (docs/extending.md: 6 source files, 10 in all) stands.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import subprocess
import tarfile

ALGORITHMS = {("baselines/dsir.py", "_bucket"), ("executor.py", "_post"), ("executor.py", "_read")}  # n-gram hashing, HMAC signing


def _tree(commit: str) -> dict[str, str]:
    blob = subprocess.run(["git", "archive", commit, "src", "experiments"], capture_output=True, check=True).stdout
    out = {}
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        for m in tar.getmembers():
            if m.isfile():
                out[m.name] = tar.extractfile(m).read().decode("utf-8", "replace") if m.name.endswith(".py") else \
                    str(m.size)
    return out


def _functions(tree: ast.AST):
    for n in ast.walk(tree):
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef):
            yield n


def counts(commit: str) -> dict[str, float]:
    files = _tree(commit)
    src = {k[len("src/datamates/"):]: v for k, v in files.items() if k.startswith("src/datamates/") and k.endswith(".py")}
    hashing, lazy, long_fns = [], 0, []
    for rel, text in src.items():
        tree = ast.parse(text)
        for fn in _functions(tree):
            body = ast.get_source_segment(text, fn) or ""
            if rel != "identity.py" and re.search(r"hashlib\.(sha256|blake2b|md5)", body) and \
                    not any(re.search(r"\bdef " + re.escape(f.name) + r"\b", body) and re.search(
                        r"hashlib\.", ast.get_source_segment(text, f) or "") for f in _functions(fn) if f is not fn):
                if (rel, fn.name) not in ALGORITHMS and not fn.name.startswith("_digest_cached"):
                    hashing.append(f"{rel}:{fn.name}")
            if fn.end_lineno - fn.lineno + 1 > 100:
                long_fns.append(f"{rel}:{fn.name} ({fn.end_lineno - fn.lineno + 1})")
            if not (rel.startswith("commands/") or rel == "cli.py"):
                lazy += sum(isinstance(s, ast.ImportFrom) and (s.module or "").startswith("datamates") for s in fn.body)
    identity = 0  # distinct identity mechanisms per artifact, summed over probe and score
    mechanisms = {"meta.json plan_hash": r'\.get\("plan_hash"\)', "plan.json in the partial": r"plan\.json",
                  "finished_scores meta comparison": r"finished_scores\(", "fingerprint": r"fingerprint=fingerprint|finished\(output\)|produce\("}
    for rel in ("selection/probe/oracle.py", "selection/score.py"):
        text = src.get(rel, "")
        fn = next((f for f in _functions(ast.parse(text)) if f.name in ("probe", "score")), None)
        body = (ast.get_source_segment(text, fn) if fn else "") or ""
        identity += sum(bool(re.search(rx, body)) for rx in mechanisms.values())
    exp_bytes = sum(int(v) for k, v in files.items() if k.startswith("experiments/")
                    and not k.endswith((".py", ".yaml", ".yml", ".md", ".sh", ".txt")) and v.isdigit())
    lines = {name: src[name].count("\n") if name in src else 0 for name in ("report.py", "ablation/ablate.py")}
    rep = {k: v.count("\n") for k, v in src.items() if k.startswith("report/")}
    if rep:  # the split of issue 27: report/ in all, and its largest module
        big = max(rep, key=rep.get)
        lines["report.py"] = f"{sum(rep.values())} in report/ (largest {big.split('/')[1]}, {rep[big]})"
    # the study, split by concern into the folder ablation/ablate/ (issue 27): its largest module
    lines["ablation/ablate.py"] = lines["ablation/ablate.py"] or max(
        (v.count("\n") for k, v in src.items() if k.startswith("ablation/ablate/")), default=0)
    return {"hashing helpers": len(hashing), "identity checks (probe + score, distinct mechanisms)": identity,
            "function-local package imports outside the CLI": lazy, "functions > 100 lines in src/": len(long_fns),
            "report lines": lines["report.py"],
            "ablation/ablate.py lines (after the split: its largest module)": lines["ablation/ablate.py"],
            "MB of committed outputs under experiments/": round(exp_bytes / 1e6, 2),
            "_hashing": hashing, "_long": long_fns}


def baseline_files() -> str:
    log = subprocess.run(["git", "log", "--format=%H", "--grep", "registry worked example"], capture_output=True,
                         text=True).stdout.split()
    if not log:
        return "n/a"
    names = subprocess.run(["git", "show", "--name-only", "--format=", log[0]], capture_output=True,
                           text=True).stdout.split()
    src = [n for n in names if n.startswith("src/")]
    return f"{len(src)} source files ({', '.join(src)}), {len(names)} in all"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="69dfbd9")
    ap.add_argument("--after", default="HEAD")
    args = ap.parse_args()
    a, b = counts(args.before), counts(args.after)
    print(f"| count | {args.before} | {args.after} |\n|---|---:|---:|")
    for k in a:
        if not k.startswith("_"):
            print(f"| {k} | {a[k]} | {b[k]} |")
    print(f"| files a new baseline touches | 6 source, 10 in all (review) | {baseline_files()} |")
    print("\nhashing helpers after:", ", ".join(b["_hashing"]) or "none")
    print("functions > 100 lines after:", ", ".join(b["_long"]) or "none")


if __name__ == "__main__":
    main()

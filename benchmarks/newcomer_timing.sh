#!/usr/bin/env bash
# A newcomer's first ten minutes, timed (issue 25): from a fresh `git clone` of this repository into a
# temporary folder, `make test` and `make demo` N times each; prints the medians as JSON.
#
#   benchmarks/newcomer_timing.sh [N]          # N runs of each (default 3)
#
# Environment:
#   DATAMATES_DATA   the sample data bundle (default: ../shared/data beside this repository)
#   REPO             what to clone (default: this repository; its committed HEAD, not the work tree)
#   VENV             reuse this installed virtual environment instead of `make install` in the clone
#                    (the clone's src/ is put first on PYTHONPATH so the clone's code is what runs, and the
#                    clone's pyproject.toml is dated before the venv's stamp so make does not reinstall
#                    into it). Without VENV the clone installs its own .venv once, timed as install_s.
#   KEEP=1           keep the temporary folder (its path is printed on stderr)
#   MAKE_CMD         the make to run (default make; MAKE_CMD=true checks this script in seconds)
#
# Every `make demo` is cold: runs/ (the pool cache included) is removed before it, so the pool build and
# its BPE are part of each timing; one more warm run (the pool cache kept, the run folder removed) is
# timed at the end as demo_warm_s; the pool build's share of a cold demo is read from its run.log
# (pool_build_in_cold_demo_median_s). Load average before and after each timing is recorded: a timing taken
# while other jobs run is not a speed measurement.
set -euo pipefail
N="${1:-3}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO="${REPO:-$HERE}"
export DATAMATES_DATA="${DATAMATES_DATA:-$(cd "$HERE/.." && pwd)/shared/data}"
[ -d "$DATAMATES_DATA/pretrain" ] || { echo "no data bundle at $DATAMATES_DATA (set DATAMATES_DATA)" >&2; exit 2; }
TMP="$(mktemp -d -t datamates-newcomer.XXXXXX)"
[ "${KEEP:-0}" = 1 ] && echo "clone in $TMP" >&2 || trap 'rm -rf "$TMP"' EXIT
git clone -q "$REPO" "$TMP/datamates"
cd "$TMP/datamates"
COMMIT="$(git rev-parse --short HEAD)"
MAKE_CMD="${MAKE_CMD:-make}"

MAKEVARS=()
INSTALL_S=null
if [ -n "${VENV:-}" ]; then
  [ -f "$VENV/.installed" ] || { echo "VENV=$VENV has no .installed stamp (run make install there first)" >&2; exit 2; }
  touch -d "2000-01-01" pyproject.toml
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  MAKEVARS=(VENV="$VENV")
else
  t0=$(date +%s.%N); $MAKE_CMD install >"$TMP/install.log" 2>&1; t1=$(date +%s.%N)
  INSTALL_S=$(python3 -c "print(round($t1 - $t0, 1))")
fi

load() { cut -d' ' -f1 /proc/loadavg; }
LOG="$TMP/timings.jsonl"
timeit() {  # timeit KIND CMD...: one JSON line in $LOG; fails the script if CMD fails
  local kind=$1; shift
  local l0; l0=$(load)
  local t0; t0=$(date +%s.%N)
  "$@" >"$TMP/$kind.last.log" 2>&1 || { echo "$kind failed; log: $TMP/$kind.last.log" >&2; tail -20 "$TMP/$kind.last.log" >&2; exit 1; }
  local t1; t1=$(date +%s.%N)
  python3 -c "import json; print(json.dumps({'kind': '$kind', 'seconds': round($t1 - $t0, 1), 'load_before': $l0, 'load_after': $(load)}))" >>"$LOG"
  echo "$kind: $(tail -1 "$LOG")" >&2
}

for i in $(seq 1 "$N"); do
  timeit test $MAKE_CMD "${MAKEVARS[@]}" test
  rm -rf runs
  timeit demo $MAKE_CMD "${MAKEVARS[@]}" demo
  # the pool's share of a cold demo, from the run's own log (pool build start -> "pool ... built" line)
  cp runs/tiny_cpu/logs/run.log "$TMP/demo_$i.run.log" 2>/dev/null || true
done
cp "$TMP/demo.last.log" "$TMP/demo_output.txt" 2>/dev/null || true
rm -rf runs/tiny_cpu
timeit demo_warm $MAKE_CMD "${MAKEVARS[@]}" demo

python3 - "$LOG" "$N" "$COMMIT" "$INSTALL_S" "$TMP" <<'EOF'
import datetime, glob, json, platform, os, re, statistics, sys
log, n, commit, install, tmp = sys.argv[1:6]
rows = [json.loads(l) for l in open(log)]
def pool_seconds(path):  # first log line -> the pool's summary line ("pool: N documents -> ...")
    ts = lambda line: datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    lines = [l for l in open(path) if re.match(r"\d{4}-\d\d-\d\d ", l)]
    hit = [l for l in lines if re.search(r"pool: [\d,]+ documents", l)]
    return round((ts(hit[0]) - ts(lines[0])).total_seconds(), 1) if lines and hit else None
pools = [p for p in (pool_seconds(f) for f in sorted(glob.glob(f"{tmp}/demo_*.run.log"))) if p is not None]
def med(kind):
    xs = [r["seconds"] for r in rows if r["kind"] == kind]
    return statistics.median(xs) if xs else None
out = {"commit": commit, "runs": int(n), "machine": f"{platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
       "make_test_median_s": med("test"), "make_demo_cold_median_s": med("demo"), "make_demo_warm_s": med("demo_warm"),
       "install_s": None if install == "null" else float(install),
       "pool_build_in_cold_demo_median_s": statistics.median(pools) if pools else None,
       "load_average_max": max(max(r["load_before"], r["load_after"]) for r in rows), "timings": rows}
print(json.dumps(out, indent=2))
EOF

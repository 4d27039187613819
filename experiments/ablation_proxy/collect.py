"""Copy the study's results out of the (gitignored) run folder into experiments/ablation_proxy/results/."""

import shutil
import sys
from pathlib import Path

run = Path(sys.argv[1] if len(sys.argv) > 1 else "experiments/ablation_proxy/runs/ablation_proxy")
out = Path(__file__).parent / "results"
out.mkdir(exist_ok=True)
for name in ("results.json", "proxies.csv", "gold.csv", "correlations.csv", "scatter.png", "ranking.png", "report.md",
             "report.html"):
    shutil.copy2(run / "ablation" / name, out / name)
shutil.copy2(run / "partitions" / "manifest.json", out / "manifest.json")
if (run / "wall_times.json").exists():
    shutil.copy2(run / "wall_times.json", out / "wall_times.json")
print(f"results copied to {out}")

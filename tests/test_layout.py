"""Import direction (docs/index.md#layout-and-import-direction): cli -> pipelines -> stage modules -> core. Stage modules do not
import one another; core imports no stage; config, run_dir, errors, log import no stage or core.

Shared nouns inside a method's folder are not stages and may be imported by its stages:
the influence model's architecture, its encoder caches and the score-file format. The ablation
study (`ablation.ablate`: every mixture's proxy against gold models) composes the ablation stages,
as `pipelines` composes all of them."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "datamates"


def _module(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("datamates.")}


def _stage_of(module: str) -> str | None:
    """The stage a module belongs to (selection.probe, ablation.merge, evaluate ...), or None."""
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] in ("selection", "ablation"):
        return ".".join(parts[:3])
    if len(parts) >= 2 and parts[1] == "evaluate":
        return "datamates.evaluate"
    return None


FILES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_import_direction(path):
    mod = _module(path)
    imps = _imports(path)
    layer = mod.split(".")[1] if "." in mod else ""
    if layer in ("config", "errors", "run_dir", "log"):
        bad = {i for i in imps if i.split(".")[1] not in ("config", "errors", "run_dir", "log")}
        assert not bad, f"{mod} must not import {bad}"
    if layer == "core":
        bad = {i for i in imps if i.split(".")[1] in ("selection", "ablation", "evaluate", "pipelines", "cli", "commands",
                                                       "report")}
        assert not bad, f"core module {mod} imports {bad}"
    stage = _stage_of(mod)
    if stage is not None:
        others = {i for i in imps if _stage_of(i) not in (None, stage) and i.split(".")[1] != "config"}
        nouns = {"datamates.selection.influence_model", "datamates.selection.encode", "datamates.selection.scores_io",
                 "datamates.selection.features"}
        others = {o for o in others if ".".join(o.split(".")[:3]) not in nouns}
        if stage == "datamates.ablation.ablate":
            others = {o for o in others if not o.startswith("datamates.ablation.")}
        assert not others, f"stage module {mod} imports other stages: {others}"

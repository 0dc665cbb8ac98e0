"""The layout rule: dskd/ is the pure library and never imports the orchestration frameworks."""

from __future__ import annotations

import ast
from pathlib import Path

DSKD = Path(__file__).resolve().parents[1] / "dskd"
FORBIDDEN = {"prefect", "ray", "mlflow"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_dskd_imports_no_orchestration_framework():
    modules = sorted(DSKD.rglob("*.py"))
    assert len(modules) > 20, "dskd/ package not found where expected"
    offenders = {str(p.relative_to(DSKD)): sorted(_imported_roots(p) & FORBIDDEN) for p in modules}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_dskd_is_grouped_by_stage():
    stages = {p.name for p in DSKD.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert {"data", "teacher", "senses", "train", "eval", "store", "lexicon"} <= stages

"""The floors of the package (docs: ARCHITECTURE): inference and evaluation never import training, inference
never imports evaluation, and data never imports inference or training, neither at import time nor inside a
function."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import nativevlm

PACKAGE = Path(nativevlm.__file__).parent


def test_importing_inference_and_evaluation_does_not_import_training():
    code = ("import pkgutil, importlib, sys, nativevlm.infer, nativevlm.eval\n"
            "for pkg in (nativevlm.infer, nativevlm.eval):\n"
            "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
            "        importlib.import_module(m.name)\n"
            "print(sorted(m for m in sys.modules if m.startswith('nativevlm.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def imported_modules(path: Path) -> set[str]:
    """Every nativevlm module `path` imports, at the top or inside a function, relative imports resolved."""
    package = ["nativevlm", *path.relative_to(PACKAGE).with_suffix("").parts[:-1]]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            found.add(".".join(base + ([node.module] if node.module else [])))
    return {m for m in found if m.startswith("nativevlm")}


def test_lower_floors_never_import_higher_ones():
    forbidden = {"infer": ("nativevlm.train", "nativevlm.eval"), "eval": ("nativevlm.train",),
                 "model": ("nativevlm.train", "nativevlm.infer", "nativevlm.data"),
                 "data": ("nativevlm.train", "nativevlm.infer", "nativevlm.eval"), "rl": ("nativevlm.train",)}
    bad = []
    for floor, higher in forbidden.items():
        for path in sorted((PACKAGE / floor).rglob("*.py")):
            bad += [f"{path.relative_to(PACKAGE)} imports {m}" for m in imported_modules(path) if m.startswith(higher)]
    assert not bad, bad


def test_inference_and_evaluation_import_the_world_only_where_it_is_the_subject():
    """The built-in world is an example dataset: generation and scoring work on any data. Only its benchmark
    reader and the diagnostics that re-render its scenes may know it."""
    subject = {"eval/benchmarks/world.py", "eval/diagnostics.py"}
    bad = [f"{path.relative_to(PACKAGE)} imports {m}"
           for floor in ("infer", "eval") for path in sorted((PACKAGE / floor).rglob("*.py"))
           if str(path.relative_to(PACKAGE)) not in subject
           for m in imported_modules(path) if m.startswith("nativevlm.data.world")]
    assert not bad, bad


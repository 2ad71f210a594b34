"""The import rules of the layout, read from the source (every import, at the top or inside a function), so they
stay true: arrows point down.

- nothing under `backends/` imports `harness/`, `debug/` or `tune/` (a backend does not know it is measured);
- `calibration/` imports no runtime (the packages the backend table names) and no backend or QDQ pass;
- the neutral lower layer imports nothing of modelport but the neutral layer itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from modelport.backends import BACKENDS

PACKAGE = Path(__file__).resolve().parent.parent / "modelport"
NEUTRAL = ("errors", "specs", "options", "timing", "usercode", "quiet", "staging", "console", "ort_session",
           "similarity", "machine", "progress")
RUNTIMES = sorted({name.replace("-", "_") for e in BACKENDS.values()
                   for name in (*e.imports, *e.runtimes, *e.packages)} - {"onnx"})


def imported(path: Path) -> set[str]:
    """Every module `path` imports, absolute, wherever in the file the import stands."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def offending(folder: str, forbidden: list[str]) -> dict[str, list[str]]:
    """Per module of `folder` (a package or one module's stem), the imports under any `forbidden` prefix."""
    paths = sorted((PACKAGE / folder).rglob("*.py")) if (PACKAGE / folder).is_dir() else [PACKAGE / f"{folder}.py"]
    found = {}
    for path in paths:
        bad = sorted(n for n in imported(path) if any(n == f or n.startswith(f"{f}.") for f in forbidden))
        if bad:
            found[str(path.relative_to(PACKAGE))] = bad
    return found


def test_the_rules_see_imports_inside_functions(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import numpy\n\ndef f():\n    from modelport.harness import matrix\n    import openvino.runtime\n")
    assert imported(path) == {"numpy", "modelport.harness", "modelport.harness.matrix", "openvino.runtime"}


def test_no_backend_imports_the_harness_debug_or_tune():
    assert offending("backends", ["modelport.harness", "modelport.debug", "modelport.tune"]) == {}


def test_calibration_imports_no_runtime_and_no_backend():
    assert {"onnxruntime", "openvino", "tensorrt", "ai_edge_litert"} <= set(RUNTIMES)
    assert offending("calibration", [*RUNTIMES, "modelport.backends", "modelport.quantize"]) == {}


@pytest.mark.parametrize("module", NEUTRAL)
def test_the_neutral_layer_imports_only_the_neutral_layer(module):
    above = sorted({p.stem for p in PACKAGE.iterdir() if p.stem != "__init__" and not p.stem.startswith(".")}
                   - set(NEUTRAL) - {"__pycache__"})
    assert offending(module, [f"modelport.{m}" for m in above]) == {}

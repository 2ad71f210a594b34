"""Loading and running an artifact needs numpy and the runtime only, never torch or onnx (the deployment box).

Three checks, from cheap to real: the layering by source (backends never import the harness; calibration
imports no runtime), a process where importing torch or onnx raises, and a fresh venv holding only numpy,
the three CPU runtimes and modelport installed without its dependencies.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelport.backends import BACKENDS, get_backend
from modelport.builder import build_artifact
from modelport.bundle import ModelBundle
from modelport.loading import load_artifact

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "modelport"
HEAVY = ("torch", "onnx")
RUNTIMES = ("onnxruntime", "openvino", "nncf", "tensorrt", "ai_edge_litert", "tflite_runtime", "litert_torch",
            "ai_edge_quantizer", *HEAVY)
# What a deployment box installs, at the versions this venv has: the runtimes of the CPU backends.
DEPLOY_DISTS = ("numpy", "onnxruntime", "openvino", "ai-edge-litert")
CPU_BACKENDS = ("onnxruntime", "openvino", "tflite")

# Imports of torch and onnx (and their submodules) fail in the process that runs this first.
BLOCK = """
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {heavy!r}:
            raise ImportError(f"{{name}} is blocked: the load path must not import it")
        return None

sys.meta_path.insert(0, Blocked())
"""

# Load each artifact, run it on the saved feeds, save its outputs; say whether torch or onnx got in.
RUN = """
import json, sys
import numpy as np
import modelport

results = {{}}
with np.load({feeds!r}) as data:
    feeds = {{k: data[k] for k in data.files}}
for name, path in {artifacts!r}.items():
    with modelport.load(path, threads=1) as runner:
        np.savez({out!r} + f"/{{name}}.npz", **runner.run(feeds))
print(json.dumps({{"imported": sorted(m for m in {heavy!r} if m in sys.modules), "modelport": modelport.__file__}}))
"""


def _imports(path: Path) -> list[str]:
    """Every module `path` imports, at any depth (a function body, a TYPE_CHECKING block)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def test_backends_never_import_the_harness_and_calibration_imports_no_runtime():
    into_harness = {f"{p.name}: {m}" for p in (PACKAGE / "backends").glob("*.py") for m in _imports(p)
                    if m == "modelport.harness" or m.startswith("modelport.harness.")}
    assert not into_harness, f"backends/ imports the harness: {sorted(into_harness)}"
    runtimes = {f"{p.name}: {m}" for p in (PACKAGE / "calibration").glob("*.py") for m in _imports(p)
                if m.split(".")[0] in RUNTIMES}
    assert not runtimes, f"calibration/ imports a runtime: {sorted(runtimes)}"


@pytest.fixture(scope="module")
def artifacts(digits, tmp_path_factory):
    """The digits CNN's fp32 artifact per CPU backend, built on first use; one unavailable here is skipped."""
    out, built = tmp_path_factory.mktemp("deploy"), {}

    def get(backend: str) -> Path:
        if backend not in built:
            ok, reason = get_backend(backend).available()
            if not ok:
                pytest.skip(reason)
            built[backend] = build_artifact(ModelBundle(digits), backend, "fp32", out / backend)[0].path
        return built[backend]

    return get


@pytest.fixture(scope="module")
def feeds(digits_test_data, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("feeds") / "feeds.npz"
    np.savez(path, x=digits_test_data[0][:16])
    return path


def _run_script(python: str, script: str, env: dict[str, str], timeout: float, cwd: Path | None = None) -> Any:
    done = subprocess.run([python, "-c", script], capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check_outputs(out: Path, built: dict[str, Path], feeds: Path) -> None:
    """Each artifact's outputs in the other process are those of this process's runner on the same feeds."""
    with np.load(feeds) as data:
        inputs = {k: data[k] for k in data.files}
    for name, path in built.items():
        with load_artifact(path, threads=1) as runner, np.load(out / f"{name}.npz") as got:
            for key, want in runner.run(inputs).items():
                np.testing.assert_allclose(got[key], want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_an_artifact_loads_and_runs_where_importing_torch_or_onnx_fails(artifacts, feeds, tmp_path):
    """Cheap and in this venv: every backend module and the measuring worker import with torch and onnx
    blocked, and an ONNX Runtime artifact loads and runs."""
    built = {"onnxruntime": str(artifacts("onnxruntime"))}
    modules = [e.module for e in BACKENDS.values()] + ["modelport.harness.worker"]
    script = (BLOCK.format(heavy=HEAVY) + f"import importlib\nfor m in {modules!r}:\n    importlib.import_module(m)\n"
              + RUN.format(feeds=str(feeds), artifacts=built, out=str(tmp_path), heavy=HEAVY))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    report = _run_script(sys.executable, script, env, timeout=120)
    assert report["imported"] == []
    _check_outputs(tmp_path, {k: Path(v) for k, v in built.items()}, feeds)


def _pip(python: Path, *args: str, timeout: float = 900) -> None:
    """pip install in the deployment venv; a registry or wheel pip cannot reach skips, with pip's words."""
    try:
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", *args], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip install {' '.join(args)} took over {timeout:g} s")
    if done.returncode != 0:
        tail = " | ".join(ln for ln in done.stderr.splitlines()[-4:] if ln.strip())
        pytest.skip(f"pip could not install {' '.join(args)} into a fresh venv: {tail}")


@pytest.mark.slow
def test_a_venv_without_torch_loads_and_runs_onnxruntime_openvino_and_tflite_artifacts(artifacts, feeds, tmp_path):
    """The deployment path of the README: numpy and the runtimes, then `pip install --no-deps modelport`."""
    built = {backend: artifacts(backend) for backend in CPU_BACKENDS}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    _pip(python, *(f"{dist}=={importlib.metadata.version(dist)}" for dist in DEPLOY_DISTS))
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(PACKAGE, source / "modelport", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    _pip(python, "--no-deps", str(source))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # run from tmp_path: not the checkout
    out = tmp_path / "outputs"
    out.mkdir()
    script = RUN.format(feeds=str(feeds), artifacts={k: str(v) for k, v in built.items()}, out=str(out), heavy=HEAVY)
    installed = _run_script(str(python), f"import importlib.util, json\nprint(json.dumps([m for m in {HEAVY!r} "
                            "if importlib.util.find_spec(m) is not None]))", env, timeout=60, cwd=tmp_path)
    assert installed == [], "the deployment venv should hold neither torch nor onnx"
    report = _run_script(str(python), script, env, timeout=300, cwd=tmp_path)
    assert report["imported"] == []
    assert Path(report["modelport"]).is_relative_to(venv), "modelport should come from the venv, not the checkout"
    _check_outputs(out, built, feeds)

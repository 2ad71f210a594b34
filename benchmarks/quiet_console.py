"""What the console shows during `modelport build`, and what loading an artifact imports, before and after a change.

    python -m benchmarks.quiet_console [--baseline main] [--repeats 7]

Both source trees (this checkout, and the baseline ref exported with `git archive` into a temporary directory)
run in the same venv, one after the other, each with a fresh MODELPORT_CACHE:

- `modelport build modelport.examples:digits_cnn --json` on every available CPU backend at fp32 and int8
  (the digits calibration set): the lines on stderr, how many are not modelport's own (`warning:`, `note:`,
  `error:` lines; COLUMNS is wide so that none of ours wraps), and whether stdout parses as JSON.
- the load path of the ONNX Runtime fp32 artifact, each repeat a fresh process: `import onnxruntime` alone, then
  `import modelport; modelport.load(artifact).run(feeds)` on top of it (seconds, median of the repeats), the
  modules imported in all, and whether torch was among them (torch is installed in this venv).

Results land in benchmarks/results/quiet-console-<machine>-<date>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.run_suite import write_dated_results  # noqa: E402
from modelport.machine import machine_summary  # noqa: E402

MODEL = "modelport.examples:digits_cnn"
CALIB = "modelport.examples:digits_calibration"
OURS = ("warning:", "note:", "error:")
LOAD = """
import json, sys, time
t0 = time.perf_counter()
import onnxruntime
t1 = time.perf_counter()
import numpy as np
import modelport
runner = modelport.load(sys.argv[1])
runner.run({s.name: np.zeros([d if isinstance(d, int) else 1 for d in s.shape], s.dtype) for s in runner.inputs})
t2 = time.perf_counter()
print(json.dumps({"runtime_s": t1 - t0, "load_path_s": t2 - t1, "modules": len(sys.modules),
                  "torch": "torch" in sys.modules, "modelport": modelport.__file__}))
"""


def export_tree(ref: str, into: Path) -> Path:
    """The source tree of git ref `ref` (the modelport package and nothing else needed) under `into`."""
    archive = into / "tree.tar"
    with open(archive, "wb") as out:
        subprocess.run(["git", "-C", str(ROOT), "archive", ref, "modelport"], stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / ref, filter="data")
    return into / ref


def run(tree: Path, args: list[str], cache: Path) -> subprocess.CompletedProcess[str]:
    """`python ARGS` importing modelport from `tree` only: run from the cache's folder, since `-m` and `-c` put
    the working directory first on sys.path (from this checkout's root it would shadow the tree)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "MODELPORT_CACHE": str(cache), "COLUMNS": "1000"}
    env.pop("FORCE_COLOR", None)
    cache.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, *args], cwd=cache, env=env, capture_output=True, text=True, timeout=1800)


def builds(tree: Path, work: Path, backends: list[str]) -> list[dict[str, Any]]:
    rows = []
    for backend in backends:
        for precision in ("fp32", "int8"):
            out = work / f"{backend}-{precision}"
            calib = ["--calib", CALIB] if precision == "int8" else []
            done = run(tree, ["-m", "modelport.cli", "build", MODEL, "-b", backend, "-p", precision, *calib,
                              "-o", str(out), "--json"], work / "cache")
            lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
            try:
                json.loads(done.stdout)
                parses = True
            except json.JSONDecodeError:
                parses = False
            rows.append({"backend": backend, "precision": precision, "exit": done.returncode,
                         "stderr_lines": len(lines), "other_packages_lines": sum(not ln.startswith(OURS)
                                                                                for ln in lines),
                         "json_parses": parses, "stderr_head": lines[:8]})
            print(f"  {tree.name} {backend} {precision}: exit {done.returncode}, {len(lines)} stderr lines, "
                  f"json {'ok' if parses else 'BROKEN'}", flush=True)
    return rows


def load_path(tree: Path, artifact: Path, cache: Path, repeats: int) -> dict[str, Any]:
    samples = []
    for _ in range(repeats):
        done = run(tree, ["-c", LOAD, str(artifact)], cache)
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
        samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {"runtime_import_s": statistics.median(s["runtime_s"] for s in samples),
            "load_path_s": statistics.median(s["load_path_s"] for s in samples),
            "modules": samples[-1]["modules"], "torch_imported": any(s["torch"] for s in samples),
            "modelport_from": samples[-1]["modelport"],
            "repeats": repeats}


def markdown(machine: dict[str, Any], trees: dict[str, dict[str, Any]], load: float | None) -> str:
    names = list(trees)
    lines = [f"Measured on {machine['cpu']} ({machine.get('cores', '?')} cores); 1-minute load average at the "
             f"start: {load}. Same venv for both trees, one after the other.", "",
             "## `modelport build digits_cnn --json`: stderr lines (of them, not modelport's own) and stdout JSON",
             "", "| backend | precision | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for i, row in enumerate(trees[names[0]]["builds"]):
        cells = []
        for name in names:
            r = trees[name]["builds"][i]
            cells.append(f"{r['stderr_lines']} ({r['other_packages_lines']}), JSON "
                         f"{'parses' if r['json_parses'] else 'broken'}" + ("" if r["exit"] == 0 else
                                                                            f", exit {r['exit']}"))
        lines.append(f"| {row['backend']} | {row['precision']} | " + " | ".join(cells) + " |")
    lines += ["", "## Loading the ONNX Runtime fp32 artifact (fresh process each, torch installed; median)", "",
              "| tree | `import onnxruntime` | `import modelport; load(...).run(...)` beyond it | modules | "
              "torch imported |", "|---|---|---|---|---|"]
    for name in names:
        lp = trees[name]["load_path"]
        lines.append(f"| {name} | {lp['runtime_import_s']:.3f} s | {lp['load_path_s']:.3f} s | {lp['modules']} | "
                     f"{'yes' if lp['torch_imported'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="main", help="git ref to compare this checkout with")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--backends", default="onnxruntime,openvino,tflite")
    args = parser.parse_args()
    from modelport.backends import get_backend

    backends = [b for b in args.backends.split(",") if get_backend(b).available()[0]]
    machine = machine_summary()
    load = round(os.getloadavg()[0], 2)
    trees: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="quiet-console-") as tmp_name:
        tmp = Path(tmp_name)
        sources = {args.baseline: export_tree(args.baseline, tmp), "this checkout": ROOT}
        for name, tree in sources.items():
            work = tmp / ("work-" + name.replace(" ", "-"))
            work.mkdir()
            print(name, flush=True)
            rows = builds(tree, work, backends)
            trees[name] = {"builds": rows,
                           "load_path": load_path(tree, work / "onnxruntime-fp32", work / "cache", args.repeats)}
    table = markdown(machine, trees, load)
    path = write_dated_results("quiet-console", "modelport's console: build noise and the load path", table,
                               machine, {"baseline": args.baseline, "load_average": load, "trees": trees})
    print(table)
    print(f"Wrote {path} and .json")


if __name__ == "__main__":
    main()

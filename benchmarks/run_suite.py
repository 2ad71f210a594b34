"""The benchmark suite: standard architectures on every available runtime and precision, beside peers, and
set against the machine's measured matrix-multiply peak.

    python -m benchmarks.run_suite            # every model, batch 1 and 8 (make bench)
    python -m benchmarks.run_suite --quick    # the digits CNN and MobileNetV2 at batch 1 (make bench-quick)

Each model runs through `modelport.bench` (the same harness users run), with the peers added as runner
rows in the same run. Figures land in benchmarks/results/<machine>-<date>.{json,md}, and the README's
summary table is rewritten from them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.peak import count_macs, matmul_peak
from benchmarks.peers import PEERS, build_nncf_defaults, build_optimum_avx2, build_ort_static_defaults
from benchmarks.sensitivity import INPUT_SQNR_DB, output_sqnr_under_input_noise

if TYPE_CHECKING:
    from modelport.model import SourceModel

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
THREADS = 2
WARMUP = 2  # runs before timing: the first takes the runtimes' allocations and weight packing
ROUNDS = 5  # the rows of each batch size take turns (modelport.harness.interleave): drift hits them alike
# The ONNX Runtime builder times each artifact against FP32 to warn when quantizing did not pay; the suite
# times every row itself, side by side, so the builder's own check would only add 10-40 s an artifact.
# litert-torch 0.10 keeps no dynamic batch on any of the five models (a view or pad over the batch axis
# fails to lower), and its failed attempt costs 6-61 s a model before the static conversion that every
# TFLite row then uses anyway; the suite goes straight to it (the rows record dynamic=off as the reason).
SUITE_OPTIONS = {"onnxruntime.measure": "false", "tflite.dynamic": "off"}
# The transformers' ORT int8 builds run their noise analysis and fidelity check on 16 of the 64 calibration
# samples: on ViT-B/16 that took 93 s rather than 167 s, kept the same 24 ops in float and gave the same
# cosine (0.99837 against 0.99839).
TRANSFORMER_OPTIONS = {"onnxruntime.analysis_samples": "16"}
# peers compared with the FP32 row of the runtime they run on
PEER_RUNTIME = {"ort_static_defaults": "onnxruntime", "optimum_avx2": "onnxruntime", "nncf_defaults": "openvino"}


@dataclass(frozen=True)
class Suite:
    """One row of the suite's table: a model, its data, and which peers apply."""

    name: str
    model: str
    calib: str
    evaluation: str | None = None
    dynamic: tuple[str, ...] = ()
    peers: tuple[str, ...] = ("ort_static_defaults", "nncf_defaults", "torch_compile")
    quick: bool = False
    options: dict[str, str] = field(default_factory=dict)  # on top of SUITE_OPTIONS
    calib_size: int | None = None  # None: the harness's default (300, less the evaluation quarter)
    eval_size: int | None = None  # None: the harness's default (a quarter of the 300 samples)


MODELS = (
    Suite("digits_cnn", "modelport.examples:digits_cnn", "modelport.examples:digits_calibration",
          "modelport.examples:digits_evaluation", quick=True),
    Suite("mobilenet_v2", "benchmarks.models:mobilenet_v2", "benchmarks.data:images", quick=True),
    Suite("resnet50", "benchmarks.models:resnet50", "benchmarks.data:images"),
    Suite("bert_base", "benchmarks.models:bert_base", "benchmarks.data:tokens",
          dynamic=("input_ids:0=batch", "attention_mask:0=batch"), calib_size=64, eval_size=16,
          peers=("ort_static_defaults", "nncf_defaults", "optimum_avx2", "torch_compile"), options=TRANSFORMER_OPTIONS),
    Suite("vit_b16", "benchmarks.models:vit_b16", "benchmarks.data:images", calib_size=64, eval_size=16,
          options=TRANSFORMER_OPTIONS),
)
# The transformers calibrate on 64 samples and are judged on 16: each of their ~16 artifacts is built,
# calibrated and evaluated at 0.1-0.3 s a sample. Sixteen outputs are 16x128x768 values for BERT and
# 16x1000 logits for ViT, enough for cosine and SQNR; neither has labels, so no accuracy rests on them.


def machine_slug(cpu: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")[:40]


def write_dated_results(kind: str, title: str, table: str, machine: dict[str, Any], data: dict[str, Any]) -> Path:
    """`results/KIND-MACHINE-DATE.md` (the title and table) and `.json` (the machine and `data`); the .md's path."""
    name = f"{kind}-{machine_slug(machine['cpu'])}-{dt.date.today().isoformat()}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(f"# {title}\n\n{table}\n")
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine, **data}, indent=2, default=str))
    return RESULTS / f"{name}.md"


def load_suite_model(suite: Suite, batches: list[int]) -> SourceModel:
    """The suite's model as the harness prepares it (the batch axis made dynamic for the batches timed)."""
    from modelport.harness.matrix import prepare_model
    from modelport.model import load_model
    from modelport.specs import parse_dynamic_spec

    source = load_model(suite.model, (), [parse_dynamic_spec(d) for d in suite.dynamic])
    return prepare_model(source, batches, user_dynamic=bool(suite.dynamic))


def build_peers(suite: Suite, source: SourceModel, out: Path) -> dict[str, Any]:
    """Export once (the harness reuses the file) and build the by-hand baselines from the same data."""
    from modelport.bundle import ModelBundle
    from modelport.harness.reference import open_data

    onnx_path = ModelBundle(source, onnx_dir=out / "onnx").onnx_path
    # the harness's own calibration part: the same samples modelport calibrates on, none of the evaluation ones
    calibration, _ = open_data(source, suite.calib, suite.evaluation, calib_size=suite.calib_size,
                               eval_size=suite.eval_size, seed=0)
    peers_dir = out / "peers" / onnx_path.parent.name  # keyed by the export's content hash: reused only as is
    peers_dir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {"model": suite.model, "onnx": str(onnx_path), "skipped": {}}
    builders = {"ort_static_defaults": (build_ort_static_defaults, "ort_static.onnx"),
                "nncf_defaults": (build_nncf_defaults, "nncf_defaults.xml"),
                "optimum_avx2": (build_optimum_avx2, "optimum_avx2.onnx")}
    for name in suite.peers:
        if name not in builders:
            continue
        build, file = builders[name]
        path = peers_dir / file
        try:
            config[name] = str(path if path.exists() else build(onnx_path, calibration, path))
        except (FileNotFoundError, RuntimeError) as exc:
            config["skipped"][name] = str(exc)
            print(f"peer {name} skipped: {exc}")
    return config


def run_model(suite: Suite, out: Path, batches: list[int], duration: float) -> dict[str, Any]:
    import modelport

    start = time.perf_counter()
    source = load_suite_model(suite, batches)
    config = build_peers(suite, source, out)
    os.environ[PEERS] = json.dumps(config)
    runners = {name: f"{HERE / 'peers.py'}:{name}" for name in suite.peers
               if name not in config["skipped"]}
    report = modelport.bench(suite.model, out=out, backends="all", batches=batches, threads=THREADS,
                             duration=duration, warmup=WARMUP, rounds=ROUNDS, calib=suite.calib,
                             calib_size=suite.calib_size, eval_size=suite.eval_size, evaluation=suite.evaluation,
                             dynamic=suite.dynamic, options={**SUITE_OPTIONS, **suite.options}, runners=runners,
                             show_progress=True)
    macs = {b: count_macs(Path(config["onnx"]), {"batch": b}) for b in batches}
    return {"suite": suite.name, "model": suite.model, "onnx": config["onnx"],
            "seconds": round(time.perf_counter() - start, 1),
            "macs": macs, "peers_skipped": config["skipped"],
            "noise_ceiling_db": output_sqnr_under_input_noise(source, suite.calib),
            "report": report}


def _versus_fp32(rows: list[dict[str, Any]], speedup: Any) -> list[dict[str, Any]]:
    """Each INT8 row and each quantizing peer against the FP32 row of its own runtime: what quantizing bought
    on that runtime, the median of per-round ratios (the rows took turns)."""
    fp32 = {r["backend"]: r for r in rows if r["precision"] == "fp32"}
    out = []
    for r in rows:
        runtime = PEER_RUNTIME.get(r["backend"], r["backend"])
        if runtime in fp32 and (str(r["precision"]).startswith("int8") or r["backend"] in PEER_RUNTIME):
            out.append({"row": _label(r), "versus": f"{runtime} fp32", "p50_ms": r["p50_ms"],
                        "speedup": speedup(fp32[runtime], r), "fidelity": _fidelity(r)})
    return out


def _label(row: dict[str, Any]) -> str:
    return row["backend"] if row["precision"] == "custom" else f"{row['backend']} {row['precision']}"


def _fidelity(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in ("metric_name", "metric", "metric_delta", "cosine", "sqnr_db")}


def summarize(runs: list[dict[str, Any]], peaks: dict[str, float]) -> list[dict[str, Any]]:
    """One line per model and batch: the best artifact and best INT8 artifact (p50), their speed-up over
    PyTorch eager, their fidelity, the INT8 share of the machine's peak, and every peer beside them."""
    from modelport.backends import BACKENDS
    from modelport.harness.latency import speedup

    lines = []
    for run in runs:
        rows = [r for r in run["report"]["rows"] if r.get("status") == "ok" and r.get("p50_ms")]
        # only the batches this run asked for: a working directory reused from a wider run holds more
        for batch in sorted({r["batch"] for r in rows} & set(run["macs"])):
            at = [r for r in rows if r["batch"] == batch]
            eager = next((r for r in at if r["backend"] == "pytorch"), None)
            ours = [r for r in at if r["backend"] in BACKENDS]
            int8 = [r for r in ours if str(r["precision"]).startswith("int8")]
            line: dict[str, Any] = {"model": run["suite"], "batch": batch, "eager_ms": eager and eager["p50_ms"],
                                    "eager": eager and _fidelity(eager), "noise_ceiling_db": run["noise_ceiling_db"]}
            for label, pool in (("best", ours), ("best_int8", int8)):
                row = min(pool, key=lambda r: r["p50_ms"], default=None)
                if row is None:
                    continue
                peak = peaks["int8"] if str(row["precision"]).startswith("int8") else peaks["fp32"]
                line[label] = {"row": _label(row), "p50_ms": row["p50_ms"],
                               "fidelity": _fidelity(row),
                               "speedup_vs_eager": speedup(eager, row) if eager else None,
                               "peak_fraction": run["macs"][batch] / (row["p50_ms"] / 1e3) / peak}
            line["peers_skipped"] = run.get("peers_skipped", {})
            line["peers"] = {r["backend"]: {"p50_ms": r["p50_ms"], "fidelity": _fidelity(r)}
                             for r in at if r["backend"] not in BACKENDS and r["backend"] != "pytorch"}
            line["rows"] = {_label(r): {"p50_ms": r["p50_ms"], "fidelity": _fidelity(r)}
                            for r in at}
            line["vs_fp32"] = _versus_fp32(at, speedup)
            lines.append(line)
    return lines


def _fid(f: dict[str, Any]) -> str:
    parts = []
    if f.get("metric") is not None:
        parts.append(f"{f.get('metric_name') or 'metric'} {f['metric']:.4g}")
    if f.get("cosine") is not None:
        parts.append(f"cos {f['cosine']:.4f}")
    if f.get("sqnr_db") is not None:
        parts.append(f"{f['sqnr_db']:.1f} dB")
    return ", ".join(parts) or "-"


def markdown(machine: dict[str, Any], peaks: dict[str, float], lines: list[dict[str, Any]], stamp: str,
             wall_s: float | None) -> str:
    """The summary and peer tables (the README's copy too)."""
    took = f" The suite ran in {wall_s / 60:.1f} minutes." if wall_s else ""
    out = [f"Measured {stamp} on {machine['cpu']} ({machine['cores']} cores, {', '.join(machine['flags'])}), "
           f"{THREADS} threads. Matrix-multiply peak in ONNX Runtime: FP32 {peaks['fp32'] / 1e9:.1f} GMAC/s, "
           f"INT8 {peaks['int8'] / 1e9:.1f} GMAC/s.{took}", "",
           "| model | batch | PyTorch eager p50 | best artifact | p50 | speed-up | fidelity | best INT8 | p50 | "
           f"speed-up | fidelity | INT8 share of peak | FP32 SQNR at {INPUT_SQNR_DB:g} dB input noise |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for line in lines:
        best, b8 = line.get("best", {}), line.get("best_int8", {})
        cells = [line["model"], str(line["batch"]), f"{line['eager_ms']:.2f} ms" if line["eager_ms"] else "-"]
        for entry in (best, b8):
            cells += [entry.get("row", "-"), f"{entry['p50_ms']:.2f} ms" if entry else "-",
                      f"{entry['speedup_vs_eager']:.2f}x" if entry.get("speedup_vs_eager") else "-",
                      _fid(entry.get("fidelity", {}))]
        cells.append(f"{b8['peak_fraction']:.0%}" if b8 else "-")
        ceiling = line.get("noise_ceiling_db")
        cells.append(f"{ceiling:.1f} dB" if ceiling is not None else "n/a (integer inputs)")
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "The last column is the FP32 model's own output SQNR when its input carries noise "
            f"{INPUT_SQNR_DB:g} dB below the signal, about what one 8-bit quantization step adds. A trained model "
            "keeps it near "
            f"{INPUT_SQNR_DB:g} dB; the random-weight models the suite builds amplify it, which caps the fidelity "
            "of every INT8 row, from any runtime or quantizer, near that figure."]
    out += ["", "Peers in the same run (p50, fidelity against PyTorch FP32):", "",
            "| model | batch | peer | p50 | fidelity |", "|---|---|---|---|---|"]
    for line in lines:
        for name, peer in line["peers"].items():
            out.append(f"| {line['model']} | {line['batch']} | {name} | {peer['p50_ms']:.2f} ms | "
                       f"{_fid(peer['fidelity'])} |")
    skipped = {(line["model"], name): why for line in lines for name, why in line.get("peers_skipped", {}).items()}
    out += [""] + [f"Peer {name} not run for {model}: {why}" for (model, name), why in skipped.items()]
    return "\n".join(out) + "\n"


def versus_markdown(lines: list[dict[str, Any]]) -> str:
    """What quantizing bought on each runtime: the results file's table, too long for the README."""
    out = ["INT8 rows and quantizing peers against the FP32 row of the same runtime (speed-up: the median of "
            f"per-round ratios over the {ROUNDS} interleaved rounds):", "",
            "| model | batch | row | against | p50 | speed-up | fidelity |", "|---|---|---|---|---|---|---|"]
    for line in lines:
        for v in line.get("vs_fp32", []):
            out.append(f"| {line['model']} | {line['batch']} | {v['row']} | {v['versus']} | {v['p50_ms']:.2f} ms | "
                       f"{v['speedup']:.2f}x | {_fid(v['fidelity'])} |")
    return "\n".join(out) + "\n"


def update_readme(table: str) -> None:
    text = README.read_text()
    start, end = "<!-- bench-summary:start -->", "<!-- bench-summary:end -->"
    if start in text and end in text:
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        README.write_text(f"{head}{start}\n{table}{end}{tail}")


def measure_peaks(before: dict[str, float] | None = None) -> dict[str, float]:
    """The machine's MatMul peaks, or the higher of these and `before`: a peak is the best the machine can
    do, and a measurement taken while something else ran only understates it."""
    now = {"fp32": matmul_peak("fp32", THREADS), "int8": matmul_peak("int8", THREADS)}
    return {k: max(v, (before or {}).get(k, 0.0)) for k, v in now.items()}


def write_results(machine: dict[str, Any], peaks: dict[str, float], runs: list[dict[str, Any]], name: str,
                  scope: str, readme: bool, wall_s: float | None, preface: str = "") -> str:
    lines = summarize(runs, peaks)
    table = markdown(machine, peaks, lines, dt.date.today().isoformat(), wall_s)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(f"# modelport benchmark suite ({scope})\n\n{preface}{table}\n"
                                        + versus_markdown(lines))
    (RESULTS / f"{name}.json").write_text(json.dumps(
        {"scope": scope, "machine": machine, "threads": THREADS, "wall_s": wall_s, "peaks_mac_per_s": peaks,
         "summary": lines,
         "runs": [{k: v for k, v in r.items() if k != "report"} | {"rows": r["report"]["rows"]} for r in runs]},
        indent=2, default=str))
    if readme:
        update_readme(table)
    return table


def render(path: Path) -> str:
    """Re-render a results JSON without re-measuring a row: MACs recounted from each run's ONNX file and the
    peak measured again (keeping the higher), for when the counting or the peak's first measurement was wrong."""
    data = json.loads(path.read_text())
    runs = [{k: v for k, v in r.items() if k != "rows"} | {"report": {"rows": r["rows"]}} for r in data["runs"]]
    for run in runs:
        run["macs"] = {int(b): count_macs(Path(run["onnx"]), {"batch": int(b)}) for b in run["macs"]}
    peaks = measure_peaks(data["peaks_mac_per_s"])
    return write_results(data["machine"], peaks, runs, path.stem, data["scope"], data["scope"] == "full",
                         data.get("wall_s"),
                         "Re-rendered from the measured rows: MACs recounted and the MatMul peak measured again.\n\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick subset, batch 1 (under 10 minutes)")
    parser.add_argument("--models", help="comma-separated suite names (default: all, or the quick ones)")
    parser.add_argument("--duration", type=float, default=None, help="seconds of timed runs per row")
    parser.add_argument("--out", type=Path, default=Path("bench-suite"), help="working directory")
    parser.add_argument("--render", type=Path, help="re-render a results JSON instead of running (no row re-timed)")
    args = parser.parse_args()
    from modelport.machine import machine_summary

    if args.render:
        print(render(args.render))
        return
    chosen = [m for m in MODELS if (m.quick or not args.quick)]
    if args.models:
        wanted = set(args.models.split(","))
        chosen = [m for m in MODELS if m.name in wanted]
    batches = [1] if args.quick else [1, 8]
    duration = args.duration or 1.0
    start = time.perf_counter()
    machine = machine_summary()
    peaks = measure_peaks()
    runs = [run_model(suite, args.out / suite.name, batches, duration) for suite in chosen]
    peaks = measure_peaks(peaks)
    subset = "-quick" if args.quick else ("-" + "-".join(m.name for m in chosen) if args.models else "")
    scope = "quick" if args.quick else ("models: " + ", ".join(m.name for m in chosen) if args.models else "full")
    name = f"{machine_slug(machine['cpu'])}-{dt.date.today().isoformat()}{subset}"
    print(write_results(machine, peaks, runs, name, scope, readme=not args.quick and not args.models,
                        wall_s=round(time.perf_counter() - start, 1)))


if __name__ == "__main__":
    main()

"""The digits bench on local processes and on a 2-node local Ray cluster: wall time, per-task overhead, fidelity.

Three benches of the same plan, each from scratch in its own output directory, side by side in one run:
locally (isolate.Isolator), on the cluster measuring on one device label (the same rows: the difference
is the cluster's cost), and on two labels (every row on both devices, measured at once); in the order
A B C, then C B A (`--passes 2`), so that what the first bench pays for the machine's cold caches, or a
change of load, does not land on one executor. Both nodes are on
this machine (127.0.0.1, one CPU each, benchmarks/raycluster.py), so the figures say what the cluster
executor costs, not what a second machine gains. Per-task overhead: the same probe job run N times through
each executor (median seconds). Fidelity: every row's figures next to the local run's, which should be
identical (the same artifacts, the same evaluation data, the same runtime).

    python -m benchmarks.cluster [--backends onnxruntime,openvino] [--precisions fp32,int8] [--probes 7]
                                 [--passes 2]

Writes benchmarks/results/cluster-MACHINE-DATE.{md,json} (cluster-overhead-... with --passes 0) with
the machine it ran on and its load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.raycluster import local_cluster
from benchmarks.run_suite import write_dated_results

DIGITS = ("modelport.examples:digits_cnn", "modelport.examples:digits_calibration",
          "modelport.examples:digits_evaluation")


def _bench(out: Path, args: argparse.Namespace, on_cluster: Any) -> tuple[float, dict[str, Any]]:
    from modelport.harness.api import bench

    model, calib, evaluation = DIGITS
    start = time.perf_counter()
    report = bench(model, out=out, backends=args.backends, precisions=args.precisions, calib=calib,
                   evaluation=evaluation, iterations=args.iterations, warmup=10, threads=1, on_cluster=on_cluster)
    return time.perf_counter() - start, report


def _probe_seconds(executor: Any, n: int) -> tuple[float, float | None]:
    """Median seconds of one probe job (is ONNX Runtime installed?) through `executor`, and of the part of
    it outside the job's own process on a node (Ray's scheduling and transfers), where it ran on one."""
    from modelport.harness.jobs import ProbeJob

    times, outside = [], []
    for i in range(n):
        start = time.perf_counter()
        outcome = executor.run(ProbeJob("onnxruntime"), name=f"probe-{i}", timeout=300)
        times.append(time.perf_counter() - start)
        assert outcome.ok and outcome.result is not None, outcome.error
        if "node" in outcome.result:
            outside.append(times[-1] - outcome.result["node"]["job_seconds"])
    return statistics.median(times), statistics.median(outside) if outside else None


def _fidelity(report: dict[str, Any]) -> dict[tuple[str, str, str | None], tuple[Any, ...]]:
    return {(r["backend"], r["precision"], r.get("device")): (r["metric"], r["sqnr_db"], r["top1_agreement"])
            for r in report["rows"] if r["status"] == "ok"}


def main() -> None:
    from modelport.harness.cluster import Cluster, ClusterSettings
    from modelport.harness.isolate import Isolator
    from modelport.machine import machine_summary

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="onnxruntime,openvino")
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--probes", type=int, default=7)
    parser.add_argument("--passes", type=int, default=2,
                        help="passes over the three benches, every other reversed (0: only the per-task cost)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp, local_cluster("dev_a", "dev_b") as nodes:
        work = Path(tmp)
        one, two = (ClusterSettings(nodes.address, labels) for labels in (("dev_a",), ("dev_a", "dev_b")))
        order = [("local", None), ("cluster, 1 device", one), ("cluster, 2 devices", two)]
        for n in range(args.passes):
            for name, settings in order if n % 2 == 0 else order[::-1]:
                wall, report = _bench(work / f"{name.replace(', ', '-').replace(' ', '_')}-{n}", args, settings)
                ok = sum(r["status"] == "ok" for r in report["rows"])
                run = runs.setdefault(name, {"wall_s": [], "rows": len(report["rows"]), "ok": [], "fidelity": []})
                run["wall_s"].append(wall)
                run["ok"].append(ok)
                run["fidelity"].append(_fidelity(report))
                print(f"{name} (pass {n + 1}): {wall:.1f} s, {ok}/{len(report['rows'])} rows ok", flush=True)
        with Isolator(work / "probe-local", threads=1) as isolator:
            local_probe, _ = _probe_seconds(isolator, args.probes)
        with Cluster(two, work / "probe-cluster", threads=1) as ray_cluster:
            cluster_probe, ray_share = _probe_seconds(ray_cluster, args.probes)
    overhead = (f"Per-task cost (median of {args.probes} probe jobs, each in its own process): local "
                f"{local_probe:.2f} s, cluster {cluster_probe:.2f} s, of which {ray_share:.2f} s outside the "
                "job's process on the node (Ray's scheduling, the task and its transfers).")
    where = f"Both nodes on this machine (one CPU each); 1-minute load average {load:.1f} at the start."
    lines = []
    if runs:
        local_fid = runs["local"]["fidelity"][0]
        mismatched = sorted({f"{b} {p} on {d}" for run in runs.values() for fid in run["fidelity"]
                             for (b, p, d), figures in fid.items() if local_fid.get((b, p, None)) != figures})
        local_wall = statistics.median(runs["local"]["wall_s"])
        lines = ["| executor | rows (ok per pass) | wall s per pass | median | vs local |", "|---|---|---|---|---|"]
        for name, run in runs.items():
            wall = statistics.median(run["wall_s"])
            lines.append(f"| {name} | {run['rows']} ({', '.join(map(str, run['ok']))}) | "
                         f"{', '.join(f'{w:.1f}' for w in run['wall_s'])} | {wall:.1f} | {wall / local_wall:.2f}x |")
        lines += ["", f"Fidelity (task metric, SQNR, top-1 agreement per row) identical to the local run on every "
                      f"cluster row: {'yes' if not mismatched else 'no: ' + ', '.join(mismatched)}.",
                  f"Plan: digits CNN (trained weights, real data), {args.backends} x {args.precisions}, 1 thread, "
                  f"{args.iterations} timed runs a row."]
    lines += ["", overhead, where]
    data = {"load_average": load, "args": vars(args), "local_probe_s": local_probe, "cluster_probe_s": cluster_probe,
            "outside_job_s": ray_share,
            "runs": {k: {**v, "fidelity": [{" ".join(str(p) for p in key): list(f) for key, f in fid.items()}
                                            for fid in v["fidelity"]]} for k, v in runs.items()}}
    kind, title = (("cluster", "modelport bench: local processes vs a 2-node local Ray cluster") if runs else
                   ("cluster-overhead", "modelport on a 2-node local Ray cluster: the cost of one task"))
    print(write_dated_results(kind, title, "\n".join(lines).strip(), machine_summary(), data))
    print("\n".join(lines))

if __name__ == "__main__":
    main()

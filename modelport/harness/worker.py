"""The measuring process: `python -m modelport.harness.worker JOB.json`, or forked by `--serve` (isolate.py).

A child pins torch's threads where torch is in the process (an artifact's runner never imports it),
reads its job (jobs.py), runs the handler HANDLERS registers for the job's type (probe, export,
build, or load one runner, of a kind runners.py lists, and measure it), and writes its result JSON;
progress goes to stdout as `@@modelport-progress DONE TOTAL` lines. faulthandler is on, so a segfault
leaves the Python stack in the log the parent keeps.

The server (`--serve [MODULE...]`) imports what every child needs once (and the modules named: torch
for the children that run it, the model factory's for those that load the model), then for each
`JOB<TAB>LOG` line on stdin forks a child, says `@@modelport-started PID`, waits for it and says
`@@modelport-exit CODE` (negative: the signal that killed it). It never loads a runtime or runs a model itself.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport import progress
from modelport.backends.base import Runner
from modelport.harness.isolate import EXIT_PREFIX, PROGRESS_PREFIX, REPLY_PREFIX, STARTED_PREFIX
from modelport.harness.jobs import (
    BuildJob,
    DebugJob,
    ExportJob,
    FidelityJob,
    Job,
    LatencyJob,
    ProbeJob,
    RoundsJob,
    RunnerJob,
    TuneJob,
)
from modelport.harness.reference import batch_of
from modelport.harness.runners import load_runner, load_source, needs_torch


def _report_progress(done: float, total: float) -> None:
    sys.stdout.write(f"{PROGRESS_PREFIX}{done} {total}\n")
    sys.stdout.flush()


class _Counts:
    """A progress.Reporter sending a build's counts (calibration samples seen / total) as progress lines."""

    def begin(self, name: str) -> None:
        pass

    def end(self, name: str) -> None:
        pass

    def count(self, done: int, total: int | None) -> None:
        if total:
            _report_progress(done, total)


def _probe(job: ProbeJob, threads: int) -> dict[str, Any]:
    from modelport.backends import get_backend

    ok, reason = get_backend(job.backend).available()
    return {"available": ok, "reason": reason}


def _export(job: ExportJob, threads: int) -> dict[str, Any]:
    from modelport.bundle import ModelBundle

    bundle = ModelBundle(load_source(job.model), onnx_dir=Path(job.onnx_dir))
    return {"path": str(bundle.onnx_path), "export": bundle.export_info}


def _reopen(spec: Mapping[str, Any], inputs: Any) -> Any:
    """The parent's calibration or evaluation samples, read again by their indices (the same fingerprint)."""
    from modelport.calibration import CalibrationSet, open_source

    samples = CalibrationSet(open_source(spec["text"], inputs), inputs, indices=spec["indices"], seed=spec["seed"])
    if samples.fingerprint != spec["fingerprint"]:
        raise RuntimeError(f"the data source {spec['text']} gave different samples when read again "
                           f"(fingerprint {samples.fingerprint}, expected {spec['fingerprint']}); "
                           "a calibration or evaluation source must be deterministic")
    return samples


def _build(job: BuildJob, threads: int) -> dict[str, Any]:
    from modelport.builder import build_artifact
    from modelport.bundle import ModelBundle

    source = load_source(job.model)
    calibration = _reopen(job.calibration, source.inputs) if job.calibration else None
    with progress.reporting(_Counts()):
        artifact, reused = build_artifact(ModelBundle(source, onnx_dir=Path(job.onnx_dir)), job.backend,
                                          job.precision, job.out, options=job.options, calibration=calibration)
    return {"reused": reused, "build_seconds": artifact.manifest["build_seconds"], "size_bytes": artifact.size_bytes,
            "manifest_key": artifact.manifest["key"], "details": artifact.details}


def _tune(job: TuneJob, threads: int) -> dict[str, Any]:
    from modelport.bundle import ModelBundle
    from modelport.tune.bench import tune_for_bench

    source = load_source(job.model)
    assert job.calibration is not None  # int8 is calibrated
    return tune_for_bench(job, ModelBundle(source, onnx_dir=Path(job.onnx_dir)),
                          _reopen(job.calibration, source.inputs), _reopen(job.evaluation, source.inputs), threads)


def _debug(job: DebugJob, threads: int) -> dict[str, Any]:
    from modelport.calibration import CalibrationSet
    from modelport.debug.api import debug_to_files

    source = load_source(job.model)
    evaluation = _reopen(job.evaluation, source.inputs)
    head = CalibrationSet(evaluation.source, evaluation.specs, indices=evaluation.indices[:job.samples],
                          seed=evaluation.seed)
    record, files = debug_to_files(job.artifact, source, head, job.out, threads=threads, onnx_dir=job.onnx_dir)
    return {"files": [str(f) for f in files], "culprits": [c["onnx_node"] for c in record["culprits"][:3]]}


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _peak_rss() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass
class _Loaded:
    """A runner job's runner, loaded, and what loading it took."""

    runner: Runner
    inputs: dict[str, np.ndarray]
    load_seconds: float
    rss_before: int


def _fidelity(job: FidelityJob, loaded: _Loaded) -> dict[str, Any]:
    runner, inputs = loaded.runner, loaded.inputs
    n = len(next(iter(inputs.values())))
    chunk = int(job.chunk)
    collected: dict[str, list[np.ndarray]] = {}
    every = max(1, n // chunk // 50)  # at most ~50 progress lines
    for step, start in enumerate(range(0, n, chunk)):
        outputs = runner.run(batch_of(inputs, start, chunk))
        keep = min(chunk, n - start)
        for key, value in outputs.items():
            collected.setdefault(key, []).append(np.asarray(value)[:keep])
        if step % every == 0 or start + chunk >= n:
            _report_progress(min(start + chunk, n), n)
    names = list(collected)
    np.savez(job.outputs, *[np.concatenate(collected[k]) for k in names])
    return {"output_names": names, "samples": n}


def _latency(job: LatencyJob, loaded: _Loaded) -> dict[str, Any]:
    from modelport.harness.latency import summarize
    from modelport.timing import timed_runs

    batch = int(job.batch)
    feeds = batch_of(loaded.inputs, 0, batch)
    times = timed_runs(loaded.runner.run, feeds, iterations=job.iterations, duration=job.duration,
                       warmup=int(job.warmup), progress=_report_progress)
    return {**summarize(times, batch), "warmup": int(job.warmup)}


def _reply(message: Mapping[str, Any]) -> None:
    sys.stdout.write(f"{REPLY_PREFIX}{json.dumps(message)}\n")
    sys.stdout.flush()


def _rounds(job: RoundsJob, loaded: _Loaded) -> dict[str, Any]:
    """Stay loaded and time on request: the parent hands each loaded runner a share of every round in turn.

    Commands, one JSON line each on stdin: `warm` (batch, warmup: replies the median ns per run), `time`
    (batch, count: replies that share's median ms), `summary` (batch: replies the batch's statistics),
    `finish`. Only one child runs at a time; the others wait on their stdin, so drift on the machine
    lands on every runner of a round alike.
    """
    from modelport.harness.latency import summarize
    from modelport.timing import timed_loop, warm_up

    times: dict[int, list[int]] = {}
    rounds: dict[int, list[float]] = {}
    warmups: dict[int, int] = {}
    runner, inputs = loaded.runner, loaded.inputs
    _reply({"ready": True, "load_seconds": loaded.load_seconds, "rss_before": loaded.rss_before})
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "finish":
            break
        batch = int(command["batch"])
        if command["cmd"] == "summary":
            peak = _peak_rss()  # the batches run in order, so this is the peak up to and including this one
            _reply({**summarize(np.asarray(times[batch], dtype=np.int64), batch), "warmup": warmups[batch],
                    "rounds": len(rounds[batch]), "round_ms": rounds[batch], "peak_rss_bytes": peak,
                    "runner_rss_bytes": max(0, peak - loaded.rss_before)})
            continue
        feeds = batch_of(inputs, 0, batch)
        if command["cmd"] == "warm":
            warmups[batch] = int(command["warmup"])
            _reply({"per_run_ns": float(np.median(warm_up(runner.run, feeds, warmups[batch])))})
            continue
        slot = times.setdefault(batch, [])
        start = len(slot)
        slot.extend([0] * int(command["count"]))
        timed_loop(runner.run, feeds, slot, start, len(slot))
        rounds.setdefault(batch, []).append(float(np.median(slot[start:])) / 1e6)
        _reply({"median_ms": rounds[batch][-1]})
    return {"batches": sorted(times)}


def _pin_torch_threads(threads: int) -> None:
    """Pin torch's intra-op threads where torch is in this process; never import it for that."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


Handler = Callable[[Any, int], dict[str, Any]]  # (job, threads) -> result


def _measuring(measure: Callable[[Any, _Loaded], dict[str, Any]]) -> Handler:
    """A runner job's handler: load the inputs and the runner, measure, add what loading it cost."""

    def handler(job: RunnerJob, threads: int) -> dict[str, Any]:
        with np.load(job.inputs) as data:
            inputs = {k: data[k] for k in data.files}
        rss_before = _rss()
        start = time.perf_counter()
        runner = load_runner(job.runner, threads)
        load_seconds = time.perf_counter() - start
        _pin_torch_threads(threads)  # a runtime that brought torch along (TensorRT's buffers) runs pinned too
        measured = measure(job, _Loaded(runner, inputs, load_seconds, rss_before))
        peak = _peak_rss()
        return {**measured, "threads": threads, "load_seconds": load_seconds, "peak_rss_bytes": peak,
                "runner_rss_bytes": max(0, peak - rss_before)}

    return handler


HANDLERS: dict[type[Job], Handler] = {
    ProbeJob: _probe, ExportJob: _export, BuildJob: _build, TuneJob: _tune, DebugJob: _debug,
    FidelityJob: _measuring(_fidelity),
    LatencyJob: _measuring(_latency), RoundsJob: _measuring(_rounds),
}


def _child(job_path: str) -> int:
    envelope = json.loads(Path(job_path).read_text())
    result_path = Path(envelope["result"])
    threads = int(envelope["threads"])
    try:
        if needs_torch(envelope):
            import torch  # noqa: F401 - imported (and its threads pinned) before the job runs it
        _pin_torch_threads(threads)
        job = Job.from_json(envelope)
        result = {"ok": True, **HANDLERS[type(job)](job, threads)}
        code = 0
    except Exception as exc:
        import traceback

        traceback.print_exc()
        from modelport.errors import ModelportError

        message = str(exc) if isinstance(exc, ModelportError) else f"{type(exc).__name__}: {exc}"
        message = " ".join(message.split("\n"))
        result = {"ok": False, "error": message, "error_type": type(exc).__name__}
        code = 1
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=str))
    tmp.replace(result_path)
    return code


def _serve(modules: list[str]) -> int:
    import importlib
    import os
    import traceback

    for module in modules:  # torch among them for the children that run it: they start warm
        try:
            importlib.import_module(module)
        except Exception:  # the child imports it again and reports the error where it belongs, in its row
            traceback.print_exc()

    for line in sys.stdin:
        job_path, _, log_path = line.rstrip("\n").partition("\t")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                os.dup2(fd, 2)
                os.close(fd)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.close(null)
                faulthandler.enable()
                code = _child(job_path)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        sys.stdout.write(f"{STARTED_PREFIX}{pid}\n")
        sys.stdout.flush()
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(f"{EXIT_PREFIX}{os.waitstatus_to_exitcode(status)}\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    import faulthandler

    faulthandler.enable()
    sys.exit(_serve(sys.argv[2:]) if sys.argv[1:2] == ["--serve"] else _child(sys.argv[1]))

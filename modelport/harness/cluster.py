"""Where the bench's jobs run: local processes (isolate.Isolator, the default) or a Ray cluster.

An executor (isolate.Executor) runs one job (jobs.py) and returns its `isolate.Outcome`: `run(job, *,
name, timeout, progress)`. The Isolator is the local one. `Cluster` is the Ray one: each job is a Ray task that runs
it on a node, in that node's own Isolator, so isolation, thread pinning and crash reasons are as local.
Exports, builds and probes run on any node with a CPU free; the runners' jobs (fidelity and latency)
run on the nodes started with a device label (`--measure-on LABEL`: a Ray custom resource), holding
every CPU of the node so that nothing else runs beside a measurement. Each label (or set of labels
sharing a node) gets its own `matrix.MatrixRun` in a thread of the driver: one measurement per node at
a time, devices side by side, and every row written to the driver's results.jsonl as it finishes.

Files travel through Ray's object store: the ONNX export, an artifact directory and the evaluation
inputs go to the node as tar bytes, and what a job writes (the export, the artifact, the fidelity
outputs) comes back. With `shared=True` the output directory is at the same path on every node
(a network filesystem) and nothing is copied.

Faults: a task whose node dies is retried once by Ray on another node with the label; when no live
node offers the label any more, the row fails with that reason, and the next run re-measures it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.errors import BadInput, Unavailable
from modelport.harness.isolate import Executor, Isolator, Outcome
from modelport.harness.jobs import BuildJob, ExportJob, FidelityJob, Job, RunnerJob

if TYPE_CHECKING:
    from modelport.harness.matrix import Context, PlanItem

SCRATCH = "@modelport-scratch@"  # stands for the node's scratch directory in a job's paths
POLL_S = 0.5  # how often the driver checks that a running task's node is still alive
TASK_RETRIES = 1  # Ray re-runs a task whose node died, on another node that can take it
INSTALL_HINT = "Install the cluster extra: pip install 'modelport[cluster]'."
Progress = Callable[[float, float], None]


# -- files as bytes -------------------------------------------------------------------------------------


def pack(path: Path) -> bytes:
    """A file (as its one entry) or a directory (its entries relative to it) as an uncompressed tar."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(path, arcname=path.name if path.is_file() else ".")
    return buffer.getvalue()


def unpack(blob: bytes, path: Path) -> None:
    """Write what `pack` made to `path`, whole or not at all (an old file or directory there is replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
            members = tar.getmembers()
            tar.extractall(staging, filter="data")
        one_file = len(members) == 1 and members[0].isfile()
        new = staging / members[0].name if one_file else staging
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        os.replace(new, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def transfers(job: Job) -> tuple[Job, dict[str, Path], dict[str, Path]]:
    """The job as a node runs it (its paths under SCRATCH), the driver's files it reads (scratch name ->
    path, those that exist) and the ones it writes back (scratch name -> the driver's path)."""
    def local(name: str) -> str:
        return f"{SCRATCH}/{name}"

    sends: dict[str, Path] = {}
    if isinstance(job, ExportJob):
        return replace(job, onnx_dir=local("onnx")), sends, {"onnx": Path(job.onnx_dir)}
    if isinstance(job, BuildJob):
        for name, path in (("onnx", Path(job.onnx_dir)), ("artifact", Path(job.out))):
            if path.exists():  # the export it builds from; an earlier build of it, which it may reuse
                sends[name] = path
        return replace(job, onnx_dir=local("onnx"), out=local("artifact")), sends, {"artifact": Path(job.out)}
    if isinstance(job, RunnerJob):
        runner = dict(job.runner)
        if runner.get("kind") == "artifact":
            sends["artifact"], runner["path"] = Path(runner["path"]), local("artifact")
        sends["inputs.npz"] = Path(job.inputs)
        moved = replace(job, runner=runner, inputs=local("inputs.npz"))
        if isinstance(job, FidelityJob):
            return replace(moved, outputs=local("outputs.npz")), sends, {"outputs.npz": Path(job.outputs)}
        return moved, sends, {}
    return job, sends, {}


def _in_scratch(value: Any, scratch: str) -> Any:
    if isinstance(value, str):
        return value.replace(SCRATCH, scratch)
    if isinstance(value, dict):
        return {k: _in_scratch(v, scratch) for k, v in value.items()}
    if isinstance(value, list):
        return [_in_scratch(v, scratch) for v in value]
    return value


# -- the node's side ------------------------------------------------------------------------------------

_NODE_ISOLATORS: dict[int, Isolator] = {}  # per thread count, kept for the life of the Ray worker process


def node_info(label: str | None) -> dict[str, Any]:
    """The node a job ran on, as rows record it: its label, Ray node id, address, host name and machine."""
    import ray

    from modelport.machine import machine_summary

    return {"label": label, "node_id": ray.get_runtime_context().get_node_id(),
            "ip": ray.util.get_node_ip_address(), "hostname": socket.gethostname(), "machine": machine_summary()}


def node_task(job_json: dict[str, Any], names: list[str], returns: list[str], threads: int, timeout: float,
              name: str, label: str | None, *blobs: bytes) -> dict[str, Any]:
    """A Ray task: unpack the job's files into a scratch directory, run it in this node's Isolator, and
    return its outcome, its log and the files it wrote, as bytes."""
    scratch = Path(tempfile.mkdtemp(prefix="modelport-job-"))
    try:
        for file_name, blob in zip(names, blobs, strict=True):
            unpack(blob, scratch / file_name)
        job = Job.from_json(_in_scratch(job_json, str(scratch)))
        isolator = _NODE_ISOLATORS.get(threads)
        if isolator is None:
            isolator = _NODE_ISOLATORS[threads] = Isolator(
                Path(tempfile.gettempdir()) / f"modelport-node-{os.getpid()}", threads)
        outcome = isolator.run(job, name=name, timeout=timeout)
        log = outcome.log.read_text(errors="replace") if outcome.log.is_file() else ""
        outcome.log.unlink(missing_ok=True)
        files = {f: pack(scratch / f) for f in returns if outcome.ok and (scratch / f).exists()}
        return {"ok": outcome.ok, "result": outcome.result, "error": outcome.error, "returncode": outcome.returncode,
                "seconds": outcome.seconds, "log": log, "files": files, "node": node_info(label)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# -- the driver's side ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterSettings:
    """Which cluster, which device labels to measure on, whether the output directory is shared."""

    address: str
    devices: tuple[str, ...] = ()
    shared: bool = False


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise Unavailable(f"--cluster needs Ray, which is not installed ({exc}).", hint=INSTALL_HINT) from exc
    return ray


CONNECT_S = 10


def _reachable(address: str) -> None:
    """A HOST:PORT that nothing answers on is an error in seconds (Ray itself retries for minutes)."""
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or "://" in address:
        return  # "auto", ray://..., or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_S).close()
    except OSError as exc:
        raise BadInput(f"No Ray cluster answers at {address} ({exc.strerror or exc}).",
                       hint="Start its head with `ray start --head --port PORT` (README: Benching on a Ray "
                            "cluster), and pass HEAD_IP:PORT as --cluster or RAY_ADDRESS.") from exc


class Cluster:
    """The Ray executor: jobs as tasks, exports and builds anywhere (each done once), runner jobs on devices."""

    def __init__(self, settings: ClusterSettings, workdir: Path, threads: int) -> None:
        self.ray = _ray()
        self.settings = settings
        self.workdir = workdir
        self.threads = threads
        _reachable(settings.address)
        try:
            self.ray.init(address=settings.address, logging_level="ERROR", log_to_driver=False,
                          configure_logging=True)
        except Exception as exc:  # ConnectionError, RuntimeError, ValueError: Ray's words say why
            raise BadInput(f"Cannot connect to the Ray cluster at {settings.address!r}: {type(exc).__name__}: "
                           f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                           hint="Start one with `ray start --head` (README: Benching on a Ray cluster), and "
                                "pass its address as --cluster HOST:PORT or RAY_ADDRESS.") from exc
        self._task = self.ray.remote(node_task)
        self._lock = threading.Lock()
        self._once: dict[str, tuple[threading.Lock, list[Outcome]]] = {}  # an export or a build, by its job
        self._sent: dict[Path, Any] = {}  # object refs of files already in the object store
        try:
            self.groups = self._device_groups(settings.devices)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ray.shutdown()

    # -- placement --------------------------------------------------------------------------------------

    def _live_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.ray.nodes() if n.get("Alive")]

    def _device_groups(self, labels: Sequence[str]) -> list[tuple[str, ...]]:
        """Labels that share no node, each alone; labels offered by one node, together (measured in turn).
        A label that no live node offers is an error now, before anything runs."""
        nodes = self._live_nodes()
        offered = sorted({k for n in nodes for k in n.get("Resources", {})
                          if k != "CPU" and not k.startswith(("node:", "memory", "object_store_memory", "GPU"))})
        missing = [label for label in labels if not any(n["Resources"].get(label, 0) >= 1 for n in nodes)]
        if missing:
            raise BadInput(f"--measure-on {','.join(missing)}: no node of the cluster at {self.settings.address} "
                           f"offers {'that label' if len(missing) == 1 else 'those labels'}.",
                           hint=f"Labels its nodes offer: {', '.join(offered) or 'none'}. Start a device node with "
                                "`ray start --address HEAD:PORT --resources '{\"LABEL\": 1}'`.")
        groups: list[tuple[set[str], set[str]]] = []  # (labels, node ids)
        for label in labels:
            ids = {n["NodeID"] for n in nodes if n["Resources"].get(label, 0) >= 1}
            joined = [g for g in groups if g[1] & ids]
            merged = ({label}.union(*(g[0] for g in joined)), ids.union(*(g[1] for g in joined)))
            groups = [g for g in groups if g not in joined] + [merged]
        return [tuple(lab for lab in labels if lab in g[0]) for g in groups]

    def _placement(self, label: str | None) -> dict[str, Any]:
        if label is None:
            return {"num_cpus": 1}
        cpus = min((n["Resources"].get("CPU", 1) for n in self._live_nodes() if n["Resources"].get(label, 0) >= 1),
                   default=1)
        return {"num_cpus": cpus, "resources": {label: 1}}  # the whole node: nothing runs beside a measurement

    def _offered(self, label: str) -> bool:
        return any(n["Resources"].get(label, 0) >= 1 for n in self._live_nodes())

    # -- running --------------------------------------------------------------------------------------

    def run(self, job: Job, *, name: str, timeout: float, progress: Progress | None = None) -> Outcome:
        """Run `job` on any node; an export or a build asked for again (by another device's run) is done once."""
        if not isinstance(job, ExportJob | BuildJob):
            return self._remote(job, name=name, timeout=timeout, label=None)
        key = json.dumps(job.to_json(), sort_keys=True, default=str)
        with self._lock:
            lock, done = self._once.setdefault(key, (threading.Lock(), []))
        with lock:
            if not done:
                done.append(self._remote(job, name=name, timeout=timeout, label=None))
            return done[0]

    def on(self, label: str) -> Placed:
        """The executor of one device's run: its runners' jobs on the nodes with `label`, the rest anywhere."""
        return Placed(self, label)

    def _ref(self, path: Path) -> Any:
        with self._lock:
            ref = self._sent.get(path)
        if ref is None:
            ref = self.ray.put(pack(path))
            with self._lock:
                self._sent[path] = ref
        return ref

    def _remote(self, job: Job, *, name: str, timeout: float, label: str | None) -> Outcome:
        start = time.perf_counter()
        log = self.workdir / f"{name}.log"
        if self.settings.shared:
            moved, sends, returns = job, {}, {}
        else:
            moved, sends, returns = transfers(job)
        refs = [self._ref(p) for p in sends.values()]
        task = self._task.options(max_retries=TASK_RETRIES, **self._placement(label))
        ref = task.remote(moved.to_json(), list(sends), list(returns), self.threads, timeout, name, label, *refs)
        deadline = time.monotonic() + 2 * timeout + 60  # the node's Isolator kills a job at `timeout`
        try:
            while not self.ray.wait([ref], timeout=POLL_S)[0]:
                gone = label is not None and not self._offered(label)
                if gone or time.monotonic() > deadline:
                    self.ray.cancel(ref, force=True)
                    why = (f"no live node offers {label!r} any more (its node left the cluster while running it)"
                           if gone else f"its task did not finish within {2 * timeout + 60:g} s and was cancelled")
                    return self._failed(why, log, start)
            value = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            text = str(exc).strip().splitlines()
            return self._failed(f"its node failed: {type(exc).__name__}" + (f": {text[0]}" if text else ""), log,
                                start)
        if value["log"]:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(value["log"])
        for file_name, blob in value["files"].items():
            unpack(blob, returns[file_name])
            with self._lock:
                self._sent.pop(returns[file_name], None)
        result = value["result"]
        if isinstance(result, dict):  # where it ran, and how long the job took there (the rest is the cluster's)
            result = {**result, "node": {**value["node"], "job_seconds": value["seconds"]}}
        return Outcome(value["ok"], result, value["error"], value["returncode"], time.perf_counter() - start, log)

    @staticmethod
    def _failed(reason: str, log: Path, start: float) -> Outcome:
        return Outcome(False, None, reason, None, time.perf_counter() - start, log)

    # -- the plan -------------------------------------------------------------------------------------

    def plan(self, plan: list[PlanItem]) -> list[PlanItem]:
        """Every item once per device label (the items as they are where no label is given)."""
        if not self.settings.devices:
            return plan
        return [replace(item, device=label) for label in self.settings.devices for item in plan]

    def execute(self, ctx: Context, plan: list[PlanItem]) -> None:
        """One MatrixRun per group of device labels, each in its own thread; the first error is raised."""
        from modelport.harness.matrix import MatrixRun

        if not self.settings.devices:
            MatrixRun(ctx, self).run(plan)
            return
        errors: list[BaseException] = []

        def device_run(labels: tuple[str, ...]) -> None:
            try:
                for label in labels:
                    MatrixRun(ctx, self.on(label)).run([i for i in plan if i.device == label])
            except BaseException as exc:  # re-raised in the driver's thread below
                errors.append(exc)

        threads = [threading.Thread(target=device_run, args=(g,), name=f"modelport-{'+'.join(g)}", daemon=True)
                   for g in self.groups]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(timeout=POLL_S)
        if errors:
            raise errors[0]


class Placed:
    """One device's executor: runner jobs (fidelity, latency) on the nodes with its label, the rest via Cluster."""

    def __init__(self, cluster: Cluster, label: str) -> None:
        self.cluster = cluster
        self.label = label

    def run(self, job: Job, *, name: str, timeout: float, progress: Progress | None = None) -> Outcome:
        if isinstance(job, RunnerJob):
            return self.cluster._remote(job, name=f"{self.label}-{name}", timeout=timeout, label=self.label)
        return self.cluster.run(job, name=name, timeout=timeout)


@contextlib.contextmanager
def executor(settings: ClusterSettings | None, workdir: Path, threads: int) -> Iterator[Isolator | Cluster]:
    """The Isolator without cluster settings, else a Cluster connected to `settings.address`."""
    if settings is None:
        with Isolator(workdir, threads) as isolator:
            yield isolator
        return
    if not settings.address:
        raise BadInput("--cluster needs the address of a Ray cluster (HOST:PORT, or set RAY_ADDRESS).")
    with Cluster(settings, workdir, threads) as cluster:
        yield cluster


def plan_for(executor: Executor, plan: list[PlanItem]) -> list[PlanItem]:
    """The plan as `executor` measures it: once per device label on a cluster."""
    return executor.plan(plan) if isinstance(executor, Cluster) else plan


def execute(ctx: Context, plan: list[PlanItem], executor: Executor) -> None:
    """Measure the plan with `executor`: the matrix run locally, one per device on a cluster."""
    from modelport.harness.matrix import MatrixRun

    if isinstance(executor, Cluster):
        executor.execute(ctx, plan)
    else:
        MatrixRun(ctx, executor).run(plan)

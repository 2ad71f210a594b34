"""The bench on a Ray cluster (harness/cluster.py): a real two-node cluster on loopback, started here.

The head offers the device label `dev_a`, a second node `dev_b`, each with one CPU, in a private temp dir,
each `ray start --block` in a session of its own: the finalizer ends exactly those process groups (`ray
stop` would end every Ray process of this user on the machine, not only these).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelport.errors import BadInput
from modelport.harness import cluster, jobs, results

NODE_START_S = 90
DIGITS = "modelport.examples:digits_cnn"
BENCH = {"backends": "onnxruntime", "precisions": "fp32", "evaluation": "modelport.examples:digits_evaluation",
         "eval_size": 64, "iterations": 30, "warmup": 3, "threads": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalCluster:
    """A head and worker nodes on 127.0.0.1, each `ray start --block` in its own session."""

    def __init__(self, temp: Path) -> None:
        self.temp = temp
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": os.pathsep.join(sys.path),
                    # a dead node is noticed in ~2 s rather than ~30 s
                    "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "4"}

    def start(self, label: str, *, head: bool = False) -> None:
        ray = [str(Path(sys.executable).parent / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1",
               "--num-cpus", "1", "--resources", json.dumps({label: 1}), "--object-store-memory", str(80 * 2**20),
               "--dashboard-agent-listen-port", str(_free_port()), "--disable-usage-stats"]
        if head:
            ray += ["--head", "--port", str(self.port), "--temp-dir", str(self.temp), "--include-dashboard=false",
                    "--ray-client-server-port", str(_free_port())]
        else:
            ray += ["--address", self.address]
        with open(self.temp / f"{label}.log", "ab") as log:
            self.nodes[label] = subprocess.Popen(ray, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                                 start_new_session=True)
        self.wait_for(label)

    def live(self) -> dict[str, str]:
        """Label -> node id of the live nodes, as the cluster's GCS sees them (asked in a fresh process)."""
        code = (f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR', log_to_driver=False); "
                "print(json.dumps({k: n['NodeID'] for n in ray.nodes() if n['Alive'] for k in n['Resources'] "
                "if k.startswith('dev_')}))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=self.env, timeout=60)
        return json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else {}

    def wait_for(self, label: str) -> None:
        deadline = time.monotonic() + NODE_START_S
        while label not in self.live():
            if self.nodes[label].poll() is not None or time.monotonic() > deadline:
                log = (self.temp / f"{label}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the {label} node did not start: {log}")
            time.sleep(1)

    def kill(self, label: str) -> None:
        """End a node at once, as a machine that loses power would (SIGKILL to its whole process group)."""
        proc = self.nodes.pop(label)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for label in list(self.nodes):
            proc = self.nodes[label]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
            self.kill(label)  # whatever of the group is left


@pytest.fixture(scope="module")
def ray_cluster(digits) -> Iterator[LocalCluster]:
    """The head (dev_a) and a second node (dev_b); stopped at the end whatever happens. `digits` trains the
    example's weights into this session's cache first, which the nodes read (they inherit MODELPORT_CACHE)."""
    pytest.importorskip("ray", reason="the cluster tests need Ray: pip install 'modelport[cluster]'")
    temp = Path(tempfile.mkdtemp(prefix="mpray", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    local = LocalCluster(temp)
    try:
        local.start("dev_a", head=True)
        local.start("dev_b")
        yield local
    finally:
        local.stop()
        shutil.rmtree(temp, ignore_errors=True)


def _rows(out: Path) -> list[dict]:
    return [r for r in results.read(out / results.RESULTS) if r["type"] == "row"]


def test_a_label_no_node_offers_is_bad_input_before_anything_runs(ray_cluster, tmp_path):
    from modelport.harness.api import bench

    with pytest.raises(BadInput, match="dev_x") as caught:
        bench(DIGITS, out=tmp_path, **BENCH,
              on_cluster=cluster.ClusterSettings(ray_cluster.address, ("dev_a", "dev_x")))
    assert caught.value.exit_code == 2
    assert "dev_a" in str(caught.value) and "dev_b" in str(caught.value)  # the labels the nodes do offer
    assert not (tmp_path / results.RESULTS).exists()


def test_each_device_measures_on_its_node_and_a_dead_node_loses_no_finished_row(ray_cluster, tmp_path):
    from modelport.harness.api import bench

    nodes = ray_cluster.live()
    settings = cluster.ClusterSettings(ray_cluster.address, ("dev_a", "dev_b"))
    killed: list[dict] = []

    def kill_dev_b_after_its_first_row(row: dict) -> None:
        if row["device"] == "dev_b" and not killed:
            killed.append(row)
            ray_cluster.kill("dev_b")

    bench(DIGITS, out=tmp_path, **BENCH, on_cluster=settings, on_row=kill_dev_b_after_its_first_row)
    first = _rows(tmp_path)
    assert {(r["backend"], r["device"]) for r in first} == {(b, d) for b in ("pytorch", "onnxruntime")
                                                           for d in ("dev_a", "dev_b")}
    for row in first:
        if row["status"] == "ok":
            node = row["latency"]["node"]
            assert (node["label"], node["node_id"]) == (row["device"], nodes[row["device"]])
            assert node["machine"]["cores"] and row["fidelity"]["metric"]["value"] > 90
    assert killed[0]["status"] == "ok"
    lost = [r for r in first if r["status"] != "ok"]
    assert lost and {r["device"] for r in lost} == {"dev_b"}  # dev_a's rows went on without it
    assert all("dev_b" in r["reason"] for r in lost)

    ray_cluster.start("dev_b")  # the device is back: the same bench measures only what is missing
    renewed = ray_cluster.live()["dev_b"]
    report = bench(DIGITS, out=tmp_path, **BENCH, on_cluster=settings)
    again = _rows(tmp_path)[len(first):]
    assert {r["key"] for r in again} == {r["key"] for r in lost}  # finished rows were kept, not re-measured
    assert all(r["status"] == "ok" and r["latency"]["node"]["node_id"] == renewed for r in again)
    shown = {(r["backend"], r["device"]): r["status"] for r in report["rows"]}
    assert set(shown.values()) == {"ok"} and len(shown) == 4
    assert {rec["device"] for rec in report["recommendations"]} == {"dev_a", "dev_b"}


def test_files_travel_as_bytes_and_land_whole(tmp_path):
    artifact = tmp_path / "artifact"
    (artifact / "sub").mkdir(parents=True)
    (artifact / "model.onnx").write_bytes(b"\x00onnx")
    (artifact / "sub" / "manifest.json").write_text("{}")
    inputs = tmp_path / "inputs.npz"
    inputs.write_bytes(b"npz")
    target = tmp_path / "there" / "artifact"
    target.mkdir(parents=True)
    (target / "stale.bin").write_bytes(b"old")
    cluster.unpack(cluster.pack(artifact), target)
    cluster.unpack(cluster.pack(inputs), tmp_path / "there" / "inputs.npz")
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        "model.onnx", "sub", "sub/manifest.json"]
    assert (tmp_path / "there" / "inputs.npz").read_bytes() == b"npz"
    assert [p.name for p in (tmp_path / "there").iterdir() if p.name.startswith(".")] == []


def test_a_job_runs_on_a_node_with_its_paths_under_the_node_scratch_dir(tmp_path):
    (tmp_path / "artifacts" / "ort").mkdir(parents=True)
    (tmp_path / "inputs.npz").write_bytes(b"")
    job = jobs.FidelityJob(runner={"kind": "artifact", "path": str(tmp_path / "artifacts" / "ort")},
                           inputs=str(tmp_path / "inputs.npz"), chunk=8, outputs=str(tmp_path / "out.npz"))
    moved, sends, returns = cluster.transfers(job)
    assert moved.runner["path"].startswith(cluster.SCRATCH) and moved.outputs.startswith(cluster.SCRATCH)
    assert sends == {"artifact": tmp_path / "artifacts" / "ort", "inputs.npz": tmp_path / "inputs.npz"}
    assert returns == {"outputs.npz": tmp_path / "out.npz"}
    build = jobs.BuildJob(model={}, onnx_dir=str(tmp_path / "onnx"), backend="onnxruntime", precision="fp32",
                          options={}, out=str(tmp_path / "artifacts" / "ort"), calibration=None)
    _, sends, returns = cluster.transfers(build)
    assert sends == {"artifact": tmp_path / "artifacts" / "ort"}  # an earlier build it may reuse; no export yet
    assert returns == {"artifact": tmp_path / "artifacts" / "ort"}


def test_without_cluster_nothing_imports_ray():
    code = ("import sys; from modelport.cli import app; from modelport.harness import api, commands; "
            "print('ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_cluster_flags_need_a_cluster():
    from typer.testing import CliRunner

    from modelport.cli import app

    result = CliRunner().invoke(app, ["bench", DIGITS, "--measure-on", "dev_a"], env={"RAY_ADDRESS": None})
    assert result.exit_code == 2
    assert "--measure-on needs --cluster" in result.output

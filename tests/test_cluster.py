"""The bench on a Ray cluster (harness/cluster.py): a real two-node cluster on loopback, started here.

The head offers the device label `dev_a`, a second node `dev_b`, each with one CPU, in a private temp dir
(benchmarks/raycluster.py); the fixture stops exactly those nodes at the end, whatever happens.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.raycluster import LocalCluster, local_cluster
from modelport.errors import BadInput
from modelport.harness import cluster, jobs, results

DIGITS = "modelport.examples:digits_cnn"
BENCH = {"backends": "onnxruntime", "precisions": "fp32", "evaluation": "modelport.examples:digits_evaluation",
         "eval_size": 64, "iterations": 30, "warmup": 3, "threads": 1}


@pytest.fixture(scope="module")
def ray_cluster(digits) -> Iterator[LocalCluster]:
    """The head (dev_a) and a second node (dev_b). `digits` trains the example's weights into this session's
    cache first, which the nodes read (they inherit MODELPORT_CACHE)."""
    pytest.importorskip("ray", reason="the cluster tests need Ray: pip install 'modelport[cluster]'")
    with local_cluster("dev_a", "dev_b") as local:
        yield local


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


def test_an_address_nothing_answers_on_is_bad_input_at_once(tmp_path):
    pytest.importorskip("ray", reason="the cluster tests need Ray: pip install 'modelport[cluster]'")
    from modelport.harness.api import bench

    with socket.socket() as s:  # a port that was free a moment ago, now closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BadInput, match=f"No Ray cluster answers at 127.0.0.1:{port}"):
        bench(DIGITS, out=tmp_path, **BENCH, on_cluster=cluster.ClusterSettings(f"127.0.0.1:{port}", ("dev_a",)))
    assert not (tmp_path / results.RESULTS).exists()

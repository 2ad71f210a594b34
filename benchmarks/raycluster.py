"""A throwaway Ray cluster on this machine: a head and device nodes on 127.0.0.1, for the cluster test and
benchmark (benchmarks/cluster.py). Each node is `ray start --block` in a session of its own, so `stop`
ends exactly these process groups (`ray stop` would end every Ray process of this user on the machine).
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

NODE_START_S = 180


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
            ray += ["--head", "--port", str(self.port), "--temp-dir", str(self.temp), "--include-dashboard=false"]
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
        try:
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=self.env,
                                  timeout=60)
        except subprocess.TimeoutExpired:
            return {}
        lines = done.stdout.strip().splitlines()
        return json.loads(lines[-1]) if done.returncode == 0 and lines else {}

    def wait_for(self, label: str) -> None:
        """Until `ray start` says it started and the GCS lists the node as alive."""
        deadline = time.monotonic() + NODE_START_S
        log = self.temp / f"{label}.log"
        while "Ray runtime started" not in log.read_text(errors="replace") or label not in self.live():
            if self.nodes[label].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {label} node did not start: {log.read_text(errors='replace')[-2000:]}")
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
                proc.wait(timeout=5)
            self.kill(label)  # whatever of the group is left


@contextlib.contextmanager
def local_cluster(*labels: str) -> Iterator[LocalCluster]:
    """A head with the first label and one node per further label, one CPU each; stopped whatever happens."""
    temp = Path(tempfile.mkdtemp(prefix="mpray", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    local = LocalCluster(temp)
    try:
        local.start(labels[0], head=True)
        for label in labels[1:]:
            local.start(label)
        yield local
    finally:
        local.stop()
        shutil.rmtree(temp, ignore_errors=True)

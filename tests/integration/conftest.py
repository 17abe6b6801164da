"""Fixtures for the integration tests: real merpati-node processes on
127.0.0.1, started and stopped with ./dev up / ./dev down.

    build_dir, source_dir   paths (MERPATI_BUILD_DIR, else <repo>/build)
    cluster                 one storage node in <tmp_path>/c, per test
    bin(name)               path of a built binary

A test never picks ports or PIDs itself: ./dev up chooses free ports and
records the PIDs in cluster.env, and the fixture reads them from there.
Nodes are numbered from 0 (their directories are node0, node1, ...).
"""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

SOURCE_DIR = Path(os.environ.get("MERPATI_SOURCE_DIR")
                  or Path(__file__).resolve().parents[2])
BUILD_DIR = Path(os.environ.get("MERPATI_BUILD_DIR")
                 or SOURCE_DIR / "build").resolve()

# Where the build puts each binary (the CMake target's folder).
_BINARIES = {
    "merpati-node": "storage-node/merpati-node",
    "merpatictl": "tools/merpatictl",
    "mp-loadclient": "tests/integration/mp-loadclient",
    "mp-bench-append": "tools/bench/mp-bench-append",
}


def bin(name):
    """Path of a built binary; fails the test if it is not built."""
    path = BUILD_DIR / _BINARIES.get(name, name)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is not built (ninja -C {BUILD_DIR} {name})")
    return str(path)


def dev(*args, timeout=120):
    """Run ./dev ARGS against this build; AssertionError if it fails."""
    env = dict(os.environ, MERPATI_BUILD_DIR=str(BUILD_DIR))
    r = subprocess.run([str(SOURCE_DIR / "dev"), *args], env=env,
                       stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"./dev {' '.join(args)} exited {r.returncode}"
                             f"\n{r.stdout}{r.stderr}")
    return r


def read_env(path):
    """cluster.env as a dict (KEY=value lines, values maybe "quoted")."""
    env = {}
    for line in Path(path).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            env[key] = value[1:-1] if value[:1] == '"' else value
    return env


def _gone(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


class Cluster:
    def __init__(self, path):
        self.dir = Path(path)
        self.reload()

    def reload(self):
        self.env = read_env(self.dir / "cluster.env")
        self.addrs = self.env["NODE_ADDRS"].split()
        self.addr = self.env["MERPATI_NODE"]
        self.pids = [int(p) for p in self.env["NODE_PIDS"].split()]

    def ctl(self, *args, input=None, check=True, node=None):
        """merpatictl ARGS against the first node (or node index `node`)."""
        addr = self.addr if node is None else self.addrs[node]
        cmd = [bin("merpatictl"), "--node", addr, *args]
        stdin = {"input": input} if input is not None else \
            {"stdin": subprocess.DEVNULL}
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                           **stdin)
        if check and r.returncode != 0:
            raise AssertionError(
                f"merpatictl {' '.join(args)} exited {r.returncode}\n"
                f"stderr: {r.stderr}\nstdout: {r.stdout}")
        return r

    def restart(self, node=None):
        """Restart the dead nodes (or stop and restart node `node`)."""
        extra = [] if node is None else ["--node", str(node)]
        dev("restart", "--dir", str(self.dir), *extra)
        self.reload()

    def kill9(self, i):
        """SIGKILL node i and wait until its process is gone."""
        os.kill(self.pids[i], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not _gone(self.pids[i]):
            assert time.monotonic() < deadline, f"pid {self.pids[i]} survived SIGKILL"
            time.sleep(0.02)

    def node_log(self, i):
        return (self.dir / f"node{i}" / "node.log").read_text(errors="replace")


@pytest.fixture(scope="session")
def build_dir():
    return BUILD_DIR


@pytest.fixture(scope="session")
def source_dir():
    return SOURCE_DIR


@pytest.fixture
def cluster(tmp_path):
    """One storage node, started for this test and stopped after it. The
    teardown fails the test if the node did not stop on SIGTERM or left a
    sanitizer report in its log."""
    path = tmp_path / "c"
    dev("up", "--dir", str(path))
    try:
        yield Cluster(path)
    finally:
        dev("down", "--dir", str(path))

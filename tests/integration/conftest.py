"""Fixtures for the integration tests: a real etcd, real merpati-node and
merpati-frontend processes on 127.0.0.1, started and stopped with ./dev up /
./dev down.

    build_dir, source_dir   paths (MERPATI_BUILD_DIR, else <repo>/build)
    cluster                 etcd + one storage node + one frontend in
                            <tmp_path>/c, per test
    cluster3                etcd + three storage nodes + one frontend in
                            <tmp_path>/c3
    cluster_fe2             etcd + three storage nodes + two frontends in
                            <tmp_path>/cf2
    bin(name)               path of a built binary

What a Cluster offers (nodes are numbered from 0: node0, node1, ...):

    .dir, .env, .addr (node 0), .addrs, .pids   from DIR/cluster.env
    .etcd_endpoints ("127.0.0.1:PORT"), .etcd_pid, .cluster_name
    .ctl(*args, input=, check=True, node=)      merpatictl against a node
    .etcdctl(*args, check=True)                 etcdctl (API v3) against etcd
    .node_addr(i), .node_pid(i), .node_log(i)
    .kill9(i), .stop_node(i), .sigstop(i), .sigcont(i)
    .restart(node=None)     restart what is dead (or stop and restart node i)
    .start_node()           add a node (./dev up --add-node); returns its index
    .kill9_etcd(), .restart_etcd()

and its frontends (frontend0, frontend1, ...; i defaults to 0):

    .smtp_port(i), .submission_port(i), .submissions_port(i), .imap_port(i),
    .imaps_port(i), .pop3_port(i), .pop3s_port(i)
    .tls_ca                 the CA file that verifies the frontends'
                            certificate (for "localhost" and 127.0.0.1)
    .frontend_pid(i), .frontend_log(i), .frontend_pids
    .kill9_frontend(i), .stop_frontend(i)
    .start_frontend(i)      start a stopped frontend from its recorded
                            command line (same ports)
    .restart_frontend(i)    stop it if it runs, then start it the same way

A test never picks ports or PIDs itself: ./dev up chooses free ports and
records the PIDs in cluster.env, and the fixture reads them from there.
Every signal goes to a recorded PID only while that PID still runs the
recorded command line.
"""

import os
import shlex
import shutil
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
    "merpati-frontend": "frontend/merpati-frontend",
}

STOP_TIMEOUT = 15.0     # seconds a SIGTERMed node may take to exit


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


def _wait_gone(pid, timeout, what):
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        assert time.monotonic() < deadline, f"pid {pid} survived {what}"
        time.sleep(0.02)


def _etcd_env():
    """Our environment without ETCD_*/ETCDCTL_* (etcdctl reads its flags
    from those), with the v3 API."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ETCD_", "ETCDCTL_"))}
    env["ETCDCTL_API"] = "3"
    return env


class Cluster:
    def __init__(self, path):
        self.dir = Path(path)
        self.reload()

    def reload(self):
        self.env = read_env(self.dir / "cluster.env")
        self.addrs = self.env["NODE_ADDRS"].split()
        self.addr = self.env["MERPATI_NODE"]
        self.pids = [int(p) for p in self.env["NODE_PIDS"].split()]
        self.node_dirs = [Path(d) for d in self.env["NODE_DIRS"].split()]
        self.etcd_endpoints = self.env["ETCD_ENDPOINTS"]
        self.etcd_pid = int(self.env["ETCD_PID"])
        self.cluster_name = self.env["CLUSTER"]
        # Absent (a deployment without frontends): empty lists.
        self.frontend_pids = [int(p) for p in
                              self.env.get("FRONTEND_PIDS", "").split()]
        self.frontend_dirs = [Path(d) for d in
                              self.env.get("FRONTEND_DIRS", "").split()]
        self._fe_ports = {
            role: [int(p) for p in self.env.get(key, "").split()]
            for role, key in (("smtp", "FRONTEND_SMTP_PORTS"),
                              ("submission", "FRONTEND_SUBMISSION_PORTS"),
                              ("submissions", "FRONTEND_SUBMISSIONS_PORTS"),
                              ("imap", "FRONTEND_IMAP_PORTS"),
                              ("imaps", "FRONTEND_IMAPS_PORTS"),
                              ("pop3", "FRONTEND_POP3_PORTS"),
                              ("pop3s", "FRONTEND_POP3S_PORTS"))}
        self.tls_ca = self.env.get("TLS_CA")

    # ------------------------------------------------------------ clients

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

    def etcdctl(self, *args, check=True, timeout=30):
        """etcdctl ARGS (API v3) against the cluster's etcd; returns the
        CompletedProcess. check=True: AssertionError unless it exits 0."""
        etcdctl = shutil.which("etcdctl") or "/usr/bin/etcdctl"
        cmd = [etcdctl, f"--endpoints={self.etcd_endpoints}",
               "--dial-timeout=2s", "--command-timeout=5s", *args]
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout, env=_etcd_env())
        if check and r.returncode != 0:
            raise AssertionError(
                f"etcdctl {' '.join(args)} exited {r.returncode}\n"
                f"stderr: {r.stderr}\nstdout: {r.stdout}")
        return r

    # -------------------------------------------------------------- nodes

    def node_addr(self, i):
        return self.addrs[i]

    def node_pid(self, i):
        return self.pids[i]

    def node_log(self, i):
        return (self.dir / f"node{i}" / "node.log").read_text(errors="replace")

    def _ours(self, pid, proc_dir):
        """Assert that pid still runs the command recorded in proc_dir/cmd
        (a test must never signal a process it did not start)."""
        argv = shlex.split((proc_dir / "cmd").read_text())
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            raw = b""
        cmdline = [a.decode(errors="surrogateescape")
                   for a in raw.split(b"\0")[:-1]]
        assert cmdline[-len(argv):] == argv and not _gone(pid), \
            f"pid {pid} does not run {proc_dir}/cmd (any more)"

    def _signal_node(self, i, sig):
        self._ours(self.pids[i], self.node_dirs[i])
        os.kill(self.pids[i], sig)

    def kill9(self, i):
        """SIGKILL node i and wait until its process is gone."""
        self._signal_node(i, signal.SIGKILL)
        _wait_gone(self.pids[i], 10, "SIGKILL")

    def stop_node(self, i):
        """SIGTERM node i and wait until it has exited."""
        self._signal_node(i, signal.SIGTERM)
        _wait_gone(self.pids[i], STOP_TIMEOUT, f"SIGTERM for {STOP_TIMEOUT} s")

    def sigstop(self, i):
        """Freeze node i (SIGSTOP): it keeps its sockets but answers nothing."""
        self._signal_node(i, signal.SIGSTOP)

    def sigcont(self, i):
        """Let node i run again after sigstop(i)."""
        self._signal_node(i, signal.SIGCONT)

    def restart(self, node=None):
        """Restart the dead nodes and etcd (or stop and restart node
        `node`), from their recorded command lines."""
        extra = [] if node is None else ["--node", str(node)]
        dev("restart", "--dir", str(self.dir), *extra)
        self.reload()

    def start_node(self):
        """Add one node to the running deployment (./dev up --add-node);
        returns its index."""
        dev("up", "--dir", str(self.dir), "--add-node")
        self.reload()
        return len(self.addrs) - 1

    # ---------------------------------------------------------- frontends

    def smtp_port(self, i=0):
        return self._fe_ports["smtp"][i]

    def submission_port(self, i=0):
        return self._fe_ports["submission"][i]

    def submissions_port(self, i=0):
        return self._fe_ports["submissions"][i]

    def imap_port(self, i=0):
        return self._fe_ports["imap"][i]

    def imaps_port(self, i=0):
        return self._fe_ports["imaps"][i]

    def pop3_port(self, i=0):
        return self._fe_ports["pop3"][i]

    def pop3s_port(self, i=0):
        return self._fe_ports["pop3s"][i]

    def frontend_pid(self, i=0):
        return self.frontend_pids[i]

    def frontend_log(self, i=0):
        return (self.frontend_dirs[i] / "frontend.log").read_text(
            errors="replace")

    def _signal_frontend(self, i, sig):
        self._ours(self.frontend_pids[i], self.frontend_dirs[i])
        os.kill(self.frontend_pids[i], sig)

    def kill9_frontend(self, i=0):
        """SIGKILL frontend i and wait until its process is gone."""
        self._signal_frontend(i, signal.SIGKILL)
        _wait_gone(self.frontend_pids[i], 10, "SIGKILL")

    def stop_frontend(self, i=0):
        """SIGTERM frontend i and wait until it has exited."""
        self._signal_frontend(i, signal.SIGTERM)
        _wait_gone(self.frontend_pids[i], STOP_TIMEOUT,
                   f"SIGTERM for {STOP_TIMEOUT} s")

    def start_frontend(self, i=0):
        """Start stopped frontend i again from its recorded command line
        (same ports); returns once it logged fe_ready and greets."""
        assert _gone(self.frontend_pids[i]), \
            f"frontend{i} (pid {self.frontend_pids[i]}) still runs"
        self.restart_frontend(i)

    def restart_frontend(self, i=0):
        """Stop frontend i if it runs (SIGTERM, SIGKILL after 10 s), then
        start it from its recorded command line, as start_frontend."""
        dev("restart", "--dir", str(self.dir), "--frontend", str(i))
        self.reload()

    # --------------------------------------------------------------- etcd

    def kill9_etcd(self):
        """SIGKILL etcd and wait until its process is gone."""
        self._ours(self.etcd_pid, self.dir / "etcd")
        os.kill(self.etcd_pid, signal.SIGKILL)
        _wait_gone(self.etcd_pid, 10, "SIGKILL")

    def restart_etcd(self):
        """(Re)start etcd on its ports and data directory; returns once it
        is healthy."""
        dev("restart", "--dir", str(self.dir), "--etcd")
        self.reload()


def _deployment(path, nodes, frontends=1):
    dev("up", "--dir", str(path), "--nodes", str(nodes),
        "--frontends", str(frontends))
    try:
        yield Cluster(path)
    finally:
        dev("down", "--dir", str(path))
    # etcd preallocates a 64 MB write-ahead log; keep its log, not that.
    shutil.rmtree(path / "etcd" / "data", ignore_errors=True)


@pytest.fixture(scope="session")
def build_dir():
    return BUILD_DIR


@pytest.fixture(scope="session")
def source_dir():
    return SOURCE_DIR


@pytest.fixture
def cluster(tmp_path):
    """etcd, one storage node and one frontend, started for this test and
    stopped after it. The teardown fails the test if a process did not stop
    on SIGTERM or a node or frontend left a sanitizer report in its log."""
    yield from _deployment(tmp_path / "c", 1)


@pytest.fixture
def cluster3(tmp_path):
    """etcd, three storage nodes and one frontend, as `cluster`."""
    yield from _deployment(tmp_path / "c3", 3)


@pytest.fixture
def cluster_fe2(tmp_path):
    """etcd, three storage nodes and two frontends, as `cluster`."""
    yield from _deployment(tmp_path / "cf2", 3, frontends=2)

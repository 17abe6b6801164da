"""Tests of the local deployment itself (./dev up/down/restart, the
fixtures of conftest.py): etcd runs beside the nodes, cluster.env describes
it, etcd survives kill -9, `./dev up --add-node` adds a working node, and
`./dev down` leaves nothing running.

They hold whether or not merpati-node knows --etcd yet; where the two
differ, both cases assert what they expect.
"""

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

from conftest import BUILD_DIR, SOURCE_DIR, Cluster, _gone, bin, dev, read_env

NEW_KEYS = ("ETCD_ENDPOINTS", "ETCD_PID", "ETCD_PORT", "ETCD_DIR", "CLUSTER")
OLD_KEYS = ("NODE_ADDRS", "NODE_PIDS", "NODE_PORTS", "NODE_IDS", "NODE_DIRS",
            "MERPATI_NODE", "BUILD_DIR")


def node_knows_etcd():
    r = subprocess.run([bin("merpati-node"), "--help"], capture_output=True,
                       text=True, timeout=10, stdin=subprocess.DEVNULL)
    return re.search(r"(^|[\s\[])--etcd([=\s\]]|$)", r.stdout + r.stderr,
                     re.M) is not None


def cmdline(pid):
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [a.decode() for a in raw.split(b"\0")[:-1]]


def dev_status(path):
    """./dev status (exit 1 when something is stopped: not an error here)."""
    return subprocess.run([str(SOURCE_DIR / "dev"), "status", "--dir",
                           str(path)], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)


def recorded_cmd(path):
    return shlex.split(Path(path).read_text())


def test_etcd_runs_and_answers(cluster):
    assert not _gone(cluster.etcd_pid)
    argv = recorded_cmd(cluster.dir / "etcd" / "cmd")
    assert cmdline(cluster.etcd_pid) == argv
    assert os.path.basename(argv[0]) == "etcd"
    data = str(cluster.dir / "etcd" / "data")
    assert argv[argv.index("--data-dir") + 1] == data
    assert Path(data, "member").is_dir()
    assert argv[argv.index("--listen-client-urls") + 1] == \
        f"http://{cluster.etcd_endpoints}"

    r = cluster.etcdctl("endpoint", "health")
    assert "is healthy" in r.stdout + r.stderr
    cluster.etcdctl("put", "/test/dev-cluster", "hello")
    r = cluster.etcdctl("get", "--print-value-only", "/test/dev-cluster")
    assert r.stdout.strip() == "hello"

    node_argv = recorded_cmd(cluster.node_dirs[0] / "cmd")
    if node_knows_etcd():
        assert node_argv[node_argv.index("--etcd") + 1] == \
            cluster.etcd_endpoints
        assert node_argv[node_argv.index("--cluster") + 1] == "default"
        assert node_argv[node_argv.index("--advertise") + 1] == cluster.addr
        r = cluster.etcdctl("get", "--prefix", "--keys-only",
                            "/merpati/default/nodes/")
        assert "/merpati/default/nodes/n0" in r.stdout.split()
        # up waited until every shard has a record: a write works at once.
        r = cluster.etcdctl("get", "--print-value-only",
                            "/merpati/default/config")
        shards = int(re.search(r"shards=(\d+)", r.stdout).group(1))
        r = cluster.etcdctl("get", "--prefix", "--keys-only",
                            "/merpati/default/shards/")
        assert len(r.stdout.split()) == shards
    else:
        assert "--etcd" not in node_argv
    cluster.ctl("node", "info")


def test_cluster_env(cluster):
    env = read_env(cluster.dir / "cluster.env")
    for k in OLD_KEYS + NEW_KEYS:
        assert env.get(k), f"cluster.env has no {k}: {env}"
    assert env["ETCD_ENDPOINTS"] == f"127.0.0.1:{env['ETCD_PORT']}"
    assert int(env["ETCD_PID"]) == cluster.etcd_pid
    assert env["ETCD_DIR"] == str(cluster.dir / "etcd")
    assert env["CLUSTER"] == "default"
    assert env["MERPATI_NODE"] == cluster.addrs[0]
    assert env["BUILD_DIR"] == str(BUILD_DIR)
    assert int(env["ETCD_PORT"]) not in \
        [int(p) for p in env["NODE_PORTS"].split()]
    if node_knows_etcd():
        assert env["MERPATI_ETCD"] == env["ETCD_ENDPOINTS"]
        assert env["MERPATI_CLUSTER"] == "default"
    else:
        assert "MERPATI_ETCD" not in env
    # Sourced by a shell, every key is exported.
    r = subprocess.run(
        ["bash", "-c", '. "$1" && env', "sh", str(cluster.dir / "cluster.env")],
        capture_output=True, text=True, timeout=10, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    exported = dict(line.split("=", 1) for line in r.stdout.splitlines()
                    if "=" in line)
    for k in OLD_KEYS + NEW_KEYS:
        assert exported.get(k) == env[k], k


def test_etcd_kill9_and_restart(cluster):
    cluster.etcdctl("put", "/test/durable", "kept")
    endpoint, old_pid = cluster.etcd_endpoints, cluster.etcd_pid
    cluster.kill9_etcd()
    r = cluster.etcdctl("--command-timeout=1s", "endpoint", "health",
                        check=False)
    assert r.returncode != 0, "etcd answered after kill -9"
    r = dev_status(cluster.dir)
    assert r.returncode == 1 and re.search(r"^etcd .* stopped", r.stdout, re.M), \
        r.stdout + r.stderr

    cluster.restart_etcd()
    assert cluster.etcd_endpoints == endpoint, "etcd moved to another port"
    assert cluster.etcd_pid != old_pid and not _gone(cluster.etcd_pid)
    r = cluster.etcdctl("get", "--print-value-only", "/test/durable")
    assert r.stdout.strip() == "kept", "etcd lost a write across kill -9"
    cluster.ctl("node", "info")

    # A plain restart (no --etcd) brings a dead etcd back too.
    cluster.kill9_etcd()
    cluster.restart()
    assert cluster.etcd_endpoints == endpoint
    cluster.etcdctl("endpoint", "health")
    # --etcd on a running etcd stops it and starts it again.
    pid = cluster.etcd_pid
    cluster.restart_etcd()
    assert cluster.etcd_pid != pid and _gone(pid)
    cluster.etcdctl("endpoint", "health")


def test_add_node(cluster):
    cluster.ctl("domain", "add", "add.test")
    i = cluster.start_node()
    assert i == 1
    assert len(cluster.addrs) == len(cluster.pids) == 2
    env = read_env(cluster.dir / "cluster.env")
    assert env["NODE_IDS"].split() == ["n0", "n1"]
    assert len(set(env["NODE_PORTS"].split())) == 2
    assert cluster.node_addr(1) != cluster.node_addr(0)
    assert cmdline(cluster.node_pid(1)) == \
        recorded_cmd(cluster.dir / "node1" / "cmd")
    r = cluster.ctl("node", "info", node=1)
    assert "n1" in r.stdout + r.stderr, r.stdout
    r = cluster.ctl("domain", "list", node=0)
    assert "add.test" in r.stdout
    if node_knows_etcd():
        r = cluster.etcdctl("get", "--prefix", "--keys-only",
                            "/merpati/default/nodes/")
        assert {"/merpati/default/nodes/n0", "/merpati/default/nodes/n1"} <= \
            set(r.stdout.split())

    # It is part of the deployment: stop/restart and status know it.
    cluster.stop_node(1)
    r = dev_status(cluster.dir)
    assert r.returncode == 1 and re.search(r"^node1 .* stopped", r.stdout,
                                           re.M), r.stdout
    cluster.restart()
    cluster.ctl("node", "info", node=1)
    assert cluster.start_node() == 2
    cluster.ctl("node", "info", node=2)


def test_sigstop_sigcont(cluster):
    cluster.sigstop(0)
    r = cluster.ctl("--timeout", "1", "node", "info", check=False)
    assert r.returncode != 0, "a stopped node answered"
    cluster.sigcont(0)
    cluster.ctl("node", "info")
    # down must also stop a node that is frozen (the fixture's teardown).
    cluster.sigstop(0)


def test_cluster3(cluster3):
    assert len(cluster3.addrs) == 3 and len(set(cluster3.addrs)) == 3
    for i in range(3):
        cluster3.ctl("node", "info", node=i)
    cluster3.etcdctl("endpoint", "health")


def test_down_leaves_nothing(tmp_path):
    path = tmp_path / "d"
    dev("up", "--dir", str(path), "--nodes", "2", "--frontends", "0")
    c = Cluster(path)
    c.start_node()
    c.sigstop(2)
    pids = c.pids + [c.etcd_pid]
    assert len(pids) == 4
    for p in pids:
        assert not _gone(p)
    t0 = time.monotonic()
    r = dev("down", "--dir", str(path))
    # SIGTERM did it (SIGKILL would come after 10 s and fail `down`).
    assert time.monotonic() - t0 < 9, r.stderr
    for p in pids:
        assert _gone(p), f"pid {p} still runs after ./dev down"
    for d in ("etcd", "node0", "node1", "node2"):
        assert not (path / d / "pid").exists(), f"{d}/pid left behind"
    # etcd stops after the nodes.
    lines = [ln for ln in r.stderr.splitlines() if "stopped (pid" in ln]
    assert len(lines) == 4 and "etcd" in lines[-1], r.stderr
    r = dev("down", "--dir", str(path))
    assert "nothing running" in r.stderr
    r = dev_status(path)
    assert r.returncode == 1 and " running" not in r.stdout, r.stdout

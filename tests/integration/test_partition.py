"""A network partition cuts a shard leader off from its followers and from
etcd while a client beside it keeps writing to it (issue 3: "a paused
leader ... and a network namespace partition ... cannot acknowledge writes
after it is replaced; after SIGCONT it steps down").

The deployment lives in network namespaces this test creates (names carry
the test's pid; deleted in the fixture's teardown whatever happens):

    mpt{pid}br   a bridge br0; every other namespace hangs on it by a veth
    mpt{pid}e    etcd        10.77.0.2:2379
    mpt{pid}n0   node n0     10.77.0.10:7000      (n1 .11, n2 .12)
    mpt{pid}c    clients     10.77.0.100  (routed load, merpatictl, etcdctl)

Traffic stays inside these namespaces (and their loopbacks). The cut is the
victim's veth taken down on the bridge side: the victim keeps its address,
so a client inside the victim's namespace still reaches it, and nothing
else does.

The victim is the leader of load0@load.test's shard. During the partition:
  - no write to the victim that started after the cut is acknowledged
    (a probe writer: merpatictl appends, one at a time, timed);
  - every write the victim ever acknowledged is on the new leader
    (mp-loadclient verify of the direct load's and the probes' ack logs,
    read through routing after the partition);
  - the cluster gives every shard the victim led a new leader (higher
    epoch), and routed writers go on, load0's shard included.
After the heal the victim steps down (answers NOT_LEADER for the shard),
rejoins every in-sync set as a follower, and all in-sync replicas agree.

Needs root and `ip netns`. Without them the test FAILS, naming what is
missing, unless MERPATI_NO_NETNS=1 is set (then it is skipped).
"""
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import bin

SUBNET = "10.77.0"
ETCD_IP = f"{SUBNET}.2"
ETCD = f"{ETCD_IP}:2379"
CLIENT_IP = f"{SUBNET}.100"
NODE_PORT = 7000
NODES = 3
CLUSTER = "part"
SHARDS = 64
USERS = 8
STOP_TIMEOUT = 15.0
CMD_TIMEOUT = 60


def node_ip(i):
    return f"{SUBNET}.{10 + i}"


def node_addr(i):
    return f"{node_ip(i)}:{NODE_PORT}"


def ip_tool():
    return shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip")
         if os.access(p, os.X_OK)), None)


def netns_problem():
    """Why network namespaces cannot be used here, or None."""
    ip = ip_tool()
    if ip is None:
        return "the `ip` command is not installed (Debian package iproute2)"
    probe = f"mpt{os.getpid()}probe"
    try:
        r = subprocess.run([ip, "netns", "add", probe], capture_output=True,
                           text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`ip netns add` did not run: {e}"
    if r.returncode != 0:
        return (f"`ip netns add` failed (exit {r.returncode}): "
                f"{(r.stderr or r.stdout).strip()} (root is needed)")
    subprocess.run([ip, "netns", "del", probe], capture_output=True,
                   timeout=30)
    return None


def wait_for(what, pred, timeout=60, step=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def etcd_env():
    """Our environment without ETCD_*/ETCDCTL_* (etcd and etcdctl read
    flags from those), with the v3 API."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ETCD_", "ETCDCTL_"))}
    env["ETCDCTL_API"] = "3"
    return env


class Net:
    """The namespaces, the bridge and one veth per member."""

    def __init__(self):
        self.ip = ip_tool()
        self.tag = f"mpt{os.getpid()}"
        self.made = []

    def ns(self, role):
        return f"{self.tag}{role}"

    def run(self, *args):
        r = subprocess.run([self.ip, *args], capture_output=True, text=True,
                           timeout=30)
        if r.returncode != 0:
            raise AssertionError(f"ip {' '.join(args)} exited {r.returncode}: "
                                 f"{r.stderr}{r.stdout}")

    def add_ns(self, role):
        self.run("netns", "add", self.ns(role))
        self.made.append(self.ns(role))
        self.run("-n", self.ns(role), "link", "set", "lo", "up")

    def build(self, members):
        """members: {role: address}; each role gets a namespace with eth0
        at address/24, its peer v{role} on the bridge."""
        br = self.ns("br")
        self.add_ns("br")
        self.run("-n", br, "link", "add", "br0", "type", "bridge")
        self.run("-n", br, "link", "set", "br0", "up")
        for role, addr in members.items():
            self.add_ns(role)
            self.run("-n", br, "link", "add", f"v{role}", "type", "veth",
                     "peer", "name", "eth0", "netns", self.ns(role))
            self.run("-n", br, "link", "set", f"v{role}", "master", "br0")
            self.run("-n", br, "link", "set", f"v{role}", "up")
            self.run("-n", self.ns(role), "addr", "add", f"{addr}/24",
                     "dev", "eth0")
            self.run("-n", self.ns(role), "link", "set", "eth0", "up")

    def cut(self, role):
        self.run("-n", self.ns("br"), "link", "set", f"v{role}", "down")

    def heal(self, role):
        self.run("-n", self.ns("br"), "link", "set", f"v{role}", "up")

    def argv(self, role, argv):
        return [self.ip, "netns", "exec", self.ns(role), *argv]

    def delete(self):
        errors = []
        for name in reversed(self.made):
            r = subprocess.run([self.ip, "netns", "del", name],
                               capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                errors.append(f"{name}: {r.stderr.strip()}")
        self.made = []
        return errors


class Proc:
    """A process this test started (in a namespace); signalled only
    through its Popen, so never a stranger that reused the pid."""

    def __init__(self, name, argv, log, env=None):
        self.name = name
        self.log = Path(log)
        self.argv = argv
        with open(self.log, "ab") as f:
            self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                      stdout=f, stderr=subprocess.STDOUT,
                                      env=env, start_new_session=True)

    def running(self):
        return self.p.poll() is None

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, then SIGKILL after timeout; True if SIGTERM sufficed."""
        if not self.running():
            return True
        self.p.terminate()
        try:
            self.p.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(timeout=30)
            return False

    def tail(self, n=30):
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-n:])


SANITIZER = re.compile(r"ERROR: (Address|Leak|Thread|Memory)Sanitizer|"
                       r"runtime error:")


class Deployment:
    def __init__(self, net, base):
        self.net = net
        self.base = Path(base)
        self.etcd = None
        self.nodes = []

    # ------------------------------------------------------------ start

    def start_etcd(self):
        d = self.base / "etcd"
        d.mkdir(parents=True)
        etcd = shutil.which("etcd") or "/usr/bin/etcd"
        if not os.access(etcd, os.X_OK):
            pytest.fail("etcd is not installed (Debian package etcd-server)")
        client = f"http://{ETCD}"
        peer = "http://127.0.0.1:2380"   # the etcd namespace's loopback
        argv = [etcd, "--name", "default", "--data-dir", str(d / "data"),
                "--listen-client-urls", client,
                "--advertise-client-urls", client,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"default={peer}",
                "--initial-cluster-state", "new",
                "--heartbeat-interval", "100", "--election-timeout", "500",
                "--logger", "zap", "--log-outputs", "stderr"]
        self.etcd = Proc("etcd", self.net.argv("e", argv), d / "etcd.log",
                         env=etcd_env())
        def healthy():
            assert self.etcd.running(), \
                f"etcd exited:\n{self.etcd.tail()}"
            return self.etcdctl("endpoint", "health", check=False,
                                timeout=10).returncode == 0
        wait_for("etcd to answer", healthy, timeout=60)

    def start_node(self, i):
        d = self.base / f"n{i}"
        d.mkdir(parents=True)
        argv = [bin("merpati-node"), "--listen", node_addr(i),
                "--data_dir", str(d / "data"), "--node_id", f"n{i}",
                "--etcd", ETCD, "--cluster", CLUSTER,
                "--advertise", node_addr(i), "--shards", str(SHARDS)]
        self.nodes.append(Proc(f"n{i}", self.net.argv(f"n{i}", argv),
                               d / "node.log"))

    def start(self):
        self.start_etcd()
        for i in range(NODES):
            self.start_node(i)
        for i, n in enumerate(self.nodes):
            def ready(i=i, n=n):
                assert n.running(), f"{n.name} exited:\n{n.tail()}"
                return self.ctl("--node", node_addr(i), "node", "info",
                                check=False).returncode == 0
            wait_for(f"n{i} to serve", ready, timeout=90)

    def stop(self):
        """Nodes first (they leave etcd), then etcd. Problems as text."""
        problems = []
        for n in self.nodes:
            if not n.stop():
                problems.append(f"{n.name} did not stop on SIGTERM within "
                                f"{STOP_TIMEOUT} s")
        if self.etcd is not None:
            self.etcd.stop()
        for n in self.nodes:
            if n.log.exists() and SANITIZER.search(
                    n.log.read_text(errors="replace")):
                problems.append(f"{n.name} left a sanitizer report in {n.log}")
        shutil.rmtree(self.base / "etcd" / "data", ignore_errors=True)
        return problems

    # ---------------------------------------------------------- clients

    def run(self, role, argv, input=None, timeout=CMD_TIMEOUT, env=None):
        stdin = {"input": input} if input is not None else \
            {"stdin": subprocess.DEVNULL}
        return subprocess.run(self.net.argv(role, argv), capture_output=True,
                              text=True, timeout=timeout, env=env, **stdin)

    def etcdctl(self, *args, check=True, timeout=30):
        etcdctl = shutil.which("etcdctl") or "/usr/bin/etcdctl"
        r = self.run("c", [etcdctl, f"--endpoints={ETCD}",
                           "--dial-timeout=2s", "--command-timeout=5s",
                           *args], timeout=timeout, env=etcd_env())
        if check and r.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)} exited "
                                 f"{r.returncode}: {r.stderr}{r.stdout}")
        return r

    def ctl(self, *args, input=None, check=True, role="c"):
        r = self.run(role, [bin("merpatictl"), *args], input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"merpatictl {' '.join(args)} exited "
                                 f"{r.returncode}: {r.stderr}{r.stdout}")
        return r

    def rctl(self, *args, input=None, check=True):
        """merpatictl routed through etcd, from the clients' namespace."""
        return self.ctl("--etcd", ETCD, "--cluster", CLUSTER, *args,
                        input=input, check=check)

    def loadclient(self, *args, timeout=300):
        return self.run("c", [bin("mp-loadclient"), args[0], "--etcd", ETCD,
                              "--cluster", CLUSTER, *args[1:]],
                        timeout=timeout)

    def load(self, role, target, acklog, seconds, log):
        """mp-loadclient load in background (role's namespace)."""
        argv = [bin("mp-loadclient"), "load", *target, "--users", str(USERS),
                "--threads", str(USERS), "--seconds", str(seconds),
                "--max-appends", "1000000", "--size", "1024",
                "--acklog", str(acklog)]
        return Proc(f"load-{role}", self.net.argv(role, argv), log)

    def shard_records(self):
        """{shard: {"epoch", "leader", "replicas", "isr"}} from etcd."""
        prefix = f"/merpati/{CLUSTER}/shards/"
        out = self.etcdctl("get", "--prefix", prefix).stdout.splitlines()
        recs = {}
        for key, val in zip(out[0::2], out[1::2]):
            fields = dict(w.split("=", 1) for w in val.split())
            recs[int(key[len(prefix):])] = {
                "epoch": int(fields["epoch"]),
                "leader": fields["leader"],
                "replicas": fields["replicas"].split(","),
                "isr": fields["isr"].split(","),
            }
        return recs

    def all_in_sync(self):
        recs = self.shard_records()
        return len(recs) == SHARDS and all(
            len(r["replicas"]) == NODES and
            sorted(r["isr"]) == sorted(r["replicas"]) for r in recs.values())


@pytest.fixture
def net():
    why = netns_problem()
    if why is not None:
        if os.environ.get("MERPATI_NO_NETNS") == "1":
            pytest.skip(f"network namespaces unavailable ({why}); "
                        "skipped because MERPATI_NO_NETNS=1")
        pytest.fail(f"network namespaces unavailable: {why}. This test "
                    "needs root and `ip netns`; on a machine without them "
                    "set MERPATI_NO_NETNS=1 to skip it.")
    n = Net()
    try:
        members = {"e": ETCD_IP, "c": CLIENT_IP}
        members.update({f"n{i}": node_ip(i) for i in range(NODES)})
        n.build(members)
        yield n
    finally:
        errors = n.delete()
        assert not errors, f"could not delete namespaces: {errors}"


@pytest.fixture
def deployment(net, tmp_path):
    d = Deployment(net, tmp_path / "p")
    try:
        d.start()
        yield d
    finally:
        problems = d.stop()
        assert not problems, "; ".join(problems)


class Prober:
    """Appends to one user straight at one node, one at a time, from that
    node's namespace; remembers when each started and how it ended."""

    def __init__(self, dep, role, addr, user, acklog):
        self.dep, self.role, self.addr, self.user = dep, role, addr, user
        self.acklog = Path(acklog)
        self.results = []        # (token, started, rc, output)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.main, daemon=True)
        self.error = None

    def main(self):
        try:
            for seq in range(100000):
                if self.stop.is_set():
                    break
                token = f"probe-{seq}-{secrets.token_hex(8)}"
                body = (f"X-Token: {token}\r\nSubject: probe {seq}\r\n\r\n"
                        f"partition probe\r\n")
                started = time.monotonic()
                r = self.dep.ctl("--node", self.addr, "--timeout", "10",
                                 "msg", "append", self.user, "INBOX",
                                 input=body, check=False, role=self.role)
                self.results.append((token, started, r.returncode,
                                     r.stdout + r.stderr))
                if r.returncode == 0:
                    m = re.search(r"uid=(\d+) uidvalidity=(\d+)", r.stdout)
                    assert m, r.stdout
                    with open(self.acklog, "a") as f:
                        f.write(f"{self.user} {m.group(1)} {m.group(2)} "
                                f"{token}\n")
                self.stop.wait(0.2)
        except BaseException as e:  # reported by the test
            self.error = e

    def acked(self):
        return [x for x in self.results if x[2] == 0]

    def finished_after(self, t):
        return [x for x in self.results if x[1] > t]


def lines(path):
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


def test_partitioned_leader_cannot_ack(deployment, tmp_path):
    d = deployment
    wait_for("all shards in sync", d.all_in_sync, timeout=120)
    d.rctl("domain", "add", "load.test")
    for i in range(USERS):
        d.rctl("user", "add", f"load{i}@load.test", input="secret\n")
    user = "load0@load.test"
    shard = int(re.search(r"shard[=:] *(\d+)",
                          d.rctl("user", "show", user).stdout).group(1))
    victim = d.shard_records()[shard]["leader"]
    vi = int(victim[1:])
    vrole = f"n{vi}"

    routed_acks = tmp_path / "routed.acks"
    direct_acks = tmp_path / "direct.acks"
    probe_acks = tmp_path / "probe.acks"
    # Long enough to outlast the partition and go on through the heal.
    routed = d.load("c", ["--etcd", ETCD, "--cluster", CLUSTER], routed_acks,
                    120, tmp_path / "routed.log")
    # Straight at the victim from its own namespace: still reaches it
    # during the partition. Thread i writes load{i}; load0's shard is the
    # victim's, the others answer NOT_LEADER unless the victim leads them.
    direct = d.load(vrole, ["--node", node_addr(vi)], direct_acks, 40,
                    tmp_path / "direct.log")
    prober = Prober(d, vrole, node_addr(vi), user, probe_acks)
    prober.thread.start()
    try:
        wait_for("writes acknowledged by the victim before the cut",
                 lambda: len(lines(direct_acks)) >= 20 and
                 len(prober.acked()) >= 2, timeout=90)
        before = {s: r["epoch"] for s, r in d.shard_records().items()
                  if r["leader"] == victim}
        assert shard in before

        d.net.cut(vrole)
        t_cut = time.monotonic()

        # New leaders, from the others, at a higher epoch.
        def replaced():
            recs = d.shard_records()
            return all(recs[s]["leader"] != victim and
                       recs[s]["epoch"] > e for s, e in before.items())
        wait_for("new leaders for the victim's shards", replaced, 90)
        # Routed writers go on, on the victim's old shard too.
        n_load0 = sum(1 for x in lines(routed_acks)
                      if x.startswith(user + " "))
        wait_for("routed writes to load0 after the failover",
                 lambda: sum(1 for x in lines(routed_acks)
                             if x.startswith(user + " ")) > n_load0 + 5, 90)
        # The victim keeps being asked while it is cut off.
        wait_for("probes answered during the partition",
                 lambda: len(prober.finished_after(t_cut)) >= 3, 120)
    finally:
        prober.stop.set()
        d.net.heal(vrole)
    prober.thread.join(timeout=60)
    assert not prober.thread.is_alive(), "the probe writer did not stop"
    assert prober.error is None, f"probe writer failed: {prober.error!r}"

    late = [x for x in prober.acked() if x[1] > t_cut]
    assert not late, ("the cut-off leader acknowledged writes it could not "
                      f"have replicated: {late}")
    assert len(prober.finished_after(t_cut)) >= 3

    # It steps down: asked directly it names another leader for the shard
    # (or it leads it again, by a later election once back in sync).
    old_epoch = before[shard]
    def stepped_down():
        r = d.ctl("--node", node_addr(vi), "--timeout", "10", "msg", "list",
                  user, "INBOX", check=False)
        if r.returncode != 0 and "not the shard's leader" in r.stderr:
            return True
        rec = d.shard_records()[shard]
        return rec["leader"] == victim and rec["epoch"] >= old_epoch + 2
    wait_for("the old leader to step down", stepped_down, 90)

    for p, name in ((routed, "routed"), (direct, "direct")):
        try:
            p.p.wait(timeout=300)
        except subprocess.TimeoutExpired:
            p.stop()
            raise AssertionError(f"the {name} load did not end:\n{p.tail()}")
    assert routed.p.returncode == 0, f"routed load failed:\n{routed.tail()}"
    # The direct load acknowledged writes before the cut (checked above);
    # its exit status only says whether it acknowledged any.

    # Rejoins every in-sync set as a follower (a later rebalance may make
    # it a leader again, at a still higher epoch).
    wait_for("the victim back in every in-sync set", d.all_in_sync, 180)
    recs = d.shard_records()
    for s, e in before.items():
        assert recs[s]["epoch"] > e, (s, recs[s], e)
        assert victim in recs[s]["isr"], (s, recs[s])

    # Everything ever acknowledged, by the victim or through routing, is
    # there exactly once; UIDs move on; every in-sync replica agrees.
    for acks in (direct_acks, probe_acks, routed_acks):
        v = d.loadclient("verify", "--acklog", str(acks))
        assert v.returncode == 0, f"{acks.name}: {v.stdout}{v.stderr}"
    a = d.loadclient("append-after", "--acklog", str(routed_acks))
    assert a.returncode == 0, a.stdout + a.stderr
    r = d.loadclient("replicas-agree", "--timeout", "60")
    assert r.returncode == 0, r.stdout + r.stderr

"""The storage cluster with real processes: etcd and three or four
merpati-node processes on 127.0.0.1 (./dev up), writers going through the
routing library (mp-loadclient --etcd), and faults made with kill -9,
SIGSTOP and etcd restarts.

After every run: every acknowledged append is present exactly once
(mp-loadclient verify), UIDs were never reused (append-after), and every
in-sync replica of every shard holds the same data (replicas-agree:
Replication.ShardDigest on each ISR member).
"""
import re
import subprocess
import time

from conftest import bin

USERS = 8


def shard_records(c):
    """{shard: {"epoch", "leader", "replicas", "isr"}} from etcd."""
    prefix = f"/merpati/{c.cluster_name}/shards/"
    out = c.etcdctl("get", "--prefix", prefix).stdout.splitlines()
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


def wait_for(what, pred, timeout=60, step=0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def all_in_sync(c, rf=3):
    recs = shard_records(c)
    return len(recs) == 64 and all(
        len(r["replicas"]) == rf and sorted(r["isr"]) == sorted(r["replicas"])
        for r in recs.values())


def rctl(c, *args, input=None, check=True):
    """merpatictl routed through etcd (the leader of each user's shard)."""
    cmd = [bin("merpatictl"), "--etcd", c.etcd_endpoints,
           "--cluster", c.cluster_name, *args]
    r = subprocess.run(cmd, input=input, capture_output=True, text=True,
                       timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"merpatictl {args} exited {r.returncode}: "
                             f"{r.stderr}{r.stdout}")
    return r


def loadclient(c, *args, timeout=300):
    return subprocess.run(
        [bin("mp-loadclient"), args[0], "--etcd", c.etcd_endpoints,
         "--cluster", c.cluster_name, *args[1:]],
        capture_output=True, text=True, timeout=timeout)


def start_load(c, acklog, seconds):
    return subprocess.Popen(
        [bin("mp-loadclient"), "load", "--etcd", c.etcd_endpoints,
         "--cluster", c.cluster_name, "--users", str(USERS), "--threads", "8",
         "--seconds", str(seconds), "--max-appends", "200000",
         "--acklog", str(acklog)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def setup_users(c):
    wait_for("all shards in sync", lambda: all_in_sync(c))
    rctl(c, "domain", "add", "load.test")
    for i in range(USERS):
        rctl(c, "user", "add", f"load{i}@load.test", input="secret\n")


def finish_load(p):
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, f"load failed: {out}{err}"
    m = re.search(r"acked=(\d+)", out + err)
    assert m, out + err
    return int(m.group(1))


def check_all(c, acklog):
    v = loadclient(c, "verify", "--acklog", str(acklog))
    assert v.returncode == 0, v.stdout + v.stderr
    a = loadclient(c, "append-after", "--acklog", str(acklog))
    assert a.returncode == 0, a.stdout + a.stderr
    r = loadclient(c, "replicas-agree", "--timeout", "30")
    assert r.returncode == 0, r.stdout + r.stderr


def node_index(c, node_id):
    return int(node_id[1:])  # ./dev names nodes n0, n1, ...


def busiest_leader(c):
    counts = {}
    for r in shard_records(c).values():
        counts[r["leader"]] = counts.get(r["leader"], 0) + 1
    return max(sorted(counts), key=lambda n: counts[n])


def test_kill_leader_under_load(cluster3, tmp_path):
    c = cluster3
    setup_users(c)
    acklog = tmp_path / "acks"
    p = start_load(c, acklog, 25)
    time.sleep(5)
    victim = busiest_leader(c)
    vi = node_index(c, victim)
    before = {s: r["epoch"] for s, r in shard_records(c).items()
              if r["leader"] == victim}
    c.kill9(vi)
    # A new leader, from the in-sync set, with a higher epoch, for each of
    # the victim's shards.
    def moved():
        recs = shard_records(c)
        return all(recs[s]["leader"] != victim and recs[s]["epoch"] > e
                   for s, e in before.items())
    wait_for("leaders to move off the killed node", moved, timeout=30)
    time.sleep(3)
    c.restart()
    acked = finish_load(p)
    assert acked > 200
    # The restarted node catches up and rejoins every in-sync set.
    wait_for("the restarted node back in sync", lambda: all_in_sync(c), 90)
    check_all(c, acklog)


def test_add_node_under_load(cluster3, tmp_path):
    c = cluster3
    setup_users(c)
    acklog = tmp_path / "acks"
    p = start_load(c, acklog, 25)
    time.sleep(3)
    i = c.start_node()
    new = f"n{i}"
    def balanced():
        recs = shard_records(c)
        held = sum(1 for r in recs.values() if new in r["replicas"])
        return held >= 40 and all_in_sync(c)
    acked = finish_load(p)
    wait_for("the new node to get its share of shards", balanced, 120)
    assert acked > 100
    check_all(c, acklog)
    st = rctl(c, "cluster", "status")
    assert new in st.stdout


def test_drain_then_remove(cluster3, tmp_path):
    c = cluster3
    setup_users(c)
    acklog = tmp_path / "acks"
    c.start_node()  # four nodes: the drained one's shards have a place
    p = start_load(c, acklog, 15)
    rctl(c, "node", "drain", "n1")
    def drained():
        recs = shard_records(c)
        return all("n1" not in r["replicas"] for r in recs.values()) and \
            all_in_sync(c)
    wait_for("n1 to hold no replica", drained, 150)
    finish_load(p)
    rctl(c, "node", "remove", "n1")
    c.stop_node(1)
    check_all(c, acklog)


def test_paused_leader_cannot_ack(cluster3, tmp_path):
    c = cluster3
    setup_users(c)
    user = "load0@load.test"
    shard = int(re.search(r"shard[=:] *(\d+)",
                          rctl(c, "user", "show", user).stdout).group(1))
    old = shard_records(c)[shard]
    oi = node_index(c, old["leader"])
    c.sigstop(oi)
    try:
        # The cluster replaces the frozen leader.
        wait_for("a new leader", lambda: shard_records(c)[shard]["leader"]
                 != old["leader"], timeout=30)
        rctl(c, "msg", "append", user, "INBOX",
             input="Subject: new leader\r\n\r\nok\r\n")
    finally:
        c.sigcont(oi)
    # Right after waking, the old leader must not acknowledge a write for
    # the shard (its followers fence its epoch, or it already knows).
    r = c.ctl("msg", "append", user, "INBOX", node=oi, check=False,
              input="Subject: old leader\r\n\r\nmust fail\r\n")
    assert r.returncode != 0, r.stdout
    listing = rctl(c, "msg", "list", user, "INBOX").stdout
    assert "old leader" not in listing
    # And it steps down: it names the new leader.
    def stepped_down():
        r2 = c.ctl("msg", "list", user, "INBOX", node=oi, check=False)
        return r2.returncode != 0 and "not the shard's leader" in r2.stderr
    wait_for("the old leader to step down", stepped_down, 30)
    wait_for("all in sync", lambda: all_in_sync(c), 90)
    r = loadclient(c, "replicas-agree", "--timeout", "30")
    assert r.returncode == 0, r.stdout + r.stderr


def test_etcd_restart_under_load(cluster3, tmp_path):
    c = cluster3
    setup_users(c)
    acklog = tmp_path / "acks"
    p = start_load(c, acklog, 20)
    time.sleep(4)
    c.kill9_etcd()
    # With etcd away, nodes and clients keep their cached map: writes that
    # need no change of the in-sync sets go on.
    n0 = len(acklog.read_text().splitlines())
    time.sleep(4)
    n1 = len(acklog.read_text().splitlines())
    c.restart_etcd()
    acked = finish_load(p)
    assert n1 > n0, "no write was acknowledged while etcd was down"
    assert acked > 100
    wait_for("all in sync", lambda: all_in_sync(c), 90)
    check_all(c, acklog)


def test_snapshot_for_a_replica_the_log_cannot_reach(tmp_path):
    """A follower down while its shard's leader wrote more than the log
    keeps (--log_retain 20) gets the shard by snapshot, then the log, and
    rejoins the in-sync set with the same data."""
    from conftest import Cluster, dev
    path = tmp_path / "c3s"
    dev("up", "--dir", str(path), "--nodes", "3", "--", "--log_retain", "20")
    try:
        c = Cluster(path)
        wait_for("all shards in sync", lambda: all_in_sync(c))
        rctl(c, "domain", "add", "load.test")
        rctl(c, "user", "add", "load0@load.test", input="secret\n")
        shard = int(re.search(r"shard[=:] *(\d+)",
                              rctl(c, "user", "show", "load0@load.test").stdout).group(1))
        rec = shard_records(c)[shard]
        follower = next(n for n in rec["replicas"] if n != rec["leader"])
        fi = node_index(c, follower)
        c.stop_node(fi)
        acklog = tmp_path / "acks"
        r = subprocess.run(
            [bin("mp-loadclient"), "load", "--etcd", c.etcd_endpoints,
             "--cluster", c.cluster_name, "--users", "1", "--threads", "4",
             "--seconds", "60", "--max-appends", "600", "--size", "512",
             "--acklog", str(acklog)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        c.restart()
        wait_for("the stopped follower back in sync", lambda: all_in_sync(c), 120)
        log = c.node_log(fi)
        assert re.search(r"repl_snapshot_pulled shard=%d .*ret=OK" % shard, log), \
            log[-3000:]
        check_all(c, acklog)
    finally:
        dev("down", "--dir", str(path))

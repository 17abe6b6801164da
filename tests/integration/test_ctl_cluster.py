"""merpatictl and mp-loadclient against a three-node cluster (--etcd).

What is checked: `cluster status` shows the records in etcd and each
replica's lag; MailStore commands routed through --etcd reach the leader of
the user's shard whichever node that is (the same call sent to another node
is refused with not-leader); `user list` merges every node's accounts;
`node drain` empties a node (a fourth node takes its replicas), `node remove`
refuses while the node holds replicas and succeeds after the drain; the load
client appends through the route and its replicas agree.

Every wait is bounded (polls of at most 60 s); every test makes its own
domain.
"""

import json
import os
import re
import socket
import subprocess
import time
import uuid

import pytest

from conftest import bin

PASSWORD = "correct horse battery staple"
SHARDS = 64
RF = 3


# ------------------------------------------------------------- helpers

def clean_env():
    env = dict(os.environ)
    for k in ("MERPATI_NODE", "MERPATI_ETCD", "MERPATI_CLUSTER"):
        env.pop(k, None)
    return env


def run(*args, input="", env=None, timeout=120):
    """merpatictl with exactly these arguments, text in and out."""
    return subprocess.run([bin("merpatictl"), *args], input=input,
                          capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else clean_env())


def ctl(cluster, *args, input="", timeout=120):
    """merpatictl routed through the cluster's etcd (no --node)."""
    return run("--etcd", cluster.etcd_endpoints, "--cluster",
               cluster.cluster_name, *args, input=input, timeout=timeout)


def fetch(cluster, user, mailbox, uid):
    """msg fetch as bytes (text mode would turn CRLF into LF)."""
    r = subprocess.run([bin("merpatictl"), "--etcd", cluster.etcd_endpoints,
                        "--cluster", cluster.cluster_name, "msg", "fetch",
                        user, mailbox, str(uid)], capture_output=True,
                       timeout=120, env=clean_env(), stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode()


def ok(cluster, *args, input=""):
    r = ctl(cluster, *args, input=input)
    assert r.returncode == 0, \
        f"merpatictl --etcd {' '.join(args)}: rc={r.returncode}\n{r.stderr}"
    return r.stdout


def fails(code, r, *words):
    assert r.returncode == code, \
        f"rc={r.returncode}, want {code}\nstdout={r.stdout!r}\n" \
        f"stderr={r.stderr!r}"
    assert r.stderr.startswith("merpatictl"), r.stderr
    for w in words:
        assert w in r.stderr, f"{w!r} not in {r.stderr!r}"
    return r.stderr


def kv(words):
    return dict(w.split("=", 1) for w in words)


def parse_status(text):
    """`cluster status` text -> dict (config, controller, nodes, shards)."""
    st = {"nodes": {}, "shards": {}}
    for line in text.splitlines():
        w = line.split()
        if w[0] == "cluster":
            st["cluster"] = w[1]
            st["head"] = kv(w[2:])
        elif w[0] == "config":
            st["config"] = {k: int(v) for k, v in kv(w[1:]).items()}
        elif w[0] == "controller":
            st["controller"] = w[1]
        elif w[0] == "node":
            st["nodes"][w[1]] = kv(w[2:])
        elif w[0] == "shard":
            if "=" not in w[2]:
                st["shards"][int(w[1])] = {"record": w[2]}
                continue
            rec = kv(w[2:])
            rec["replicas"] = rec["replicas"].split(",")
            rec["isr"] = rec["isr"].split(",")
            rec["lag"] = dict(x.split(":", 1) for x in rec["lag"].split(","))
            st["shards"][int(w[1])] = rec
        else:
            raise AssertionError(f"unexpected status line {line!r}")
    return st


def status(cluster, check=True):
    r = ctl(cluster, "cluster", "status")
    if check:
        assert r.returncode == 0, r.stderr
    return parse_status(r.stdout), r


def wait_status(cluster, pred, what, timeout=60.0):
    """Polls `cluster status` until pred(status) holds; fails after
    timeout seconds with the last status."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        r = ctl(cluster, "cluster", "status")
        if r.returncode == 0:
            last = parse_status(r.stdout)
            if pred(last):
                return last
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout} s; last status:\n"
                f"{r.stdout}{r.stderr}")


def placed(st, nodes):
    """Every shard has a record with rf replicas, all among nodes, its
    whole replica set in sync."""
    if len(st["shards"]) != SHARDS:
        return False
    for rec in st["shards"].values():
        if "replicas" not in rec or len(rec["replicas"]) != RF:
            return False
        if not set(rec["replicas"]) <= set(nodes):
            return False
        if set(rec["isr"]) != set(rec["replicas"]):
            return False
    return True


def node_ids(cluster):
    return cluster.env["NODE_IDS"].split()


def new_domain(cluster):
    d = f"d{uuid.uuid4().hex[:10]}.test"
    ok(cluster, "domain", "add", d)
    return d


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(cluster):
    ids = node_ids(cluster)
    return wait_status(cluster, lambda st: placed(st, ids) and
                       all(st["nodes"].get(i, {}).get("state") == "active"
                           for i in ids),
                       "every shard placed on the three nodes")


# ------------------------------------------------------------- status

def test_cluster_status(cluster3):
    ids = node_ids(cluster3)
    assert len(ids) == 3
    st = wait_ready(cluster3)
    assert st["cluster"] == cluster3.cluster_name
    assert st["config"] == {"shards": SHARDS, "rf": RF, "min_isr": 2}
    assert st["controller"] in ids
    assert sorted(st["nodes"]) == sorted(ids)
    for i, node in enumerate(ids):
        n = st["nodes"][node]
        assert n["addr"] == cluster3.addrs[i]
        assert n["state"] == "active" and n["drain"] == "no"
        # Three replicas of every shard on three nodes: each holds all.
        assert int(n["holds"]) == SHARDS
    assert sum(int(n["leads"]) for n in st["nodes"].values()) == SHARDS
    assert sorted(st["shards"]) == list(range(SHARDS))
    for s, rec in st["shards"].items():
        assert len(rec["replicas"]) == RF and len(set(rec["replicas"])) == RF
        assert rec["leader"] == rec["replicas"][0]
        assert set(rec["isr"]) <= set(rec["replicas"])
        assert rec["leader"] in rec["isr"]
        assert int(rec["epoch"]) >= 1
        assert int(rec["lsn"]) >= 0
        assert list(rec["lag"]) == rec["replicas"]
        # Every node is up and answers: every lag is a number, the
        # leader's own is 0.
        for node, lag in rec["lag"].items():
            assert re.fullmatch(r"-?\d+", lag), (s, rec)
        assert rec["lag"][rec["leader"]] == "0"

    r = ctl(cluster3, "cluster", "status", "--json")
    assert r.returncode == 0, r.stderr
    js = json.loads(r.stdout)
    assert js["cluster"] == cluster3.cluster_name
    assert js["config"] == {"shards": SHARDS, "rf": RF, "min_isr": 2}
    assert sorted(n["id"] for n in js["nodes"]) == sorted(ids)
    assert all(n["answered"] and n["state"] == "active" and
               n["drain"] is None and n["holds"] == SHARDS
               for n in js["nodes"])
    assert [s["shard"] for s in js["shards"]] == list(range(SHARDS))
    for s in js["shards"]:
        assert len(s["replicas"]) == RF and s["leader"] == s["replicas"][0]
        assert sorted(s["lag"]) == sorted(s["replicas"])
        assert all(isinstance(v, int) for v in s["lag"].values()), s


def test_cluster_usage_errors(cluster3):
    wait_ready(cluster3)
    e = cluster3.etcd_endpoints
    fails(1, run("cluster", "status"), "--etcd")
    fails(1, run("--cluster", "x", "--node", cluster3.addr, "node", "info"),
          "--cluster needs --etcd")
    fails(1, run("--etcd", e, "cluster", "status", "extra"))
    fails(1, run("--etcd", e, "node", "drain"))
    fails(1, run("--etcd", e, "user", "list", "--json"))
    fails(4, run("--etcd", "no-port", "cluster", "status"), "endpoints")
    fails(4, run("--etcd", f"{e},", "cluster", "status"), "endpoints")
    fails(4, run("--etcd", e, "--cluster", "a/b", "cluster", "status"),
          "cluster name")
    fails(4, run("--etcd", e, "node", "drain", "n/1"), "bad node id")
    fails(4, run("--etcd", e, "node", "remove", "a" * 64), "bad node id")
    # A cluster etcd does not know.
    fails(2, run("--etcd", e, "--cluster", "nosuch", "cluster", "status"),
          "no cluster \"nosuch\"")
    fails(5, run("--etcd", e, "--cluster", "nosuch", "user", "show",
                 "a@b.test"), "no cluster \"nosuch\"")
    # etcd not there: unavailable, within the timeout.
    port = free_port()
    for args in (("cluster", "status"), ("user", "show", "a@b.test"),
                 ("node", "drain", "n0")):
        t0 = time.monotonic()
        fails(5, run("--etcd", f"127.0.0.1:{port}", "--timeout", "3", *args))
        assert time.monotonic() - t0 < 20, args
    # Unknown nodes, and undrain of a node that is not draining.
    fails(2, run("--etcd", e, "node", "drain", "n99"), "no node n99")
    fails(2, run("--etcd", e, "node", "remove", "n99"), "no node n99")
    fails(2, run("--etcd", e, "node", "undrain", "n0"), "not being drained")
    # node info asks one node: --node, also with --etcd.
    fails(1, run("--etcd", e, "node", "info"), "--node")
    r = run("--etcd", e, "--node", cluster3.addrs[1], "node", "info")
    assert r.returncode == 0, r.stderr
    assert "node_id: n1" in r.stdout
    # The environment: MERPATI_ETCD routes unless --node is given.
    env = clean_env()
    env["MERPATI_ETCD"] = e
    env["MERPATI_CLUSTER"] = cluster3.cluster_name
    r = run("cluster", "status", env=env)
    assert r.returncode == 0, r.stderr
    assert parse_status(r.stdout)["config"]["shards"] == SHARDS


def test_drain_undrain_without_room(cluster3):
    """Three nodes, rf 3: a drain is recorded (and warned about: nowhere to
    move the replicas), shown by status, and cancelled by undrain."""
    wait_ready(cluster3)
    r = ctl(cluster3, "node", "drain", "n2")
    assert r.returncode == 0, r.stderr
    assert "drain of n2 requested" in r.stdout
    assert "warning" in r.stderr and "rf=3" in r.stderr
    st, _ = status(cluster3)
    assert st["nodes"]["n2"]["drain"] == "requested"
    assert cluster3.etcdctl("get", "--print-value-only",
                            f"/merpati/{cluster3.cluster_name}/drain/n2"
                            ).stdout.strip() == "requested"
    r = ctl(cluster3, "node", "undrain", "n2")
    assert r.returncode == 0, r.stderr
    st, _ = status(cluster3)
    assert st["nodes"]["n2"]["drain"] == "no"
    fails(2, ctl(cluster3, "node", "undrain", "n2"), "not being drained")
    # Nothing was placed off n2 for good: it still holds replicas.
    fails(6, ctl(cluster3, "node", "remove", "n2"), "holds", "drain")


# ------------------------------------------------------------- routing

def leaders(cluster):
    st, _ = status(cluster)
    return {s: rec["leader"] for s, rec in st["shards"].items()}, st


def refused_elsewhere(cluster, user, shard):
    """The call routing made, sent straight to a node that does not lead
    the user's shard, is refused with not-leader: what answered through
    --etcd was the leader, wherever it is. Leaderships may move meanwhile
    (the controller balances them): a few tries with a fresh map."""
    ids = node_ids(cluster)
    for _ in range(5):
        lead, _ = leaders(cluster)
        other = next(i for i, n in enumerate(ids)
                     if n != lead[shard] and i < len(cluster.addrs))
        r = run("--node", cluster.addrs[other], "msg", "list", user, "INBOX")
        if r.returncode == 0:
            continue  # it became the leader in between
        fails(5, r, "ENOTLEADER", f"shard {shard} is led by")
        assert f"led by {ids[other]}" not in r.stderr, r.stderr
        return
    pytest.fail(f"shard {shard}: a non-leader answered 5 times")


def test_routed_commands(cluster3):
    ids = node_ids(cluster3)
    wait_ready(cluster3)
    domain = new_domain(cluster3)
    r = ctl(cluster3, "domain", "list")
    assert r.returncode == 0 and domain in r.stdout.split(), r.stderr
    users = {}
    for i in range(12):
        user = f"u{i}@{domain}"
        out = ok(cluster3, "user", "add", user, input=PASSWORD + "\n")
        m = re.search(r"shard=(\d+)", out)
        assert m, out
        users[user] = int(m.group(1))
    fails(3, ctl(cluster3, "user", "add", f"u0@{domain}",
                 input=PASSWORD + "\n"))

    bodies = {}
    for user, shard in users.items():
        body = f"Subject: to {user}\r\n\r\nhello {uuid.uuid4().hex}\r\n"
        out = ok(cluster3, "msg", "append", user, "INBOX", input=body)
        assert re.match(r"uid=1 uidvalidity=\d+", out), out
        bodies[user] = body
        out = ok(cluster3, "msg", "list", user, "INBOX")
        assert out.startswith("uid=1 "), out
        assert fetch(cluster3, user, "INBOX", 1) == body
        out = ok(cluster3, "user", "show", user)
        assert f"shard: {shard}" in out and "messages: 1" in out, out
        refused_elsewhere(cluster3, user, shard)

    # user list asks every node and merges: each user exactly once, sorted.
    for args in ((), (domain,), (domain, "--page-size", "2")):
        out = ok(cluster3, "user", "list", *args)
        listed = [ln.split()[0] for ln in out.splitlines()]
        assert listed == sorted(users), out
        for ln in out.splitlines():
            u = ln.split()[0]
            if u in users:
                assert f"shard={users[u]}" in ln and "messages=1" in ln, ln

    ok(cluster3, "mailbox", "create", f"u1@{domain}", "Box")
    assert "Box" in ok(cluster3, "mailbox", "list", f"u1@{domain}")
    ok(cluster3, "msg", "copy", f"u1@{domain}", "INBOX", "1", "Box")
    assert fetch(cluster3, f"u1@{domain}", "Box", 1) == bodies[f"u1@{domain}"]
    r = ctl(cluster3, "watch", f"u2@{domain}", "--seconds", "1")
    assert r.returncode == 0 and r.stdout.startswith("ready"), r.stderr
    ok(cluster3, "user", "del", f"u3@{domain}")
    fails(2, ctl(cluster3, "user", "show", f"u3@{domain}"))
    fails(4, ctl(cluster3, "user", "show", "not-an-address"))


def test_routed_follows_a_dead_leader(cluster3):
    """kill -9 the node leading a user's shard: a routed call finds the new
    leader within its timeout."""
    ids = node_ids(cluster3)
    wait_ready(cluster3)
    domain = new_domain(cluster3)
    lead, st = leaders(cluster3)
    # Rather a shard not led by the controller (whose own replacement
    # waits for its lease too); the controller's when it leads them all.
    for i in range(32):
        user = f"v{i}@{domain}"
        out = ok(cluster3, "user", "add", user, input=PASSWORD + "\n")
        shard = int(re.search(r"shard=(\d+)", out).group(1))
        if i == 0 or lead[shard] != st["controller"]:
            victim_user, victim_shard = user, shard
        if lead[shard] != st["controller"]:
            break
    ok(cluster3, "msg", "append", victim_user, "INBOX",
       input="Subject: before\r\n\r\nx\r\n")
    victim = ids.index(lead[victim_shard])
    cluster3.kill9(victim)
    t0 = time.monotonic()
    out = ok(cluster3, "--timeout", "60", "msg", "append", victim_user,
             "INBOX", input="Subject: after\r\n\r\ny\r\n")
    assert out.startswith("uid="), out
    out = ok(cluster3, "--timeout", "60", "msg", "list", victim_user, "INBOX")
    assert len(out.splitlines()) == 2, out
    assert time.monotonic() - t0 < 120
    st, _ = status(cluster3)
    rec = st["shards"][victim_shard]
    assert rec["leader"] != ids[victim], rec
    if ids[victim] in st["nodes"]:
        # Still named by shard records: shown, as down.
        assert st["nodes"][ids[victim]]["state"] == "down", st["nodes"]
        assert st["nodes"][ids[victim]]["addr"] == "-"
    if ids[victim] in rec["lag"]:
        assert rec["lag"][ids[victim]] == "down", rec


# ------------------------------------------------------- drain, remove

def test_drain_then_remove(cluster3):
    ids = node_ids(cluster3)
    wait_ready(cluster3)
    domain = new_domain(cluster3)
    users = [f"w{i}@{domain}" for i in range(6)]
    for user in users:
        ok(cluster3, "user", "add", user, input=PASSWORD + "\n")
        ok(cluster3, "msg", "append", user, "INBOX",
           input="Subject: kept\r\n\r\nkept\r\n")

    idx = cluster3.start_node()
    new_id = cluster3.env["NODE_IDS"].split()[idx]
    assert new_id not in ids
    wait_status(cluster3, lambda st: st["nodes"].get(new_id, {}).get(
        "state") == "active", f"{new_id} registered")

    victim = 1
    vid = ids[victim]
    fails(6, ctl(cluster3, "node", "remove", vid), "holds", "node drain")
    r = ctl(cluster3, "node", "drain", vid)
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr, r.stderr
    rest = [n for n in ids if n != vid] + [new_id]
    st = wait_status(cluster3, lambda st: st["nodes"][vid]["holds"] == "0"
                     and st["nodes"][vid]["leads"] == "0" and
                     placed(st, rest),
                     f"{vid} drained onto {rest}", timeout=60)
    assert st["nodes"][vid]["drain"] == "requested"
    assert int(st["nodes"][new_id]["holds"]) > 0

    r = ctl(cluster3, "node", "remove", vid)
    assert r.returncode == 0, r.stderr
    assert f"removed node {vid}" in r.stdout
    cluster3.stop_node(victim)
    st, _ = status(cluster3)
    assert vid not in st["nodes"], st["nodes"]
    fails(2, ctl(cluster3, "node", "remove", vid), f"no node {vid}")
    prefix = f"/merpati/{cluster3.cluster_name}/"
    r = cluster3.etcdctl("get", "--prefix", "--keys-only", prefix)
    assert f"{prefix}nodes/{vid}" not in r.stdout.split()
    assert f"{prefix}drain/{vid}" not in r.stdout.split()

    # The data moved with the shards.
    for user in users:
        out = ok(cluster3, "msg", "list", user, "INBOX")
        assert out.startswith("uid=1 "), out
    assert sorted(ln.split()[0] for ln in
                  ok(cluster3, "user", "list", domain).splitlines()) == users
    r = subprocess.run([bin("mp-loadclient"), "replicas-agree", "--etcd",
                        cluster3.etcd_endpoints, "--cluster",
                        cluster3.cluster_name, "--timeout", "20"],
                       capture_output=True, text=True, timeout=600,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"replicas agree shards={SHARDS}" in r.stdout


# ------------------------------------------------------------ load client

def test_loadclient_through_the_route(cluster3, tmp_path):
    wait_ready(cluster3)
    ok(cluster3, "domain", "add", "load.test")
    for i in range(4):
        ok(cluster3, "user", "add", f"load{i}@load.test",
           input=PASSWORD + "\n")
    lc = bin("mp-loadclient")
    target = ["--etcd", cluster3.etcd_endpoints, "--cluster",
              cluster3.cluster_name]
    acklog = str(tmp_path / "acks.log")

    def lcrun(*args, timeout=300):
        return subprocess.run([lc, *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    r = lcrun("load", *target, "--users", "4", "--threads", "4",
              "--seconds", "5", "--max-appends", "300", "--acklog", acklog)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"acked=(\d+) errors=(\d+)", r.stdout)
    assert m and int(m.group(1)) > 0 and int(m.group(2)) == 0, r.stdout
    r = lcrun("verify", *target, "--acklog", acklog)
    assert r.returncode == 0 and "verify ok users=4" in r.stdout, \
        r.stdout + r.stderr
    r = lcrun("append-after", *target, "--acklog", acklog)
    assert r.returncode == 0 and "append-after ok users=4" in r.stdout, \
        r.stdout + r.stderr
    r = lcrun("replicas-agree", *target)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"replicas agree shards={SHARDS}" in r.stdout
    # Usage: exactly one target; replicas-agree needs --etcd.
    for args in (("verify", "--acklog", acklog),
                 ("verify", "--node", cluster3.addr, *target,
                  "--acklog", acklog),
                 ("replicas-agree", "--node", cluster3.addr),
                 ("replicas-agree", *target, "--acklog", acklog),
                 ("replicas-agree", *target, "--timeout", "0")):
        r = lcrun(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
    r = lcrun("replicas-agree", "--etcd", cluster3.etcd_endpoints,
              "--cluster", "nosuch")
    assert r.returncode == 1 and "no cluster" in r.stderr, r.stderr

"""merpatictl's alias and queue commands, and SCRAM records on accounts,
against a live storage node (the `cluster` fixture: etcd and one node).

What is checked: `alias add/show/list/remove` (create or replace, remote
targets, the account/alias exclusion both ways, unknown domain, paging,
routing with --etcd); `queue list/show/retry/delete` on an empty queue and
their error cases (bad ids, unknown ids, a shard that does not exist, options
that do not apply); `user add` / `user passwd` store a SCRAM-SHA-256 record
for a typed password and none for an imported hash.

Exit status contract (tools/merpatictl.c): 0 ok, 1 usage, 2 not found,
3 already exists, 4 invalid argument, 5 node unavailable, 6 other error.
Every test makes its own domain (a random name).
"""

import os
import subprocess
import uuid

from conftest import bin

PASSWORD = "correct horse battery staple"
# "pw" hashed with libxcrypt's yescrypt (an imported hash has no SCRAM).
YESCRYPT_HASH = ("$y$j9T$F5Jx5fExrKuPp53xLKQ..1$U4SOHmDd8SvW5vCUKSMR6N835VPwF"
                 "AtgYNhQ9mFFeL5")
NO_SUCH_ID = "0.0123456789abcdef"


# ------------------------------------------------------------- helpers

def clean_env():
    env = dict(os.environ)
    for k in ("MERPATI_NODE", "MERPATI_ETCD", "MERPATI_CLUSTER"):
        env.pop(k, None)
    return env


def routed(cluster, *args, input=""):
    """merpatictl through the cluster's etcd (each call to its shard's
    leader) instead of --node."""
    return subprocess.run([bin("merpatictl"), "--etcd", cluster.etcd_endpoints,
                           "--cluster", cluster.cluster_name, *args],
                          input=input, capture_output=True, text=True,
                          timeout=120, env=clean_env())


def ok(cluster, *args, input=None):
    r = cluster.ctl(*args, input=input, check=False)
    assert r.returncode == 0, \
        f"merpatictl {' '.join(args)}: rc={r.returncode}\n{r.stderr}"
    return r.stdout


def fails(cluster, code, *args, input=None, words=()):
    r = cluster.ctl(*args, input=input, check=False)
    assert r.returncode == code, \
        (f"merpatictl {' '.join(args)}: rc={r.returncode}, want {code}\n"
         f"stdout={r.stdout!r}\nstderr={r.stderr!r}")
    assert r.stderr.startswith("merpatictl"), r.stderr
    assert r.stdout == "", r.stdout
    for w in words:
        assert w in r.stderr, f"{w!r} not in {r.stderr!r}"
    return r.stderr


def new_domain(cluster):
    d = f"d{uuid.uuid4().hex[:10]}.test"
    ok(cluster, "domain", "add", d)
    return d


def fields(text):
    """`key: value` lines -> dict of lists (target and rcpt repeat)."""
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        out.setdefault(k, []).append(v)
    return out


def words(line):
    """"name k=v k=v" -> (name, dict)."""
    name, *rest = line.split()
    return name, dict(w.split("=", 1) for w in rest)


# ------------------------------------------------------------- aliases

def test_alias_add_show_list_remove(cluster):
    d = new_domain(cluster)
    ok(cluster, "user", "add", f"alice@{d}", input=PASSWORD + "\n")
    team = f"team@{d}"

    out = ok(cluster, "alias", "add", f"Team@{d.upper()}", f"alice@{d}",
             "Carol@Remote.Test", f"ALICE@{d}")
    assert out.startswith("set alias ")
    name, kv = words(out.strip()[len("set alias "):])
    assert name == team
    assert kv["targets"] == f"alice@{d},carol@remote.test"
    shard = int(kv["shard"])

    f = fields(ok(cluster, "alias", "show", team))
    assert f["alias"] == [team]
    assert f["shard"] == [str(shard)]
    assert f["targets"] == ["2"]
    assert f["target"] == [f"alice@{d}", "carol@remote.test"]
    assert f["updated"][0].endswith("Z")

    # routed through etcd: the alias's shard leader answers the same
    r = routed(cluster, "alias", "show", team)
    assert r.returncode == 0, r.stderr
    assert fields(r.stdout)["target"] == f["target"]

    # create or replace
    ok(cluster, "alias", "add", team, "far@remote.test")
    assert fields(ok(cluster, "alias", "show", team))["target"] == \
        ["far@remote.test"]

    # list: this domain, every domain
    lines = ok(cluster, "alias", "list", d).splitlines()
    assert lines == [f"{team} targets=far@remote.test shard={shard}"]
    assert f"{team} targets=far@remote.test shard={shard}" in \
        ok(cluster, "alias", "list").splitlines()
    r = routed(cluster, "alias", "list", d)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == lines

    # an address is an account or an alias, never both
    fails(cluster, 3, "alias", "add", f"alice@{d}", "x@remote.test",
          words=["account"])
    fails(cluster, 3, "user", "add", team, input=PASSWORD + "\n",
          words=["alias"])

    # checks: here and on the node
    fails(cluster, 2, "alias", "add", f"x@nodomain-{d}", "y@remote.test",
          words=["no such domain"])
    fails(cluster, 4, "alias", "add", "not-an-address", "y@remote.test")
    fails(cluster, 4, "alias", "add", team, "bad target")
    fails(cluster, 4, "alias", "add", team, team.upper())
    fails(cluster, 1, "alias", "add", team)
    fails(cluster, 1, "alias", "add", team, *([f"t@{d}"] * 101))
    fails(cluster, 1, "alias", "show")
    fails(cluster, 1, "alias", "show", team, "--shard", "1")
    fails(cluster, 1, "alias", "frobnicate")

    # the domain cannot go while it has an alias
    ok(cluster, "user", "del", f"alice@{d}")
    fails(cluster, 6, "domain", "del", d, words=["DeleteDomain", "alias"])

    out = ok(cluster, "alias", "remove", team)
    assert out == f"removed alias {team}\n"
    fails(cluster, 2, "alias", "show", team, words=["no such alias"])
    fails(cluster, 2, "alias", "remove", team)
    assert ok(cluster, "alias", "list", d) == ""
    # the address is free for an account now
    ok(cluster, "user", "add", team, input=PASSWORD + "\n")
    ok(cluster, "user", "del", team)
    ok(cluster, "domain", "del", d)


def test_alias_list_pages(cluster):
    d = new_domain(cluster)
    names = sorted(f"a{i:02d}@{d}" for i in range(12))
    for n in names:
        ok(cluster, "alias", "add", n, f"dest{n[1:3]}@remote.test")
    out = ok(cluster, "alias", "list", d, "--page-size", "1")
    got = [words(ln)[0] for ln in out.splitlines()]
    assert got == names
    for ln in out.splitlines():
        n, kv = words(ln)
        assert kv["targets"] == f"dest{n[1:3]}@remote.test"
    r = routed(cluster, "alias", "list", d, "--page-size", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout == out


# --------------------------------------------------------------- queue

def shard_count(cluster):
    return int(fields(ok(cluster, "node", "info"))["shard_count"][0])


def test_queue_empty_and_errors(cluster):
    shards = shard_count(cluster)
    beyond = str(shards)
    # an empty queue lists nothing, on every shard or one
    assert ok(cluster, "queue", "list") == ""
    assert ok(cluster, "queue", "list", "--shard", "0") == ""
    assert ok(cluster, "queue", "list", "--shard", str(shards - 1),
              "--page-size", "5") == ""
    r = routed(cluster, "queue", "list")
    assert r.returncode == 0 and r.stdout == "", r.stderr

    # unknown ids
    for verb in ("show", "retry", "delete"):
        fails(cluster, 2, "queue", verb, NO_SUCH_ID,
              words=["no such queue entry"])
    r = routed(cluster, "queue", "show", "5.00000000000000ff")
    assert r.returncode == 2, r.stderr

    # malformed ids never reach the node
    for bad in ("zz", "1.xyz", "01.0123456789abcdef", "1.0123456789abcde",
                ".0123456789abcdef", "1.0123456789abcdefa",
                "99999999999.0123456789abcdef"):
        fails(cluster, 4, "queue", "show", bad, words=["bad queue id"])

    # a shard that does not exist: the node (or the route) refuses it
    fails(cluster, 4, "queue", "list", "--shard", beyond, words=["shard"])
    fails(cluster, 4, "queue", "show", f"{beyond}.0123456789abcdef",
          words=["shard"])
    r = routed(cluster, "queue", "retry", f"{beyond}.0123456789abcdef")
    assert r.returncode == 4, r.stderr

    # usage
    fails(cluster, 4, "queue", "list", "--shard", "x")
    fails(cluster, 1, "queue", "show")
    fails(cluster, 1, "queue", "list", "extra")
    fails(cluster, 1, "queue", "retry", NO_SUCH_ID, "--shard", "0")
    fails(cluster, 1, "queue")

    # uppercase hex is read as lowercase
    fails(cluster, 2, "queue", "delete", "0.0123456789ABCDEF",
          words=["0.0123456789abcdef"])


# --------------------------------------------------------------- SCRAM

def test_user_scram_record(cluster):
    d = new_domain(cluster)
    user = f"s@{d}"
    ok(cluster, "user", "add", user, input=PASSWORD + "\n")
    out = ok(cluster, "user", "show", user)
    f = fields(out)
    assert f["scram"] == ["SCRAM-SHA-256 iterations=4096"]
    assert "$" not in out and PASSWORD not in out

    # an imported hash comes without SCRAM: the old record is cleared
    ok(cluster, "user", "passwd", user, "--hash-stdin",
       input=YESCRYPT_HASH + "\n")
    assert fields(ok(cluster, "user", "show", user))["scram"] == ["none"]

    ok(cluster, "user", "passwd", user, input="another password\n")
    assert fields(ok(cluster, "user", "show", user))["scram"] == \
        ["SCRAM-SHA-256 iterations=4096"]

    ok(cluster, "user", "add", f"h@{d}", "--hash-stdin",
       input=YESCRYPT_HASH + "\n")
    assert fields(ok(cluster, "user", "show", f"h@{d}"))["scram"] == ["none"]

"""merpatictl against a live storage node: every command, every error path.

Exit status contract (tools/merpatictl.c): 0 ok, 1 usage, 2 not found,
3 already exists, 4 invalid argument, 5 node unavailable, 6 other error;
errors on stderr, prefixed "merpatictl:".

Every test makes its own domain (a random name), so the tests do not depend
on each other or on a cluster that other test files share. Bodies go in and
come out as bytes through the binary itself (cluster.ctl is text), so the
byte-exact checks see exactly what merpatictl reads and writes.
"""

import os
import re
import selectors
import socket
import subprocess
import time
import uuid
import warnings

import pytest

PASSWORD = "correct horse battery staple"

# Hashes of "pw" made with libxcrypt, for when Python's crypt module is gone.
SHA512_HASH = ("$6$3nJTDSLtDR/NR0L9$b06R9OjT4837igw3/zY9FyCzSjSGEYBebYicJ4Jfr"
               "rQvGT3kyGMf538ugAnebh/6MWMOg/p1WUD9Xi3rQRjnH1")
BCRYPT_HASH = "$2b$12$miCYQSH0vHY1QXaOoAWIwuRt5eqdc83o3K5E00n90sNSv3HIqzcrG"
YESCRYPT_HASH = ("$y$j9T$F5Jx5fExrKuPp53xLKQ..1$U4SOHmDd8SvW5vCUKSMR6N835VPwF"
                 "AtgYNhQ9mFFeL5")

DEFAULT_MAILBOXES = {
    "INBOX": "-",
    "Drafts": "\\Drafts",
    "Sent": "\\Sent",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}

# CRLF lines, every byte value but NUL, and a bare LF and CR: what a body
# may hold and a careless client would mangle.
BODY_8BIT = (b"From: a@example.com\r\nTo: b@example.com\r\n"
             b"Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\n"
             + bytes(range(1, 256)) + b"\r\n"
             + "caf\u00e9 \u00fcber \u65e5\u672c\r\n".encode("utf-8")
             + b"bare LF\nbare CR\rend\r\n")


# ------------------------------------------------------------- helpers

def ctl_bin():
    build = os.environ.get("MERPATI_BUILD_DIR")
    if not build:
        here = os.path.dirname(os.path.abspath(__file__))
        build = os.path.join(here, "..", "..", "build")
    path = os.path.join(build, "tools", "merpatictl")
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is not built (ninja -C {build} merpatictl)")
    return path


def clean_env():
    env = dict(os.environ)
    for k in ("MERPATI_NODE", "MERPATI_ETCD", "MERPATI_CLUSTER"):
        env.pop(k, None)
    return env


def raw(cluster, *args, input=b"", timeout=120):
    """merpatictl with bytes in and out (cluster.ctl is text)."""
    return subprocess.run([ctl_bin(), "--node", cluster.addr, *args],
                          input=input, capture_output=True, timeout=timeout,
                          env=clean_env())


def bare(*args, input=b"", env=None, timeout=60):
    """merpatictl with exactly these arguments (no --node added)."""
    return subprocess.run([ctl_bin(), *args], input=input,
                          capture_output=True, timeout=timeout,
                          env=env if env is not None else clean_env())


def ok(cluster, *args, input=None):
    r = cluster.ctl(*args, input=input, check=False)
    assert r.returncode == 0, \
        f"merpatictl {' '.join(args)}: rc={r.returncode}\n{r.stderr}"
    return r.stdout


def fails(cluster, code, *args, input=None):
    r = cluster.ctl(*args, input=input, check=False)
    assert r.returncode == code, \
        (f"merpatictl {' '.join(args)}: rc={r.returncode}, want {code}\n"
         f"stdout={r.stdout!r}\nstderr={r.stderr!r}")
    assert r.stderr.startswith("merpatictl"), \
        f"no error message on stderr: {r.stderr!r}"
    return r.stderr


def new_domain(cluster):
    d = f"d{uuid.uuid4().hex[:10]}.test"
    ok(cluster, "domain", "add", d)
    return d


def new_user(cluster, domain=None, local="alice"):
    if domain is None:
        domain = new_domain(cluster)
    user = f"{local}@{domain}"
    ok(cluster, "user", "add", user, input=PASSWORD + "\n")
    return user


def kv(line):
    """"uid=3 flags=(\\Seen x) size=5" -> dict; flags keep their parens."""
    out = {}
    for m in re.finditer(r"(\S+?)=(\([^)]*\)|\S*)", line):
        out[m.group(1)] = m.group(2)
    return out


def show(cluster, user):
    out = ok(cluster, "user", "show", user)
    fields = {}
    for line in out.splitlines():
        k, _, v = line.partition(": ")
        fields[k] = v
    return out, fields


def mailboxes(cluster, user):
    """name -> dict of the fields of `mailbox list`."""
    res = {}
    for line in ok(cluster, "mailbox", "list", user).splitlines():
        name, _, rest = line.partition(" ")
        res[name] = kv(rest)
    return res


def messages(cluster, user, mbox, *extra):
    res = {}
    for line in ok(cluster, "msg", "list", user, mbox, *extra).splitlines():
        f = kv(line)
        res[int(f["uid"])] = f
    return res


def flagset(field):
    assert field.startswith("(") and field.endswith(")"), field
    return set(field[1:-1].split())


def append(cluster, user, mbox, body, *extra):
    r = raw(cluster, "msg", "append", user, mbox, *extra, input=body)
    assert r.returncode == 0, f"append: rc={r.returncode} {r.stderr!r}"
    m = re.fullmatch(rb"uid=(\d+) uidvalidity=(\d+)\n", r.stdout)
    assert m, f"append output {r.stdout!r}"
    return int(m.group(1)), int(m.group(2))


def fetch(cluster, user, mbox, uid):
    r = raw(cluster, "msg", "fetch", user, mbox, str(uid))
    assert r.returncode == 0, f"fetch: rc={r.returncode} {r.stderr!r}"
    return r.stdout


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def sha512_crypt(password):
    """A {SHA512-CRYPT}-style hash from Python's crypt if it has one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            return SHA512_HASH
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))


# ------------------------------------------------------- usage, node info

def test_help_and_usage_errors():
    r = bare("help")
    assert r.returncode == 0
    text = r.stdout.decode()
    for cmd in ("domain add", "domain list", "domain del", "user add",
                "user list", "user del", "user passwd", "user show",
                "user quota", "user disable", "user enable", "mailbox list",
                "mailbox create", "mailbox rename", "mailbox delete",
                "msg append", "msg list", "msg fetch", "msg flags",
                "msg expunge", "msg copy", "msg move", "watch", "node info",
                "node drain", "node undrain", "node remove",
                "cluster status", "--etcd", "--cluster"):
        assert cmd in text, f"help lacks {cmd!r}"

    r = bare()
    assert r.returncode == 1 and b"usage:" in r.stderr
    for args in (("bogus",), ("user",), ("user", "frob"),
                 ("--node", "127.0.0.1:1", "user", "add"),
                 ("--node", "127.0.0.1:1", "domain", "add", "a.test", "b"),
                 ("--node", "127.0.0.1:1", "user", "list", "--quota", "1"),
                 ("--node", "127.0.0.1:1", "--no-such-option", "node",
                  "info"),
                 ("--node",)):
        r = bare(*args)
        assert r.returncode == 1, f"{args}: rc={r.returncode} {r.stderr!r}"
        assert r.stderr.startswith(b"merpatictl"), r.stderr


def test_node_required():
    r = bare("node", "info")
    assert r.returncode == 1
    assert b"MERPATI_NODE" in r.stderr
    r = bare("--node", "no-port", "node", "info")
    assert r.returncode == 4, r.stderr
    r = bare("--node", "127.0.0.1:1", "--timeout", "0", "node", "info")
    assert r.returncode == 4, r.stderr


def test_node_unreachable():
    port = free_port()
    t0 = time.monotonic()
    r = bare("--node", f"127.0.0.1:{port}", "--timeout", "5", "node", "info")
    assert r.returncode == 5, r.stderr
    assert b"unavailable" in r.stderr or b"timed out" in r.stderr
    assert time.monotonic() - t0 < 30
    r = bare("--node", f"127.0.0.1:{port}", "--timeout", "5", "domain", "list")
    assert r.returncode == 5, r.stderr


def test_node_info(cluster):
    out = ok(cluster, "node", "info")
    fields = dict(line.split(": ", 1) for line in out.splitlines())
    for k in ("node_id", "shard_count", "group_commits", "mutations",
              "epoch"):
        assert k in fields, out
    assert int(fields["shard_count"]) >= 1
    assert int(fields["mutations"]) >= int(fields["group_commits"])
    # The node is also found through the environment.
    env = clean_env()
    env["MERPATI_NODE"] = cluster.addr
    r = bare("node", "info", env=env)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------- domains

def test_domains(cluster):
    d = f"D{uuid.uuid4().hex[:10]}.Test"
    out = ok(cluster, "domain", "add", d)
    assert d.lower() in out
    fails(cluster, 3, "domain", "add", d)
    fails(cluster, 3, "domain", "add", d.lower())
    names = [ln.split()[0] for ln in ok(cluster, "domain", "list").splitlines()]
    assert d.lower() in names
    ok(cluster, "domain", "del", d.lower())
    names = [ln.split()[0] for ln in ok(cluster, "domain", "list").splitlines()]
    assert d.lower() not in names
    fails(cluster, 2, "domain", "del", d.lower())
    for bad in ("", "a..b", "-a.test", "a b.test", "a@b.test", "x" * 300):
        fails(cluster, 4, "domain", "add", bad)


def test_domain_list_pages(cluster):
    base = uuid.uuid4().hex[:8]
    want = [f"p{base}{i}.test" for i in range(5)]
    for d in want:
        ok(cluster, "domain", "add", d)
    lines = ok(cluster, "domain", "list", "--page-size", "2").splitlines()
    names = [ln.split()[0] for ln in lines]
    assert len(names) == len(set(names)), "a domain listed twice"
    for d in want:
        assert d in names
    assert names == sorted(names)


def test_domain_del_with_accounts(cluster):
    user = new_user(cluster)
    domain = user.split("@")[1]
    err = fails(cluster, 6, "domain", "del", domain)
    assert "DeleteDomain" in err
    ok(cluster, "user", "del", user)
    ok(cluster, "domain", "del", domain)


# --------------------------------------------------------------- users

def test_user_unknown_domain(cluster):
    fails(cluster, 2, "user", "add", f"bob@u{uuid.uuid4().hex[:8]}.test",
          input=PASSWORD + "\n")


def test_user_add_show_hides_hash(cluster):
    domain = new_domain(cluster)
    user = f"Bob.Smith@{domain.upper()}"
    out = ok(cluster, "user", "add", user, "--quota", "5M",
             input=PASSWORD + "\n")
    low = user.lower()
    assert low in out
    fails(cluster, 3, "user", "add", low, input=PASSWORD + "\n")

    out, f = show(cluster, user)
    assert f["user"] == low
    assert f["state"] == "active"
    assert f["quota"] == "5M (5242880 bytes)"
    assert f["used"] == "0 bytes"
    assert f["messages"] == "0"
    assert int(f["shard"]) >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", f["created"])
    assert f["hash"] == "yescrypt"
    assert "$y$" not in out and "$" not in out
    assert PASSWORD not in out

    lines = ok(cluster, "user", "list", domain).splitlines()
    assert [ln.split()[0] for ln in lines] == [low]
    assert "$" not in "\n".join(lines)


def test_password_only_from_stdin(cluster):
    domain = new_domain(cluster)
    user = f"carol@{domain}"
    # Never from argv: an extra argument or a password option is refused.
    fails(cluster, 1, "user", "add", user, PASSWORD)
    fails(cluster, 1, "user", "add", user, "--password", PASSWORD)
    fails(cluster, 4, "user", "add", user, input="")
    fails(cluster, 4, "user", "add", user, input="\n")
    fails(cluster, 4, "user", "add", user, input="one\ntwo\n")
    fails(cluster, 4, "user", "add", user, input="x" * 5000 + "\n")
    fails(cluster, 2, "user", "show", user)   # nothing was created
    # One line, with or without its newline (and CRLF), is the password.
    ok(cluster, "user", "add", user, input=PASSWORD)
    ok(cluster, "user", "passwd", user, input=PASSWORD + "2\r\n")
    ok(cluster, "user", "passwd", user, input=PASSWORD + "3\n")
    _, f = show(cluster, user)
    assert f["hash"] == "yescrypt"
    fails(cluster, 4, "user", "passwd", user, input="")
    fails(cluster, 2, "user", "passwd", f"nobody@{domain}",
          input=PASSWORD + "\n")


def test_hash_stdin(cluster):
    domain = new_domain(cluster)
    h = sha512_crypt("pw")
    assert h.startswith("$6$")
    u1 = f"sha@{domain}"
    ok(cluster, "user", "add", u1, "--hash-stdin",
       input="{SHA512-CRYPT}" + h + "\n")
    out, f = show(cluster, u1)
    assert f["hash"] == "sha512-crypt (stored as {SHA512-CRYPT})"
    assert h.split("$")[2] not in out        # not even the salt

    u2 = f"blf@{domain}"
    ok(cluster, "user", "add", u2, "--hash-stdin",
       input="{BLF-CRYPT}" + BCRYPT_HASH.replace("$2b$", "$2y$", 1) + "\n")
    assert show(cluster, u2)[1]["hash"] == "bcrypt (stored as {BLF-CRYPT})"

    for local, hashed, scheme in (("y", YESCRYPT_HASH, "yescrypt"),
                                  ("six", SHA512_HASH, "sha512-crypt"),
                                  ("two", BCRYPT_HASH, "bcrypt")):
        u = f"{local}@{domain}"
        ok(cluster, "user", "add", u, "--hash-stdin", input=hashed + "\n")
        assert show(cluster, u)[1]["hash"] == scheme

    # passwd --hash-stdin replaces the scheme too.
    ok(cluster, "user", "passwd", f"y@{domain}", "--hash-stdin",
       input="{SHA512-CRYPT}" + h + "\n")
    assert show(cluster, f"y@{domain}")[1]["hash"].startswith("sha512-crypt")

    for bad in ("{PLAIN}secret", "{CLEAR}secret", "not-a-hash", "$6$",
                "{NOSUCH}" + h, "$y$"):
        fails(cluster, 4, "user", "add", f"bad@{domain}", "--hash-stdin",
              input=bad + "\n")
        fails(cluster, 4, "user", "passwd", u1, "--hash-stdin",
              input=bad + "\n")
    fails(cluster, 2, "user", "show", f"bad@{domain}")
    assert show(cluster, u1)[1]["hash"].startswith("sha512-crypt")


def test_user_quota(cluster):
    user = new_user(cluster)
    assert show(cluster, user)[1]["quota"] == "unlimited"
    ok(cluster, "user", "quota", user, "10M")
    assert show(cluster, user)[1]["quota"] == "10M (10485760 bytes)"
    ok(cluster, "user", "quota", user, "1G")
    assert show(cluster, user)[1]["quota"] == "1G (1073741824 bytes)"
    ok(cluster, "user", "quota", user, "1536")
    assert show(cluster, user)[1]["quota"] == "1536 (1536 bytes)"
    ok(cluster, "user", "quota", user, "0")
    assert show(cluster, user)[1]["quota"] == "unlimited"
    for bad in ("10X", "-1", "", "1.5G", "M"):
        fails(cluster, 4, "user", "quota", user, bad)
    fails(cluster, 4, "user", "add", f"q@{user.split('@')[1]}", "--quota",
          "lots", input=PASSWORD + "\n")
    fails(cluster, 2, "user", "quota", f"nobody@{user.split('@')[1]}", "1M")


def test_user_disable_enable(cluster):
    user = new_user(cluster)
    ok(cluster, "user", "disable", user)
    assert show(cluster, user)[1]["state"] == "disabled"
    line = ok(cluster, "user", "list", user.split("@")[1]).strip()
    assert "state=disabled" in line
    ok(cluster, "user", "enable", user)
    assert show(cluster, user)[1]["state"] == "active"
    fails(cluster, 2, "user", "disable", f"nobody@{user.split('@')[1]}")
    fails(cluster, 2, "user", "enable", f"nobody@{user.split('@')[1]}")


def test_user_list_pages_and_del(cluster):
    domain = new_domain(cluster)
    other = new_domain(cluster)
    want = sorted(f"u{i}@{domain}" for i in range(5))
    for u in want:
        ok(cluster, "user", "add", u, input=PASSWORD + "\n")
    new_user(cluster, other, "zed")
    got = [ln.split()[0] for ln in
           ok(cluster, "user", "list", domain, "--page-size", "2").splitlines()]
    assert sorted(got) == want
    every = [ln.split()[0] for ln in
             ok(cluster, "user", "list", "--page-size", "2").splitlines()]
    assert len(every) == len(set(every)), "a user listed twice"
    assert set(want) | {f"zed@{other}"} <= set(every)

    ok(cluster, "user", "del", want[0])
    fails(cluster, 2, "user", "show", want[0])
    fails(cluster, 2, "user", "del", want[0])
    got = [ln.split()[0] for ln in
           ok(cluster, "user", "list", domain).splitlines()]
    assert sorted(got) == want[1:]


def test_user_argument_checks(cluster):
    for bad in ("nodomain", "a@b@c.test", "@x.test", "a@", "a b@x.test",
                "a@x..test"):
        for args in (("user", "show", bad), ("user", "del", bad),
                     ("user", "disable", bad), ("user", "quota", bad, "1M"),
                     ("mailbox", "list", bad), ("watch", bad)):
            fails(cluster, 4, *args)
        fails(cluster, 4, "user", "add", bad, input=PASSWORD + "\n")


# ----------------------------------------------------------- mailboxes

def test_mailbox_defaults(cluster):
    user = new_user(cluster)
    boxes = mailboxes(cluster, user)
    assert set(boxes) == set(DEFAULT_MAILBOXES), boxes
    for name, special in DEFAULT_MAILBOXES.items():
        f = boxes[name]
        assert f["special-use"] == special, (name, f)
        assert f["messages"] == "0" and f["unseen"] == "0"
        assert int(f["uidnext"]) >= 1
        assert int(f["uidvalidity"]) >= 1
        assert "highestmodseq" in f
        assert f["subscribed"] in ("yes", "no")


def test_mailbox_create_rename_delete(cluster):
    user = new_user(cluster)
    ok(cluster, "mailbox", "create", user, "a")
    ok(cluster, "mailbox", "create", user, "a/b")
    fails(cluster, 3, "mailbox", "create", user, "a")
    uid, _ = append(cluster, user, "a/b", b"Subject: child\r\n\r\nhi\r\n")

    ok(cluster, "mailbox", "rename", user, "a", "c")
    boxes = mailboxes(cluster, user)
    assert "c" in boxes and "c/b" in boxes, boxes
    assert "a" not in boxes and "a/b" not in boxes, boxes
    assert boxes["c/b"]["messages"] == "1"
    assert fetch(cluster, user, "c/b", uid) == b"Subject: child\r\n\r\nhi\r\n"

    fails(cluster, 2, "mailbox", "rename", user, "a", "d")
    fails(cluster, 3, "mailbox", "rename", user, "c", "Trash")
    ok(cluster, "mailbox", "delete", user, "c/b")
    fails(cluster, 2, "mailbox", "delete", user, "c/b")
    assert "c/b" not in mailboxes(cluster, user)
    fails(cluster, 2, "mailbox", "list", f"nobody@{user.split('@')[1]}")
    fails(cluster, 2, "mailbox", "create", f"nobody@{user.split('@')[1]}",
          "x")
    for bad in ("", "a//b", "/a", "a/", "x*", "x%", "tab\there"):
        fails(cluster, 4, "mailbox", "create", user, bad)
    fails(cluster, 1, "mailbox", "rename", user, "c")


# ------------------------------------------------------------ messages

def test_msg_append_list_fetch(cluster):
    user = new_user(cluster)
    uid1, v1 = append(cluster, user, "INBOX", BODY_8BIT,
                      "--flags", "\\Seen,\\Flagged")
    big = b"".join(b"line %07d \xe2\x82\xac\xff\x01\r\n" % i
                   for i in range(150000))
    assert len(big) > 2 * 1024 * 1024 + 100
    uid2, v2 = append(cluster, user, "INBOX", big)
    assert v1 == v2 and uid2 > uid1
    tiny = b"x"
    uid3, _ = append(cluster, user, "INBOX", tiny, "--flags", "$Label1 \\seen")

    assert fetch(cluster, user, "INBOX", uid1) == BODY_8BIT
    assert fetch(cluster, user, "INBOX", uid2) == big
    assert fetch(cluster, user, "inbox", uid3) == tiny

    msgs = messages(cluster, user, "INBOX")
    assert sorted(msgs) == [uid1, uid2, uid3]
    assert int(msgs[uid1]["size"]) == len(BODY_8BIT)
    assert int(msgs[uid2]["size"]) == len(big)
    assert flagset(msgs[uid1]["flags"]) == {"\\Seen", "\\Flagged"}
    assert flagset(msgs[uid2]["flags"]) == set()
    assert flagset(msgs[uid3]["flags"]) == {"$Label1", "\\Seen"}
    assert int(msgs[uid3]["modseq"]) > int(msgs[uid1]["modseq"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
                        msgs[uid1]["date"])

    box = mailboxes(cluster, user)["INBOX"]
    assert box["messages"] == "3" and box["unseen"] == "1"
    assert int(box["uidnext"]) > uid3
    assert int(box["uidvalidity"]) == v1
    _, f = show(cluster, user)
    assert f["messages"] == "3"
    assert int(f["used"].split()[0]) >= len(big)

    assert sorted(messages(cluster, user, "INBOX", f"{uid2}:*")) == \
        [uid2, uid3]
    assert sorted(messages(cluster, user, "INBOX", f"{uid1},{uid3}")) == \
        [uid1, uid3]
    assert messages(cluster, user, "Drafts") == {}

    # Errors: unknown user, mailbox, UID; bad arguments; empty body.
    d = user.split("@")[1]
    r = raw(cluster, "msg", "append", user, "NoSuchBox", input=b"x")
    assert r.returncode == 2, r.stderr
    r = raw(cluster, "msg", "append", f"nobody@{d}", "INBOX", input=b"x")
    assert r.returncode == 2, r.stderr
    r = raw(cluster, "msg", "append", user, "INBOX", input=b"")
    assert r.returncode == 4, r.stderr
    r = raw(cluster, "msg", "append", user, "INBOX", "--flags", "\\Bogus",
            input=b"x")
    assert r.returncode == 4, r.stderr
    r = raw(cluster, "msg", "append", user, "INBOX", "--flags", "a(b",
            input=b"x")
    assert r.returncode == 4, r.stderr
    fails(cluster, 2, "msg", "fetch", user, "INBOX", str(uid3 + 100))
    fails(cluster, 2, "msg", "fetch", user, "NoSuchBox", "1")
    fails(cluster, 2, "msg", "list", user, "NoSuchBox")
    for bad in ("0", "x", "-1", "4294967296"):
        fails(cluster, 4, "msg", "fetch", user, "INBOX", bad)
    for bad in ("0", "1:x", "a", "1,,2", ":"):
        fails(cluster, 4, "msg", "list", user, "INBOX", bad)


def test_msg_list_pages(cluster):
    user = new_user(cluster)
    uids = [append(cluster, user, "INBOX", b"m%d\r\n" % i)[0]
            for i in range(7)]
    lines = ok(cluster, "msg", "list", user, "INBOX", "--page-size", "2")
    got = [int(kv(ln)["uid"]) for ln in lines.splitlines()]
    assert got == uids
    lines = ok(cluster, "msg", "list", user, "INBOX", f"{uids[1]}:*",
               "--page-size", "3")
    assert [int(kv(ln)["uid"]) for ln in lines.splitlines()] == uids[1:]
    lines = ok(cluster, "msg", "list", user, "INBOX",
               f"{uids[0]},{uids[2]}:{uids[4]},{uids[6]}", "--page-size", "2")
    assert [int(kv(ln)["uid"]) for ln in lines.splitlines()] == \
        [uids[0], uids[2], uids[3], uids[4], uids[6]]


def test_msg_flags(cluster):
    user = new_user(cluster)
    uid, _ = append(cluster, user, "INBOX", b"flags\r\n", "--flags", "\\Seen")
    uid2, _ = append(cluster, user, "INBOX", b"flags2\r\n")

    out = ok(cluster, "msg", "flags", user, "INBOX", str(uid), "add",
             "\\Flagged", "urgent")
    line = [ln for ln in out.splitlines() if ln.startswith(f"uid={uid} ")][0]
    assert flagset(kv(line)["flags"]) == {"\\Seen", "\\Flagged", "urgent"}
    assert flagset(messages(cluster, user, "INBOX")[uid]["flags"]) == \
        {"\\Seen", "\\Flagged", "urgent"}

    ok(cluster, "msg", "flags", user, "INBOX", str(uid), "remove", "\\seen")
    assert flagset(messages(cluster, user, "INBOX")[uid]["flags"]) == \
        {"\\Flagged", "urgent"}
    ok(cluster, "msg", "flags", user, "INBOX", "1:*", "replace",
       "\\Answered,\\Draft")
    msgs = messages(cluster, user, "INBOX")
    assert flagset(msgs[uid]["flags"]) == {"\\Answered", "\\Draft"}
    assert flagset(msgs[uid2]["flags"]) == {"\\Answered", "\\Draft"}
    ok(cluster, "msg", "flags", user, "INBOX", str(uid2), "replace")
    assert flagset(messages(cluster, user, "INBOX")[uid2]["flags"]) == set()
    assert mailboxes(cluster, user)["INBOX"]["unseen"] == "2"

    fails(cluster, 1, "msg", "flags", user, "INBOX", str(uid), "toggle",
          "\\Seen")
    fails(cluster, 1, "msg", "flags", user, "INBOX", str(uid), "add")
    fails(cluster, 4, "msg", "flags", user, "INBOX", str(uid), "add",
          "\\Recent")
    fails(cluster, 4, "msg", "flags", user, "INBOX", "1:x", "add", "\\Seen")
    fails(cluster, 2, "msg", "flags", user, "NoSuchBox", "1", "add",
          "\\Seen")


def test_msg_expunge(cluster):
    user = new_user(cluster)
    uids = [append(cluster, user, "INBOX", b"e%d\r\n" % i)[0]
            for i in range(3)]
    ok(cluster, "msg", "flags", user, "INBOX", f"{uids[0]}:{uids[1]}", "add",
       "\\Deleted")
    out = ok(cluster, "msg", "expunge", user, "INBOX",
             f"{uids[0]}:{uids[1]}")
    f = kv(out.strip())
    assert sorted(int(x) for x in f["expunged"].split(",")) == uids[:2]
    assert int(f["highestmodseq"]) >= 1
    assert sorted(messages(cluster, user, "INBOX")) == [uids[2]]
    fails(cluster, 2, "msg", "fetch", user, "INBOX", str(uids[0]))
    assert fetch(cluster, user, "INBOX", uids[2]) == b"e2\r\n"
    assert mailboxes(cluster, user)["INBOX"]["messages"] == "1"
    fails(cluster, 4, "msg", "expunge", user, "INBOX", "x")
    fails(cluster, 2, "msg", "expunge", user, "NoSuchBox", "1")


def test_msg_copy_move(cluster):
    user = new_user(cluster)
    bodies = [b"copy %d\r\n\xc3\xa9\r\n" % i for i in range(3)]
    uids = [append(cluster, user, "INBOX", b)[0] for b in bodies]
    archive_v = int(mailboxes(cluster, user)["Archive"]["uidvalidity"])

    out = ok(cluster, "msg", "copy", user, "INBOX", f"{uids[0]}:{uids[1]}",
             "Archive")
    f = kv(out.strip())
    assert int(f["uidvalidity"]) == archive_v
    src = [int(x) for x in f["src"].split(",")]
    dest = [int(x) for x in f["dest"].split(",")]
    assert sorted(src) == uids[:2] and len(dest) == 2
    for s, d in zip(src, dest):
        assert fetch(cluster, user, "Archive", d) == bodies[uids.index(s)]
    assert sorted(messages(cluster, user, "INBOX")) == uids

    out = ok(cluster, "msg", "move", user, "INBOX", str(uids[2]), "Trash")
    f = kv(out.strip())
    assert f["src"] == str(uids[2])
    moved = int(f["dest"])
    assert fetch(cluster, user, "Trash", moved) == bodies[2]
    assert sorted(messages(cluster, user, "INBOX")) == uids[:2]
    boxes = mailboxes(cluster, user)
    assert boxes["Archive"]["messages"] == "2"
    assert boxes["Trash"]["messages"] == "1"

    fails(cluster, 2, "msg", "copy", user, "INBOX", "1:*", "NoSuchBox")
    fails(cluster, 2, "msg", "move", user, "NoSuchBox", "1", "Trash")
    fails(cluster, 4, "msg", "copy", user, "INBOX", "1:*", "a//b")
    fails(cluster, 1, "msg", "move", user, "INBOX", "1")


# --------------------------------------------------------------- watch

def read_line(proc, buf, deadline):
    """One line from proc.stdout by the deadline; returns (line, rest)."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(timeout=left):
                pytest.fail(f"watch printed nothing in time; got {buf!r}")
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                pytest.fail(f"watch ended early; got {buf!r}, stderr "
                            f"{proc.stderr.read()!r}")
            buf += chunk
    finally:
        sel.close()
    line, _, rest = buf.partition(b"\n")
    return line, rest


def test_watch(cluster):
    user = new_user(cluster)
    p = subprocess.Popen([ctl_bin(), "--node", cluster.addr, "watch", user,
                          "--count", "2", "--seconds", "60"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=clean_env())
    try:
        line, rest = read_line(p, b"", time.monotonic() + 20)
        assert line == b"ready"
        uid, _ = append(cluster, user, "INBOX", b"watched\r\n")
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    lines = (rest + out).decode().splitlines()
    assert len(lines) == 1, lines
    f = kv(lines[0])
    assert lines[0].startswith("mailbox ")
    assert f["name"] == "INBOX"
    assert int(f["highestmodseq"]) >= 1
    assert int(f["id"]) >= 0

    # --seconds ends a quiet watch, with exit 0.
    t0 = time.monotonic()
    r = raw(cluster, "watch", user, "--seconds", "2", timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"ready\n"
    assert 1.5 < time.monotonic() - t0 < 20
    for bad in ("0", "x", "-3"):
        fails(cluster, 4, "watch", user, "--count", bad)
        fails(cluster, 4, "watch", user, "--seconds", bad)


# ------------------------------------------------------- crash, restart

def test_state_survives_kill9(cluster):
    user = new_user(cluster)
    domain = user.split("@")[1]
    ok(cluster, "user", "quota", user, "20M")
    ok(cluster, "user", "disable", user)
    ok(cluster, "mailbox", "create", user, "keep/deep")
    uid, v = append(cluster, user, "keep/deep", BODY_8BIT,
                    "--flags", "\\Flagged")
    before = mailboxes(cluster, user)

    cluster.kill9(0)
    r = cluster.ctl("--timeout", "5", "node", "info", check=False)
    assert r.returncode == 5, (r.returncode, r.stderr)
    cluster.restart()

    ok(cluster, "node", "info")
    names = [ln.split()[0] for ln in ok(cluster, "domain", "list").splitlines()]
    assert domain in names
    _, f = show(cluster, user)
    assert f["state"] == "disabled"
    assert f["quota"] == "20M (20971520 bytes)"
    assert f["hash"] == "yescrypt"
    after = mailboxes(cluster, user)
    assert set(after) == set(before)
    assert after["keep/deep"]["uidvalidity"] == str(v)
    assert after["keep/deep"]["messages"] == "1"
    assert fetch(cluster, user, "keep/deep", uid) == BODY_8BIT
    msgs = messages(cluster, user, "keep/deep")
    assert flagset(msgs[uid]["flags"]) == {"\\Flagged"}
    # UIDs keep growing after the crash.
    uid2, v2 = append(cluster, user, "keep/deep", b"after\r\n")
    assert v2 == v and uid2 > uid

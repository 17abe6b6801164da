"""POP3 server of merpati-frontend against a real deployment (etcd, a
storage node, two frontends started by ./dev up), driven over raw sockets
(exact responses, pipelining, hostile input), Python's poplib, curl's
pop3:// and pop3s://, and fetchmail.

What is asserted is what RFC 1939 (POP3), RFC 2449 (CAPA, response codes),
RFC 3206 (SYS, AUTH codes), RFC 5034 (SASL), RFC 2595 (STLS) and the issue
require, with the section cited where the behaviour is subtle:

  - the maildrop is INBOX; its message list is fixed at login (RFC 1939
    §5: numbers stay valid for the whole session), and DELE takes effect
    only in the UPDATE state (QUIT); a dropped connection deletes nothing
    (RFC 1939 §6);
  - one session per maildrop across all frontends (RFC 1939 §4 exclusive
    lock): a second login gets -ERR [IN-USE] (RFC 2449 §8.1.1); the lock is
    a lease, so a killed frontend's lock frees itself;
  - LIST sizes are exact: RETR sends that many octets once un-stuffed,
    CRLFs counted, and dot-stuffs every line that starts with '.' (RFC 1939
    §3);
  - UIDL values are "<UIDVALIDITY>.<UID>" of the IMAP mailbox, stable
    across sessions (RFC 1939 §7);
  - USER/PASS and AUTH PLAIN/LOGIN only over TLS (unless the frontend runs
    with --allow_plaintext_auth=true), SCRAM-SHA-256 everywhere.

Each test makes its own domain and user; most share one deployment per
module (`pop3_cluster`, two frontends, --pop3_lock_lease=5s).
"""
import base64
import mailbox
import os
import poplib
import re
import shutil
import socket
import subprocess
import time
import getpass

import pytest

from conftest import Cluster, dev
from mailtest import (PASSWORD, LineConn, Scram, add_user, bulk_message, mk, run_curl,
                      tls_ctx, tool)
from test_imap import append, session, smtp_deliver, status
from test_imap_clients import fill

LEASE = 5.0          # --pop3_lock_lease of the test deployments (seconds)
MAX_CMD = 255        # RFC 2449 §4: command line length, CRLF included


# ================================================================ fixtures

def _up(path, *args):
    dev("up", "--dir", str(path), *args)
    try:
        yield Cluster(path)
    finally:
        dev("down", "--dir", str(path))
    shutil.rmtree(path / "etcd" / "data", ignore_errors=True)


@pytest.fixture(scope="module")
def pop3_cluster(tmp_path_factory):
    """etcd, one storage node and two frontends (default flags but a short
    POP3 lock lease), shared by the tests of this module."""
    yield from _up(tmp_path_factory.mktemp("pop3") / "c", "--nodes", "1",
                   "--frontends", "2",
                   f"--frontend-arg=--pop3_lock_lease={int(LEASE)}s")


@pytest.fixture
def user(pop3_cluster):
    return add_user(pop3_cluster)


# ========================================================== raw POP3 client

class Pop(LineConn):
    """A line-level POP3 client: what poplib would hide. Connects to
    127.0.0.1 and, with TLS, checks the certificate for "localhost"."""

    GREETING = b"+OK"
    MAX_LINE = 1 << 20           # no CRLF in 1 MiB of response: a failure

    def cmd(self, line):
        """Send one command line; return the status line."""
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.line()

    def ok(self, line):
        r = self.cmd(line)
        assert r.startswith(b"+OK"), (line, r)
        return r

    def err(self, line):
        r = self.cmd(line)
        assert r.startswith(b"-ERR"), (line, r)
        return r

    def wire_lines(self):
        """The lines of a multi-line response up to the '.' terminator, as
        sent (still dot-stuffed)."""
        out = []
        while True:
            ln = self.line()
            if ln == b".":
                return out
            out.append(ln)

    def multi(self, line):
        """A multi-line command: (status line, un-stuffed lines). RFC 1939
        §3: every line that starts with '.' is stuffed with one more '.'."""
        st = self.ok(line)
        lines = []
        for ln in self.wire_lines():
            if ln.startswith(b"."):
                assert ln.startswith(b".."), \
                    f"line starting with '.' not dot-stuffed: {ln!r}"
                ln = ln[1:]
            lines.append(ln)
        return st, lines

    def starttls(self, ctx):
        assert self.buf == b"", f"data after +OK to STLS: {self.buf!r}"
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")

def connect(cluster, i=0, tls=True):
    """A session on frontend i: implicit TLS (pop3s) or plaintext (pop3)."""
    if tls:
        return Pop(cluster.pop3s_port(i), tls=tls_ctx(cluster))
    return Pop(cluster.pop3_port(i))


def code_of(resp):
    """The RFC 2449 §8 response code of a status line, upper-cased."""
    m = re.match(rb"[+-](?:OK|ERR) \[([^\]]*)\]", resp)
    return m.group(1).decode().upper() if m else None


def user_pass(c, user, password=PASSWORD):
    """USER/PASS; returns the response to PASS (or to a refused USER)."""
    r = c.cmd(f"USER {user}")
    if not r.startswith(b"+OK"):
        return r
    return c.cmd(f"PASS {password}")


def login(cluster, user, i=0, tls=True, wait=3.0):
    """A session in the TRANSACTION state on frontend i (USER/PASS over
    pop3s). A login that finds the maildrop [IN-USE] is retried for up to
    `wait` seconds: RFC 1939 §6 lets the server release the lock after its
    +OK to QUIT, so a session right after another may race with it."""
    deadline = time.monotonic() + wait
    while True:
        c = connect(cluster, i, tls)
        r = user_pass(c, user)
        if r.startswith(b"+OK"):
            return c
        c.close()
        assert code_of(r) == "IN-USE" and time.monotonic() < deadline, \
            f"login of {user} on frontend{i}: {r!r}"
        time.sleep(0.2)


def capa(c):
    """CAPA as {KEYWORD: [args]} (RFC 2449 §5: one capability a line)."""
    _, lines = c.multi("CAPA")
    out = {}
    for ln in lines:
        words = ln.decode().split()
        assert words, f"empty CAPA line in {lines!r}"
        assert words[0].upper() not in out, f"{words[0]} twice: {lines!r}"
        out[words[0].upper()] = words[1:]
    return out


def stat(c):
    """STAT as (count, octets); RFC 1939 §5: "+OK nn mm"."""
    r = c.ok("STAT")
    m = re.match(rb"\+OK (\d+) (\d+)(?: |$)", r)
    assert m, f"malformed STAT reply {r!r}"
    return int(m.group(1)), int(m.group(2))


def scan_list(c, what="LIST"):
    """LIST / UIDL without argument as {number: size or uid string}."""
    _, lines = c.multi(what)
    out = {}
    for ln in lines:
        m = re.match(rb"(\d+) (\S+)$", ln)
        assert m, f"malformed {what} line {ln!r}"
        n = int(m.group(1))
        assert n not in out, f"{n} twice in {what}: {lines!r}"
        out[n] = int(m.group(2)) if what == "LIST" else m.group(2).decode()
    return out


def scan_one(c, what, n):
    """LIST n / UIDL n: the value of the "+OK n value" reply."""
    r = c.ok(f"{what} {n}")
    m = re.match(rb"\+OK (\d+) (\S+)", r)
    assert m and int(m.group(1)) == n, f"malformed {what} {n} reply {r!r}"
    return int(m.group(2)) if what == "LIST" else m.group(2).decode()


def retr(c, n, what=None):
    """RETR n (or TOP): the message as bytes, CRLF after every line."""
    _, lines = c.multi(what or f"RETR {n}")
    return b"".join(ln + b"\r\n" for ln in lines)


def split_lines(msg):
    assert msg.endswith(b"\r\n"), msg
    return msg[:-2].split(b"\r\n")


def top_of(msg, k):
    """What TOP n k must send (RFC 1939 §7): the header, the blank line
    and the first k lines of the body."""
    head, _, body = msg.partition(b"\r\n\r\n")
    body_lines = split_lines(body) if body else []
    return head + b"\r\n\r\n" + b"".join(ln + b"\r\n" for ln in body_lines[:k])


def fill_inbox(cluster, user, msgs):
    """APPEND msgs to INBOX; returns their UIDL values "<uidvalidity>.<uid>"
    (the issue's UIDL format) in order."""
    c = session(cluster, user)
    try:
        return ["%d.%d" % append(c, "INBOX", m) for m in msgs]
    finally:
        c.close()


def inbox_count(cluster, user):
    c = session(cluster, user)
    try:
        return status(c, "INBOX")["MESSAGES"]
    finally:
        c.close()


# A message whose lines start with dots: a lone '.', '..', '.x' and '. '
# must all come back exactly (RFC 1939 §3 byte-stuffing).
DOTS_BODY = ("line one\r\n.leading dot\r\n..two dots\r\n.\r\n"
             "after a lone dot\r\n. space\r\n...\r\nend\r\n")


def sample_msgs():
    return [mk("first", "hello\r\n"),
            mk("dots", DOTS_BODY),
            mk("third", "".join(f"body line {i}\r\n" for i in range(40)))]


# ================================================ SCRAM-SHA-256 (client side)

def scram(c, user, password, ir=True):
    """AUTH SCRAM-SHA-256 (RFC 5802/7677 over RFC 5034), with or without
    an initial response. The server's final message (v=, RFC 5802 §5) comes
    as a challenge that the client answers with an empty line (RFC 5034 §4,
    as RFC 4954 for SMTP), and its signature is verified. Returns the
    final status line."""
    sc = Scram(user, password)
    first = sc.first()
    if ir:
        r = c.cmd(b"AUTH SCRAM-SHA-256 " + first)
    else:
        r = c.cmd(b"AUTH SCRAM-SHA-256")
        if not r.startswith(b"+ ") and r != b"+":
            return r
        assert r.rstrip() == b"+", f"expected an empty challenge, got {r!r}"
        r = c.cmd(first)
    if not r.startswith(b"+ "):
        return r
    r = c.cmd(sc.final(r[2:]))
    if r.startswith(b"-ERR"):
        return r
    assert r.startswith(b"+ "), \
        f"SCRAM: expected the server-final-message (v=) as a challenge, got {r!r}"
    sc.verify(r[2:])
    return c.cmd(b"")


def b64(s):
    return base64.b64encode(s.encode() if isinstance(s, str) else s)


# ============================================ greeting, CAPA, STLS, pop3s

# RFC 2449 capabilities the issue asks for, in every state and port.
COMMON_CAPS = {"TOP": [], "UIDL": [], "RESP-CODES": [], "AUTH-RESP-CODE": [],
               "PIPELINING": []}


def check_auth_state_capa(caps, tls, plaintext_allowed=False):
    for k, v in COMMON_CAPS.items():
        assert caps.get(k) == v, (k, caps)
    assert caps.get("EXPIRE") == ["NEVER"], caps
    assert caps.get("LOGIN-DELAY") == ["0"], caps
    assert " ".join(caps.get("IMPLEMENTATION", [])).startswith("Merpati"), caps
    mechs = {m.upper() for m in caps.get("SASL", [])}
    if tls or plaintext_allowed:
        assert "USER" in caps, caps
        assert mechs == {"PLAIN", "LOGIN", "SCRAM-SHA-256"}, caps
    else:
        assert "USER" not in caps, caps
        assert mechs == {"SCRAM-SHA-256"}, caps
    # RFC 2595 §4: STLS only before TLS (and not on the implicit TLS port)
    assert ("STLS" in caps) == (not tls), caps


def test_plaintext_port_capa_and_refusals(pop3_cluster, user):
    c0 = pop3_cluster
    fill_inbox(c0, user, [mk("one")])
    c = connect(c0, tls=False)
    try:
        check_auth_state_capa(capa(c), tls=False)
        # USER/PASS before TLS: never a session (refused at USER or PASS)
        r = user_pass(c, user)
        assert r.startswith(b"-ERR"), r
        c.err("STAT")
        # AUTH PLAIN / LOGIN before TLS: refused
        c.err(b"AUTH PLAIN " + b64(f"\0{user}\0{PASSWORD}"))
        r = c.cmd(b"AUTH LOGIN")
        for answer in (user, PASSWORD):     # or refused during the exchange
            if r.startswith(b"+ ") or r == b"+":
                r = c.cmd(b64(answer))
        assert r.startswith(b"-ERR"), r
        c.err("STAT")
        # APOP is not offered (no timestamp needed, RFC 1939 §7): refused
        c.err(f"APOP {user} c4c9334bac560ecc979e58001b3e22fb")
        c.err("STAT")
        # QUIT in the AUTHORIZATION state: +OK and the connection closes
        # without an UPDATE state (RFC 1939 §6)
        c.ok("QUIT")
        assert c.closed()
    finally:
        c.close()
    assert inbox_count(c0, user) == 1


def test_stls(pop3_cluster, user):
    c0 = pop3_cluster
    fill_inbox(c0, user, [mk("one"), mk("two")])
    c = connect(c0, tls=False)
    try:
        c.ok("STLS")
        c.starttls(tls_ctx(c0))
        check_auth_state_capa(capa(c), tls=True)
        c.err("STLS")                        # RFC 2595 §4: not twice
        assert user_pass(c, user).startswith(b"+OK")
        assert stat(c)[0] == 2
        c.ok("QUIT")
        assert c.closed()                    # RFC 1939 §6: lock released
    finally:
        c.close()
    # poplib's stls() over the same port
    p = LocalPOP3(c0.pop3_port())
    try:
        p.stls(tls_ctx(c0))
        p.user(user)
        p.pass_(PASSWORD)
        assert p.stat()[0] == 2
    finally:
        p.quit()


def test_stls_discards_pipelined_plaintext(pop3_cluster, user):
    """RFC 2595 §4 / CVE-2011-0411: a command pipelined after STLS in
    plaintext is never executed inside the TLS session."""
    c0 = pop3_cluster
    c = connect(c0, tls=False)
    try:
        c.send(f"STLS\r\nUSER {user}\r\n".encode())
        r = c.line()
        assert r.startswith(b"+OK"), r
        c.starttls(tls_ctx(c0))
        # the injected USER was dropped, so PASS has no user to go with
        r = c.cmd(f"PASS {PASSWORD}")
        assert r.startswith(b"-ERR"), r
        c.err("STAT")
    finally:
        c.close()


def test_stls_refused_after_login(pop3_cluster, user):
    """SCRAM-SHA-256 needs no TLS; once logged in, STLS is refused (RFC
    2595 §4: AUTHORIZATION state only), as are the commands of that state."""
    c0 = pop3_cluster
    c = connect(c0, tls=False)
    try:
        r = scram(c, user, PASSWORD)
        assert r.startswith(b"+OK"), r
        assert stat(c) == (0, 0)
        c.err("STLS")
        c.err(f"USER {user}")
        c.err(f"PASS {PASSWORD}")
        c.err(b"AUTH PLAIN " + b64(f"\0{user}\0{PASSWORD}"))
        c.err(f"APOP {user} c4c9334bac560ecc979e58001b3e22fb")
        assert stat(c) == (0, 0)             # still usable
        caps = capa(c)                       # CAPA in TRANSACTION too
        for k in ("TOP", "UIDL", "RESP-CODES", "PIPELINING"):
            assert k in caps, caps
        c.ok("QUIT")
        assert c.closed()
    finally:
        c.close()


class _Local:
    """poplib connecting to 127.0.0.1 while self.host stays "localhost"
    (the name the certificate is checked against)."""

    def _create_socket(self, timeout):
        s = socket.create_connection(("127.0.0.1", self.port), timeout)
        if isinstance(self, poplib.POP3_SSL):
            s = self.context.wrap_socket(s, server_hostname=self.host)
        return s


class LocalPOP3(_Local, poplib.POP3):
    def __init__(self, port):
        poplib.POP3.__init__(self, "localhost", port, timeout=30)


class LocalPOP3_SSL(_Local, poplib.POP3_SSL):
    def __init__(self, port, context):
        poplib.POP3_SSL.__init__(self, "localhost", port, timeout=30,
                                 context=context)


def test_pop3s_capa(pop3_cluster, user):
    c0 = pop3_cluster
    c = connect(c0)
    try:
        check_auth_state_capa(capa(c), tls=True)
        c.err("STLS")                        # already TLS
        assert user_pass(c, user).startswith(b"+OK")
        assert stat(c) == (0, 0)
        c.ok("QUIT")
        assert c.closed()
    finally:
        c.close()


def test_poplib_pop3s_session(pop3_cluster, user):
    c0 = pop3_cluster
    msgs = sample_msgs()
    uidls = fill_inbox(c0, user, msgs)
    p = LocalPOP3_SSL(c0.pop3s_port(), tls_ctx(c0))
    try:
        caps = p.capa()
        assert "STLS" not in caps and "USER" in caps, caps
        p.user(user)
        p.pass_(PASSWORD)
        assert p.stat() == (3, sum(len(m) for m in msgs))
        resp, lines, _ = p.list()
        assert lines == [b"%d %d" % (i + 1, len(m)) for i, m in enumerate(msgs)]
        resp, lines, _ = p.uidl()
        assert lines == [b"%d %s" % (i + 1, u.encode()) for i, u in enumerate(uidls)]
        for i, m in enumerate(msgs):
            resp, lines, octets = p.retr(i + 1)
            # poplib un-stuffs; octets counts the un-stuffed CRLF lines
            assert b"".join(ln + b"\r\n" for ln in lines) == m, i
            assert octets == len(m), (i, octets, len(m))
            resp, lines, _ = p.top(i + 1, 2)
            assert b"".join(ln + b"\r\n" for ln in lines) == top_of(m, 2)
        assert p.noop().startswith(b"+OK")
        p.dele(1)
        assert p.stat() == (2, len(msgs[1]) + len(msgs[2]))
        p.rset()
        assert p.stat()[0] == 3
        p.dele(3)
    finally:
        assert p.quit().startswith(b"+OK")
    assert inbox_count(c0, user) == 2


# ================================================== TRANSACTION commands

def test_transaction_commands(pop3_cluster, user):
    c0 = pop3_cluster
    msgs = sample_msgs()
    uidls = fill_inbox(c0, user, msgs)
    uv = uidls[0].split(".")[0]
    c = session(c0, user)
    try:
        assert str(status(c, "INBOX", "UIDVALIDITY")["UIDVALIDITY"]) == uv
    finally:
        c.close()

    c = login(c0, user)
    try:
        sizes = [len(m) for m in msgs]
        assert stat(c) == (3, sum(sizes))
        assert scan_list(c) == {1: sizes[0], 2: sizes[1], 3: sizes[2]}
        assert scan_one(c, "LIST", 2) == sizes[1]
        assert scan_list(c, "UIDL") == {1: uidls[0], 2: uidls[1], 3: uidls[2]}
        assert scan_one(c, "UIDL", 3) == uidls[2]
        for u in uidls:                      # RFC 1939 §7: 0x21..0x7E, <= 70
            assert re.fullmatch(r"\d+\.\d+", u) and len(u) <= 70, u

        # RETR: the exact bytes, dot-stuffed on the wire
        for i, m in enumerate(msgs, 1):
            st = c.ok(f"RETR {i}")
            wire = c.wire_lines()
            want = [b"." + ln if ln.startswith(b".") else ln for ln in split_lines(m)]
            assert wire == want, (i, wire[:20])
            got = b"".join((ln[1:] if ln.startswith(b".") else ln) + b"\r\n" for ln in wire)
            assert got == m and len(got) == sizes[i - 1]
            assert st.startswith(b"+OK")

        # TOP n k: header, blank line, k body lines (all when k is larger)
        for k in (0, 1, 4, 1000):
            assert retr(c, 2, f"TOP 2 {k}") == top_of(msgs[1], k), k
        assert retr(c, 2, "TOP 2 1000") == msgs[1]

        c.ok("NOOP")
        # RFC 1939 §3: keywords are case-insensitive
        assert re.match(rb"\+OK 3 \d+", c.cmd("stat")), "lower-case stat"
        assert retr(c, 1, "retr 1") == msgs[0]

        # DELE marks; numbers of the others do not change (RFC 1939 §5)
        c.ok("DELE 1")
        assert stat(c) == (2, sizes[1] + sizes[2])
        assert scan_list(c) == {2: sizes[1], 3: sizes[2]}
        assert scan_list(c, "UIDL") == {2: uidls[1], 3: uidls[2]}
        for cmd in ("LIST 1", "UIDL 1", "RETR 1", "TOP 1 0", "DELE 1"):
            c.err(cmd)
        assert retr(c, 2) == msgs[1]
        # RSET unmarks
        c.ok("RSET")
        assert stat(c) == (3, sum(sizes))
        assert retr(c, 1) == msgs[0]
        c.ok("DELE 2")
        c.ok("QUIT")                         # UPDATE state: 2 is removed
        assert c.closed()
    finally:
        c.close()
    assert inbox_count(c0, user) == 2

    # The next session: renumbered, same UIDLs (stable)
    c = login(c0, user)
    try:
        assert stat(c) == (2, sizes[0] + sizes[2])
        assert scan_list(c, "UIDL") == {1: uidls[0], 2: uidls[2]}
        assert retr(c, 2) == msgs[2]
        c.ok("QUIT")
    finally:
        c.close()


def test_dot_stuffing_byte_exact_smtp_delivery(pop3_cluster, user):
    """A message delivered over SMTP (with the trace header the frontend
    adds) comes back over POP3 exactly as IMAP shows it."""
    c0 = pop3_cluster
    msg = mk("smtp dots", DOTS_BODY)
    smtp_deliver(c0, user, msg)
    c = session(c0, user, select="INBOX")
    try:
        stored = c.ok("FETCH 1 BODY.PEEK[]").fetches()[1]["BODY[]"]
    finally:
        c.close()
    assert stored.endswith(msg)
    p = LocalPOP3_SSL(c0.pop3s_port(), tls_ctx(c0))
    try:
        p.user(user)
        p.pass_(PASSWORD)
        resp, lines, octets = p.retr(1)
        assert b"".join(ln + b"\r\n" for ln in lines) == stored
        assert octets == len(stored)
        assert p.list(1).split()[2] == b"%d" % len(stored)
    finally:
        p.quit()


def test_pipelining(pop3_cluster, user):
    """RFC 2449 §6.6: commands sent in one write are answered in order."""
    c0 = pop3_cluster
    msgs = sample_msgs()
    uidls = fill_inbox(c0, user, msgs)
    c = connect(c0)
    try:
        c.send(f"USER {user}\r\nPASS {PASSWORD}\r\nSTAT\r\nLIST\r\nUIDL 2\r\n"
               f"RETR 2\r\nFROB\r\nDELE 3\r\nLIST 3\r\nNOOP\r\nRSET\r\n"
               f"TOP 1 0\r\nQUIT\r\n".encode())
        assert c.line().startswith(b"+OK")             # USER
        assert c.line().startswith(b"+OK")             # PASS
        assert re.match(rb"\+OK 3 %d" % sum(len(m) for m in msgs), c.line())
        assert c.line().startswith(b"+OK")             # LIST
        assert c.wire_lines() == [b"%d %d" % (i, len(m)) for i, m in enumerate(msgs, 1)]
        assert re.match(rb"\+OK 2 %s$" % uidls[1].encode(), c.line())
        assert c.line().startswith(b"+OK")             # RETR 2
        assert b"".join((ln[1:] if ln.startswith(b".") else ln) + b"\r\n"
                        for ln in c.wire_lines()) == msgs[1]
        assert c.line().startswith(b"-ERR")            # FROB
        assert c.line().startswith(b"+OK")             # DELE 3
        assert c.line().startswith(b"-ERR")            # LIST 3 (deleted)
        assert c.line().startswith(b"+OK")             # NOOP
        assert c.line().startswith(b"+OK")             # RSET
        assert c.line().startswith(b"+OK")             # TOP 1 0
        assert b"".join(ln + b"\r\n" for ln in c.wire_lines()) == top_of(msgs[0], 0)
        assert c.line().startswith(b"+OK")             # QUIT
        assert c.closed()
    finally:
        c.close()
    assert inbox_count(c0, user) == 3                  # RSET undid DELE 3


# ============================================================ SASL / USER

def test_auth_mechanisms(pop3_cluster, user):
    c0 = pop3_cluster
    dom = user.split("@", 1)[1]

    def attempt(tls, steps):
        """Run a login on a fresh connection: steps is a callable taking
        the Pop; returns the final status line; QUITs when it succeeded."""
        deadline = time.monotonic() + 3
        while True:
            c = connect(c0, tls=tls)
            try:
                r = steps(c)
                if r.startswith(b"+OK"):
                    assert stat(c) == (0, 0)
                    c.ok("QUIT")
                    return r
                if code_of(r) == "IN-USE" and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                # RFC 2449 §6.3 / RFC 3206 §4: failed logins carry [AUTH]
                return r
            finally:
                c.close()

    def plain_ir(c, u=user, pw=PASSWORD):
        return c.cmd(b"AUTH PLAIN " + b64(f"\0{u}\0{pw}"))

    def plain_no_ir(c, u=user, pw=PASSWORD):
        r = c.cmd(b"AUTH PLAIN")
        # RFC 5034 §4: "+" SP base64 (empty here)
        assert r.rstrip() == b"+", r
        return c.cmd(b64(f"\0{u}\0{pw}"))

    def login_mech(c, u=user, pw=PASSWORD):
        r = c.cmd(b"AUTH LOGIN")
        assert r.startswith(b"+"), r
        r = c.cmd(b64(u))
        assert r.startswith(b"+"), r
        return c.cmd(b64(pw))

    for steps in (plain_ir, plain_no_ir, login_mech,
                  lambda c: scram(c, user, PASSWORD, ir=True),
                  lambda c: scram(c, user, PASSWORD, ir=False),
                  lambda c: user_pass(c, user)):
        r = attempt(True, steps)
        assert r.startswith(b"+OK"), (steps, r)
    # SCRAM on the plaintext port
    assert attempt(False, lambda c: scram(c, user, PASSWORD)).startswith(b"+OK")
    assert attempt(False, lambda c: scram(c, user, PASSWORD, ir=False)).startswith(b"+OK")

    # Failures: -ERR [AUTH] (AUTH-RESP-CODE), for a wrong password and for
    # an unknown user alike; the session stays in AUTHORIZATION state.
    ghost = f"ghost@{dom}"
    fails = [lambda c: plain_ir(c, pw="wrong"),
             lambda c: plain_no_ir(c, pw="wrong"),
             lambda c: login_mech(c, pw="wrong"),
             lambda c: scram(c, user, "wrong"),
             lambda c: scram(c, ghost, "wrong"),
             lambda c: user_pass(c, user, "wrong"),
             lambda c: user_pass(c, ghost, "wrong"),
             lambda c: plain_ir(c, u=ghost)]
    for steps in fails:
        r = attempt(True, steps)
        assert r.startswith(b"-ERR") and code_of(r) == "AUTH", (steps, r)

    c = connect(c0)
    try:
        c.err(f"PASS {PASSWORD}")                   # PASS without USER
        c.err("AUTH FROB-MD5")                      # unknown mechanism
        r = c.cmd(b"AUTH PLAIN")
        assert r.rstrip() == b"+", r
        c.err("*")                                  # RFC 5034 §4: cancelled
        c.err(b"AUTH PLAIN !!!not-base64!!!")
        c.err("STAT")                               # still not logged in
        # and a login on the same connection still works (RFC 1939 §4)
        assert user_pass(c, user).startswith(b"+OK")
        assert stat(c) == (0, 0)
        c.ok("QUIT")
    finally:
        c.close()


@pytest.fixture
def plain_cluster(tmp_path):
    """A deployment whose frontend allows plaintext USER/PASS, PLAIN and
    LOGIN (tests only)."""
    yield from _up(tmp_path / "plain", "--nodes", "1", "--frontends", "1",
                   "--frontend-arg=--allow_plaintext_auth=true")


def test_plaintext_auth_when_allowed(plain_cluster):
    c0 = plain_cluster
    user = add_user(c0)
    fill_inbox(c0, user, [mk("one")])
    c = connect(c0, tls=False)
    try:
        check_auth_state_capa(capa(c), tls=False, plaintext_allowed=True)
        assert user_pass(c, user).startswith(b"+OK")
        assert stat(c)[0] == 1
        c.ok("QUIT")
    finally:
        c.close()
    c = login(c0, user, tls=False, wait=3)
    c.ok("QUIT")
    assert c.closed()
    c.close()
    p = LocalPOP3(c0.pop3_port())
    try:
        r = p._shortcmd("AUTH PLAIN " + b64(f"\0{user}\0{PASSWORD}").decode())
        assert r.startswith(b"+OK")
        assert p.stat()[0] == 1
    finally:
        p.quit()


# ============================================================= bad input

def test_bad_input_refused_and_changes_nothing(pop3_cluster, user):
    c0 = pop3_cluster
    msgs = sample_msgs()
    fill_inbox(c0, user, msgs)
    total = (3, sum(len(m) for m in msgs))

    # Before login: TRANSACTION commands are refused (RFC 1939 §5 and §7:
    # "may only be given in the TRANSACTION state").
    c = connect(c0)
    try:
        for cmd in ("STAT", "LIST", "RETR 1", "DELE 1", "NOOP", "RSET"):
            c.err(cmd)
        c.ok("CAPA")
        c.wire_lines()
    finally:
        c.close()
    c = connect(c0)
    try:
        for cmd in ("UIDL", "TOP 1 0", "FROB", "USER"):
            c.err(cmd)
        assert user_pass(c, user).startswith(b"+OK")
        assert stat(c) == total
        c.ok("QUIT")
    finally:
        c.close()

    # Unknown commands and bad message numbers, a few per session (a
    # server may end a session after many errors)
    batches = [
        ["FROB", "RETR", "RETR 0", "RETR 4", "RETR -1", "RETR abc"],
        ["LIST 0", "LIST 4", "LIST 99999999999999999999999", "UIDL 0", "UIDL 4"],
        ["DELE 0", "DELE 4", "DELE", "DELE 1 2x", "TOP 1", "TOP 4 0"],
        ["TOP 1 -1", "TOP 0 1", "TOP x 1", "TOP 1 x"],
    ]
    for batch in batches:
        c = login(c0, user)
        try:
            for cmd in batch:
                c.err(cmd)
                assert stat(c) == total, cmd
            c.ok("QUIT")
        finally:
            c.close()

    # DELE twice, RETR/TOP of a deleted message; then QUIT removes just it
    c = login(c0, user)
    try:
        c.ok("DELE 2")
        c.err("DELE 2")
        c.err("RETR 2")
        c.err("TOP 2 0")
        assert stat(c) == (2, total[1] - len(msgs[1]))
        c.ok("RSET")
        assert stat(c) == total
        c.ok("QUIT")
    finally:
        c.close()
    assert inbox_count(c0, user) == 3

    # NUL bytes: -ERR and nothing happens
    c = login(c0, user)
    try:
        for cmd in (b"STAT\0", b"DELE\0 1", b"DELE 1\0", b"NO\0OP", b"\0"):
            c.err(cmd)
        assert stat(c) == total
        c.ok("QUIT")
    finally:
        c.close()
    assert inbox_count(c0, user) == 3

    # Over-long lines (RFC 2449 §4: 255 octets with CRLF): -ERR, then the
    # next line is parsed where it starts.
    c = login(c0, user)
    try:
        for n in (MAX_CMD + 1, 300, 5000):
            line = b"DELE 1 " + b"1" * (n - 9)
            assert len(line) + 2 == n
            c.err(line)
            c.ok("NOOP")
            assert stat(c) == total
        # a long line split across writes
        c.send(b"DELE 1 " + b"x" * 2000)
        time.sleep(0.2)
        c.send(b"y" * 2000 + b"\r\n")
        assert c.line().startswith(b"-ERR")
        assert stat(c) == total
        c.ok("QUIT")
    finally:
        c.close()
    assert inbox_count(c0, user) == 3

    # A command of exactly 255 octets is a command (here a wrong password:
    # [AUTH], not a line-length refusal).
    c = connect(c0)
    try:
        c.ok(f"USER {user}")
        line = b"PASS " + b"p" * (MAX_CMD - 7)
        assert len(line) + 2 == MAX_CMD
        r = c.cmd(line)
        assert r.startswith(b"-ERR") and code_of(r) == "AUTH", r
    finally:
        c.close()


# ================================================= maildrop semantics

def test_message_list_fixed_at_login(pop3_cluster, user):
    c0 = pop3_cluster
    msgs = [mk("one"), mk("two")]
    fill_inbox(c0, user, msgs)
    c = login(c0, user)
    try:
        before = stat(c)
        assert before[0] == 2
        late = mk("late", "arrived during the session\r\n")
        smtp_deliver(c0, user, late)
        assert inbox_count(c0, user) == 3
        c.ok("NOOP")
        assert stat(c) == before
        assert set(scan_list(c)) == {1, 2}
        assert set(scan_list(c, "UIDL")) == {1, 2}
        c.err("RETR 3")
        c.err("LIST 3")
        c.ok("QUIT")
    finally:
        c.close()
    c = login(c0, user)
    try:
        assert stat(c)[0] == 3
        got = retr(c, 3)
        assert got.endswith(late) and b"Subject: late" in got
        c.ok("QUIT")
    finally:
        c.close()


def test_disconnect_without_quit_deletes_nothing(pop3_cluster, user):
    c0 = pop3_cluster
    msgs = sample_msgs()
    uidls = fill_inbox(c0, user, msgs)
    c = login(c0, user)
    try:
        for i in (1, 2, 3):
            c.ok(f"DELE {i}")
        assert stat(c) == (0, 0)
    finally:
        c.close()                              # no QUIT: no UPDATE state
    assert inbox_count(c0, user) == 3
    # The lock goes with the connection (at the latest with its lease).
    c = login(c0, user, wait=LEASE + 5)
    try:
        assert stat(c) == (3, sum(len(m) for m in msgs))
        assert scan_list(c, "UIDL") == {1: uidls[0], 2: uidls[1], 3: uidls[2]}
        c.ok("QUIT")
    finally:
        c.close()


def test_second_session_in_use_on_both_frontends(pop3_cluster, user):
    c0 = pop3_cluster
    fill_inbox(c0, user, [mk("one"), mk("two")])
    a = login(c0, user, i=0)
    try:
        a.ok("DELE 1")
        # RFC 2449 §8.1.1: [IN-USE], on the other frontend and on this one,
        # whichever way the client logs in
        for i in (1, 0):
            b = connect(c0, i)
            try:
                r = user_pass(b, user)
                assert r.startswith(b"-ERR") and code_of(r) == "IN-USE", (i, r)
            finally:
                b.close()
        b = connect(c0, 1, tls=False)
        try:
            r = scram(b, user, PASSWORD)
            assert r.startswith(b"-ERR") and code_of(r) == "IN-USE", r
        finally:
            b.close()
        # IMAP is not locked out
        assert inbox_count(c0, user) == 2
        a.ok("NOOP")
        assert stat(a)[0] == 1
        a.ok("QUIT")
    finally:
        a.close()
    b = login(c0, user, i=1)
    try:
        assert stat(b)[0] == 1
        b.ok("QUIT")
    finally:
        b.close()


def test_lock_lease_renewed_and_freed_after_kill9(pop3_cluster, user):
    """The lock is a lease: a session that holds it renews it (a login one
    lease later is still [IN-USE]); when its frontend is killed, the lock
    frees itself within the lease, and the dead session deleted nothing."""
    c0 = pop3_cluster
    msgs = [mk("one"), mk("two")]
    fill_inbox(c0, user, msgs)
    a = login(c0, user, i=1)
    try:
        a.ok("DELE 1")
        a.ok("DELE 2")
        time.sleep(LEASE + 2)                  # idle, longer than the lease
        b = connect(c0, 0)
        try:
            r = user_pass(b, user)
            assert code_of(r) == "IN-USE", r
        finally:
            b.close()
        c0.kill9_frontend(1)
        t0 = time.monotonic()
        c = login(c0, user, i=0, wait=3 * LEASE)
        freed = time.monotonic() - t0
        try:
            assert stat(c) == (2, sum(len(m) for m in msgs))
            c.ok("QUIT")
        finally:
            c.close()
        assert freed <= 3 * LEASE, freed
        print(f"lock free {freed:.1f} s after kill -9 (lease {LEASE} s)")
    finally:
        a.close()
        c0.restart_frontend(1)
    assert inbox_count(c0, user) == 2


# =============================================================== clients

def curl(cluster, url, *args, user=None, password=PASSWORD, check=True):
    tls = url.startswith("pop3s:")
    port = cluster.pop3s_port() if tls else cluster.pop3_port()
    return run_curl(cluster, port, url, *args, user=user, password=password, check=check)


def test_curl_list_and_retrieve(pop3_cluster, user):
    c0 = pop3_cluster
    msgs = sample_msgs()
    uidls = fill_inbox(c0, user, msgs)
    want_list = b"".join(b"%d %d\r\n" % (i, len(m)) for i, m in enumerate(msgs, 1))
    # (curl's listing output: compared line by line)
    out = curl(c0, "pop3s://localhost:PORT/", user=user).stdout
    assert out.splitlines() == want_list.splitlines(), out
    for i, m in enumerate(msgs, 1):
        out = curl(c0, f"pop3s://localhost:PORT/{i}", user=user).stdout
        assert out == m, i                    # curl un-stuffs the dots
    out = curl(c0, "pop3s://localhost:PORT/", "-X", "UIDL", user=user).stdout
    assert out.splitlines() == [b"%d %s" % (i, u.encode()) for i, u in enumerate(uidls, 1)], out
    # STLS on the plaintext port (--ssl-reqd: TLS or fail)
    out = curl(c0, "pop3://localhost:PORT/2", "--ssl-reqd", user=user).stdout
    assert out == msgs[1]
    r = curl(c0, "pop3s://localhost:PORT/", user=user, password="wrong", check=False)
    assert r.returncode == 67, r              # CURLE_LOGIN_DENIED
    assert inbox_count(c0, user) == 3         # curl does not delete


FETCH_N = 500


def test_fetchmail_500_over_pop3s(pop3_cluster, user, tmp_path):
    """fetchmail collects 500 messages over pop3s (certificate checked
    with the test CA) into an mbox and deletes them (no keep): the mbox has
    each once, and the INBOX is empty through IMAP and POP3."""
    c0 = pop3_cluster
    c = session(c0, user)
    try:
        fill(c, "INBOX", FETCH_N)
        assert status(c, "INBOX")["MESSAGES"] == FETCH_N
    finally:
        c.close()

    mbox = tmp_path / "collected.mbox"
    mda = tmp_path / "mda.sh"
    # One "From " line per message: fetchmail runs the MDA once a message.
    mda.write_text("#!/bin/sh\n"
                   f"{{ echo 'From fetchmail@localhost Mon Dec  7 10:00:00 2026'; "
                   f"cat; echo; }} >> '{mbox}'\n")
    mda.chmod(0o755)
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        "set no bouncemail\n"
        f"poll 127.0.0.1 with proto POP3 port {c0.pop3s_port()}\n"
        f'  user "{user}" there with password "{PASSWORD}" is "{getpass.getuser()}" here\n'
        f'  ssl sslcertck sslcertfile "{c0.tls_ca}" sslcommonname "localhost"\n'
        f'  nokeep fetchall\n'
        f'  mda "{mda}"\n')
    rc.chmod(0o600)                           # fetchmail insists
    env = dict(os.environ, HOME=str(tmp_path))
    t = time.monotonic()
    r = subprocess.run([tool("fetchmail"), "-f", str(rc), "--idfile",
                        str(tmp_path / "fetchids"), "--nosyslog", "-v"],
                       capture_output=True, text=True, timeout=180, env=env,
                       stdin=subprocess.DEVNULL)
    took = time.monotonic() - t
    assert r.returncode == 0, f"fetchmail exited {r.returncode}\n{r.stdout}\n{r.stderr}"

    got = {}
    for m in mailbox.mbox(str(mbox)):
        subj = m["Subject"]
        assert subj not in got, f"{subj} collected twice"
        got[subj] = m
    assert set(got) == {f"bulk {n:04d}" for n in range(FETCH_N)}, \
        f"{len(got)} collected"
    for n in (0, 1, 250, FETCH_N - 1):
        # fetchmail adds a Received: header and hands LF lines to the MDA
        m = got[f"bulk {n:04d}"]
        want = bulk_message(n).replace(b"\r\n", b"\n")
        assert m.as_bytes().replace(b"\r\n", b"\n").rstrip(b"\n").endswith(
            want.rstrip(b"\n")), m.as_bytes()
    assert inbox_count(c0, user) == 0
    c = login(c0, user)
    try:
        assert stat(c) == (0, 0)
        c.ok("QUIT")
    finally:
        c.close()
    print(f"fetchmail collected {FETCH_N} messages in {took:.1f} s")


# ======================================================= storage trouble

@pytest.fixture
def storage_cluster(tmp_path):
    """One storage node and one frontend (short lock lease), for a test
    that kills the node."""
    yield from _up(tmp_path / "st", "--nodes", "1", "--frontends", "1",
                   f"--frontend-arg=--pop3_lock_lease={int(LEASE)}s")


def test_sys_temp_when_storage_is_down(storage_cluster):
    """RFC 3206 §4: a failure of the storage is [SYS/TEMP], not [AUTH]
    and never an empty or partial message."""
    c0 = storage_cluster
    user = add_user(c0)
    msgs = sample_msgs()
    fill_inbox(c0, user, msgs)
    c = login(c0, user)
    try:
        assert stat(c)[0] == 3
        c0.kill9(0)
        c.sock.settimeout(60)
        r = c.cmd("RETR 2")
        assert r.startswith(b"-ERR") and code_of(r) == "SYS/TEMP", r
    finally:
        c.close()
    c = connect(c0)
    try:
        c.sock.settimeout(60)
        r = user_pass(c, user)
        assert r.startswith(b"-ERR") and code_of(r) == "SYS/TEMP", r
    finally:
        c.close()
    c0.restart()
    # Back: nothing was deleted, and the cut session's lock is gone at the
    # latest with its lease.
    deadline = time.monotonic() + 30
    while True:
        c = connect(c0)
        c.sock.settimeout(60)
        r = user_pass(c, user)
        if r.startswith(b"+OK"):
            break
        c.close()
        assert time.monotonic() < deadline, r
        time.sleep(0.5)
    try:
        assert stat(c) == (3, sum(len(m) for m in msgs))
        assert retr(c, 2) == msgs[1]
        c.ok("QUIT")
    finally:
        c.close()

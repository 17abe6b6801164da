"""IMAP server of merpati-frontend against a real deployment (etcd, storage
nodes, frontends started by ./dev up), driven over raw sockets (what a
client library would hide: exact responses, literals, pipelining, hostile
input) and Python's imaplib.

What is asserted is what RFC 3501 / RFC 9051 and the extensions the server
advertises require (RFC 2971 ID, 3502 MULTIAPPEND, 3516 BINARY, 4315
UIDPLUS, 4422/4616/5802/7677 SASL, 4731 ESEARCH, 4959 SASL-IR, 5161 ENABLE,
5258 LIST-EXTENDED, 5819 LIST-STATUS, 6154 SPECIAL-USE, 6851 MOVE, 7162
CONDSTORE/QRESYNC, 7888 LITERAL+, 8438 STATUS=SIZE, 8474 OBJECTID), with
the section cited where the behaviour is subtle. Tokens that the RFCs make
case-insensitive (body types, encodings, parameter names, flags) are
compared case-insensitively; everything else exactly.

Most tests share one deployment per module (`imap_cluster`): each test
makes its own domain and users, so tests stay independent of each other.
"""
import base64
import calendar
import imaplib
import os
import re
import smtplib
import socket
import time
import uuid

import pytest

from conftest import Cluster, _deployment, dev
from mailtest import PASSWORD, LineConn, Scram, add_user, mk, tls_ctx

WAIT = 10.0          # longest wait for a pushed/propagated change (seconds)

# The mailboxes every new account has (storage-node/store_ops.c), with the
# special-use attribute each carries (RFC 6154).
DEFAULT_MAILBOXES = {"INBOX": None, "Drafts": "\\Drafts", "Sent": "\\Sent",
                     "Trash": "\\Trash", "Junk": "\\Junk",
                     "Archive": "\\Archive"}


# ======================================================== response parsing

class ParseError(Exception):
    pass


_LIT = re.compile(rb"~?\{(\d+)\+?\}\r\n")


def _items(d, i, nested):
    """Tokens of an IMAP response from d[i:]: atoms as str (brackets kept
    with their atom: 'BODY[HEADER.FIELDS (A B)]<0>'), quoted strings and
    literals as bytes, NIL as None, parenthesised lists as lists."""
    out = []
    n = len(d)
    while i < n:
        c = d[i:i + 1]
        if c in (b" ", b"\r", b"\n"):
            i += 1
            continue
        if c == b")":
            if nested:
                return out, i + 1
            raise ParseError(f"unbalanced ')' at {i} in {d!r}")
        if c == b"(":
            sub, i = _items(d, i + 1, True)
            out.append(sub)
            continue
        if c == b'"':
            j = i + 1
            s = bytearray()
            while True:
                if j >= n:
                    raise ParseError(f"unterminated string in {d!r}")
                ch = d[j:j + 1]
                if ch == b'"':
                    break
                if ch == b"\\":
                    j += 1
                    ch = d[j:j + 1]
                s += ch
                j += 1
            out.append(bytes(s))
            i = j + 1
            continue
        m = _LIT.match(d, i)
        if m:
            ln = int(m.group(1))
            st = m.end()
            if st + ln > n:
                raise ParseError(f"short literal in {d!r}")
            out.append(d[st:st + ln])
            i = st + ln
            continue
        j = i
        depth = 0
        while j < n:
            ch = d[j:j + 1]
            if ch == b"[":
                depth += 1
            elif ch == b"]":
                depth -= 1
            elif depth == 0 and ch in (b" ", b"(", b")", b"\r", b"\n"):
                break
            j += 1
        if j == i:
            raise ParseError(f"empty atom at {i} in {d!r}")
        atom = d[i:j].decode("utf-8", "replace")
        out.append(None if atom.upper() == "NIL" else atom)
        i = j
    if nested:
        raise ParseError(f"unclosed '(' in {d!r}")
    return out, i


def parse(data):
    """An untagged response (without the leading '* ') as tokens."""
    return _items(data, 0, False)[0]


def fetch_key(k):
    """Canonical FETCH item name: upper case, single spaces, so that
    'body[header.fields (From  Subject)]' == 'BODY[HEADER.FIELDS (FROM SUBJECT)]'."""
    k = re.sub(r"\s+", " ", k.upper().replace('"', ""))
    return k.replace("( ", "(").replace(" )", ")")


def pairs(lst):
    assert len(lst) % 2 == 0, f"odd FETCH item list {lst!r}"
    return {fetch_key(lst[i]): lst[i + 1] for i in range(0, len(lst), 2)}


def seqset(s):
    """Numbers of an IMAP sequence set without '*' ('1:3,7' -> [1,2,3,7])."""
    out = set()
    for part in str(s).split(","):
        if ":" in part:
            a, b = (int(x) for x in part.split(":"))
            out.update(range(min(a, b), max(a, b) + 1))
        else:
            out.add(int(part))
    return sorted(out)


def up(x):
    return x.upper() if isinstance(x, (str, bytes)) else x


def fl(flags):
    """A FETCH FLAGS list as a set of upper-cased flags, without \\Recent
    (session state that IMAP4rev1 shows in FLAGS, RFC 3501 §2.3.2)."""
    return {f.upper() for f in flags} - {"\\RECENT"}


def ub(x):
    """An atom or string as upper-case bytes."""
    return (x.encode() if isinstance(x, str) else x).upper()


# ========================================================== raw IMAP client

class Lit:
    """A literal argument: sent as {n} (waits for '+') or {n+} (LITERAL+)."""

    def __init__(self, data, plus=False, binary=False):
        self.data = data if isinstance(data, bytes) else data.encode()
        self.plus = plus
        self.binary = binary


class Res:
    """The result of one command: tagged status, its text, the untagged
    responses (bytes, without '* ') and continuation requests seen."""

    def __init__(self, tag, status, text, untagged, conts):
        self.tag, self.status, self.text = tag, status, text
        self.untagged, self.conts = untagged, conts
        m = re.match(r"\[([^\]]*)\]", text)
        self.code = m.group(1) if m else None

    def __repr__(self):
        return (f"<{self.tag} {self.status} {self.text!r} "
                f"untagged={self.untagged!r}>")

    def kind(self, name):
        """Untagged responses of one kind (e.g. 'EXISTS', 'FETCH', 'LIST')."""
        return [u for u in self.untagged if resp_kind(u) == name.upper()]

    def fetches(self):
        return fetch_map(self.untagged)

    def codes(self):
        """Response codes of the untagged OK/NO/BAD responses."""
        out = []
        for u in self.untagged:
            m = re.match(rb"(?:OK|NO|BAD) \[([^\]]*)\]", u)
            if m:
                out.append(m.group(1).decode())
        return out


def tagged(tag, line):
    """A Res from a tagged line already read."""
    st, _, text = line[len(tag) + 1:].partition(b" ")
    return Res(tag, st.decode().upper(), text.decode("utf-8", "replace"), [], [])


def resp_kind(u):
    m = re.match(rb"(\d+) (\S+)", u)
    if m:
        return m.group(2).decode().upper()
    m = re.match(rb"(\S+)", u)
    return m.group(1).decode().upper() if m else ""


def fetch_map(untagged):
    """{seq: {ITEM: value}} from untagged FETCH responses (merged when a
    message has several)."""
    out = {}
    for u in untagged:
        m = re.match(rb"(\d+) FETCH ", u, re.I)
        if not m:
            continue
        toks = parse(u[m.end():])
        assert len(toks) == 1 and isinstance(toks[0], list), u
        out.setdefault(int(m.group(1)), {}).update(pairs(toks[0]))
    return out


class Conn(LineConn):
    GREETING = (b"* OK", b"* PREAUTH")

    def __init__(self, port, tls=None, timeout=30):
        self.n = 0
        super().__init__(port, tls=tls, timeout=timeout)

    def response(self):
        """One response: a line with every literal it announces, as on the
        wire (the CRLF after '{n}' kept, the final CRLF removed)."""
        out = b""
        while True:
            ln = self.line()
            out += ln
            m = re.search(rb"~?\{(\d+)\}$", ln)
            if not m:
                return out
            out += b"\r\n" + self.read(int(m.group(1)))

    # -- commands
    def next_tag(self):
        self.n += 1
        return f"t{self.n}".encode()

    def collect(self, tag, untagged=None, conts=None):
        """Read responses up to the tagged one for tag."""
        untagged = [] if untagged is None else untagged
        conts = [] if conts is None else conts
        while True:
            r = self.response()
            if r.startswith(tag + b" "):
                st, _, text = r[len(tag) + 1:].partition(b" ")
                return Res(tag, st.decode().upper(), text.decode("utf-8", "replace"),
                           untagged, conts)
            if r.startswith(b"* "):
                untagged.append(r[2:])
            elif r.startswith(b"+"):
                conts.append(r)
            else:
                raise AssertionError(f"unexpected line {r!r} waiting for {tag!r}")

    def cmd(self, *parts, tag=None):
        """Send one command made of bytes/str parts and Lit literals; wait
        for '+' before a synchronising literal. Returns a Res (also when the
        server refuses a literal with a tagged reply)."""
        tag = tag or self.next_tag()
        line = tag + b" "
        untagged, conts = [], []
        for p in parts:
            if isinstance(p, Lit):
                pre = b"~" if p.binary else b""
                line += pre + b"{%d%s}\r\n" % (len(p.data), b"+" if p.plus else b"")
                self.send(line)
                line = b""
                if not p.plus:
                    while True:
                        r = self.response()
                        if r.startswith(b"+"):
                            conts.append(r)
                            break
                        if r.startswith(tag + b" "):
                            st, _, text = r[len(tag) + 1:].partition(b" ")
                            return Res(tag, st.decode().upper(),
                                       text.decode("utf-8", "replace"), untagged, conts)
                        assert r.startswith(b"* "), r
                        untagged.append(r[2:])
                self.send(p.data)
            else:
                line += p if isinstance(p, bytes) else p.encode()
        self.send(line + b"\r\n")
        return self.collect(tag, untagged, conts)

    def ok(self, *parts):
        r = self.cmd(*parts)
        assert r.status == "OK", r
        return r


# ================================================================ helpers

def q(s):
    """A quoted IMAP string."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def connect(cluster, i=0, tls=True):
    """A session on frontend i: implicit TLS (imaps) or plaintext (imap)."""
    if tls:
        return Conn(cluster.imaps_port(i), tls=tls_ctx(cluster))
    return Conn(cluster.imap_port(i))


def session(cluster, user, i=0, select=None):
    c = connect(cluster, i)
    c.ok("LOGIN ", q(user), " ", q(PASSWORD))
    if select:
        c.ok("SELECT ", q(select))
    return c


def caps_of(res_or_line):
    """Capabilities from a Res (untagged CAPABILITY or a [CAPABILITY ...]
    code) or a greeting line."""
    texts = []
    if isinstance(res_or_line, Res):
        texts += [u[len(b"CAPABILITY "):].decode() for u in res_or_line.kind("CAPABILITY")]
        if res_or_line.code and res_or_line.code.upper().startswith("CAPABILITY "):
            texts.append(res_or_line.code[len("CAPABILITY "):])
    else:
        m = re.search(rb"\[CAPABILITY ([^\]]*)\]", res_or_line)
        if m:
            texts.append(m.group(1).decode())
    return {w.upper() for t in texts for w in t.split()}


def capabilities(c):
    return caps_of(c.ok("CAPABILITY"))


def append(c, mbox, msg, flags=None, date=None, plus=False):
    """APPEND; returns (uidvalidity, uid) from APPENDUID."""
    parts = ["APPEND ", q(mbox)]
    if flags is not None:
        parts.append(" (" + " ".join(flags) + ")")
    if date is not None:
        parts.append(" " + q(date))
    parts += [" ", Lit(msg, plus=plus)]
    r = c.ok(*parts)
    m = re.match(r"APPENDUID (\d+) (\d+)$", r.code or "", re.I)
    assert m, f"APPEND without [APPENDUID v uid] (RFC 4315 §3): {r}"
    return int(m.group(1)), int(m.group(2))


def status(c, mbox, items="MESSAGES UIDNEXT UIDVALIDITY UNSEEN"):
    r = c.ok("STATUS ", q(mbox), f" ({items})")
    st = r.kind("STATUS")
    assert len(st) == 1, r
    toks = parse(st[0])
    got = toks[2]
    return {got[i].upper(): int(got[i + 1]) for i in range(0, len(got), 2)}


def select(c, mbox, params="", examine=False):
    """SELECT/EXAMINE; returns (Res, info dict)."""
    r = c.ok("EXAMINE " if examine else "SELECT ", q(mbox), params)
    info = {"codes": r.codes()}
    for u in r.untagged:
        m = re.match(rb"(\d+) (EXISTS|RECENT)$", u, re.I)
        if m:
            info[m.group(2).decode().upper()] = int(m.group(1))
        if u.upper().startswith(b"FLAGS "):
            info["FLAGS"] = {f.upper() for f in parse(u)[1]}
    for code in info["codes"]:
        k, _, v = code.partition(" ")
        info[k.upper()] = v
    return r, info


def uid_list(c):
    """UIDs of the selected mailbox in sequence order."""
    r = c.ok("UID SEARCH ALL")
    return sorted(search_result(r))


def search_result(r):
    """Numbers of the (single) untagged SEARCH response of r."""
    s = r.kind("SEARCH")
    assert len(s) == 1, r
    toks = parse(s[0])[1:]
    return sorted(int(t) for t in toks if not isinstance(t, list))


def flags_of(c, uid_or_set="1:*", uid=True):
    """{uid: set of upper-cased flags} (UID FETCH ... FLAGS)."""
    r = c.ok("UID FETCH " if uid else "FETCH ", str(uid_or_set), " (UID FLAGS)")
    return {int(v["UID"]): fl(v["FLAGS"])
            for v in r.fetches().values()}


def apply_expunges(uids, untagged):
    """Apply '* n EXPUNGE' responses (in order) to a seq-ordered uid list."""
    uids = list(uids)
    for u in untagged:
        m = re.match(rb"(\d+) EXPUNGE$", u, re.I)
        if m:
            n = int(m.group(1))
            assert 1 <= n <= len(uids), f"EXPUNGE {n} of {len(uids)}"
            del uids[n - 1]
    return uids


def smtp_deliver(cluster, rcpt, msg, i=0):
    with smtplib.SMTP("127.0.0.1", cluster.smtp_port(i), timeout=30) as s:
        refused = s.sendmail("sender@remote.test", [rcpt], msg)
        assert refused == {}


def wait_untagged(c, pred, timeout=WAIT):
    """Read untagged responses (during IDLE, or after a command) until
    pred(list so far) is true; AssertionError after timeout seconds."""
    got = []
    deadline = time.monotonic() + timeout
    try:
        while not pred(got):
            left = deadline - time.monotonic()
            assert left > 0, f"no matching response within {timeout} s: {got!r}"
            c.sock.settimeout(left)
            r = c.response()
            assert r.startswith(b"* "), r
            got.append(r[2:])
    except socket.timeout:
        raise AssertionError(f"no matching response within {timeout} s: {got!r}")
    finally:
        c.sock.settimeout(30)
    return got


def poll_noop(c, pred, timeout=WAIT):
    """NOOP until pred(all untagged so far) holds."""
    got = []
    deadline = time.monotonic() + timeout
    while True:
        got += c.ok("NOOP").untagged
        if pred(got):
            return got
        assert time.monotonic() < deadline, \
            f"not seen within {timeout} s: {got!r}"
        time.sleep(0.2)


def idle_start(c):
    tag = c.next_tag()
    c.send(tag + b" IDLE\r\n")
    pre = []
    while True:
        r = c.response()
        if r.startswith(b"+"):
            return tag, pre
        assert r.startswith(b"* "), f"IDLE refused: {r!r}"
        pre.append(r[2:])


def idle_done(c, tag):
    c.send(b"DONE\r\n")
    r = c.collect(tag)
    assert r.status == "OK", r
    return r


def scram_exchange(c, user, password, ir=True):
    """AUTHENTICATE SCRAM-SHA-256 (RFC 5802/7677) with SASL-IR (RFC 4959);
    the server signature (RFC 5802 §5: server-final-message, sent as a
    continuation since IMAP has no success data, RFC 4422 §3.6) is
    verified. Returns the tagged Res."""
    sc = Scram(user, password)
    first = sc.first()
    tag = c.next_tag()
    if ir:
        c.send(tag + b" AUTHENTICATE SCRAM-SHA-256 " + first + b"\r\n")
    else:
        c.send(tag + b" AUTHENTICATE SCRAM-SHA-256\r\n")
        r = c.response()
        assert r.rstrip() == b"+", f"expected an empty challenge, got {r!r}"
        c.send(first + b"\r\n")
    r = c.response()
    if r.startswith(tag + b" "):
        return tagged(tag, r)
    assert r.startswith(b"+ "), r
    c.send(sc.final(r[2:]) + b"\r\n")
    r = c.response()
    if r.startswith(tag + b" "):
        return tagged(tag, r)
    assert r.startswith(b"+ "), r
    sc.verify(r[2:])
    c.send(b"\r\n")
    return c.collect(tag)


def imap_date_ts(s):
    """INTERNALDATE 'dd-Mon-yyyy hh:mm:ss +zzzz' -> unix seconds."""
    m = re.match(r"\s?(\d{1,2})-(\w{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)$", s)
    assert m, f"malformed date-time {s!r}"
    mon = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
           "Nov", "Dec"].index(m.group(2)) + 1
    t = calendar.timegm((int(m.group(3)), mon, int(m.group(1)), int(m.group(4)),
                         int(m.group(5)), int(m.group(6))))
    off = (int(m.group(8)) * 60 + int(m.group(9))) * 60
    return t - off if m.group(7) == "+" else t + off


# ================================================================ fixtures

@pytest.fixture(scope="module")
def imap_cluster(tmp_path_factory):
    """One deployment (etcd, one node, one frontend with default flags:
    no plaintext LOGIN) shared by the tests of this module; each test
    makes its own domain and users."""
    yield from _deployment(tmp_path_factory.mktemp("imap") / "c", 1)


@pytest.fixture
def user(imap_cluster):
    return add_user(imap_cluster)


# ============================================== any state: CAPABILITY etc.

# What the issue asks the server to implement, as capability names: before
# authentication (the SASL ones), and once authenticated (RFC 9051 §7.2.2:
# the list may differ between the two; a client asks again after login).
PRE_AUTH_CAPS = {"IMAP4REV1", "SASL-IR", "AUTH=SCRAM-SHA-256"}
REQUIRED_CAPS = {"IMAP4REV1", "LITERAL+", "ENABLE", "IDLE", "NAMESPACE",
                 "UIDPLUS", "MOVE", "UNSELECT", "ID", "MULTIAPPEND", "BINARY",
                 "CHILDREN", "LIST-EXTENDED", "LIST-STATUS", "SPECIAL-USE",
                 "STATUS=SIZE", "CONDSTORE", "QRESYNC", "ESEARCH", "OBJECTID"}


def test_capability_noop_logout_plaintext_port(imap_cluster, user):
    c = connect(imap_cluster, tls=False)
    try:
        r = c.ok("CAPABILITY")
        assert len(r.kind("CAPABILITY")) == 1, r
        caps = caps_of(r)
        assert not PRE_AUTH_CAPS - caps, f"not advertised: {PRE_AUTH_CAPS - caps} in {caps}"
        # RFC 3501 §6.2.3 / RFC 9051 §6.2.3: no LOGIN and no plaintext
        # password mechanism before TLS (the design: LOGINDISABLED unless
        # --allow_plaintext_auth).
        assert "STARTTLS" in caps and "LOGINDISABLED" in caps, caps
        assert "AUTH=PLAIN" not in caps and "AUTH=LOGIN" not in caps, caps
        # A capability list in the greeting must say the same thing.
        g = caps_of(c.greeting)
        assert not g or g == caps, (g, caps)
        r = c.ok("NOOP")
        assert r.untagged == [], r
        # Authenticated (SCRAM needs no TLS): every extension of the issue.
        assert scram_exchange(c, user, PASSWORD).status == "OK"
        caps = capabilities(c)
        assert not REQUIRED_CAPS - caps, f"not advertised: {REQUIRED_CAPS - caps} in {caps}"
        # LOGOUT: untagged BYE, tagged OK, then the server closes.
        r = c.cmd("LOGOUT")
        assert r.status == "OK" and any(u.upper().startswith(b"BYE") for u in r.untagged), r
        assert c.closed()
    finally:
        c.close()


def test_capability_over_implicit_tls(imap_cluster, user):
    c = connect(imap_cluster)
    try:
        caps = capabilities(c)
        assert not PRE_AUTH_CAPS - caps, PRE_AUTH_CAPS - caps
        # RFC 9051 §6.2.1: no STARTTLS once TLS is up; plaintext
        # mechanisms are fine over TLS.
        assert "STARTTLS" not in caps and "LOGINDISABLED" not in caps, caps
        assert {"AUTH=PLAIN", "AUTH=LOGIN"} <= caps, caps
        assert c.cmd("STARTTLS").status in ("BAD", "NO")
        assert c.ok("NOOP").status == "OK"
        r = c.ok("LOGIN ", q(user), " ", q(PASSWORD))
        caps = capabilities(c)
        assert not REQUIRED_CAPS - caps, REQUIRED_CAPS - caps
        # a [CAPABILITY] code on the LOGIN OK must be the same list
        assert not r.code or not r.code.upper().startswith("CAPABILITY ") or \
            caps_of(r) == caps, (r, caps)
        c.ok("LOGOUT")
    finally:
        c.close()


def test_starttls_and_logindisabled(imap_cluster, user):
    c = connect(imap_cluster, tls=False)
    try:
        # Refused before TLS, and nothing changed: still not authenticated.
        r = c.cmd("LOGIN ", q(user), " ", q(PASSWORD))
        assert r.status in ("NO", "BAD"), r
        r = c.cmd("AUTHENTICATE PLAIN ",
                  base64.b64encode(f"\0{user}\0{PASSWORD}".encode()))
        assert r.status in ("NO", "BAD"), r
        assert c.cmd("SELECT INBOX").status in ("BAD", "NO")
        # RFC 3501 §6.2.1: STARTTLS; commands pipelined behind it in
        # plaintext are never executed inside TLS (a CVE-2011-0411 style
        # injection): the server must discard them.
        tag = c.next_tag()
        c.send(tag + b" STARTTLS\r\nX1 SELECT INBOX\r\n")
        r = c.collect(tag)
        assert r.status == "OK", r
        c.sock = tls_ctx(imap_cluster).wrap_socket(c.sock, server_hostname="localhost")
        assert c.buf == b"", c.buf
        r = c.ok("CAPABILITY")   # would fail on a stray 'X1 ...' line
        caps = caps_of(r)
        # RFC 9051 §6.2.1: capabilities change after STARTTLS.
        assert "STARTTLS" not in caps and "LOGINDISABLED" not in caps, caps
        assert "AUTH=PLAIN" in caps, caps
        assert c.cmd("STARTTLS").status in ("BAD", "NO")  # TLS is on already
        r = c.ok("LOGIN ", q(user), " ", q(PASSWORD))
        _, info = select(c, "INBOX")
        assert info["EXISTS"] == 0
        c.ok("LOGOUT")
    finally:
        c.close()


def test_login_and_authenticate_mechanisms(imap_cluster, user):
    # LOGIN: wrong password, unknown user, then right (RFC 9051 §6.2.3).
    c = connect(imap_cluster)
    try:
        assert c.cmd("LOGIN ", q(user), ' "wrong"').status == "NO"
        assert c.cmd("LOGIN ", q("ghost@" + user.split("@")[1]), " ",
                     q(PASSWORD)).status == "NO"
        assert c.cmd("SELECT INBOX").status in ("BAD", "NO")
        # the user name is case-insensitive (addresses are lowercased)
        c.ok("LOGIN ", q(user.upper()), " ", q(PASSWORD))
        select(c, "INBOX")
        # authenticated: LOGIN and AUTHENTICATE are wrong-state commands
        assert c.cmd("LOGIN ", q(user), " ", q(PASSWORD)).status in ("BAD", "NO")
        assert c.cmd("AUTHENTICATE PLAIN").status in ("BAD", "NO")
    finally:
        c.close()

    plain = base64.b64encode(f"\0{user}\0{PASSWORD}".encode())
    # AUTHENTICATE PLAIN with an initial response (SASL-IR, RFC 4959).
    c = connect(imap_cluster)
    try:
        r = c.ok(b"AUTHENTICATE PLAIN " + plain)
        assert not r.conts, r
        select(c, "INBOX")
    finally:
        c.close()
    # ... and without: an empty "+ " challenge first (RFC 4616, RFC 9051 §6.2.2).
    c = connect(imap_cluster)
    try:
        tag = c.next_tag()
        c.send(tag + b" AUTHENTICATE PLAIN\r\n")
        assert c.response().rstrip() == b"+"
        c.send(plain + b"\r\n")
        assert c.collect(tag).status == "OK"
    finally:
        c.close()
    # AUTHENTICATE LOGIN: two challenges (user name, password).
    c = connect(imap_cluster)
    try:
        tag = c.next_tag()
        c.send(tag + b" AUTHENTICATE LOGIN\r\n")
        assert c.response().startswith(b"+")
        c.send(base64.b64encode(user.encode()) + b"\r\n")
        assert c.response().startswith(b"+")
        c.send(base64.b64encode(PASSWORD.encode()) + b"\r\n")
        assert c.collect(tag).status == "OK"
        select(c, "INBOX")
    finally:
        c.close()
    # Cancelled exchange: "*" -> BAD (RFC 9051 §6.2.2), session still usable.
    c = connect(imap_cluster)
    try:
        tag = c.next_tag()
        c.send(tag + b" AUTHENTICATE PLAIN\r\n")
        assert c.response().startswith(b"+")
        c.send(b"*\r\n")
        assert c.collect(tag).status == "BAD"
        # wrong password through SASL: NO; unknown mechanism: NO
        bad = base64.b64encode(f"\0{user}\0nope".encode())
        assert c.cmd(b"AUTHENTICATE PLAIN " + bad).status == "NO"
        # acting as another user (an authzid that is not the authcid): NO
        other = add_user(imap_cluster, "bob", domain=user.split("@")[1])
        imp = base64.b64encode(f"{other}\0{user}\0{PASSWORD}".encode())
        assert c.cmd(b"AUTHENTICATE PLAIN " + imp).status == "NO"
        assert c.cmd("AUTHENTICATE X-UNKNOWN-MECH").status in ("NO", "BAD")
        assert c.cmd("SELECT INBOX").status in ("BAD", "NO")
        c.ok(b"AUTHENTICATE PLAIN " + plain)
    finally:
        c.close()
    # SCRAM-SHA-256 on the plaintext port (no password on the wire), with
    # and without SASL-IR; a wrong password fails.
    c = connect(imap_cluster, tls=False)
    try:
        r = scram_exchange(c, user, "wrong")
        assert r.status == "NO", r
        r = scram_exchange(c, user, PASSWORD)
        assert r.status == "OK", r
        select(c, "INBOX")
    finally:
        c.close()
    c = connect(imap_cluster)
    try:
        r = scram_exchange(c, user, PASSWORD, ir=False)
        assert r.status == "OK", r
    finally:
        c.close()


def test_enable_id_namespace(imap_cluster, user):
    c = connect(imap_cluster)
    try:
        # ID works in any state (RFC 2971 §3.1).
        r = c.ok('ID ("name" "pytest" "version" "1")')
        ids = r.kind("ID")
        assert len(ids) == 1, r
        v = parse(ids[0])[1]
        assert v is None or (isinstance(v, list) and len(v) % 2 == 0), ids
        c.ok("ID NIL")
        # ENABLE only when authenticated (RFC 5161 §3.1): refused, or at
        # least nothing enabled.
        r = c.cmd("ENABLE CONDSTORE")
        assert r.status in ("BAD", "NO") or not [
            x for u in r.kind("ENABLED") for x in parse(u)[1:]], r
        c.ok("LOGIN ", q(user), " ", q(PASSWORD))
        r = c.ok("ENABLE CONDSTORE X-NOT-AN-EXTENSION")
        en = r.kind("ENABLED")
        assert len(en) == 1, r
        # Only what was enabled is listed; an unknown name is ignored.
        assert [w.upper() for w in parse(en[0])[1:]] == ["CONDSTORE"], en
        # QRESYNC implies CONDSTORE (RFC 7162 §3.2.3)
        r = c.ok("ENABLE QRESYNC")
        assert "QRESYNC" in {w.upper() for u in r.kind("ENABLED") for w in parse(u)[1:]}
        # NAMESPACE (RFC 2342): one personal namespace, prefix "", "/".
        r = c.ok("NAMESPACE")
        ns = r.kind("NAMESPACE")
        assert len(ns) == 1, r
        toks = parse(ns[0])
        assert toks[1] == [[b"", b"/"]], toks
        assert toks[2] is None and toks[3] is None, toks
        c.ok("LOGOUT")
    finally:
        c.close()


@pytest.fixture
def plain_cluster(tmp_path):
    """A deployment whose frontend allows plaintext LOGIN (tests only)."""
    path = tmp_path / "plain"
    dev("up", "--dir", str(path), "--nodes", "1", "--frontends", "1",
        "--frontend-arg=--allow_plaintext_auth=true")
    try:
        yield Cluster(path)
    finally:
        dev("down", "--dir", str(path))


def test_plaintext_login_when_allowed(plain_cluster):
    u = add_user(plain_cluster)
    c = connect(plain_cluster, tls=False)
    try:
        caps = capabilities(c)
        assert "LOGINDISABLED" not in caps and "AUTH=PLAIN" in caps, caps
        assert "STARTTLS" in caps, caps
        c.ok("LOGIN ", q(u), " ", q(PASSWORD))
        select(c, "INBOX")
    finally:
        c.close()


# ==================================================== mailboxes and LIST

def name_of(tok):
    return tok.decode() if isinstance(tok, bytes) else tok


def listing(c, *args, kind="LIST"):
    """{name: (attrs upper-cased, extended items)} from LIST/LSUB."""
    r = c.ok(*args)
    out = {}
    for u in r.kind(kind):
        toks = parse(u)
        assert toks[2] == b"/", f"hierarchy delimiter must be '/': {u!r}"
        name = name_of(toks[3])
        assert name not in out, f"{name} listed twice: {r}"
        out[name] = ({a.upper() for a in toks[1]}, toks[4:])
    return out


def test_mailbox_create_list_rename_delete(imap_cluster, user):
    c = session(imap_cluster, user)
    try:
        # RFC 9051 §6.3.9: LIST "" "" gives the delimiter and root.
        r = c.ok('LIST "" ""')
        toks = parse(r.kind("LIST")[0])
        assert "\\NOSELECT" in {a.upper() for a in toks[1]} and toks[2] == b"/", toks
        assert set(listing(c, 'LIST "" "*"')) == set(DEFAULT_MAILBOXES)

        c.ok('CREATE "Work"')
        c.ok('CREATE "Work/Projects"')
        c.ok('CREATE "Work/Projects/2026"')
        c.ok('CREATE "Later/"')     # a trailing delimiter names "Later"
        # mUTF-7 (RFC 3501 §5.1.3): "Été" is &AMk-t&AOk-
        c.ok('CREATE "&AMk-t&AOk-"')
        # existing names and INBOX: NO, nothing changes
        before = listing(c, 'LIST "" "*"')
        for name in ("Work", "INBOX", "inbox", "Work/Projects"):
            assert c.cmd("CREATE ", q(name)).status == "NO", name
        assert listing(c, 'LIST "" "*"') == before
        assert set(before) == set(DEFAULT_MAILBOXES) | {
            "Work", "Work/Projects", "Work/Projects/2026", "Later", "&AMk-t&AOk-"}
        # % does not match the delimiter, * does
        assert set(listing(c, 'LIST "" "Work/%"')) == {"Work/Projects"}
        assert set(listing(c, 'LIST "" "Work/*"')) == {"Work/Projects", "Work/Projects/2026"}
        assert set(listing(c, 'LIST "Work/" "%"')) == {"Work/Projects"}
        assert set(listing(c, 'LIST "" "%"')) == set(DEFAULT_MAILBOXES) | {
            "Work", "Later", "&AMk-t&AOk-"}
        # INBOX matches case-insensitively and is shown as INBOX
        assert set(listing(c, 'LIST "" "inbox"')) == {"INBOX"}

        # CHILDREN (RFC 3348 / RFC 5258 RETURN (CHILDREN))
        ch = listing(c, 'LIST "" "Work*" RETURN (CHILDREN)')
        assert "\\HASCHILDREN" in ch["Work"][0], ch
        assert "\\HASCHILDREN" in ch["Work/Projects"][0], ch
        assert "\\HASNOCHILDREN" in ch["Work/Projects/2026"][0], ch

        # RENAME renames the inferior names too (RFC 9051 §6.3.6)
        c.ok('RENAME "Work" "Job"')
        names = set(listing(c, 'LIST "" "*"'))
        assert {"Job", "Job/Projects", "Job/Projects/2026"} <= names, names
        assert not {n for n in names if n.startswith("Work")}, names
        # refused renames change nothing
        before = listing(c, 'LIST "" "*"')
        assert c.cmd('RENAME "Job" "Later"').status == "NO"        # exists
        assert c.cmd('RENAME "Nowhere" "Elsewhere"').status == "NO"  # missing
        assert listing(c, 'LIST "" "*"') == before

        # DELETE: leaf, then parent; INBOX and missing names refused
        c.ok('DELETE "Job/Projects/2026"')
        c.ok('DELETE "Job/Projects"')
        c.ok('DELETE "Job"')
        assert c.cmd('DELETE "INBOX"').status == "NO"
        assert c.cmd('DELETE "Nowhere"').status == "NO"
        assert set(listing(c, 'LIST "" "*"')) == set(DEFAULT_MAILBOXES) | {
            "Later", "&AMk-t&AOk-"}
        # a deleted name can be created again, empty
        c.ok('CREATE "Job"')
        assert status(c, "Job")["MESSAGES"] == 0
        # A child created without its parent: "%" still shows the parent
        # level, selectable or \Noselect (RFC 3501 §6.3.8)
        c.ok('CREATE "Auto/Child"')
        top = listing(c, 'LIST "" "%"')
        assert "Auto" in top and "Auto/Child" not in top, top
    finally:
        c.close()


def test_rename_inbox_moves_its_messages(imap_cluster, user):
    """RFC 3501 §6.3.5 / RFC 9051 §6.3.6: renaming INBOX moves all its
    messages to the new name and leaves INBOX empty."""
    c = session(imap_cluster, user)
    try:
        m1, m2 = mk("one"), mk("two")
        append(c, "INBOX", m1)
        append(c, "INBOX", m2)
        c.ok('RENAME "INBOX" "Old Inbox"')
        assert status(c, "INBOX")["MESSAGES"] == 0
        assert status(c, "Old Inbox")["MESSAGES"] == 2
        select(c, "Old Inbox")
        got = [v["BODY[]"] for _, v in sorted(c.ok("FETCH 1:* BODY.PEEK[]").fetches().items())]
        assert got == [m1, m2]
    finally:
        c.close()


def test_subscribe_lsub_list_extended(imap_cluster, user):
    c = session(imap_cluster, user)
    try:
        c.ok('CREATE "Lists"')
        c.ok('CREATE "Lists/ietf"')
        c.ok('CREATE "Lists/debian"')
        # A server may subscribe what CREATE makes (RFC 9051 is silent):
        # start from none of these subscribed. UNSUBSCRIBE of a name that
        # is not subscribed may be NO (RFC 9051 §6.3.8).
        for name in ("Lists", "Lists/ietf", "Lists/debian", "Sent"):
            assert c.cmd("UNSUBSCRIBE ", q(name)).status in ("OK", "NO")
        sub0 = set(listing(c, 'LSUB "" "*"', kind="LSUB"))
        assert not sub0 & {"Lists", "Lists/ietf", "Lists/debian", "Sent"}, sub0
        c.ok('SUBSCRIBE "Lists/ietf"')
        c.ok('SUBSCRIBE "Sent"')
        lsub = listing(c, 'LSUB "" "*"', kind="LSUB")
        assert set(lsub) == sub0 | {"Lists/ietf", "Sent"}, lsub
        # LIST (SUBSCRIBED): the same set, each with \Subscribed (RFC 5258 §3.1)
        sl = listing(c, 'LIST (SUBSCRIBED) "" "*"')
        assert set(sl) == set(lsub), sl
        assert all("\\SUBSCRIBED" in a for a, _ in sl.values()), sl
        # RETURN (SUBSCRIBED) marks subscribed ones among all
        rs = listing(c, 'LIST "" "Lists*" RETURN (SUBSCRIBED)')
        assert "\\SUBSCRIBED" in rs["Lists/ietf"][0]
        assert "\\SUBSCRIBED" not in rs["Lists/debian"][0]
        # RECURSIVEMATCH (RFC 5258 §3.5): "Lists" is not subscribed but has
        # a subscribed child: CHILDINFO ("SUBSCRIBED").
        rm = listing(c, 'LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
        assert "Lists" in rm, rm
        assert "\\SUBSCRIBED" not in rm["Lists"][0]
        ext = rm["Lists"][1]
        assert ext and ub(ext[0][0]) == b"CHILDINFO" and \
            [ub(x) for x in ext[0][1]] == [b"SUBSCRIBED"], ext
        # LSUB with %: "Lists" appears \Noselect-marked (RFC 3501 §6.3.9)
        ls = listing(c, 'LSUB "" "%"', kind="LSUB")
        assert "Lists" in ls and "\\NOSELECT" in ls["Lists"][0], ls
        # multiple patterns (RFC 5258 §3)
        assert set(listing(c, 'LIST "" ("INBOX" "Lists/*")')) == {
            "INBOX", "Lists/ietf", "Lists/debian"}
        # UNSUBSCRIBE
        c.ok('UNSUBSCRIBE "Lists/ietf"')
        c.ok('UNSUBSCRIBE "Sent"')
        assert set(listing(c, 'LSUB "" "*"', kind="LSUB")) == sub0
        # Unknown selection option: BAD (RFC 5258 §3)
        assert c.cmd('LIST (X-BOGUS) "" "*"').status == "BAD"
    finally:
        c.close()


def test_special_use(imap_cluster, user):
    """RFC 6154: the default mailboxes carry their special-use attribute
    with RETURN (SPECIAL-USE); the SPECIAL-USE selection option lists only
    those (RFC 6154 §3)."""
    c = session(imap_cluster, user)
    try:
        c.ok('CREATE "Plain"')
        got = listing(c, 'LIST "" "*" RETURN (SPECIAL-USE)')
        for name, su in DEFAULT_MAILBOXES.items():
            if su:
                assert su.upper() in got[name][0], (name, got[name])
        specials = {"\\ALL", "\\ARCHIVE", "\\DRAFTS", "\\FLAGGED", "\\JUNK",
                    "\\SENT", "\\TRASH"}
        assert not got["INBOX"][0] & specials and not got["Plain"][0] & specials
        only = listing(c, 'LIST (SPECIAL-USE) "" "*"')
        assert set(only) == {n for n, su in DEFAULT_MAILBOXES.items() if su}, only
        # RFC 6154 §5.2: CREATE with USE (only if CREATE-SPECIAL-USE)
        if "CREATE-SPECIAL-USE" in capabilities(c):
            c.ok('CREATE "Everything" (USE (\\All))')
            assert "\\ALL" in listing(c, 'LIST "" "Everything" RETURN (SPECIAL-USE)')[
                "Everything"][0]
    finally:
        c.close()


def test_list_status_and_status_size(imap_cluster, user):
    c = session(imap_cluster, user)
    try:
        msgs = [mk("s1"), mk("s2", body="x" * 1000 + "\r\n"), mk("s3")]
        uv, uid1 = append(c, "INBOX", msgs[0], flags=["\\Seen"])
        _, uid2 = append(c, "INBOX", msgs[1])
        _, uid3 = append(c, "INBOX", msgs[2], flags=["\\Seen", "\\Flagged"])
        st = status(c, "INBOX", "MESSAGES UIDNEXT UIDVALIDITY UNSEEN SIZE")
        assert st == {"MESSAGES": 3, "UIDNEXT": uid3 + 1, "UIDVALIDITY": uv,
                      "UNSEEN": 1, "SIZE": sum(len(m) for m in msgs)}, st
        assert uid1 < uid2 < uid3
        # RECENT exists in IMAP4rev1 (a number, whatever it is)
        assert "RECENT" in status(c, "INBOX", "RECENT")
        # APPENDLIMIT (RFC 7889 §3.2) and MAILBOXID (RFC 8474 §4.2) are
        # STATUS items of the extensions the server advertises
        caps = capabilities(c)
        if any(x.startswith("APPENDLIMIT") for x in caps):
            r = c.ok('STATUS "INBOX" (APPENDLIMIT)')
            items = parse(r.kind("STATUS")[0])[2]
            assert ub(items[0]) == b"APPENDLIMIT" and \
                (items[1] is None or int(items[1]) > 0), r
        if "OBJECTID" in caps:
            r = c.ok('STATUS "INBOX" (MAILBOXID)')
            items = parse(r.kind("STATUS")[0])[2]
            assert ub(items[0]) == b"MAILBOXID" and \
                re.fullmatch(r"[A-Za-z0-9_-]{1,255}", items[1][0]), r
        # STATUS of a missing mailbox: NO; unknown item: BAD
        assert c.cmd('STATUS "Nowhere" (MESSAGES)').status == "NO"
        assert c.cmd('STATUS "INBOX" (BOGUS)').status == "BAD"
        # LIST-STATUS (RFC 5819): one STATUS per listed selectable mailbox
        r = c.ok('LIST "" "*" RETURN (STATUS (MESSAGES UNSEEN SIZE))')
        listed = {name_of(parse(u)[3]) for u in r.kind("LIST")}
        sts = {}
        for u in r.kind("STATUS"):
            toks = parse(u)
            items = toks[2]
            sts[name_of(toks[1])] = {items[i].upper(): int(items[i + 1])
                                     for i in range(0, len(items), 2)}
        assert set(sts) == listed == set(DEFAULT_MAILBOXES), (listed, sts)
        assert sts["INBOX"] == {"MESSAGES": 3, "UNSEEN": 1,
                                "SIZE": sum(len(m) for m in msgs)}
        assert sts["Trash"] == {"MESSAGES": 0, "UNSEEN": 0, "SIZE": 0}
        # each STATUS follows its LIST response (RFC 5819 §2)
        kinds = [resp_kind(u) for u in r.untagged]
        for i, k in enumerate(kinds):
            if k == "STATUS":
                assert kinds[i - 1] == "LIST", kinds
    finally:
        c.close()


# ==================================================== APPEND, SELECT, EXAMINE

def test_append_variants(imap_cluster, user):
    c = session(imap_cluster, user)
    try:
        m1 = mk("with flags and date")
        uv, u1 = append(c, "INBOX", m1, flags=["\\Seen", "$Label1"],
                        date="07-Dec-2026 10:00:00 +0100")
        # LITERAL+ (RFC 7888): no continuation wait
        m2 = mk("literal plus")
        r = c.ok("APPEND INBOX ", Lit(m2, plus=True))
        assert not r.conts, f"a continuation for a {{n+}} literal: {r}"
        u2 = int(re.match(r"APPENDUID \d+ (\d+)$", r.code, re.I).group(1))
        assert u2 > u1
        # MULTIAPPEND (RFC 3502): one command, several messages, one
        # APPENDUID with the UID set (RFC 4315 §3).
        m3, m4 = mk("multi 1"), mk("multi 2")
        r = c.ok("APPEND INBOX (\\Flagged) ", Lit(m3), ' () "01-Jan-2026 00:00:00 +0000" ',
                 Lit(m4))
        m = re.match(r"APPENDUID (\d+) (\S+)$", r.code or "", re.I)
        assert m and int(m.group(1)) == uv, r
        u34 = seqset(m.group(2))
        assert len(u34) == 2 and u34[0] > u2, r
        # A MULTIAPPEND whose second message is refused appends none
        # (RFC 3502 §6.3.11: atomic).
        before = status(c, "INBOX")
        r = c.cmd("APPEND INBOX ", Lit(mk("never 1")), ' "31-Foo-2026 10:00:00 +0000" ',
                  Lit(mk("never 2")))
        assert r.status in ("BAD", "NO"), r
        assert c.ok("NOOP")
        assert status(c, "INBOX") == before
        # Over APPENDLIMIT (RFC 7889): NO [TOOBIG], and no continuation
        lim = [x for x in capabilities(c) if x.startswith("APPENDLIMIT=")]
        if lim:
            n = int(lim[0].split("=")[1]) + 1
            tag = c.next_tag()
            c.send(tag + b" APPEND INBOX {%d}\r\n" % n)
            r = c.response()
            assert r.startswith(tag + b" NO [TOOBIG]"), r
        # APPEND to a missing mailbox: NO [TRYCREATE] (RFC 9051 §6.3.12)
        r = c.cmd('APPEND "Nowhere" ', Lit(mk("lost")))
        assert r.status == "NO" and (r.code or "").upper() == "TRYCREATE", r
        # a flag list that is not flags: BAD, stores nothing
        r = c.cmd('APPEND INBOX (\\Seen "quoted") ', Lit(mk("bad flag")))
        assert r.status == "BAD", r
        assert status(c, "INBOX") == before

        # Read everything back (EXAMINE: nothing changes).
        _, info = select(c, "INBOX", examine=True)
        assert info["EXISTS"] == 4
        r = c.ok("UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
        got = {int(v["UID"]): v for v in r.fetches().values()}
        assert set(got) == {u1, u2, *u34}
        assert got[u1]["BODY[]"] == m1 and got[u2]["BODY[]"] == m2
        assert got[u34[0]]["BODY[]"] == m3 and got[u34[1]]["BODY[]"] == m4
        for u, m in ((u1, m1), (u2, m2), (u34[0], m3), (u34[1], m4)):
            assert int(got[u]["RFC822.SIZE"]) == len(m)
        assert fl(got[u1]["FLAGS"]) == {"\\SEEN", "$LABEL1"}
        assert fl(got[u34[0]]["FLAGS"]) == {"\\FLAGGED"}
        assert fl(got[u34[1]]["FLAGS"]) == set()
        # INTERNALDATE is the instant given (any zone may be shown)
        assert imap_date_ts(got[u1]["INTERNALDATE"].decode()) == \
            calendar.timegm((2026, 12, 7, 9, 0, 0))
        assert imap_date_ts(got[u34[1]]["INTERNALDATE"].decode()) == \
            calendar.timegm((2026, 1, 1, 0, 0, 0))
        # no date given: about now
        assert abs(imap_date_ts(got[u2]["INTERNALDATE"].decode()) - time.time()) < 300
    finally:
        c.close()


def test_append_to_selected_mailbox_reports_exists(imap_cluster, user):
    c = session(imap_cluster, user)
    try:
        _, info = select(c, "INBOX")
        assert info["EXISTS"] == 0
        r = c.ok("APPEND INBOX ", Lit(mk("self")))
        seen = r.kind("EXISTS") + c.ok("NOOP").kind("EXISTS")
        # RFC 9051 §6.3.12: the new message is announced with EXISTS.
        assert seen and seen[-1].upper() == b"1 EXISTS", seen
        assert c.ok("FETCH 1 (UID)").fetches()[1]["UID"]
    finally:
        c.close()


def test_select_examine_responses(imap_cluster, user):
    c = session(imap_cluster, user)
    try:
        uv, u1 = append(c, "INBOX", mk("a"), flags=["\\Seen"])
        _, u2 = append(c, "INBOX", mk("b"))
        append(c, "INBOX", mk("c"), flags=["$Work"])
        r, info = select(c, "INBOX")
        # RFC 3501 §6.3.1: FLAGS, EXISTS, RECENT; UIDVALIDITY, UIDNEXT and
        # PERMANENTFLAGS (required by RFC 9051 §6.3.2).
        assert info["EXISTS"] == 3 and "RECENT" in info, r
        assert {"\\ANSWERED", "\\FLAGGED", "\\DELETED", "\\SEEN", "\\DRAFT"} <= info["FLAGS"]
        assert int(info["UIDVALIDITY"]) == uv
        assert int(info["UIDNEXT"]) > u1 + 1
        pf = {f.upper() for f in re.match(r"\((.*)\)$", info["PERMANENTFLAGS"]).group(1).split()}
        assert {"\\ANSWERED", "\\FLAGGED", "\\DELETED", "\\SEEN", "\\DRAFT", "\\*"} <= pf, pf
        if "UNSEEN" in info:  # first unseen message's sequence number
            assert int(info["UNSEEN"]) == 2, info
        assert (r.code or "").upper() == "READ-WRITE", r
        # EXAMINE: READ-ONLY; STORE refused; BODY[] does not set \Seen
        r, info = select(c, "INBOX", examine=True)
        assert (r.code or "").upper() == "READ-ONLY", r
        assert info["EXISTS"] == 3
        # RFC 9051 §6.3.3: no change to the mailbox's permanent state; a
        # refusal is NO (a silent OK that changes nothing is tolerated).
        assert c.cmd(f"UID STORE {u1} -FLAGS (\\Seen)").status in ("NO", "OK")
        assert c.cmd(f"UID STORE {u2} +FLAGS (\\Deleted)").status in ("NO", "OK")
        assert c.cmd("EXPUNGE").status in ("NO", "OK")
        c.ok("FETCH 2 BODY[]")
        c.ok("SELECT INBOX")
        assert flags_of(c, f"{u1}:{u2}") == {u1: {"\\SEEN"}, u2: set()}
        assert status(c, "INBOX")["MESSAGES"] == 3
        # A failed SELECT leaves no mailbox selected (RFC 9051 §6.3.2).
        assert c.cmd('SELECT "Nowhere"').status == "NO"
        assert c.cmd("FETCH 1 FLAGS").status == "BAD"
        # SELECT of a \Noselect name or a bad mUTF-7 name fails
        assert c.cmd('SELECT ""').status == "NO"
        # INBOX is case-insensitive
        _, info = select(c, "inbox")
        assert info["EXISTS"] == 3
        # "*" in an empty mailbox: a message sequence number that does not
        # exist (RFC 9051 §2.3.1.2: BAD); as a UID, an empty range.
        _, info = select(c, "Trash")
        assert info["EXISTS"] == 0
        assert c.cmd("FETCH * FLAGS").status in ("BAD", "NO")
        r = c.ok("UID FETCH 1:* FLAGS")
        assert not r.kind("FETCH"), r
    finally:
        c.close()


# ============================================================ FETCH

# A known MIME message, built from pieces so that every section's bytes are
# known. Each text part ends with an empty line so its last line is
# terminated: the CRLF before a boundary belongs to the boundary (RFC 2046
# §5.1.1), never to the part.
P11_HDR = (b"Content-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: quoted-printable\r\n\r\n")
P11_BODY = b"Hello W=C3=B6rld, plain part.\r\nSecond line.\r\n"
P11_DECODED = "Hello W\u00f6rld, plain part.\r\nSecond line.\r\n".encode()
P12_HDR = (b"Content-Type: text/html; charset=us-ascii\r\n"
           b"Content-Language: en, de\r\n"
           b"Content-Location: http://example.org/p.html\r\n\r\n")
P12_BODY = b"<p>Hello html</p>\r\n"
P1_HDR = b"Content-Type: multipart/alternative; boundary=inner\r\n\r\n"
# The inner multipart ends its (empty) epilogue with a CRLF of its own, so
# that which CRLF belongs to whom is never in doubt.
P1_BODY = (b"--inner\r\n" + P11_HDR + P11_BODY + b"\r\n--inner\r\n" + P12_HDR +
           P12_BODY + b"\r\n--inner--\r\n")
P2_HDR = (b'Content-Type: application/octet-stream; name="data.bin"\r\n'
          b"Content-Transfer-Encoding: base64\r\n"
          b'Content-Disposition: attachment; filename="data.bin"\r\n'
          b"Content-ID: <part2@example.org>\r\n"
          b"Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\n"
          b"Content-Description: some bytes\r\n\r\n")
P2_BODY = b"AAECAwT/"
P2_DECODED = b"\x00\x01\x02\x03\x04\xff"
P3_HDR = b"Content-Type: message/rfc822\r\n\r\n"
INNER_HDR = (b"From: inner@example.org\r\nSubject: inner message\r\n"
             b"Date: Sun, 6 Dec 2026 09:00:00 +0000\r\n"
             b"Content-Type: text/plain; charset=us-ascii\r\n\r\n")
INNER_BODY = b"Inner body line 1\r\nInner body line 2\r\n"
P3_BODY = INNER_HDR + INNER_BODY
TOP_HDR = (b"Date: Mon, 7 Dec 2026 10:00:00 +0100\r\n"
           b"From: Alice Example <alice@example.org>\r\n"
           b"Sender: secretary@example.org\r\n"
           b"Reply-To: replies@example.org\r\n"
           b"To: Bob <bob@example.net>,\r\n carol@example.net\r\n"
           b'Cc: "Dave, Jr." <dave@example.com>\r\n'
           b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= and tests\r\n"
           b"Message-ID: <multi-1@example.org>\r\n"
           b"In-Reply-To: <parent@example.org>\r\n"
           b"MIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n')
TOP_BODY = (b"This is a preamble.\r\n--outer\r\n" + P1_HDR + P1_BODY +
            b"\r\n--outer\r\n" + P2_HDR + P2_BODY +
            b"\r\n--outer\r\n" + P3_HDR + P3_BODY +
            b"\r\n--outer--\r\nepilogue\r\n")
MULTI = TOP_HDR + TOP_BODY

TOP_ENVELOPE = [b"Mon, 7 Dec 2026 10:00:00 +0100",
                b"=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= and tests",
                [(b"Alice Example", None, b"alice", b"example.org")],
                [(None, None, b"secretary", b"example.org")],
                [(None, None, b"replies", b"example.org")],
                [(b"Bob", None, b"bob", b"example.net"),
                 (None, None, b"carol", b"example.net")],
                [(b"Dave, Jr.", None, b"dave", b"example.com")],
                None, b"<parent@example.org>", b"<multi-1@example.org>"]
INNER_ENVELOPE = [b"Sun, 6 Dec 2026 09:00:00 +0000", b"inner message",
                  [(None, None, b"inner", b"example.org")],
                  [(None, None, b"inner", b"example.org")],
                  [(None, None, b"inner", b"example.org")],
                  None, None, None, None, None]


def lines(data):
    assert data.endswith(b"\r\n")
    return data.count(b"\r\n")


def leaf(typ, sub, params, size, enc="7BIT", lines_=None, id_=None, desc=None,
         dsp=None, env=None, body=None):
    d = {"type": typ, "subtype": sub, "params": params, "id": id_, "desc": desc,
         "enc": enc.encode(), "size": size}
    if lines_ is not None:
        d["lines"] = lines_
    if env is not None:
        d["env"], d["body"] = env, body
    d.update(md5=None, dsp=dsp, lang=None, loc=None)
    return d


def expected_structure(ext):
    def x(d):
        if not ext:
            for k in ("md5", "dsp", "lang", "loc"):
                d.pop(k, None)
        return d
    inner = x(leaf(b"TEXT", b"PLAIN", [(b"CHARSET", b"US-ASCII")], len(INNER_BODY),
                   lines_=lines(INNER_BODY)))
    p11 = x(leaf(b"TEXT", b"PLAIN", [(b"CHARSET", b"UTF-8")], len(P11_BODY),
                 enc="QUOTED-PRINTABLE", lines_=2))
    p12 = x(leaf(b"TEXT", b"HTML", [(b"CHARSET", b"US-ASCII")], len(P12_BODY), lines_=1))
    if ext:
        p12.update(lang=[b"en", b"de"], loc=b"http://example.org/p.html")
    p1 = {"parts": [p11, p12], "subtype": b"ALTERNATIVE"}
    if ext:
        p1.update(params=[(b"BOUNDARY", b"inner")], dsp=None, lang=None, loc=None)
    p2 = x(leaf(b"APPLICATION", b"OCTET-STREAM", [(b"NAME", b"data.bin")], len(P2_BODY),
                enc="BASE64", id_=b"<part2@example.org>", desc=b"some bytes",
                dsp=(b"ATTACHMENT", [(b"FILENAME", b"data.bin")])))
    if ext:
        p2["md5"] = b"Q2hlY2sgSW50ZWdyaXR5IQ=="
    p3 = x(leaf(b"MESSAGE", b"RFC822", None, len(P3_BODY), lines_=lines(P3_BODY),
                env=INNER_ENVELOPE, body=inner))
    top = {"parts": [p1, p2, p3], "subtype": b"MIXED"}
    if ext:
        top.update(params=[(b"BOUNDARY", b"outer")], dsp=None, lang=None, loc=None)
    return top


def norm_params(t):
    if t is None:
        return None
    assert isinstance(t, list) and t and len(t) % 2 == 0, \
        f"body-fld-param must be NIL or pairs (RFC 3501 §9): {t!r}"
    out = []
    for i in range(0, len(t), 2):
        k, v = ub(t[i]), t[i + 1]
        out.append((k, v.upper() if k == b"CHARSET" else v))
    return out


def norm_dsp(t):
    if t is None:
        return None
    return (ub(t[0]), norm_params(t[1]))


def norm_addrs(t):
    if t is None:
        return None
    return [tuple(a) for a in t]


def norm_env(t):
    assert isinstance(t, list) and len(t) == 10, t
    return [t[0], t[1]] + [norm_addrs(a) for a in t[2:8]] + [t[8], t[9]]


def norm_lang(t):
    """body-fld-lang: nstring or a list of strings; one string == a list
    of one (RFC 3501 §9). Language tags are case-insensitive."""
    if t is None:
        return None
    return [ub(x).lower() for x in (t if isinstance(t, list) else [t])]


def norm_body(t, ext):
    """A BODY/BODYSTRUCTURE as a dict, case-insensitive tokens upper-cased,
    optional trailing extension fields filled with None (RFC 3501 §9
    body-ext-1part / body-ext-mpart)."""
    assert isinstance(t, list), t
    if isinstance(t[0], list):
        i = 0
        parts = []
        while isinstance(t[i], list):
            parts.append(norm_body(t[i], ext))
            i += 1
        d = {"parts": parts, "subtype": ub(t[i])}
        rest = t[i + 1:]
        if ext:
            assert rest, f"BODYSTRUCTURE of a multipart without its parameters: {t!r}"
            rest = rest + [None] * (4 - len(rest))
            d.update(params=norm_params(rest[0]), dsp=norm_dsp(rest[1]),
                     lang=norm_lang(rest[2]), loc=rest[3])
        else:
            assert rest == [], f"extension data in BODY: {t!r}"
        return d
    d = {"type": ub(t[0]), "subtype": ub(t[1]), "params": norm_params(t[2]),
         "id": t[3], "desc": t[4], "enc": ub(t[5]), "size": int(t[6])}
    i = 7
    if d["type"] == b"MESSAGE" and d["subtype"] in (b"RFC822", b"GLOBAL"):
        d["env"] = norm_env(t[7])
        d["body"] = norm_body(t[8], ext)
        d["lines"] = int(t[9])
        i = 10
    elif d["type"] == b"TEXT":
        d["lines"] = int(t[7])
        i = 8
    rest = t[i:]
    if ext:
        assert rest, f"BODYSTRUCTURE without body-fld-md5: {t!r}"
        rest = rest + [None] * (4 - len(rest))
        d.update(md5=rest[0], dsp=norm_dsp(rest[1]), lang=norm_lang(rest[2]), loc=rest[3])
    else:
        assert rest == [], f"extension data in BODY: {t!r}"
    return d


def test_fetch_structure_and_sections(imap_cluster, user):
    c = session(imap_cluster, user)
    try:
        append(c, "INBOX", MULTI, date="07-Dec-2026 10:00:00 +0100")
        simple = b"From: x@example.org\r\nSubject: simple\r\n\r\nbody line\r\n"
        append(c, "INBOX", simple)
        select(c, "INBOX")

        r = c.ok("FETCH 1 (BODYSTRUCTURE BODY ENVELOPE RFC822.SIZE)")
        v = r.fetches()[1]
        assert norm_body(v["BODYSTRUCTURE"], True) == expected_structure(True)
        assert norm_body(v["BODY"], False) == expected_structure(False)
        assert norm_env(v["ENVELOPE"]) == TOP_ENVELOPE
        assert int(v["RFC822.SIZE"]) == len(MULTI)

        # A message without MIME headers: text/plain; sender and reply-to
        # default to from (RFC 3501 §7.4.2 ENVELOPE).
        v = c.ok("FETCH 2 (BODYSTRUCTURE ENVELOPE)").fetches()[2]
        bs = norm_body(v["BODYSTRUCTURE"], True)
        assert bs["params"] in (None, [(b"CHARSET", b"US-ASCII")]), bs
        bs["params"] = None
        assert bs == leaf(b"TEXT", b"PLAIN", None, 11, lines_=1), bs
        frm = [(None, None, b"x", b"example.org")]
        assert norm_env(v["ENVELOPE"]) == [None, b"simple", frm, frm, frm, None, None,
                                           None, None, None]

        sections = {
            "BODY[]": MULTI, "BODY[HEADER]": TOP_HDR, "BODY[TEXT]": TOP_BODY,
            "BODY[1]": P1_BODY, "BODY[1.MIME]": P1_HDR,
            "BODY[1.1]": P11_BODY, "BODY[1.1.MIME]": P11_HDR, "BODY[1.2]": P12_BODY,
            "BODY[2]": P2_BODY, "BODY[2.MIME]": P2_HDR,
            "BODY[3]": P3_BODY, "BODY[3.HEADER]": INNER_HDR, "BODY[3.TEXT]": INNER_BODY,
            "BODY[3.1]": INNER_BODY,
        }
        peek = " ".join(k.replace("BODY[", "BODY.PEEK[") for k in sections)
        got = c.ok(f"FETCH 1 ({peek})").fetches()[1]
        for k, want in sections.items():
            assert got.get(k) == want, (k, got.get(k))

        # HEADER.FIELDS / .NOT: names case-insensitive; fields as written
        # (folding kept), then the empty line (RFC 9051 §6.4.5).
        v = c.ok("FETCH 1 (BODY.PEEK[HEADER.FIELDS (from TO)] "
                 "BODY.PEEK[HEADER.FIELDS.NOT (Content-Type MIME-Version Sender "
                 "Reply-To Cc X-None)])").fetches()[1]
        assert v[fetch_key("BODY[HEADER.FIELDS (from TO)]")] == (
            b"From: Alice Example <alice@example.org>\r\n"
            b"To: Bob <bob@example.net>,\r\n carol@example.net\r\n\r\n")
        assert v[fetch_key("BODY[HEADER.FIELDS.NOT (Content-Type MIME-Version Sender "
                           "Reply-To Cc X-None)]")] == (
            b"Date: Mon, 7 Dec 2026 10:00:00 +0100\r\n"
            b"From: Alice Example <alice@example.org>\r\n"
            b"To: Bob <bob@example.net>,\r\n carol@example.net\r\n"
            b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= and tests\r\n"
            b"Message-ID: <multi-1@example.org>\r\n"
            b"In-Reply-To: <parent@example.org>\r\n\r\n")
        v = c.ok("FETCH 1 BODY.PEEK[3.HEADER.FIELDS (Subject)]").fetches()[1]
        assert v["BODY[3.HEADER.FIELDS (SUBJECT)]"] == b"Subject: inner message\r\n\r\n"
        # no such field: just the empty line
        v = c.ok("FETCH 1 BODY.PEEK[HEADER.FIELDS (X-Absent)]").fetches()[1]
        assert v["BODY[HEADER.FIELDS (X-ABSENT)]"] == b"\r\n"

        # Partial fetches: the response names the origin only (RFC 9051
        # §7.5.2); past the end: empty string; count past the end: cut.
        v = c.ok("FETCH 1 (BODY.PEEK[]<0.20> BODY.PEEK[TEXT]<5.10> "
                 "BODY.PEEK[1.1]<10.1000>)").fetches()[1]
        assert v["BODY[]<0>"] == MULTI[:20]
        assert v["BODY[TEXT]<5>"] == TOP_BODY[5:15]
        assert v["BODY[1.1]<10>"] == P11_BODY[10:]
        v = c.ok("FETCH 1 BODY.PEEK[]<99999.10>").fetches()[1]
        assert v["BODY[]<99999>"] == b""

        # BINARY (RFC 3516): decoded content; NULs need literal8
        v = c.ok("FETCH 1 (BINARY.PEEK[1.1] BINARY.SIZE[1.1] BINARY.SIZE[2] "
                 "BINARY.PEEK[2]<2.3>)").fetches()[1]
        assert v["BINARY[1.1]"] == P11_DECODED
        assert int(v["BINARY.SIZE[1.1]"]) == len(P11_DECODED)
        assert int(v["BINARY.SIZE[2]"]) == len(P2_DECODED)
        assert v["BINARY[2]<2>"] == P2_DECODED[2:5]
        r = c.ok("FETCH 1 BINARY.PEEK[2]")
        assert any(b"~{6}\r\n" + P2_DECODED in u for u in r.untagged), r
        assert r.fetches()[1]["BINARY[2]"] == P2_DECODED

        # Nothing above set \Seen (all .PEEK, BINARY.SIZE, BODYSTRUCTURE).
        assert flags_of(c, "1:2", uid=False) and \
            all("\\SEEN" not in f for f in flags_of(c, "1:2", uid=False).values())

        # Macros (RFC 9051 §6.4.5)
        v = c.ok("FETCH 2 FAST").fetches()[2]
        assert set(v) == {"FLAGS", "INTERNALDATE", "RFC822.SIZE"}, v
        v = c.ok("FETCH 2 ALL").fetches()[2]
        assert set(v) == {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"}, v
        v = c.ok("FETCH 2 FULL").fetches()[2]
        assert set(v) == {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"}, v

        # RFC822.HEADER does not set \Seen; RFC822.TEXT and BODY[...] do
        v = c.ok("FETCH 2 RFC822.HEADER").fetches()[2]
        assert v["RFC822.HEADER"] == b"From: x@example.org\r\nSubject: simple\r\n\r\n"
        assert "\\SEEN" not in list(flags_of(c, "2", uid=False).values())[0]
        v = c.ok("FETCH 2 RFC822.TEXT").fetches()[2]
        assert v["RFC822.TEXT"] == b"body line\r\n"
        assert "\\SEEN" in list(flags_of(c, "2", uid=False).values())[0]
        v = c.ok("FETCH 1 BINARY[2]").fetches()[1]
        assert "\\SEEN" in list(flags_of(c, "1", uid=False).values())[0]
        # RFC822 is BODY[] (sets \Seen)
        c.ok("STORE 2 -FLAGS (\\Seen)")
        v = c.ok("FETCH 2 RFC822").fetches()[2]
        assert v["RFC822"] == simple
        assert "\\SEEN" in list(flags_of(c, "2", uid=False).values())[0]

        # UID FETCH always includes UID (RFC 9051 §6.4.9)
        r = c.ok("UID FETCH 1:* FLAGS")
        assert all("UID" in v for v in r.fetches().values()) and len(r.fetches()) == 2
        # bad attribute / section: BAD
        assert c.cmd("FETCH 1 BODY[1.0]").status == "BAD"
        assert c.cmd("FETCH 1 (FLAGS BOGUS)").status == "BAD"
        assert c.cmd("FETCH 1 BINARY[1.MIME]").status == "BAD"
    finally:
        c.close()


def test_fetch_sections_of_encapsulated_multipart(imap_cluster, user):
    """RFC 9051 §6.4.5: the parts of a message/rfc822 part are numbered
    inside it (2.1, 2.2 ...), its header and text are 2.HEADER / 2.TEXT."""
    inner_hdr = (b"Subject: fwd\r\n"
                 b'Content-Type: multipart/alternative; boundary="i2"\r\n\r\n')
    inner_p1_hdr = b"Content-Type: text/plain\r\n\r\n"
    inner_p2_hdr = b"Content-Type: text/html\r\n\r\n"
    inner_body = (b"--i2\r\n" + inner_p1_hdr + b"plain\r\n\r\n--i2\r\n" + inner_p2_hdr +
                  b"<b>html</b>\r\n\r\n--i2--\r\n")
    msg = (b"Subject: outer\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="o2"\r\n\r\n'
           b"--o2\r\nContent-Type: text/plain\r\n\r\nintro\r\n\r\n"
           b"--o2\r\nContent-Type: message/rfc822\r\n\r\n" + inner_hdr + inner_body +
           b"\r\n--o2--\r\n")
    c = session(imap_cluster, user)
    try:
        append(c, "INBOX", msg)
        select(c, "INBOX")
        want = {"BODY[1]": b"intro\r\n", "BODY[2]": inner_hdr + inner_body,
                "BODY[2.HEADER]": inner_hdr, "BODY[2.TEXT]": inner_body,
                "BODY[2.1]": b"plain\r\n", "BODY[2.1.MIME]": inner_p1_hdr,
                "BODY[2.2]": b"<b>html</b>\r\n", "BODY[2.2.MIME]": inner_p2_hdr}
        peek = " ".join(k.replace("BODY[", "BODY.PEEK[") for k in want)
        got = c.ok(f"FETCH 1 ({peek})").fetches()[1]
        for k, v in want.items():
            assert got.get(k) == v, (k, got.get(k))
        bs = norm_body(c.ok("FETCH 1 BODYSTRUCTURE").fetches()[1]["BODYSTRUCTURE"], True)
        inner = bs["parts"][1]
        assert (inner["type"], inner["subtype"], inner["size"]) == \
            (b"MESSAGE", b"RFC822", len(inner_hdr + inner_body)), inner
        assert inner["lines"] == (inner_hdr + inner_body).count(b"\r\n"), inner
        assert [(p["type"], p["subtype"], p["size"], p["lines"]) for p in
                inner["body"]["parts"]] == [(b"TEXT", b"PLAIN", 7, 1),
                                            (b"TEXT", b"HTML", 13, 1)], inner
        assert inner["body"]["subtype"] == b"ALTERNATIVE"
    finally:
        c.close()


def test_envelope_groups_and_missing_fields(imap_cluster, user):
    """RFC 3501 §7.4.2 / RFC 9051 §7.5.2 ENVELOPE: group syntax gives a
    start-of-group (NIL NIL name NIL) and an end (NIL NIL NIL NIL); absent
    fields are NIL; encoded words stay encoded."""
    c = session(imap_cluster, user)
    try:
        msg = (b"From: =?ISO-8859-1?Q?Andr=E9?= <andre@example.org>\r\n"
               b"To: undisclosed-recipients:;\r\n"
               b"Cc: team: a@x.example, B <b@y.example>;, solo@z.example\r\n"
               b"\r\nbody\r\n")
        append(c, "INBOX", msg)
        select(c, "INBOX")
        env = norm_env(c.ok("FETCH 1 ENVELOPE").fetches()[1]["ENVELOPE"])
        frm = [(b"=?ISO-8859-1?Q?Andr=E9?=", None, b"andre", b"example.org")]
        assert env == [
            None, None, frm, frm, frm,
            [(None, None, b"undisclosed-recipients", None), (None, None, None, None)],
            [(None, None, b"team", None), (None, None, b"a", b"x.example"),
             (b"B", None, b"b", b"y.example"), (None, None, None, None),
             (None, None, b"solo", b"z.example")],
            None, None, None], env
    finally:
        c.close()


def test_fetch_binary_unknown_cte(imap_cluster, user):
    """RFC 3516 §4.3: BINARY of a part whose Content-Transfer-Encoding the
    server cannot decode fails with NO [UNKNOWN-CTE]."""
    c = session(imap_cluster, user)
    try:
        msg = (b"From: a@example.org\r\nSubject: unk\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: text/plain\r\nContent-Transfer-Encoding: x-martian\r\n"
               b"\r\nxyz\r\n")
        append(c, "INBOX", msg)
        select(c, "INBOX")
        r = c.cmd("FETCH 1 BINARY.PEEK[1]")
        assert r.status == "NO" and (r.code or "").upper() == "UNKNOWN-CTE", r
        assert c.ok("FETCH 1 BODY.PEEK[1]").fetches()[1]["BODY[1]"] == b"xyz\r\n"
    finally:
        c.close()


# ============================================================ STORE

def test_store_flags(imap_cluster, user):
    c = session(imap_cluster, user)
    try:
        uids = [append(c, "INBOX", mk(f"s{i}"))[1] for i in range(4)]
        select(c, "INBOX")
        # +FLAGS: the new flags come back in an untagged FETCH (RFC 9051 §6.4.6)
        r = c.ok("STORE 1 +FLAGS (\\Flagged $Todo)")
        assert fl(r.fetches()[1]["FLAGS"]) == {"\\FLAGGED", "$TODO"}, r
        # .SILENT: no FETCH for it
        r = c.ok("STORE 2 +FLAGS.SILENT (\\Seen)")
        assert not any("FLAGS" in v for v in r.fetches().values()), r
        r = c.ok("STORE 1 -FLAGS ($Todo)")
        assert fl(r.fetches()[1]["FLAGS"]) == {"\\FLAGGED"}
        r = c.ok("STORE 3:4 FLAGS (\\Answered \\Draft)")
        assert set(r.fetches()) == {3, 4}
        # UID STORE: responses carry UID (RFC 9051 §6.4.9)
        r = c.ok(f"UID STORE {uids[3]} +FLAGS ($Later)")
        v = list(r.fetches().values())
        assert len(v) == 1 and int(v[0]["UID"]) == uids[3], r
        want = {uids[0]: {"\\FLAGGED"}, uids[1]: {"\\SEEN"},
                uids[2]: {"\\ANSWERED", "\\DRAFT"},
                uids[3]: {"\\ANSWERED", "\\DRAFT", "$LATER"}}
        assert flags_of(c) == want
        # refused STOREs change nothing (BAD: bad syntax, a sequence
        # number beyond EXISTS, RFC 9051 §2.3.1.2 / RFC 3501 §2.3.1.2)
        for bad in ("STORE 1 BOGUS (\\Seen)", "STORE 1:99 +FLAGS (\\Deleted)",
                    "STORE 0 +FLAGS (\\Deleted)", "STORE 1 +FLAGS (\\Seen"):
            assert c.cmd(bad).status == "BAD", bad
        assert flags_of(c) == want
        # the flags are stored, not per session
        d = session(imap_cluster, user, select="INBOX")
        assert flags_of(d) == want
        d.close()
    finally:
        c.close()


def test_store_unchangedsince(imap_cluster, user):
    """CONDSTORE (RFC 7162 §3.1.3): STORE (UNCHANGEDSINCE m) leaves alone
    messages whose mod-sequence is above m and reports them in
    [MODIFIED set]; MODSEQ comes with every FETCH once enabled."""
    c = session(imap_cluster, user)
    try:
        uids = [append(c, "INBOX", mk(f"c{i}"))[1] for i in range(3)]
        r, info = select(c, "INBOX", " (CONDSTORE)")
        h0 = int(info["HIGHESTMODSEQ"])
        ms = {int(v["UID"]): int(v["MODSEQ"][0])
              for v in c.ok("FETCH 1:* (UID MODSEQ)").fetches().values()}
        assert set(ms) == set(uids) and max(ms.values()) <= h0
        r = c.ok("STORE 1 +FLAGS ($X)")
        m1 = int(r.fetches()[1]["MODSEQ"][0])
        assert m1 > h0, "modseq must grow with every change"
        r = c.ok(f"STORE 1:3 (UNCHANGEDSINCE {m1 - 1}) +FLAGS (\\Answered)")
        assert (r.code or "").upper() == "MODIFIED 1", r
        f = flags_of(c)
        assert f[uids[0]] == {"$X"}
        assert f[uids[1]] == f[uids[2]] == {"\\ANSWERED"}
        # UID STORE: MODIFIED names UIDs
        r = c.ok(f"UID STORE {uids[0]}:{uids[1]} (UNCHANGEDSINCE {m1}) +FLAGS (\\Seen)")
        m = re.match(r"MODIFIED (\S+)$", r.code or "", re.I)
        assert m and seqset(m.group(1)) == [uids[1]], r
        f = flags_of(c)
        assert f[uids[0]] == {"$X", "\\SEEN"} and f[uids[1]] == {"\\ANSWERED"}
        st = status(c, "INBOX", "HIGHESTMODSEQ")
        assert st["HIGHESTMODSEQ"] > m1
    finally:
        c.close()


# ============================================================ SEARCH

def search_msgs():
    subj3 = "=?UTF-8?B?" + base64.b64encode("Gr\u00fc\u00dfe aus K\u00f6ln".encode()).decode() + "?="
    body3 = base64.encodebytes(("Das ist ein Geheimnis.\r\n" +
                                "filler line\r\n" * 300).encode()).replace(b"\n", b"\r\n")
    return [
        (b"From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: quarterly report\r\n"
         b"Date: Thu, 1 Jan 2026 12:00:00 +0000\r\n\r\nnumbers inside\r\n",
         ["\\Seen", "\\Answered"], "01-Jan-2026 12:00:00 +0000"),
        (b"From: carol@c.test\r\nTo: x@x.test\r\nCc: dave@d.test\r\nSubject: Lunch?\r\n"
         b"Date: Sun, 15 Mar 2026 12:00:00 +0000\r\n\r\nlet us eat\r\n",
         ["\\Flagged"], "15-Mar-2026 12:00:00 +0000"),
        (b"From: bob@b.test\r\nTo: x@x.test\r\nBcc: eve@e.test\r\nSubject: " +
         subj3.encode() + b"\r\nDate: Wed, 10 Jun 2026 12:00:00 +0000\r\n"
         b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Content-Transfer-Encoding: base64\r\n\r\n" + body3,
         ["$Important"], "10-Jun-2026 08:00:00 +0000"),
        (b"From: Alice <alice@a.test>\r\nTo: x@x.test\r\nSubject: Re: quarterly report\r\n"
         b"Date: Thu, 11 Jun 2026 12:00:00 +0000\r\nX-Priority: 1\r\n"
         b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9 cr=C3=A8me\r\n",
         ["\\Deleted", "\\Seen"], "10-Jun-2026 20:00:00 +0000"),
        (b"From: zed@z.test\r\nTo: x@x.test\r\nSubject: draft\r\n"
         b"Date: Mon, 30 Nov 2026 12:00:00 +0000\r\n\r\nunfinished\r\n",
         ["\\Draft"], "01-Dec-2026 12:00:00 +0000"),
    ]


SEARCHES = {
    "ALL": [1, 2, 3, 4, 5], "SEEN": [1, 4], "UNSEEN": [2, 3, 5],
    "ANSWERED": [1], "UNANSWERED": [2, 3, 4, 5], "FLAGGED": [2],
    "UNFLAGGED": [1, 3, 4, 5], "DELETED": [4], "UNDELETED": [1, 2, 3, 5],
    "DRAFT": [5], "UNDRAFT": [1, 2, 3, 4], "KEYWORD $Important": [3],
    "UNKEYWORD $Important": [1, 2, 4, 5], "KEYWORD nothere": [],
    "FROM alice": [1, 4], "FROM ALICE": [1, 4], 'FROM "a.test"': [1, 4],
    "TO bob": [1], "CC dave": [2], "BCC eve": [3],
    'SUBJECT "quarterly report"': [1, 4], "SUBJECT lunch": [2],
    "BODY geheimnis": [3], "BODY numbers": [1], "TEXT eat": [2],
    "TEXT X-Priority": [4], 'HEADER X-Priority ""': [4],
    'HEADER Subject "lunch"': [2], 'HEADER X-Missing ""': [],
    "LARGER 4000": [3], "SMALLER 4000": [1, 2, 4, 5],
    "BEFORE 10-Jun-2026": [1, 2], "ON 10-Jun-2026": [3, 4],
    "SINCE 10-Jun-2026": [3, 4, 5], "SINCE 11-Jun-2026": [5],
    "SENTBEFORE 15-Mar-2026": [1], "SENTON 15-Mar-2026": [2],
    "SENTSINCE 10-Jun-2026": [3, 4, 5], "SENTON 11-Jun-2026": [4],
    "NOT SEEN": [2, 3, 5], "OR FLAGGED DRAFT": [2, 5],
    "OR FROM alice FROM carol": [1, 2, 4], "(SEEN ANSWERED)": [1],
    "SEEN ANSWERED": [1], "2:4": [2, 3, 4], "2:4 UNSEEN": [2, 3], "*": [5],
    "NOT 2:4": [1, 5], "OR 1 5": [1, 5], "NOT (OR FROM alice FROM bob)": [2, 5],
    "CHARSET US-ASCII FROM alice": [1, 4],
}


def esearch(r):
    """The ESEARCH response of r as {'TAG': ..., 'UID': bool, NAME: value}."""
    e = r.kind("ESEARCH")
    assert len(e) == 1, r
    toks = parse(e[0])[1:]
    out = {"UID": False}
    if toks and isinstance(toks[0], list):
        assert ub(toks[0][0]) == b"TAG", toks
        out["TAG"] = toks[0][1]
        toks = toks[1:]
    if toks and ub(toks[0]) == b"UID":
        out["UID"] = True
        toks = toks[1:]
    for i in range(0, len(toks), 2):
        out[toks[i].upper()] = toks[i + 1]
    return out


def test_search(imap_cluster, user):
    c = session(imap_cluster, user)
    try:
        uids = [append(c, "INBOX", m, flags=f, date=d)[1] for m, f, d in search_msgs()]
        select(c, "INBOX")
        for key, want in SEARCHES.items():
            r = c.cmd("SEARCH " + key)
            assert r.status == "OK", (key, r)
            assert search_result(r) == want, (key, search_result(r), want)
        # UID SEARCH answers UIDs; the UID key takes a UID set
        assert search_result(c.ok("UID SEARCH DELETED")) == [uids[3]]
        assert search_result(c.ok(f"SEARCH UID {uids[1]}:{uids[2]}")) == [2, 3]
        assert search_result(c.ok(f"UID SEARCH UID {uids[4]}:*")) == [uids[4]]
        # CHARSET UTF-8 with literals: decoded header and body text
        # (RFC 2047 subject, base64 and quoted-printable bodies)
        for key, text, want in (("SUBJECT", "gr\u00fc\u00dfe", [3]),
                                ("BODY", "caf\u00e9", [4]),
                                ("TEXT", "cr\u00e8me", [4])):
            r = c.ok(f"SEARCH CHARSET UTF-8 {key} ", Lit(text))
            assert search_result(r) == want, (key, r)
        # unknown charset: NO [BADCHARSET ...] (RFC 9051 §6.4.4)
        r = c.cmd("SEARCH CHARSET X-NO-SUCH-CHARSET FROM alice")
        assert r.status == "NO" and (r.code or "").upper().startswith("BADCHARSET"), r
        for bad in ("SEARCH FOOBAR", "SEARCH BEFORE 31-Foo-2026", "SEARCH OR SEEN",
                    "SEARCH (SEEN", "SEARCH LARGER x"):
            assert c.cmd(bad).status == "BAD", bad

        # ESEARCH (RFC 4731)
        r = c.ok("SEARCH RETURN (MIN MAX COUNT) UNSEEN")
        e = esearch(r)
        assert e["TAG"] == r.tag and not e["UID"], e
        assert (int(e["MIN"]), int(e["MAX"]), int(e["COUNT"])) == (2, 5, 3), e
        assert "ALL" not in e
        r = c.ok("UID SEARCH RETURN (ALL) SEEN")
        e = esearch(r)
        assert e["UID"] and seqset(e["ALL"]) == [uids[0], uids[3]], e
        e = esearch(c.ok("SEARCH RETURN () FLAGGED"))
        assert seqset(e["ALL"]) == [2], e
        # no match: COUNT 0, and no MIN/MAX/ALL (RFC 4731 §3.1)
        e = esearch(c.ok("SEARCH RETURN (MIN COUNT ALL) KEYWORD nothere"))
        assert int(e["COUNT"]) == 0 and not {"MIN", "MAX", "ALL"} & set(e), e
        assert c.cmd("SEARCH RETURN (BOGUS) ALL").status == "BAD"

        # MODSEQ search key (RFC 7162 §3.1.5): the result names the
        # highest mod-sequence of what matched.
        c.ok("ENABLE CONDSTORE")
        r = c.ok("STORE 2 +FLAGS ($Y)")
        ms = {int(v["UID"]): int(v["MODSEQ"][0])
              for v in c.ok("UID FETCH 1:* (MODSEQ)").fetches().values()}
        top = ms[uids[1]]
        assert top == max(ms.values())
        r = c.ok(f"SEARCH MODSEQ {top}")
        s = parse(r.kind("SEARCH")[0])
        assert [int(t) for t in s[1:-1]] == [2] and ub(s[-1][0]) == b"MODSEQ" and \
            int(s[-1][1]) == top, s
        r = c.ok("SEARCH MODSEQ 1")
        s = parse(r.kind("SEARCH")[0])
        assert [int(t) for t in s[1:-1]] == [1, 2, 3, 4, 5] and int(s[-1][1]) == top, s
    finally:
        c.close()


# ============================================ COPY, MOVE, EXPUNGE, CLOSE

def copyuid(code):
    m = re.match(r"COPYUID (\d+) (\S+) (\S+)$", code or "", re.I)
    assert m, f"no [COPYUID v src dst] (RFC 4315 §3): {code!r}"
    return int(m.group(1)), seqset(m.group(2)), seqset(m.group(3))


def test_copy_move_expunge_close(imap_cluster, user):
    c = session(imap_cluster, user)
    try:
        msgs = [mk(f"m{i}") for i in range(5)]
        uids = [append(c, "INBOX", m, flags=["\\Flagged"] if i == 1 else None,
                       date="02-Feb-2026 10:00:00 +0000")[1]
                for i, m in enumerate(msgs)]
        select(c, "INBOX")
        trash_v = status(c, "Trash", "UIDVALIDITY")["UIDVALIDITY"]

        # COPY with COPYUID; contents, flags and internal date kept
        r = c.ok("COPY 2:3 Trash")
        v, src, dst = copyuid(r.code)
        assert v == trash_v and src == [uids[1], uids[2]] and len(dst) == 2, r
        d = session(imap_cluster, user, select="Trash")
        got = {int(x["UID"]): x for x in
               d.ok("UID FETCH 1:* (UID FLAGS INTERNALDATE BODY.PEEK[])").fetches().values()}
        assert set(got) == set(dst)
        for s_uid, d_uid in zip(src, dst):
            i = uids.index(s_uid)
            assert got[d_uid]["BODY[]"] == msgs[i]
            assert imap_date_ts(got[d_uid]["INTERNALDATE"].decode()) == \
                calendar.timegm((2026, 2, 2, 10, 0, 0))
        assert fl(got[dst[0]]["FLAGS"]) >= {"\\FLAGGED"}
        d.close()
        # refused COPYs copy nothing
        r = c.cmd('COPY 1 "Nowhere"')
        assert r.status == "NO" and (r.code or "").upper() == "TRYCREATE", r
        assert c.cmd("COPY 1:99 Trash").status == "BAD"
        assert status(c, "Trash")["MESSAGES"] == 2

        # MOVE (RFC 6851): COPYUID (untagged OK before the expunge, or on
        # the tagged OK), then EXPUNGE for the source message.
        have = list(uids)
        r = c.ok("MOVE 1 Archive")
        code = next((x for x in r.codes() if x.upper().startswith("COPYUID")), r.code)
        v, src, dst = copyuid(code)
        assert src == [uids[0]]
        have = apply_expunges(have, r.untagged)
        assert have == uids[1:], r
        r = c.ok(f"UID MOVE {uids[4]} Archive")
        have = apply_expunges(have, r.untagged)
        assert have == uids[1:4], r
        assert uid_list(c) == have
        assert status(c, "Archive")["MESSAGES"] == 2

        # EXPUNGE removes exactly the \Deleted messages
        c.ok(f"UID STORE {uids[1]},{uids[3]} +FLAGS.SILENT (\\Deleted)")
        r = c.ok("EXPUNGE")
        have = apply_expunges(have, r.untagged)
        assert have == [uids[2]] and uid_list(c) == have, r

        # UID EXPUNGE (RFC 4315 §2.1): only \Deleted messages in the set
        _, u6 = append(c, "INBOX", mk("m6"), flags=["\\Deleted"])
        _, u7 = append(c, "INBOX", mk("m7"), flags=["\\Deleted"])
        c.ok("NOOP")
        have += [u6, u7]
        r = c.ok(f"UID EXPUNGE {uids[2]}:{u6}")
        have = apply_expunges(have, r.untagged)
        assert have == [uids[2], u7] and uid_list(c) == have, r

        # CHECK: OK, nothing else
        c.ok("CHECK")
        # CLOSE expunges silently and leaves the selected state
        r = c.ok("CLOSE")
        assert not r.kind("EXPUNGE"), r
        assert c.cmd("FETCH 1 FLAGS").status == "BAD"
        _, info = select(c, "INBOX")
        assert info["EXISTS"] == 1
        # CLOSE after EXAMINE and UNSELECT expunge nothing
        c.ok("STORE 1 +FLAGS (\\Deleted)")
        select(c, "INBOX", examine=True)
        c.ok("CLOSE")
        select(c, "INBOX")
        r = c.ok("UNSELECT")
        assert not r.kind("EXPUNGE")
        assert c.cmd("FETCH 1 FLAGS").status == "BAD"
        assert status(c, "INBOX")["MESSAGES"] == 1
        assert c.cmd("UNSELECT").status == "BAD"  # nothing selected
    finally:
        c.close()


def test_move_keeps_emailid(imap_cluster, user):
    """OBJECTID (RFC 8474 §5.1): EMAILID is an objectid (1-255 of
    A-Za-z0-9_-), differs between messages, and survives MOVE."""
    c = session(imap_cluster, user)
    try:
        append(c, "INBOX", mk("e1"))
        append(c, "INBOX", mk("e2"))
        select(c, "INBOX")
        v = c.ok("FETCH 1:2 (EMAILID)").fetches()
        ids = [v[i]["EMAILID"][0] for i in (1, 2)]
        for x in ids:
            assert re.fullmatch(r"[A-Za-z0-9_-]{1,255}", x), ids
        assert ids[0] != ids[1]
        c.ok("MOVE 1 Archive")
        select(c, "Archive")
        assert c.ok("FETCH 1 (EMAILID)").fetches()[1]["EMAILID"][0] == ids[0]
    finally:
        c.close()


def test_threadid(imap_cluster, user):
    """OBJECTID (RFC 8474 §5.2): THREADID is shared by the messages of one
    thread (a reply names the root in References or In-Reply-To), differs
    between threads, and is NIL for a message without any message id."""
    c = session(imap_cluster, user)
    try:
        root = b"Message-ID: <root@t.example>\r\nSubject: t\r\n\r\nroot\r\n"
        reply = (b"Message-ID: <r1@t.example>\r\nReferences: <root@t.example>\r\n"
                 b"Subject: Re: t\r\n\r\nreply\r\n")
        reply2 = (b"Message-ID: <r2@t.example>\r\nIn-Reply-To: <root@t.example>\r\n"
                  b"Subject: Re: t\r\n\r\nreply\r\n")
        other = b"Message-ID: <other@t.example>\r\nSubject: o\r\n\r\nother\r\n"
        none = b"Subject: no id\r\n\r\nx\r\n"
        for m in (root, reply, reply2, other, none):
            append(c, "INBOX", m)
        select(c, "INBOX")
        r = c.ok("FETCH 1:5 (THREADID)")
        raw = [u for u in r.untagged if b"THREADID" in u]
        assert len(raw) == 5, r
        ids = {}
        for u in raw:
            m = re.search(rb"^(\d+) FETCH \(THREADID (NIL|\(([A-Za-z0-9_-]{1,255})\))\)$", u)
            assert m, u
            ids[int(m.group(1))] = m.group(3)
        assert ids[1] is not None and ids[1] == ids[2] == ids[3], ids
        assert ids[4] is not None and ids[4] != ids[1], ids
        assert ids[5] is None, ids
    finally:
        c.close()


# ================================================== CONDSTORE / QRESYNC

def vanished(untagged, earlier):
    out = []
    for u in untagged:
        if resp_kind(u) != "VANISHED":
            continue
        toks = parse(u)
        is_earlier = isinstance(toks[1], list)
        if is_earlier:
            assert [ub(x) for x in toks[1]] == [b"EARLIER"], toks
        if is_earlier == earlier:
            out += seqset(toks[-1])
    return sorted(out)


def test_condstore_qresync(imap_cluster, user):
    c = session(imap_cluster, user)
    try:
        c.ok("ENABLE QRESYNC")
        uids = [append(c, "INBOX", mk(f"q{i}"))[1] for i in range(5)]
        r, info = select(c, "INBOX")
        uv, h0 = int(info["UIDVALIDITY"]), int(info["HIGHESTMODSEQ"])

        # Another session (no QRESYNC) changes things.
        other = session(imap_cluster, user, select="INBOX")
        other.ok(f"UID STORE {uids[2]} +FLAGS (\\Flagged)")
        other.ok(f"UID STORE {uids[1]},{uids[3]} +FLAGS (\\Deleted)")
        r = other.ok("EXPUNGE")
        assert len(r.kind("EXPUNGE")) == 2, r
        other.close()

        # This session (QRESYNC enabled) learns of the expunges by
        # VANISHED, never EXPUNGE (RFC 7162 §3.2.10), and of the flag
        # change by a FETCH with MODSEQ (§3.1.4).
        def seen_all(got):
            return set(vanished(got, False)) >= {uids[1], uids[3]} and any(
                "\\FLAGGED" in fl(v.get("FLAGS", []))
                for v in fetch_map(got).values())
        got = poll_noop(c, seen_all)
        assert not [u for u in got if resp_kind(u) == "EXPUNGE"], got
        assert all("MODSEQ" in v for v in fetch_map(got).values()), got

        # A new session resynchronises from (uidvalidity, h0).
        d = session(imap_cluster, user)
        d.ok("ENABLE QRESYNC")
        r, info = select(d, "INBOX", f" (QRESYNC ({uv} {h0} 1:{uids[-1]}))")
        assert int(info["HIGHESTMODSEQ"]) > h0
        gone = vanished(r.untagged, True)
        assert {uids[1], uids[3]} <= set(gone), r
        assert not set(gone) & {uids[0], uids[2], uids[4]}, r
        fm = {int(v["UID"]): v for v in r.fetches().values()}
        assert uids[2] in fm and "\\FLAGGED" in fl(fm[uids[2]]["FLAGS"]), r
        assert all("MODSEQ" in v for v in fm.values()), r
        # FETCH CHANGEDSINCE (RFC 7162 §3.1.4.1): exactly what changed
        r = d.ok(f"FETCH 1:* (UID FLAGS) (CHANGEDSINCE {h0})")
        assert [int(v["UID"]) for v in r.fetches().values()] == [uids[2]], r
        r = d.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {h0} VANISHED)")
        assert {uids[1], uids[3]} <= set(vanished(r.untagged, True)), r
        assert [int(v["UID"]) for v in r.fetches().values()] == [uids[2]], r
        # Reselecting: [CLOSED] before the new mailbox's responses (§3.2.11)
        r = d.ok("SELECT INBOX")
        assert "CLOSED" in [x.upper() for x in r.codes()], r
        # A wrong UIDVALIDITY: a plain SELECT, no VANISHED
        r, _ = select(d, "INBOX", f" (QRESYNC ({uv + 1} {h0}))")
        assert not r.kind("VANISHED"), r
        d.close()

        # Own EXPUNGE with QRESYNC: VANISHED uid
        c.ok(f"UID STORE {uids[4]} +FLAGS.SILENT (\\Deleted)")
        r = c.ok("EXPUNGE")
        assert vanished(r.untagged, False) == [uids[4]] and not r.kind("EXPUNGE"), r
        # modseq grows with every change, and STATUS shows it
        hm = status(c, "INBOX", "HIGHESTMODSEQ")["HIGHESTMODSEQ"]
        r = c.ok(f"UID STORE {uids[0]} +FLAGS (\\Seen)")
        assert int(r.fetches()[1]["MODSEQ"][0]) > hm
        # SELECT with QRESYNC but QRESYNC not enabled: BAD (RFC 7162 §3.2.5)
        e = session(imap_cluster, user)
        assert e.cmd(f"SELECT INBOX (QRESYNC ({uv} {h0}))").status == "BAD"
        e.close()
    finally:
        c.close()


# ================================================================ IDLE

def exists_n(got, n):
    return any(re.fullmatch(rb"%d EXISTS" % n, u, re.I) for u in got)


def test_idle_push(imap_cluster, user):
    """IDLE (RFC 2177): a delivery by SMTP, another session's flag change
    and expunge reach an idling session without it asking."""
    a = session(imap_cluster, user)
    try:
        append(a, "INBOX", mk("first"))
        select(a, "INBOX")
        b = session(imap_cluster, user, select="INBOX")
        tag, _ = idle_start(a)
        token = uuid.uuid4().hex
        smtp_deliver(imap_cluster, user, f"Subject: pushed {token}\r\n\r\nhi\r\n".encode())
        wait_untagged(a, lambda g: exists_n(g, 2))
        b.ok("STORE 1 +FLAGS (\\Flagged)")
        wait_untagged(a, lambda g: any(
            "\\FLAGGED" in fl(v.get("FLAGS", [])) and s == 1
            for s, v in fetch_map(g).items()))
        b.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        b.ok("EXPUNGE")
        wait_untagged(a, lambda g: any(re.fullmatch(rb"1 EXPUNGE", u, re.I) for u in g))
        idle_done(a, tag)
        v = a.ok("FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject)])").fetches()[1]
        assert token.encode() in v["BODY[HEADER.FIELDS (SUBJECT)]"]
        # IDLE without a selected mailbox is fine (authenticated state)
        a.ok("UNSELECT")
        tag, _ = idle_start(a)
        idle_done(a, tag)
        b.close()
    finally:
        a.close()


# ====================================================== literals, pipelining

def test_literals_and_pipelining(imap_cluster, user):
    c = connect(imap_cluster)
    try:
        # Synchronising literals for both LOGIN arguments: one '+' each
        r = c.ok("LOGIN ", Lit(user), " ", Lit(PASSWORD))
        assert len(r.conts) == 2, r
        append(c, "INBOX", mk("p1"))
        select(c, "INBOX")
        msg = mk("pipelined")
        # Seven commands in one write, a LITERAL+ APPEND among them.
        c.send(b"p1 NOOP\r\n"
               b"p2 FETCH 1 (FLAGS)\r\n"
               b"p3 APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n"
               b"p4 NOOP\r\n"
               b"p5 STORE 1 +FLAGS (\\Seen)\r\n"
               b"p6 SELECT {5+}\r\nINBOX\r\n"
               b"p7 FROBNICATE\r\n"
               b"p8 SEARCH SEEN\r\n")
        seen = {}
        untagged = []
        while len(seen) < 8:
            ln = c.response()
            m = re.match(rb"(p\d) (OK|NO|BAD)\b", ln)
            if m:
                assert m.group(1) not in seen, f"two tagged replies for {ln!r}"
                seen[m.group(1)] = (m.group(2), untagged)
                untagged = []
            else:
                assert ln.startswith(b"* "), ln
                untagged.append(ln[2:])
        assert {k: v[0] for k, v in seen.items()} == {
            b"p1": b"OK", b"p2": b"OK", b"p3": b"OK", b"p4": b"OK", b"p5": b"OK",
            b"p6": b"OK", b"p7": b"BAD", b"p8": b"OK"}, seen
        assert fl(fetch_map(seen[b"p2"][1])[1]["FLAGS"]) == set()
        _, info = select(c, "INBOX")
        assert info["EXISTS"] == 2
        assert search_result(c.ok("SEARCH SEEN")) == [1]
        v = c.ok("FETCH 2 BODY.PEEK[]").fetches()[2]
        assert v["BODY[]"] == msg
        # A quoted string with escapes and a literal as a mailbox name
        c.ok('CREATE "quote\\"d name"')
        c.ok("CREATE ", Lit("lit name"))
        names = set(listing(c, 'LIST "" "*"'))
        assert {'quote"d name', "lit name"} <= names, names
    finally:
        c.close()


# ================================================== malformed and hostile input

def snapshot(c):
    """What must not change: every mailbox's STATUS and INBOX's flags."""
    out = {}
    for name in sorted(listing(c, 'LIST "" "*"')):
        out[name] = status(c, name, "MESSAGES UIDNEXT UNSEEN SIZE")
    c.ok("EXAMINE INBOX")
    out["flags"] = flags_of(c)
    c.ok("UNSELECT")
    return out


def test_hostile_input(imap_cluster, user):
    base = session(imap_cluster, user)
    try:
        append(base, "INBOX", mk("h1"), flags=["\\Seen"])
        append(base, "INBOX", mk("h2"))
        before = snapshot(base)

        def fresh(login=True):
            c = connect(imap_cluster)
            if login:
                c.ok("LOGIN ", q(user), " ", q(PASSWORD))
            return c

        # 1. A literal too big for any limit gets no continuation: a tagged
        #    NO/BAD instead of '+' (RFC 7888 §4 / RFC 9051 §7.5); the
        #    session goes on.
        c = fresh()
        for tag, line in ((b"g1", b"g1 APPEND INBOX {99999999999}\r\n"),
                          (b"g2", b"g2 LOGIN {99999999999999999999999999}\r\n"),
                          (b"g3", b"g3 SELECT {4294967296}\r\n")):
            c.send(line)
            r = c.response()
            assert r.startswith(tag + b" NO") or r.startswith(tag + b" BAD"), r
        c.ok("NOOP")
        c.close()

        # 2. An unterminated literal, then the client disappears.
        c = fresh()
        c.send(b"u1 APPEND INBOX {100}\r\n")
        assert c.response().startswith(b"+")
        c.send(b"only twenty bytes...")
        c.close()
        c = fresh()
        c.send(b"u2 APPEND INBOX {100+}\r\nshort")
        c.close()

        # 3. Deep parenthesis nesting, long lists: BAD, no crash.
        c = fresh()
        c.ok("SELECT INBOX")
        assert c.cmd("FETCH 1 " + "(" * 10000 + "FLAGS" + ")" * 10000).status == "BAD"
        # valid but deep: refused (a nesting limit) or answered right
        r = c.cmd("SEARCH " + "(" * 5000 + "ALL" + ")" * 5000)
        assert r.status == "BAD" or (r.status == "OK" and search_result(r) == [1, 2]), r
        r = c.cmd("SEARCH " + "NOT " * 5000 + "ALL")
        assert r.status == "BAD" or (r.status == "OK" and search_result(r) == [1, 2]), r
        c.ok("NOOP")
        c.close()

        # 4. Invalid sequence sets: BAD, and nothing stored.
        c = fresh()
        c.ok("SELECT INBOX")
        for bad in ("STORE 0 +FLAGS (\\Deleted)", "STORE 1:0 +FLAGS (\\Deleted)",
                    "STORE abc +FLAGS (\\Deleted)", "STORE 1,,2 +FLAGS (\\Deleted)",
                    "STORE 4294967296 +FLAGS (\\Deleted)"):
            assert c.cmd(bad).status == "BAD", bad
        c.close()
        c = fresh()
        c.ok("SELECT INBOX")
        for bad in ("FETCH 1:3 FLAGS", "COPY 5 Trash", "MOVE 1:* Nowhere",
                    "STORE -1 +FLAGS (\\Deleted)"):
            assert c.cmd(bad).status in ("BAD", "NO"), bad
        c.close()

        # 5. NUL bytes outside literals: BAD (RFC 9051 §9: CHAR8 excludes NUL).
        c = fresh()
        c.send(b"n1 NOOP\0\r\n")
        assert c.response().startswith((b"n1 BAD", b"* BAD")), "NUL accepted"
        c.send(b'n2 SELECT "IN\0BOX"\r\n')
        assert c.response().startswith((b"n2 BAD", b"* BAD"))
        c.ok("NOOP")
        c.close()

        # 6. Unknown commands, a tag alone, wrong-state commands: BAD.
        #    (One per connection before login: the error limit is tighter
        #    there, and a BYE for it would hide what is tested.)
        for line, st in ((b"FROBNICATE", ("BAD",)), (b"FETCH 1 FLAGS", ("BAD", "NO")),
                         (b"DELETE INBOX", ("BAD", "NO"))):
            c = fresh(login=False)
            assert c.cmd(line).status in st, line
            c.ok("NOOP")
            c.close()
        c = fresh(login=False)
        c.send(b"lonely\r\n")
        assert c.response().startswith((b"lonely BAD", b"* BAD"))
        c.ok("NOOP")
        c.close()
        c = fresh()
        assert c.cmd("EXPUNGE").status == "BAD"     # nothing selected
        assert c.cmd("UID FROB 1").status == "BAD"
        assert c.cmd("STORE 1 +FLAGS (\\Deleted)").status == "BAD"
        c.ok("NOOP")
        c.close()

        # 7. A line far over any limit: BAD/NO (and go on) or BYE (and close).
        c = fresh()
        try:
            c.send(b'L1 SELECT "' + b"x" * 200000 + b'"\r\n')
            r = c.response()
            assert r.startswith((b"L1 BAD", b"L1 NO", b"* BAD", b"* BYE")), r[:100]
            if r.startswith(b"* BYE"):
                assert c.closed()
            else:
                c.ok("NOOP")
        except (ConnectionResetError, BrokenPipeError):
            pass  # closed while we were still writing: also fine
        c.close()

        # 8. Binary noise, then a hang-up
        c = fresh(login=False)
        c.send(os.urandom(4096).replace(b"\r\n", b"xx") + b"\r\n")
        c.close()

        # The server still answers, and nothing changed.
        time.sleep(0.5)
        check = session(imap_cluster, user)
        assert snapshot(check) == before
        check.close()
        assert snapshot(base) == before
    finally:
        base.close()


# ======================================================== imaplib, rev2

def test_imaplib_session(imap_cluster, user):
    """Python's imaplib as a client would use it, over implicit TLS and
    over STARTTLS."""
    m = imaplib.IMAP4_SSL("127.0.0.1", imap_cluster.imaps_port(),
                          ssl_context=tls_ctx(imap_cluster), timeout=30)
    try:
        assert "IMAP4REV1" in m.capabilities
        typ, _ = m.login(user, PASSWORD)
        assert typ == "OK"
        typ, data = m.list()
        assert typ == "OK" and any(b'"/" INBOX' in d or b'"/" "INBOX"' in d for d in data), data
        msg = mk("via imaplib")
        typ, data = m.append("INBOX", "(\\Flagged)", imaplib.Time2Internaldate(time.time()), msg)
        assert typ == "OK", data
        typ, data = m.select("INBOX")
        assert typ == "OK" and data == [b"1"], data
        typ, data = m.fetch("1", "(FLAGS BODY.PEEK[])")
        assert typ == "OK" and data[0][1] == msg, data
        flat = b" ".join(x if isinstance(x, bytes) else x[0] for x in data)
        assert b"\\FLAGGED" in flat.upper(), data
        typ, data = m.search(None, "FLAGGED")
        assert data == [b"1"], data
        typ, data = m.uid("SEARCH", "ALL")
        uid = data[0].split()[0]
        typ, data = m.uid("COPY", uid, "Archive")
        assert typ == "OK", data
        m.store("1", "+FLAGS", "\\Deleted")
        typ, data = m.expunge()
        assert typ == "OK" and data == [b"1"], data
        typ, data = m.status("Archive", "(MESSAGES)")
        assert typ == "OK" and b"MESSAGES 1" in data[0], data
        m.close()
        m.logout()
    finally:
        try:
            m.shutdown()
        except OSError:
            pass
    m = imaplib.IMAP4("127.0.0.1", imap_cluster.imap_port(), timeout=30)
    try:
        m.starttls(ssl_context=tls_ctx(imap_cluster))
        m.login(user, PASSWORD)
        typ, data = m.select("Archive", readonly=True)
        assert typ == "OK" and data == [b"1"], data
        m.logout()
    finally:
        try:
            m.shutdown()
        except OSError:
            pass


def test_imap4rev2(imap_cluster, user):
    """RFC 9051 behaviour after ENABLE IMAP4rev2: SEARCH answers ESEARCH,
    mailbox names are UTF-8, no RECENT."""
    c = session(imap_cluster, user)
    try:
        assert "IMAP4REV2" in capabilities(c)
        r = c.ok("ENABLE IMAP4rev2")
        assert [ub(x) for u in r.kind("ENABLED") for x in parse(u)[1:]] == [b"IMAP4REV2"]
        append(c, "INBOX", mk("r2"))
        r, info = select(c, "INBOX")
        assert "RECENT" not in info, r
        r = c.ok("SEARCH ALL")
        assert not r.kind("SEARCH") and seqset(esearch(r)["ALL"]) == [1], r
        c.ok('CREATE "\u00c9t\u00e9"'.encode())
        assert "\u00c9t\u00e9" in listing(c, 'LIST "" "*"')
    finally:
        c.close()


# ======================================== two frontends, node failure

@pytest.fixture(scope="module")
def fe2(tmp_path_factory):
    """etcd, three storage nodes and two frontends (as conftest's
    cluster_fe2), shared by the tests below; every shard in sync first."""
    from test_cluster import all_in_sync, wait_for
    gen = _deployment(tmp_path_factory.mktemp("imapfe2") / "cf2", 3, frontends=2)
    c = next(gen)
    try:
        wait_for("all shards in sync", lambda: all_in_sync(c), timeout=90)
        yield c
    finally:
        for _ in gen:   # ./dev down
            pass


def routed(c):
    from test_cluster import rctl
    return lambda *args, **kw: rctl(c, *args, **kw)


def test_two_frontends_see_each_other(fe2):
    u = add_user(fe2, ctl=routed(fe2))
    a = session(fe2, u, i=0)
    b = session(fe2, u, i=1)
    try:
        for k in range(3):
            append(a, "INBOX", mk(f"x{k}"))
        select(a, "INBOX")
        select(b, "INBOX")
        # a flag change through frontend 1 reaches a session on frontend 0
        b.ok("STORE 1 +FLAGS (\\Flagged)")
        poll_noop(a, lambda g: "\\FLAGGED" in {f.upper() for f in
                                                fetch_map(g).get(1, {}).get("FLAGS", [])})
        # an expunge through frontend 0 reaches frontend 1
        a.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
        a.ok("EXPUNGE")
        poll_noop(b, lambda g: any(re.fullmatch(rb"2 EXPUNGE", x, re.I) for x in g))
        # IDLE on frontend 1 hears an APPEND and a STORE made on frontend 0
        # and an SMTP delivery through frontend 0
        tag, _ = idle_start(b)
        append(a, "INBOX", mk("new"))
        wait_untagged(b, lambda g: exists_n(g, 3))
        a.ok("NOOP")
        a.ok("STORE 3 +FLAGS (\\Seen)")
        wait_untagged(b, lambda g: "\\SEEN" in {f.upper() for f in
                                                 fetch_map(g).get(3, {}).get("FLAGS", [])})
        smtp_deliver(fe2, u, b"Subject: via smtp\r\n\r\nbody\r\n", i=0)
        wait_untagged(b, lambda g: exists_n(g, 4))
        idle_done(b, tag)
        a.ok("NOOP")
        assert flags_of(a) == flags_of(b)
        assert uid_list(a) == uid_list(b)
    finally:
        a.close()
        b.close()


def test_uid_stability_across_leader_kill9(fe2):
    """UIDs, UIDVALIDITY and modseq survive kill -9 of the leader of the
    user's shard (DESIGN: invariants clients rely on); new UIDs and modseqs
    keep growing."""
    from test_cluster import all_in_sync, node_index, rctl, shard_records, wait_for
    c = fe2
    u = add_user(c, ctl=routed(c))
    shard = int(re.search(r"shard[=:] *(\d+)", rctl(c, "user", "show", u).stdout).group(1))
    a = session(c, u, i=0)
    bodies = {}
    for k in range(20):
        m = mk(f"k{k}")
        uv, uid = append(a, "INBOX", m)
        bodies[uid] = m
    select(a, "INBOX")
    a.ok("STORE 1:5 +FLAGS (\\Seen)")
    a.ok("STORE 6 +FLAGS (\\Deleted)")
    a.ok("EXPUNGE")
    del bodies[sorted(bodies)[5]]
    flags_before = flags_of(a)
    st = status(a, "INBOX", "MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ")
    a.close()

    old = shard_records(c)[shard]
    c.kill9(node_index(c, old["leader"]))
    wait_for("a new leader", lambda: shard_records(c)[shard]["leader"] != old["leader"],
             timeout=30)

    def try_session():
        try:
            return session(c, u, i=1, select="INBOX")
        except (AssertionError, OSError, EOFError):
            return None
    b = wait_for("IMAP to serve the user again", try_session, timeout=30)
    try:
        st2 = status(b, "INBOX", "MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ")
        assert st2["UIDVALIDITY"] == st["UIDVALIDITY"]
        assert st2["MESSAGES"] == st["MESSAGES"] == 19
        assert st2["UIDNEXT"] == st["UIDNEXT"]
        assert st2["HIGHESTMODSEQ"] >= st["HIGHESTMODSEQ"]
        r = b.ok("UID FETCH 1:* (UID BODY.PEEK[])")
        got = {int(v["UID"]): v["BODY[]"] for v in r.fetches().values()}
        assert got == bodies
        assert flags_of(b) == flags_before
        _, new_uid = append(b, "INBOX", mk("after failover"))
        assert new_uid >= st["UIDNEXT"] and new_uid > max(bodies)
        b.ok("NOOP")
        r = b.ok(f"UID STORE {new_uid} +FLAGS (\\Flagged)")
        b.ok("ENABLE CONDSTORE")
        ms = int(b.ok(f"UID FETCH {new_uid} (MODSEQ)").fetches()[20]["MODSEQ"][0])
        assert ms > st["HIGHESTMODSEQ"]
    finally:
        b.close()

    # The killed node comes back and catches up; nothing moves.
    c.restart()
    wait_for("all shards in sync", lambda: all_in_sync(c), timeout=90)
    d = session(c, u, i=0, select="INBOX")
    try:
        assert status(d, "INBOX", "UIDVALIDITY")["UIDVALIDITY"] == st["UIDVALIDITY"]
        got = {int(v["UID"]): v["BODY[]"]
               for v in d.ok("UID FETCH 1:* (UID BODY.PEEK[])").fetches().values()}
        assert set(got) == set(bodies) | {new_uid}
        assert all(got[x] == bodies[x] for x in bodies)
    finally:
        d.close()


def test_expunge_not_sent_during_fetch_store_search(imap_cluster, user):
    """RFC 9051 §7.5.1 (RFC 3501 §7.4.1): EXPUNGE is never sent while
    answering FETCH, STORE or SEARCH (the client's sequence numbers would
    shift under it); it comes with NOOP."""
    a = session(imap_cluster, user)
    b = session(imap_cluster, user)
    try:
        uids = [append(a, "INBOX", mk(f"d{i}"))[1] for i in range(3)]
        select(a, "INBOX")
        select(b, "INBOX")
        b.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
        b.ok("EXPUNGE")
        time.sleep(0.5)
        for cmd in ("FETCH 1:3 (UID)", "STORE 1 +FLAGS (\\Seen)", "SEARCH ALL",
                    "FETCH 3 (UID FLAGS)"):
            r = a.cmd(cmd)
            assert r.status in ("OK", "NO"), (cmd, r)
            assert not r.kind("EXPUNGE") and not r.kind("VANISHED"), (cmd, r)
            # sequence numbers are still the old ones
            for seq, v in r.fetches().items():
                if "UID" in v:
                    assert int(v["UID"]) == uids[seq - 1], (cmd, r)
        got = poll_noop(a, lambda g: any(re.fullmatch(rb"2 EXPUNGE", x, re.I) for x in g))
        assert apply_expunges(uids, got) == [uids[0], uids[2]]
        assert uid_list(a) == [uids[0], uids[2]]
    finally:
        a.close()
        b.close()


def test_no_access_outside_own_account(imap_cluster, user):
    """A session sees and names only its own user's mailboxes."""
    dom = user.split("@")[1]
    bob = add_user(imap_cluster, "bob", domain=dom)
    b = session(imap_cluster, bob)
    try:
        append(b, "INBOX", mk("bob's secret"))
        b.ok('CREATE "Private"')
    finally:
        b.close()
    c = session(imap_cluster, user)
    try:
        assert set(listing(c, 'LIST "" "*"')) == set(DEFAULT_MAILBOXES)
        assert set(listing(c, 'LIST "" "*"')) == set(listing(c, 'LIST "/" "*"')) | \
            set(listing(c, 'LIST "" "*"'))
        for name in ("Private", f"{bob}/INBOX", "../INBOX", f"~{bob}/INBOX",
                     "/INBOX/../Private", f"#users/{bob}/INBOX", "INBOX/../Private"):
            r = c.cmd("SELECT ", q(name))
            assert r.status in ("NO", "BAD"), (name, r)
            r = c.cmd("STATUS ", q(name), " (MESSAGES)")
            assert r.status in ("NO", "BAD"), (name, r)
        assert status(c, "INBOX")["MESSAGES"] == 0
        # NAMESPACE names no other users' or shared namespace
        toks = parse(c.ok("NAMESPACE").kind("NAMESPACE")[0])
        assert toks[2] is None and toks[3] is None, toks
    finally:
        c.close()


# ====================================== other advertised extensions

def test_compress_deflate(imap_cluster, user):
    """COMPRESS=DEFLATE (RFC 4978), when advertised: after OK both
    directions are raw DEFLATE (RFC 1951) streams."""
    import zlib
    c = session(imap_cluster, user)
    try:
        assert "COMPRESS=DEFLATE" in capabilities(c)
        append(c, "INBOX", MULTI)
        c.ok("COMPRESS DEFLATE")
        co = zlib.compressobj(6, zlib.DEFLATED, -15)
        de = zlib.decompressobj(-15)
        c.send(co.compress(b"z1 SELECT INBOX\r\nz2 FETCH 1 BODY.PEEK[]\r\n"
                           b"z3 COMPRESS DEFLATE\r\n") + co.flush(zlib.Z_SYNC_FLUSH))
        out = b""
        deadline = time.monotonic() + WAIT
        while not re.search(rb"(?m)^z3 [A-Z]+ .*\r\n", out):
            assert time.monotonic() < deadline, out[-300:]
            chunk = c.sock.recv(65536)
            assert chunk, "closed"
            out += de.decompress(chunk)
        assert re.search(rb"(?m)^z1 OK", out) and re.search(rb"(?m)^z2 OK", out), out[-300:]
        assert b"{%d}\r\n" % len(MULTI) + MULTI in out
        # a second COMPRESS is refused: NO [COMPRESSIONACTIVE] (RFC 4978 §3)
        assert re.search(rb"(?m)^z3 NO \[COMPRESSIONACTIVE\]", out), out[-300:]
    finally:
        c.close()


def test_sort_and_thread(imap_cluster, user):
    """SORT and THREAD (RFC 5256), when advertised; results worked out by
    hand from §2.1 (base subject), §3 (SORT, THREAD)."""
    c = session(imap_cluster, user)
    try:
        caps = capabilities(c)
        assert "SORT" in caps, caps
        msgs = [
            b"From: carol@c.example\r\nSubject: Re: Beta\r\n"
            b"Date: Sat, 3 Jan 2026 10:00:00 +0000\r\nMessage-ID: <r1@x>\r\n"
            b"In-Reply-To: <b@x>\r\nReferences: <b@x>\r\n\r\nreply\r\n",
            b"From: bob@b.example\r\nSubject: alpha\r\n"
            b"Date: Thu, 1 Jan 2026 10:00:00 +0000\r\nMessage-ID: <a@x>\r\n\r\na\r\n",
            b"From: alice@a.example\r\nSubject: Beta\r\n"
            b"Date: Fri, 2 Jan 2026 10:00:00 +0000\r\nMessage-ID: <b@x>\r\n\r\nb\r\n",
            b"From: dave@d.example\r\nSubject: [list] Alpha (fwd)\r\n"
            b"Date: Sun, 4 Jan 2026 10:00:00 +0000\r\nMessage-ID: <c@x>\r\n\r\nc\r\n",
        ]
        uids = [append(c, "INBOX", m)[1] for m in msgs]
        select(c, "INBOX")

        def sort(crit, uid=False):
            r = c.ok(("UID " if uid else "") + f"SORT ({crit}) UTF-8 ALL")
            s = r.kind("SORT")
            assert len(s) == 1, r
            return [int(x) for x in parse(s[0])[1:]]
        # base subjects: beta, alpha, beta, alpha; ties by sequence number
        assert sort("SUBJECT") == [2, 4, 1, 3]
        assert sort("DATE") == [2, 3, 1, 4]
        assert sort("REVERSE DATE") == [4, 1, 3, 2]
        assert sort("FROM") == [3, 2, 1, 4]
        assert sort("SUBJECT", uid=True) == [uids[1], uids[3], uids[0], uids[2]]
        assert c.cmd("SORT (BOGUS) UTF-8 ALL").status == "BAD"

        def thread(alg):
            r = c.ok(f"THREAD {alg} UTF-8 ALL")
            t = r.kind("THREAD")
            assert len(t) == 1, r
            return parse(t[0])[1:]
        if "THREAD=ORDEREDSUBJECT" in caps:
            assert thread("ORDEREDSUBJECT") == [["2", "4"], ["3", "1"]]
        if "THREAD=REFERENCES" in caps:
            # 1 replies to 3; 4 ("(fwd)") joins 2 by base subject (§3 step 5)
            assert thread("REFERENCES") == [["2", "4"], ["3", "1"]]
    finally:
        c.close()

"""SMTP frontend against a real deployment (etcd, a storage node, a
frontend), with real clients: Python's smtplib, raw sockets where a client
library would hide what is tested, and swaks.

Every accepted message is read back through the MailStore API (merpatictl
msg fetch) and compared byte for byte; every refusal is checked to have
stored nothing.
"""
import base64
import hashlib
import hmac
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
import uuid

import pytest

PASSWORD = "correct horse battery staple"


# ------------------------------------------------------------------ helpers

def kv(line):
    return dict(p.split("=", 1) for p in line.split() if "=" in p)


def ok(cluster, *args, input=None):
    r = cluster.ctl(*args, input=input, check=False)
    assert r.returncode == 0, \
        f"merpatictl {' '.join(args)}: rc={r.returncode}\n{r.stderr}"
    return r.stdout


def uids(cluster, user, mailbox="INBOX"):
    out = ok(cluster, "msg", "list", user, mailbox)
    return [int(kv(ln)["uid"]) for ln in out.splitlines() if "uid=" in ln]


def fetch(cluster, user, uid, mailbox="INBOX"):
    from conftest import bin
    r = subprocess.run([bin("merpatictl"), "--node", cluster.addr, "msg",
                        "fetch", user, mailbox, str(uid)],
                       capture_output=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    return r.stdout


def bodies(cluster, user, mailbox="INBOX"):
    return [fetch(cluster, user, u, mailbox) for u in uids(cluster, user, mailbox)]


def strip_trace(stored):
    """The stored body is Return-Path: and Received: (with its folded
    continuation lines) followed by the message exactly as sent."""
    lines = stored.split(b"\r\n")
    assert lines[0].startswith(b"Return-Path: <"), stored[:200]
    assert lines[1].startswith(b"Received: from "), stored[:200]
    i = 1
    while i < len(lines) and lines[i].startswith(b"Received: from "):
        i += 1
        while i < len(lines) and lines[i].startswith(b"\t"):
            i += 1
    return b"\r\n".join(lines[i:])


def unique_domain():
    return f"d{uuid.uuid4().hex[:10]}.test"


@pytest.fixture
def mail(cluster):
    """A domain with two users on the deployment."""
    dom = unique_domain()
    ok(cluster, "domain", "add", dom)
    users = {}
    for name in ("alice", "bob"):
        u = f"{name}@{dom}"
        ok(cluster, "user", "add", u, input=PASSWORD + "\n")
        users[name] = u
    return cluster, dom, users


def port(cluster, what):
    return int(cluster.env[what])


def tls_ctx(cluster):
    return ssl.create_default_context(cafile=cluster.env["TLS_CA"])


def message(subject, body=b"Hello.\r\n", extra=b""):
    return (b"From: sender@remote.test\r\nTo: someone\r\nSubject: " +
            subject.encode() + b"\r\nMessage-ID: <" +
            uuid.uuid4().hex.encode() + b"@remote.test>\r\n" + extra +
            b"\r\n" + body)


class Raw:
    """A line-level SMTP client: what smtplib would hide."""

    def __init__(self, port, timeout=30):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def reply(self):
        """One reply (all its lines): (code, text of the last line)."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise EOFError(f"closed after {lines!r} {self.buf!r}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), b"\r\n".join(lines).decode("utf-8", "replace")

    def cmd(self, line):
        self.send(line + b"\r\n")
        return self.reply()

    def closed(self, timeout=10):
        """True once the server has closed the connection."""
        self.sock.settimeout(timeout)
        try:
            while True:
                d = self.sock.recv(65536)
                if not d:
                    return True
                self.buf += d
        except (ConnectionResetError, socket.timeout):
            return False

    def close(self):
        self.sock.close()


def raw_session(cluster, role="SMTP_PORT"):
    r = Raw(port(cluster, role))
    code, _ = r.reply()
    assert code == 220
    code, text = r.cmd(b"EHLO client.test")
    assert code == 250, text
    return r


# ------------------------------------------------------------------ receiving

def test_inbound_plain_delivery_byte_exact(mail):
    cluster, dom, users = mail
    msg = message("plain", b"line one\r\n.leading dot\r\n..two dots\r\nend\r\n")
    with smtplib.SMTP("127.0.0.1", port(cluster, "SMTP_PORT"), timeout=30) as s:
        code, _ = s.ehlo("client.test")
        assert code == 250
        for ext in ("pipelining", "size", "8bitmime", "enhancedstatuscodes",
                    "starttls", "smtputf8", "chunking", "dsn"):
            assert s.has_extn(ext), ext
        assert not s.has_extn("auth"), "port 25 must not offer AUTH"
        refused = s.sendmail("sender@remote.test", [users["alice"]], msg)
        assert refused == {}
    got = bodies(cluster, users["alice"])
    assert len(got) == 1
    assert strip_trace(got[0]) == msg
    assert b"Return-Path: <sender@remote.test>\r\n" in got[0]
    assert b"with ESMTP id " in got[0]
    assert bodies(cluster, users["bob"]) == []


def test_inbound_starttls(mail):
    cluster, dom, users = mail
    msg = message("tls")
    with smtplib.SMTP("127.0.0.1", port(cluster, "SMTP_PORT"), timeout=30) as s:
        s.ehlo("client.test")
        s.starttls(context=tls_ctx(cluster))
        s.ehlo("client.test")
        assert not s.has_extn("starttls")
        s.sendmail("sender@remote.test", [users["alice"], users["bob"]], msg)
    for u in (users["alice"], users["bob"]):
        got = bodies(cluster, u)
        assert len(got) == 1 and strip_trace(got[0]) == msg
        assert b"with ESMTPS id " in got[0]
        assert b"version=TLSv1." in got[0]


def test_starttls_discards_pipelined_plaintext(mail):
    """RFC 3207 §4.2 / CVE-2011-0411: commands pipelined after STARTTLS in
    plaintext are never executed inside the TLS session."""
    cluster, dom, users = mail
    r = raw_session(cluster)
    r.send(b"STARTTLS\r\nMAIL FROM:<evil@remote.test>\r\n")
    code, _ = r.reply()
    assert code == 220
    tls = tls_ctx(cluster).wrap_socket(r.sock, server_hostname="localhost")
    tls.sendall(b"RCPT TO:<" + users["alice"].encode() + b">\r\n")
    data = tls.recv(4096)
    # The injected MAIL was dropped, so RCPT is out of sequence (or EHLO
    # is required first): never "250".
    assert data[:1] == b"5", data
    tls.close()


def test_unknown_user_and_relay_refused(mail):
    cluster, dom, users = mail
    r = raw_session(cluster)
    assert r.cmd(b"MAIL FROM:<x@remote.test>")[0] == 250
    code, text = r.cmd(b"RCPT TO:<nobody@" + dom.encode() + b">")
    assert code == 550 and "5.1.1" in text
    code, text = r.cmd(b"RCPT TO:<victim@elsewhere.test>")
    assert code in (550, 554) and "5.7.1" in text
    code, _ = r.cmd(b"DATA")
    assert code == 554  # no valid recipients
    assert r.cmd(b"QUIT")[0] == 221
    r.close()
    assert bodies(cluster, users["alice"]) == []


def test_pipelining_replies_in_order(mail):
    cluster, dom, users = mail
    r = raw_session(cluster)
    msg = message("pipelined")
    r.send(b"MAIL FROM:<p@remote.test>\r\n"
           b"RCPT TO:<" + users["alice"].encode() + b">\r\n"
           b"RCPT TO:<nobody@" + dom.encode() + b">\r\n"
           b"RCPT TO:<" + users["bob"].encode() + b">\r\n"
           b"DATA\r\n")
    assert [r.reply()[0] for _ in range(5)] == [250, 250, 550, 250, 354]
    r.send(msg + b".\r\nQUIT\r\n")
    code, text = r.reply()
    assert code == 250 and "2.0.0" in text
    assert r.reply()[0] == 221
    r.close()
    for u in (users["alice"], users["bob"]):
        got = bodies(cluster, u)
        assert len(got) == 1 and strip_trace(got[0]) == msg


def test_bdat_chunks(mail):
    cluster, dom, users = mail
    r = raw_session(cluster)
    assert r.cmd(b"MAIL FROM:<b@remote.test> BODY=8BITMIME")[0] == 250
    assert r.cmd(b"RCPT TO:<" + users["alice"].encode() + b">")[0] == 250
    part1 = message("bdat", b"")
    part2 = b"binary-ish \xff\xfe\r\n.\r\nno dot-stuffing in BDAT\r\n"
    r.send(b"BDAT %d\r\n" % len(part1) + part1)
    assert r.reply()[0] == 250
    r.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
    code, text = r.reply()
    assert code == 250, text
    assert r.cmd(b"QUIT")[0] == 221
    got = bodies(cluster, users["alice"])
    assert len(got) == 1 and strip_trace(got[0]) == part1 + part2


def test_bdat_without_transaction_is_consumed(mail):
    """RFC 3030: a refused chunk is still read, so the next command is
    parsed where it starts."""
    cluster, dom, users = mail
    r = raw_session(cluster)
    r.send(b"BDAT 12\r\nNOOP NOOP \r\n")
    code, _ = r.reply()
    assert code == 503
    assert r.cmd(b"NOOP")[0] == 250
    r.close()


def test_8bitmime_and_smtputf8(mail):
    cluster, dom, users = mail
    body = "Grüße, 世界\r\n".encode()
    msg = message("utf8", body, "X-Name: Jörg\r\n".encode())
    with smtplib.SMTP("127.0.0.1", port(cluster, "SMTP_PORT"), timeout=30) as s:
        s.ehlo("client.test")
        s.sendmail("jörg@bücher.test", [users["alice"]], msg,
                   mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    got = bodies(cluster, users["alice"])
    assert len(got) == 1 and strip_trace(got[0]) == msg
    assert "Return-Path: <jörg@bücher.test>".encode() in got[0]
    assert b"with UTF8SMTP id" in got[0]
    # Without SMTPUTF8 the same address is refused.
    r = raw_session(cluster)
    code, text = r.cmd("MAIL FROM:<jörg@bücher.test>".encode())
    assert code == 553 and "5.6.7" in text
    r.close()


def test_size_limits(mail):
    cluster, dom, users = mail
    r = raw_session(cluster)
    ehlo = r.cmd(b"EHLO again.test")[1]
    limit = int(re.search(r"SIZE (\d+)", ehlo).group(1))
    code, text = r.cmd(b"MAIL FROM:<big@remote.test> SIZE=%d" % (limit + 1))
    assert code == 552 and "5.3.4" in text
    r.close()

    # 30 MiB is accepted and stored exactly.
    big = b"".join(b"%08d abcdefghijklmnopqrstuvwxyz0123456789\r\n" % i
                   for i in range((30 << 20) // 47 + 100))
    msg = message("30MiB", big)
    assert len(msg) > 30 << 20 and len(msg) < limit
    with smtplib.SMTP("127.0.0.1", port(cluster, "SMTP_PORT"), timeout=120) as s:
        s.ehlo("client.test")
        s.sendmail("big@remote.test", [users["alice"]], msg)
    got = bodies(cluster, users["alice"])
    assert len(got) == 1 and strip_trace(got[0]) == msg

    # Over the limit without SIZE=: read to the end, then 552.
    over = message("over", b"x" * 998 + b"\r\n") * 1
    over = over + (b"y" * 998 + b"\r\n") * ((limit // 1000) + 10)
    r = raw_session(cluster)
    assert r.cmd(b"MAIL FROM:<big@remote.test>")[0] == 250
    assert r.cmd(b"RCPT TO:<" + users["bob"].encode() + b">")[0] == 250
    assert r.cmd(b"DATA")[0] == 354
    r.send(over + b".\r\n")
    code, text = r.reply()
    assert code == 552 and "5.3.4" in text
    assert r.cmd(b"NOOP")[0] == 250  # still in sync
    r.close()
    assert bodies(cluster, users["bob"]) == []


# ------------------------------------------------------------------ bad input

def test_malformed_commands(mail):
    cluster, dom, users = mail
    r = raw_session(cluster)
    cases = [
        (b"MAIL FROM:<unterminated@remote.test", 501),
        (b"MAIL FROM:<a@b> FOO=BAR", 555),
        (b"RCPT TO:<x@y>", 503),          # no MAIL yet
        (b"FROB", 500),
        (b"MAIL FROM:<a\x00b@remote.test>", 500),
    ]
    for line, want in cases:
        code, text = r.cmd(line)
        assert code == want, (line, code, text)
    r.close()
    r = raw_session(cluster)
    code, text = r.cmd(b"NOOP " + b"x" * 5000)
    assert code == 500 and "5.5.6" in text
    assert r.cmd(b"NOOP")[0] == 250  # resynchronised at the next line
    r.close()


def test_too_many_errors_disconnects(mail):
    cluster, dom, users = mail
    r = raw_session(cluster)
    codes = []
    for _ in range(30):
        try:
            codes.append(r.cmd(b"FROB")[0])
        except (EOFError, ConnectionResetError, BrokenPipeError):
            break
    assert 421 in codes, codes
    assert r.closed()


def test_bare_lf_in_data_refused_and_nothing_stored(mail):
    """SMTP smuggling: "\\n.\\n" must not end DATA, and a message with bare
    LFs is refused as a whole."""
    cluster, dom, users = mail
    r = raw_session(cluster)
    assert r.cmd(b"MAIL FROM:<s@remote.test>")[0] == 250
    assert r.cmd(b"RCPT TO:<" + users["alice"].encode() + b">")[0] == 250
    assert r.cmd(b"DATA")[0] == 354
    smuggled = (b"Subject: first\r\n\r\nbody\n.\nMAIL FROM:<evil@remote.test>\n"
                b"RCPT TO:<" + users["bob"].encode() + b">\nDATA\nevil\n.\n")
    r.send(smuggled + b"\r\n.\r\n")
    code, text = r.reply()
    assert 500 <= code < 600, text
    assert r.cmd(b"NOOP")[0] == 250
    r.close()
    assert bodies(cluster, users["alice"]) == []
    assert bodies(cluster, users["bob"]) == []


def test_slow_client_still_served(mail):
    """A client that trickles a command byte by byte is served (partial
    input is kept, not misparsed)."""
    cluster, dom, users = mail
    r = raw_session(cluster)
    for b in b"NOOP\r\n":
        r.send(bytes([b]))
        time.sleep(0.05)
    assert r.reply()[0] == 250
    r.close()


# ------------------------------------------------------------------ submission

def scram_client(user, password, sock_cmd):
    """SCRAM-SHA-256 (RFC 5802/7677) client over SMTP AUTH; sock_cmd sends
    a line and returns (code, text)."""
    cnonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n={user},r={cnonce}"
    code, text = sock_cmd(b"AUTH SCRAM-SHA-256 " +
                          base64.b64encode(("n,," + first_bare).encode()))
    assert code == 334, text
    server_first = base64.b64decode(text[4:]).decode()
    attrs = dict(a.split("=", 1) for a in server_first.split(","))
    assert attrs["r"].startswith(cnonce)
    salt = base64.b64decode(attrs["s"])
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    final_wo_proof = f"c=biws,r={attrs['r']}"
    auth_msg = f"{first_bare},{server_first},{final_wo_proof}".encode()
    sig = hmac.new(stored_key, auth_msg, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, sig))
    code, text = sock_cmd(base64.b64encode(
        f"{final_wo_proof},p={base64.b64encode(proof).decode()}".encode()))
    if code != 334:
        return code, text
    server_final = base64.b64decode(text[4:]).decode()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    want = base64.b64encode(hmac.new(server_key, auth_msg, "sha256").digest()).decode()
    assert server_final == f"v={want}", "server signature does not verify"
    return sock_cmd(b"")


def test_submission_auth_plain_login_scram(mail):
    cluster, dom, users = mail
    # AUTH PLAIN over implicit TLS (465 role)
    with smtplib.SMTP_SSL("127.0.0.1", port(cluster, "SUBMISSIONS_PORT"),
                          context=tls_ctx(cluster), timeout=30) as s:
        s.ehlo("client.test")
        assert "PLAIN" in s.esmtp_features["auth"].upper()
        s.login(users["alice"], PASSWORD, initial_response_ok=True)
        s.sendmail(users["alice"], [users["bob"]], message("plain-auth"))
    # AUTH LOGIN after STARTTLS (587 role); PLAIN/LOGIN not offered before
    with smtplib.SMTP("127.0.0.1", port(cluster, "SUBMISSION_PORT"), timeout=30) as s:
        s.ehlo("client.test")
        auth_before = s.esmtp_features.get("auth", "").upper()
        assert "PLAIN" not in auth_before and "LOGIN" not in auth_before
        assert "SCRAM-SHA-256" in auth_before
        s.starttls(context=tls_ctx(cluster))
        s.ehlo("client.test")
        s.user, s.password = users["alice"], PASSWORD
        code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        assert code == 235
        s.sendmail(users["alice"], [users["bob"]], message("login-auth"))
    # SCRAM-SHA-256 (offered also before TLS: no password on the wire)
    r = raw_session(cluster, "SUBMISSION_PORT")
    code, text = scram_client(users["alice"], PASSWORD, r.cmd)
    assert code == 235, text
    assert r.cmd(b"MAIL FROM:<" + users["alice"].encode() + b">")[0] == 250
    r.close()
    assert len(bodies(cluster, users["bob"])) == 2


def test_submission_refusals(mail):
    cluster, dom, users = mail
    r = raw_session(cluster, "SUBMISSION_PORT")
    # no AUTH yet
    code, text = r.cmd(b"MAIL FROM:<" + users["alice"].encode() + b">")
    assert code == 530 and "5.7.0" in text
    # plaintext mechanisms need TLS
    code, text = r.cmd(b"AUTH PLAIN " + base64.b64encode(
        b"\0" + users["alice"].encode() + b"\0" + PASSWORD.encode()))
    assert code == 538, text
    # wrong password (SCRAM, allowed before TLS)
    code, text = scram_client(users["alice"], "wrong", r.cmd)
    assert code == 535 and "5.7.8" in text
    code, text = scram_client(f"ghost@{dom}", "wrong", r.cmd)
    assert code == 535 and "5.7.8" in text
    code, text = scram_client(users["alice"], PASSWORD, r.cmd)
    assert code == 235, text
    # forged sender
    code, text = r.cmd(b"MAIL FROM:<" + users["bob"].encode() + b">")
    assert code == 553 and "5.7.1" in text
    code, text = r.cmd(b"MAIL FROM:<ceo@bigbank.test>")
    assert code == 553
    r.close()


def test_submission_remote_recipient_is_queued(mail):
    cluster, dom, users = mail
    with smtplib.SMTP_SSL("127.0.0.1", port(cluster, "SUBMISSIONS_PORT"),
                          context=tls_ctx(cluster), timeout=30) as s:
        s.login(users["alice"], PASSWORD)
        s.sendmail(users["alice"], ["friend@far-away.test", users["bob"]],
                   message("out"))
    assert len(bodies(cluster, users["bob"])) == 1
    out = ok(cluster, "queue", "list")
    ids = [ln.split()[0] for ln in out.splitlines() if ln.strip()]
    assert len(ids) == 1, out
    shown = ok(cluster, "queue", "show", ids[0])
    assert "friend@far-away.test" in shown, shown
    assert users["bob"] not in shown, shown  # local copies are not queued


def test_alias_delivery(mail):
    cluster, dom, users = mail
    alias = f"team@{dom}"
    ok(cluster, "alias", "add", alias, users["alice"], users["bob"])
    msg = message("alias")
    with smtplib.SMTP("127.0.0.1", port(cluster, "SMTP_PORT"), timeout=30) as s:
        s.sendmail("x@remote.test", [alias, users["alice"]], msg)
    # alice is named twice (directly and through the alias): one copy
    assert [strip_trace(b) for b in bodies(cluster, users["alice"])] == [msg]
    assert [strip_trace(b) for b in bodies(cluster, users["bob"])] == [msg]
    # an alias of alice may be used as her sender address
    ok(cluster, "alias", "add", f"a.l@{dom}", users["alice"])
    with smtplib.SMTP_SSL("127.0.0.1", port(cluster, "SUBMISSIONS_PORT"),
                          context=tls_ctx(cluster), timeout=30) as s:
        s.login(users["alice"], PASSWORD)
        s.sendmail(f"a.l@{dom}", [users["bob"]], message("from alias"))
    assert len(bodies(cluster, users["bob"])) == 2


def test_swaks(mail):
    cluster, dom, users = mail
    swaks = shutil.which("swaks")
    assert swaks, "swaks is not installed (./dev installs it)"
    common = [swaks, "--server", "127.0.0.1", "--helo", "swaks.test",
              "--timeout", "30", "--hide-all"]
    r = subprocess.run(common + ["--port", str(port(cluster, "SMTP_PORT")),
                                 "--from", "s@remote.test", "--to", users["alice"],
                                 "--tls", "--tls-verify", "--tls-ca-path",
                                 cluster.env["TLS_CA"], "--tls-sni", "localhost",
                                 "--body", "swaks tls"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(common + ["--port", str(port(cluster, "SUBMISSION_PORT")),
                                 "--from", users["bob"], "--to", users["alice"],
                                 "--tls", "--auth", "PLAIN", "--auth-user",
                                 users["bob"], "--auth-password", PASSWORD,
                                 "--body", "swaks auth"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(common + ["--port", str(port(cluster, "SMTP_PORT")),
                                 "--from", "s@remote.test",
                                 "--to", "nobody@" + dom],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0  # 550 at RCPT
    got = bodies(cluster, users["alice"])
    assert len(got) == 2
    assert any(b"swaks tls" in b for b in got) and any(b"swaks auth" in b for b in got)

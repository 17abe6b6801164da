"""Real IMAP clients against merpati-frontend: mbsync (isync) syncing a
1,000-message mailbox both ways with a Maildir, and curl's imap:// and
imaps:// (list, fetch, search, upload, STARTTLS).

What the clients did is checked through the server (a raw IMAP session,
see test_imap.py) and on disk, never through the clients' own reports.
"""
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import _deployment
from mailtest import PASSWORD, add_user, bulk_message, run_curl, tool
from test_imap import append, fl, q, select, session, status

BULK = 1000


@pytest.fixture(scope="module")
def clients_cluster(tmp_path_factory):
    """One deployment for the client tests (default frontend flags)."""
    yield from _deployment(tmp_path_factory.mktemp("imapcl") / "c", 1)


# ================================================================ mbsync

def fill(c, mbox, count, batch=100):
    """APPEND count messages over one session, pipelined with LITERAL+
    (RFC 7888), batch commands per write."""
    done = 0
    while done < count:
        k = min(batch, count - done)
        out = b""
        tags = []
        for i in range(done, done + k):
            tag = c.next_tag()
            tags.append(tag)
            m = bulk_message(i)
            out += tag + b" APPEND " + q(mbox).encode() + b" {%d+}\r\n" % len(m) + m + b"\r\n"
        c.send(out)
        for tag in tags:
            r = c.collect(tag)
            assert r.status == "OK", r
        done += k


def mbsyncrc(path, cluster, user, maildir, port, ssl_type, mechs, patterns):
    maildir.mkdir(parents=True, exist_ok=True)
    cert = f"CertificateFile {cluster.tls_ca}\n" if ssl_type != "None" else ""
    path.write_text(
        f"IMAPAccount merpati\n"
        f"Host localhost\n"
        f"Port {port}\n"
        f"User {user}\n"
        f'Pass "{PASSWORD}"\n'
        f"SSLType {ssl_type}\n"
        f"{cert}"
        f"SystemCertificates no\n"
        f"AuthMechs {mechs}\n"
        f"Timeout 60\n\n"
        f"IMAPStore far\nAccount merpati\n\n"
        f"MaildirStore near\nPath {maildir}/\nInbox {maildir}/INBOX\n"
        f"SubFolders Verbatim\n\n"
        f"Channel sync\nFar :far:\nNear :near:\nPatterns {patterns}\n"
        f"Create Near\nExpunge Both\nSyncState *\nSync All\n")


def mbsync(rc):
    r = subprocess.run([tool("mbsync"), "-c", str(rc), "sync"],
                       capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"mbsync exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def maildir_index(folder):
    """{subject: (path, maildir flags)} of a Maildir folder."""
    out = {}
    for sub in ("cur", "new"):
        for p in (folder / sub).iterdir():
            data = p.read_bytes()
            m = re.search(rb"^Subject: (.*?)\r?$", data, re.M)
            assert m, p
            subj = m.group(1).decode()
            assert subj not in out, f"{subj} twice in the maildir"
            flags = p.name.split(":2,", 1)[1] if ":2," in p.name else ""
            out[subj] = (p, set(flags))
    return out


def set_maildir_flags(path, flags):
    """Rename a Maildir message to carry flags (moving it to cur/)."""
    base = path.name.split(":2,", 1)[0]
    new = path.parent.parent / "cur" / f"{base}:2,{''.join(sorted(flags))}"
    path.rename(new)


def imap_index(c, mbox):
    """{subject: set of flags} of a mailbox through IMAP."""
    select(c, mbox)
    r = c.ok("FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (Subject)])")
    out = {}
    for v in r.fetches().values():
        hdr = v["BODY[HEADER.FIELDS (SUBJECT)]"]
        subj = re.match(rb"Subject: (.*?)\r\n", hdr).group(1).decode()
        assert subj not in out, subj
        out[subj] = fl(v["FLAGS"])
    c.ok("UNSELECT")
    return out


def test_mbsync_two_way_1000(clients_cluster, tmp_path):
    c0 = clients_cluster
    user = add_user(c0)
    c = session(c0, user)
    try:
        c.ok('CREATE "Bulk"')
        t = time.monotonic()
        fill(c, "Bulk", BULK)
        fill_s = time.monotonic() - t
        assert status(c, "Bulk")["MESSAGES"] == BULK
    finally:
        c.close()

    maildir = tmp_path / "mail"
    rc = tmp_path / "mbsyncrc"
    mbsyncrc(rc, c0, user, maildir, c0.imaps_port(), "IMAPS", "LOGIN", "Bulk")
    mbsync(rc)
    folder = maildir / "Bulk"
    near = maildir_index(folder)
    assert len(near) == BULK
    for n in (0, 1, 499, BULK - 1):
        p, flags = near[f"bulk {n:04d}"]
        # mbsync stores LF line ends and adds its X-TUID: header
        got = re.sub(rb"(?m)^X-TUID: .*\n", b"", p.read_bytes().replace(b"\r\n", b"\n"))
        assert got == bulk_message(n).replace(b"\r\n", b"\n"), p
        assert flags == set()

    # Changes on the server ...
    c = session(c0, user)
    try:
        c.ok('SELECT "Bulk"')
        c.ok("STORE 1:10 +FLAGS.SILENT (\\Flagged)")      # bulk 0000-0009
        c.ok("STORE 11:20 +FLAGS.SILENT (\\Seen)")        # bulk 0010-0019
        c.ok("STORE 21:30 +FLAGS.SILENT (\\Deleted)")     # bulk 0020-0029
        c.ok("EXPUNGE")
    finally:
        c.close()
    # ... and in the Maildir.
    near_new = "near side new"
    for n in range(30, 40):
        set_maildir_flags(near[f"bulk {n:04d}"][0], {"S"})
    for n in range(40, 50):
        near[f"bulk {n:04d}"][0].unlink()
    for n in range(50, 55):
        set_maildir_flags(near[f"bulk {n:04d}"][0], {"F"})
    newmsg = (f"From: me@example.org\r\nSubject: {near_new}\r\n"
              f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n\r\nwritten locally\r\n")
    (folder / "new" / f"{int(time.time())}.local.{os.getpid()}").write_bytes(newmsg.encode())

    mbsync(rc)

    want = {f"bulk {n:04d}": set() for n in range(BULK) if not 20 <= n < 50}
    for n in range(0, 10):
        want[f"bulk {n:04d}"] = {"\\FLAGGED"}
    for n in list(range(10, 20)) + list(range(30, 40)):
        want[f"bulk {n:04d}"] = {"\\SEEN"}
    for n in range(50, 55):
        want[f"bulk {n:04d}"] = {"\\FLAGGED"}
    want[near_new] = set()
    maildir_flag = {"\\FLAGGED": "F", "\\SEEN": "S"}

    c = session(c0, user)
    try:
        far = imap_index(c, "Bulk")
        assert set(far) == set(want), (set(far) ^ set(want))
        bad = {s: (far[s], w) for s, w in want.items() if far[s] != w}
        assert not bad, f"server flags differ: {dict(list(bad.items())[:10])}"
        # the uploaded message arrived whole (mbsync used APPEND)
        select(c, "Bulk")
        r = c.ok("SEARCH SUBJECT ", q(near_new))
        seq = int(r.kind("SEARCH")[0].split()[1])
        body = c.ok(f"FETCH {seq} BODY.PEEK[TEXT]").fetches()[seq]["BODY[TEXT]"]
        assert body.replace(b"\r\n", b"\n") == b"written locally\n"
    finally:
        c.close()
    near = maildir_index(folder)
    assert set(near) == set(want), (set(near) ^ set(want))
    bad = {s: (near[s][1], w) for s, w in want.items()
           if near[s][1] != {maildir_flag[f] for f in w}}
    assert not bad, f"maildir flags differ: {dict(list(bad.items())[:10])}"

    # A third run finds nothing to do and changes nothing.
    mbsync(rc)
    assert {s: v[1] for s, v in maildir_index(folder).items()} == \
        {s: v[1] for s, v in near.items()}
    c = session(c0, user)
    try:
        assert imap_index(c, "Bulk") == far
    finally:
        c.close()
    print(f"filled {BULK} messages in {fill_s:.1f} s")


def test_mbsync_scram_plaintext_port(clients_cluster, tmp_path):
    """mbsync (Cyrus SASL) logs in with SCRAM-SHA-256 on the plaintext
    port: no password crosses the wire, so no TLS is needed."""
    sasl_dirs = [Path("/usr/lib/x86_64-linux-gnu/sasl2"), Path("/usr/lib/sasl2")]
    # deploy/local/packages.txt installs it (libsasl2-modules)
    assert any(list(d.glob("libscram.so*")) for d in sasl_dirs if d.is_dir()), \
        "no Cyrus SASL SCRAM module (package libsasl2-modules)"
    c0 = clients_cluster
    user = add_user(c0)
    c = session(c0, user)
    try:
        msgs = [append(c, "INBOX", bulk_message(n))[1] for n in range(3)]
        assert len(msgs) == 3
    finally:
        c.close()
    maildir = tmp_path / "mail"
    rc = tmp_path / "mbsyncrc"
    mbsyncrc(rc, c0, user, maildir, c0.imap_port(), "None", "SCRAM-SHA-256", "INBOX")
    mbsync(rc)
    assert set(maildir_index(maildir / "INBOX")) == {f"bulk {n:04d}" for n in range(3)}


# ================================================================== curl

def curl(cluster, url, *args, user=None, password=PASSWORD, check=True):
    port = cluster.imaps_port() if url.startswith("imaps:") else cluster.imap_port()
    return run_curl(cluster, port, url, *args, user=user, password=password, check=check)


def test_curl_list_fetch_search_upload(clients_cluster, tmp_path):
    c0 = clients_cluster
    user = add_user(c0)
    c = session(c0, user)
    try:
        c.ok('CREATE "Work"')
        msgs = [bulk_message(n) for n in range(3)]
        needle = (b"From: a@example.org\r\nSubject: find the needle\r\n\r\n"
                  b"a body with\r\n.a leading dot\r\n")
        msgs.insert(1, needle)
        uids = [append(c, "INBOX", m)[1] for m in msgs]
    finally:
        c.close()

    # LIST over implicit TLS (host name checked against the certificate)
    out = curl(c0, "imaps://localhost:PORT/", user=user).stdout
    names = set()
    for ln in out.split(b"\r\n"):
        m = re.match(rb'\* LIST \(.*?\) "/" "?([^"]*)"?$', ln)
        if m:
            names.add(m.group(1).decode())
    assert {"INBOX", "Work", "Sent", "Trash"} <= names, out

    # FETCH by UID and by index: exactly the stored bytes
    out = curl(c0, f"imaps://localhost:PORT/INBOX;UID={uids[1]}", user=user).stdout
    assert out == needle
    out = curl(c0, "imaps://localhost:PORT/INBOX;MAILINDEX=3", user=user).stdout
    assert out == msgs[2]
    out = curl(c0, f"imaps://localhost:PORT/INBOX;UID={uids[0]};SECTION=HEADER.FIELDS%20(SUBJECT)",
               user=user).stdout
    assert out == b"Subject: bulk 0000\r\n\r\n"

    # SEARCH
    out = curl(c0, "imaps://localhost:PORT/INBOX?SUBJECT%20needle", user=user).stdout
    assert re.search(rb"^\* SEARCH 2\r?$", out, re.M), out

    # A custom command
    out = curl(c0, "imaps://localhost:PORT/", "-X", "STATUS INBOX (MESSAGES)",
               user=user).stdout
    assert re.search(rb"\* STATUS \"?INBOX\"? \(MESSAGES 4\)", out), out

    # Upload (APPEND) into Work
    up = tmp_path / "up.eml"
    upload = (b"From: curl@example.org\r\nSubject: uploaded\r\n\r\nfrom curl\r\n")
    up.write_bytes(upload)
    curl(c0, "imaps://localhost:PORT/Work", "-T", str(up), user=user)
    c = session(c0, user, select="Work")
    try:
        assert c.ok("FETCH 1:* BODY.PEEK[]").fetches() == {1: {"BODY[]": upload}}
    finally:
        c.close()

    # STARTTLS on the plaintext port (--ssl-reqd: TLS or fail)
    out = curl(c0, "imap://localhost:PORT/Work;MAILINDEX=1", "--ssl-reqd", user=user).stdout
    assert out == upload

    # Refusals: wrong password; plaintext LOGIN with TLS off (LOGINDISABLED)
    r = curl(c0, "imaps://localhost:PORT/", user=user, password="wrong", check=False)
    assert r.returncode == 67, r        # CURLE_LOGIN_DENIED
    r = curl(c0, "imap://localhost:PORT/", "--login-options", "AUTH=PLAIN",
             user=user, check=False)
    assert r.returncode != 0 and b"INBOX" not in r.stdout, r

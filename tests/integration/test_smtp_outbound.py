"""Outbound delivery between two clusters on loopback, with a real dnsmasq
serving the MX records of both test domains.

Cluster A (./dev up, one frontend) submits mail for cluster B's domain; its
queue runner looks up B's MX (127.0.0.1) and delivers to B's frontend,
which this test runs itself on a fixed port so it can stop and start it.
Checks: delivery; B down → retried and delivered when B is back; B refusing
(550 unknown user) → the sender gets a DSN (multipart/report) in its INBOX.
"""
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import time
import uuid

import pytest

from conftest import Cluster, bin, dev
from test_smtp import PASSWORD, bodies, ok, strip_trace, tls_ctx

WAIT = 60  # seconds for a queued message to arrive


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_for(pred, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def dns(tmp_path):
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    port = free_port()
    domains = {}
    for name in ("a", "b"):
        domains[name] = f"{name}{uuid.uuid4().hex[:8]}.test"
    args = [dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null",
            "--no-resolv", "--no-hosts", "--listen-address=127.0.0.1",
            "--bind-interfaces", f"--port={port}", "--user=root",
            f"--pid-file={tmp_path}/dnsmasq.pid", "--local=/test/"]
    for d in domains.values():
        args += [f"--mx-host={d},mx.{d},10", f"--host-record=mx.{d},127.0.0.1"]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                         stderr=open(tmp_path / "dnsmasq.log", "w"))
    try:
        wait_for(lambda: p.poll() is not None or _udp_ready(port), "dnsmasq", 10)
        assert p.poll() is None, (tmp_path / "dnsmasq.log").read_text()
        yield f"127.0.0.1:{port}", domains
    finally:
        p.terminate()
        p.wait(timeout=10)


def _udp_ready(port):
    # A query for a name dnsmasq knows: any answer means it listens.
    q = (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
         b"\x07example\x04test\x00\x00\x01\x00\x01")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    try:
        s.sendto(q, ("127.0.0.1", port))
        s.recvfrom(512)
        return True
    except OSError:
        return False
    finally:
        s.close()


class FrontendB:
    """Cluster B's frontend, run by the test on a fixed SMTP port."""

    def __init__(self, cluster, port, logpath):
        self.argv = [bin("merpati-frontend"), "--etcd", cluster.etcd_endpoints,
                     "--cluster", cluster.cluster_name, "--hostname", "mx.b.test",
                     "--smtp_listen", f"127.0.0.1:{port}", "--queue_runners", "0",
                     "--shutdown_timeout", "2s"]
        self.port = port
        self.log = logpath
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "a"))
        wait_for(lambda: self._greets(), "B's frontend", 20)

    def _greets(self):
        assert self.proc.poll() is None, open(self.log).read()[-2000:]
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                return s.recv(4).startswith(b"220")
        except OSError:
            return False

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(timeout=20) == 0
        self.proc = None


@pytest.fixture
def two_clusters(tmp_path, dns):
    resolver, domains = dns
    b_port = free_port()
    fe_args = [f"--frontend-arg=--dns_server={resolver}",
               f"--frontend-arg=--outbound_port={b_port}",
               "--frontend-arg=--queue_poll=200ms",
               "--frontend-arg=--queue_retry_min=1s",
               "--frontend-arg=--queue_retry_max=2s",
               "--frontend-arg=--outbound_timeout=10s"]
    pa, pb = tmp_path / "A", tmp_path / "B"
    dev("up", "--dir", str(pa), "--nodes", "1", "--frontends", "1", *fe_args)
    try:
        dev("up", "--dir", str(pb), "--nodes", "1", "--frontends", "0")
        try:
            a, b = Cluster(pa), Cluster(pb)
            ok(a, "domain", "add", domains["a"])
            ok(b, "domain", "add", domains["b"])
            alice = f"alice@{domains['a']}"
            bob = f"bob@{domains['b']}"
            ok(a, "user", "add", alice, input=PASSWORD + "\n")
            ok(b, "user", "add", bob, input=PASSWORD + "\n")
            fb = FrontendB(b, b_port, tmp_path / "frontendB.log")
            fb.start()
            try:
                yield a, b, fb, alice, bob, domains
            finally:
                fb.stop()
        finally:
            dev("down", "--dir", str(pb))
    finally:
        dev("down", "--dir", str(pa))


def submit(a, sender, rcpts, msg):
    with smtplib.SMTP_SSL("127.0.0.1", int(a.env["SUBMISSIONS_PORT"]),
                          context=tls_ctx(a), timeout=30) as s:
        s.login(sender, PASSWORD)
        s.sendmail(sender, rcpts, msg)


def test_delivery_retry_and_bounce(two_clusters):
    a, b, fb, alice, bob, domains = two_clusters

    # 1. delivered across clusters
    msg1 = b"Subject: across\r\nMessage-ID: <1@a.test>\r\n\r\nfrom A to B\r\n"
    submit(a, alice, [bob], msg1)
    got = wait_for(lambda: bodies(b, bob), "the message on B")
    assert [strip_trace(x) for x in got] == [msg1]
    assert f"Return-Path: <{alice}>".encode() in got[0]
    wait_for(lambda: "pending" not in ok(a, "queue", "list") or
             ok(a, "queue", "list").strip() == "", "A's queue to empty")

    # 2. B down: the message waits in A's queue and arrives when B is back
    fb.stop()
    msg2 = b"Subject: retried\r\nMessage-ID: <2@a.test>\r\n\r\nwhile B was down\r\n"
    submit(a, alice, [bob], msg2)
    listing = wait_for(lambda: re.search(r"attempts=[1-9]", ok(a, "queue", "list")),
                       "a failed attempt to B")
    assert listing
    fb.start()
    got = wait_for(lambda: [x for x in bodies(b, bob) if b"retried" in x],
                   "the retried message on B")
    assert [strip_trace(x) for x in got] == [msg2]

    # 3. B refuses an unknown user with 550: alice gets a DSN
    ghost = f"ghost@{domains['b']}"
    msg3 = b"Subject: doomed\r\nMessage-ID: <3@a.test>\r\n\r\nnobody reads this\r\n"
    submit(a, alice, [ghost], msg3)
    dsn = wait_for(lambda: [x for x in bodies(a, alice) if b"multipart/report" in x],
                   "the DSN in alice's INBOX")
    assert len(dsn) == 1
    d = dsn[0]
    assert b"report-type=delivery-status" in d
    assert f"Final-Recipient: rfc822; {ghost}".encode() in d
    assert b"Action: failed" in d
    assert b"Status: 5." in d
    assert b"Diagnostic-Code: smtp; 550" in d
    assert b"Subject: doomed" in d  # the original's headers come back
    assert b"Return-Path: <>" in d  # a DSN has the null sender
    # nothing for ghost was stored on B, and the queue is empty again
    wait_for(lambda: ok(a, "queue", "list").strip() == "", "A's queue to empty")

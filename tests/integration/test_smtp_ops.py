"""Operating a frontend: idle timeout, graceful SIGTERM in the middle of a
transaction, certificate reload on SIGHUP, connection limits. Each test runs
its own merpati-frontend (as a child, with the flags it needs) against the
deployment of the `cluster` fixture."""
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import bin
from test_smtp import PASSWORD, Raw, bodies, ok, strip_trace, unique_domain

SOURCE = Path(__file__).resolve().parents[2]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def make_ca(directory, *names):
    out = subprocess.run([sys.executable, str(SOURCE / "deploy/local/testca.py"),
                          str(directory), *names], capture_output=True, text=True,
                         check=True).stdout
    return dict(line.split("=", 1) for line in out.split())


class Frontend:
    def __init__(self, cluster, tmp, *flags, tls=None):
        self.smtp = free_port()
        self.smtps = free_port()
        self.log = tmp / f"fe-{self.smtp}.log"
        argv = [bin("merpati-frontend"), "--etcd", cluster.etcd_endpoints,
                "--cluster", cluster.cluster_name, "--hostname", "localhost",
                "--smtp_listen", f"127.0.0.1:{self.smtp}", "--queue_runners", "0",
                "--dns_server", "127.0.0.1:53"]
        if tls is not None:
            argv += ["--tls_cert", tls["CERT"], "--tls_key", tls["KEY"],
                     "--submissions_listen", f"127.0.0.1:{self.smtps}"]
        self.proc = subprocess.Popen(argv + list(flags), stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "w"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            if "event=fe_ready" in self.log.read_text():
                return
            time.sleep(0.1)
        raise AssertionError("frontend not ready\n" + self.log.read_text()[-2000:])

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def user(cluster):
    dom = unique_domain()
    ok(cluster, "domain", "add", dom)
    u = f"carol@{dom}"
    ok(cluster, "user", "add", u, input=PASSWORD + "\n")
    return u


def greet(port):
    r = Raw(port)
    assert r.reply()[0] == 220
    assert r.cmd(b"EHLO ops.test")[0] == 250
    return r


def test_idle_timeout(cluster, tmp_path):
    fe = Frontend(cluster, tmp_path, "--idle_timeout", "1s")
    try:
        r = greet(fe.smtp)
        time.sleep(2.5)
        code, text = r.reply()
        assert code == 421 and "4.4.2" in text
        assert r.closed()
    finally:
        assert fe.stop() == 0


def test_sigterm_finishes_the_transaction(cluster, tmp_path, user):
    fe = Frontend(cluster, tmp_path, "--shutdown_timeout", "20s")
    try:
        idle = greet(fe.smtp)
        r = greet(fe.smtp)
        assert r.cmd(b"MAIL FROM:<x@remote.test>")[0] == 250
        assert r.cmd(b"RCPT TO:<" + user.encode() + b">")[0] == 250
        assert r.cmd(b"DATA")[0] == 354
        r.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
        fe.proc.send_signal(signal.SIGTERM)
        # The idle session is told at once; the busy one may finish.
        code, text = idle.reply()
        assert code == 421, text
        time.sleep(0.5)
        assert fe.proc.poll() is None, "exited with a transaction in flight"
        r.send(b"second half\r\n.\r\n")
        code, text = r.reply()
        assert code == 250, text
        code, text = r.reply()
        assert code == 421, text
        assert fe.proc.wait(timeout=20) == 0
        # no new connections after the stop began
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", fe.smtp), timeout=2).recv(1)
    finally:
        fe.stop()
    got = bodies(cluster, user)
    assert [strip_trace(b) for b in got] == \
        [b"Subject: in flight\r\n\r\nfirst half\r\nsecond half\r\n"]


def test_sighup_reloads_certificates(cluster, tmp_path):
    first = make_ca(tmp_path / "ca1", "localhost")
    second = make_ca(tmp_path / "ca2", "localhost")
    live = {"CERT": str(tmp_path / "cert.pem"), "KEY": str(tmp_path / "key.pem")}
    Path(live["CERT"]).write_bytes(Path(first["CERT"]).read_bytes())
    Path(live["KEY"]).write_bytes(Path(first["KEY"]).read_bytes())
    fe = Frontend(cluster, tmp_path, tls=live)

    def handshake(ca):
        ctx = ssl.create_default_context(cafile=ca)
        with smtplib.SMTP_SSL("127.0.0.1", fe.smtps, context=ctx, timeout=10) as s:
            return s.noop()[0]

    try:
        assert handshake(first["CA"]) == 250
        with pytest.raises(ssl.SSLError):
            handshake(second["CA"])
        # An open session survives the reload.
        ctx = ssl.create_default_context(cafile=first["CA"])
        old = smtplib.SMTP_SSL("127.0.0.1", fe.smtps, context=ctx, timeout=10)
        Path(live["CERT"]).write_bytes(Path(second["CERT"]).read_bytes())
        Path(live["KEY"]).write_bytes(Path(second["KEY"]).read_bytes())
        fe.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "event=fe_tls_reloaded" not in fe.log.read_text():
            assert time.monotonic() < deadline, fe.log.read_text()[-2000:]
            time.sleep(0.1)
        assert handshake(second["CA"]) == 250
        with pytest.raises(ssl.SSLError):
            handshake(first["CA"])
        assert old.noop()[0] == 250
        old.quit()
        # A broken key is refused and the working set kept.
        Path(live["KEY"]).write_bytes(Path(first["KEY"]).read_bytes())
        fe.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "event=fe_tls_reload_failed" not in fe.log.read_text():
            assert time.monotonic() < deadline, fe.log.read_text()[-2000:]
            time.sleep(0.1)
        assert handshake(second["CA"]) == 250
    finally:
        assert fe.stop() == 0


def test_connection_limit_per_ip(cluster, tmp_path):
    fe = Frontend(cluster, tmp_path, "--max_connections_per_ip", "3")
    try:
        held = [greet(fe.smtp) for _ in range(3)]
        s = socket.create_connection(("127.0.0.1", fe.smtp), timeout=10)
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(512)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"421"), data
        s.close()
        held[0].cmd(b"QUIT")
        held[0].closed()
        time.sleep(0.2)
        r = greet(fe.smtp)  # a slot is free again
        r.close()
        for h in held[1:]:
            h.close()
    finally:
        assert fe.stop() == 0


def test_sent_copy_and_plaintext_auth_setting(cluster, tmp_path, user):
    """--sent_copy stores the submitted message in the sender's Sent too;
    --allow_plaintext_auth offers PLAIN without TLS (test setups only)."""
    port = free_port()
    fe = Frontend(cluster, tmp_path, "--sent_copy", "true", "--allow_plaintext_auth",
                  "true", "--submission_listen", f"127.0.0.1:{port}")
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.ehlo("ops.test")
            assert "PLAIN" in s.esmtp_features["auth"]
            s.login(user, PASSWORD)
            s.sendmail(user, [user], b"Subject: to myself\r\n\r\nhi\r\n")
    finally:
        assert fe.stop() == 0
    assert [strip_trace(b) for b in bodies(cluster, user)] == \
        [b"Subject: to myself\r\n\r\nhi\r\n"]
    assert [strip_trace(b) for b in bodies(cluster, user, "Sent")] == \
        [b"Subject: to myself\r\n\r\nhi\r\n"]

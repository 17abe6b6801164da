"""Tests of the frontends in the local deployment (./dev up --frontends,
restart --frontend, status, down; the frontend helpers of conftest.py): a
frontend greets on its SMTP port and offers STARTTLS, its submissions port
speaks implicit TLS with a certificate for "localhost" that TLS_CA verifies,
SIGTERM makes it exit 0, and a restarted frontend serves on the same ports.

The SMTP protocol itself is tested in test_smtp.py.
"""

import os
import shlex
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (BUILD_DIR, SOURCE_DIR, STOP_TIMEOUT, Cluster, _gone,
                      bin, dev, read_env)

READY_TIMEOUT = 30.0   # seconds for a frontend we start to greet


def cmdline(pid):
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [a.decode() for a in raw.split(b"\0")[:-1]]


def flag(argv, name):
    return argv[argv.index(name) + 1]


def greeting(port, timeout=10):
    """The first reply of 127.0.0.1:port, as text."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        return read_reply(s)


def read_reply(sock):
    """One SMTP reply (every line, up to the one without "-" after the
    code); raises EOFError if the peer closes first."""
    buf = b""
    while True:
        lines = buf.split(b"\r\n")
        for i, line in enumerate(lines[:-1]):
            if line[3:4] != b"-":
                return b"\r\n".join(lines[:i + 1]).decode(errors="replace")
        assert len(buf) < 65536, f"reply too long: {buf[:200]!r}"
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError(f"closed after {buf!r}")
        buf += chunk


def dev_status(path):
    """./dev status (exit 1 when something is stopped: not an error here)."""
    return subprocess.run([str(SOURCE_DIR / "dev"), "status", "--dir",
                           str(path)], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)


def test_env_and_command_line(cluster):
    env = read_env(cluster.dir / "cluster.env")
    assert int(env["SMTP_PORT"]) == cluster.smtp_port(0)
    assert int(env["SUBMISSION_PORT"]) == cluster.submission_port(0)
    assert int(env["SUBMISSIONS_PORT"]) == cluster.submissions_port(0)
    ports = {cluster.smtp_port(), cluster.submission_port(),
             cluster.submissions_port()}
    assert len(ports) == 3, env
    node_ports = {int(p) for p in env["NODE_PORTS"].split()}
    assert not ports & (node_ports | {int(env["ETCD_PORT"])}), env
    assert len(cluster.frontend_pids) == 1
    assert env["FRONTEND_LOGS"] == str(cluster.dir / "frontend0" /
                                       "frontend.log")
    assert Path(cluster.tls_ca) == cluster.dir / "tls" / "ca.pem"
    assert "BEGIN CERTIFICATE" in Path(cluster.tls_ca).read_text()

    pid = cluster.frontend_pid(0)
    argv = shlex.split((cluster.dir / "frontend0" / "cmd").read_text())
    assert cmdline(pid) == argv
    assert argv[0] == bin("merpati-frontend")
    assert flag(argv, "--etcd") == cluster.etcd_endpoints
    assert flag(argv, "--cluster") == cluster.cluster_name
    assert flag(argv, "--hostname") == "localhost"
    assert flag(argv, "--smtp_listen") == f"127.0.0.1:{cluster.smtp_port()}"
    assert flag(argv, "--submissions_listen") == \
        f"127.0.0.1:{cluster.submissions_port()}"
    assert "event=fe_ready" in cluster.frontend_log(0)

    r = dev_status(cluster.dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"frontend0  smtp=127.0.0.1:{cluster.smtp_port()}" in r.stdout
    assert f"running  pid {pid}" in r.stdout


def test_smtp_greets_and_offers_starttls(cluster):
    text = greeting(cluster.smtp_port())
    assert text.startswith("220 "), text
    assert "localhost" in text, text   # --hostname
    with smtplib.SMTP("127.0.0.1", cluster.smtp_port(), timeout=30) as s:
        code, _ = s.ehlo("client.test")
        assert code == 250
        assert s.has_extn("starttls"), s.esmtp_features
        # The STARTTLS certificate verifies too.
        s.starttls(context=ssl.create_default_context(cafile=cluster.tls_ca))
        code, _ = s.ehlo("client.test")
        assert code == 250
        assert not s.has_extn("starttls")


def test_submissions_implicit_tls(cluster):
    ctx = ssl.create_default_context(cafile=cluster.tls_ca)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    port = cluster.submissions_port()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            names = [v for k, v in s.getpeercert()["subjectAltName"]
                     if k == "DNS"]
            assert "localhost" in names
            text = read_reply(s)
            assert text.startswith("220 "), text
    # Without the test CA the certificate does not verify: the check above
    # is a real one.
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            bare.wrap_socket(raw, server_hostname="localhost")
    # Nor for another name.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(raw, server_hostname="mail.other.test")


def test_sigterm_exits_zero(cluster):
    # The frontend ./dev started is not our child, so its exit status is
    # not ours to see: stop it, run its recorded command line as our own
    # child on the same ports, and SIGTERM that one while a client idles.
    old = cluster.frontend_pid(0)
    cluster.stop_frontend(0)
    assert "event=fe_stopped rc=0" in cluster.frontend_log(0)
    argv = shlex.split((cluster.dir / "frontend0" / "cmd").read_text())
    log = cluster.dir / "frontend0" / "own-child.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while "event=fe_ready" not in log.read_text(errors="replace"):
            assert proc.poll() is None, \
                f"exited {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        client = socket.create_connection(("127.0.0.1", cluster.smtp_port()),
                                          timeout=30)
        with client:
            assert read_reply(client).startswith("220 ")
            client.sendall(b"EHLO idle.test\r\n")
            assert read_reply(client).startswith("250")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=STOP_TIMEOUT) == 0, log.read_text()
            # The idle session did not outlive the process.
            try:
                while client.recv(4096):
                    pass
            except ConnectionResetError:
                pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert "event=fe_stopped rc=0" in log.read_text()

    # The recorded frontend comes back on its ports.
    cluster.start_frontend(0)
    assert cluster.frontend_pid(0) not in (old, proc.pid)
    assert greeting(cluster.smtp_port()).startswith("220 ")


def test_restart_frontend(cluster):
    ports = (cluster.smtp_port(), cluster.submission_port(),
             cluster.submissions_port())
    old = cluster.frontend_pid(0)
    cluster.restart_frontend(0)     # running: stopped, then started
    assert _gone(old)
    pid = cluster.frontend_pid(0)
    assert pid != old and not _gone(pid)
    assert (cluster.smtp_port(), cluster.submission_port(),
            cluster.submissions_port()) == ports
    assert greeting(cluster.smtp_port()).startswith("220 ")

    cluster.kill9_frontend(0)
    r = dev_status(cluster.dir)
    assert r.returncode == 1
    assert any(ln.startswith("frontend0 ") and ln.endswith("stopped")
               for ln in r.stdout.splitlines()), r.stdout
    # A plain restart brings back what is dead, frontends included.
    cluster.restart()
    assert cluster.frontend_pid(0) != pid
    assert greeting(cluster.smtp_port()).startswith("220 ")
    assert dev_status(cluster.dir).returncode == 0


def test_two_frontends(cluster_fe2):
    c = cluster_fe2
    assert len(c.addrs) == 3 and len(c.frontend_pids) == 2
    ports = [c.smtp_port(i) for i in range(2)] + \
        [c.submission_port(i) for i in range(2)] + \
        [c.submissions_port(i) for i in range(2)]
    assert len(set(ports)) == 6
    for i in range(2):
        assert greeting(c.smtp_port(i)).startswith("220 ")
        assert cmdline(c.frontend_pid(i)) == shlex.split(
            (c.dir / f"frontend{i}" / "cmd").read_text())
        assert "event=fe_ready" in c.frontend_log(i)
    # Stopping one leaves the other serving.
    c.stop_frontend(1)
    assert greeting(c.smtp_port(0)).startswith("220 ")
    c.start_frontend(1)
    assert greeting(c.smtp_port(1)).startswith("220 ")


def test_frontend_args_and_none(tmp_path):
    path = tmp_path / "fa"
    dev("up", "--dir", str(path), "--frontend-arg=--allow_plaintext_auth=true",
        "--frontend-arg", "--idle_timeout=30s")
    try:
        c = Cluster(path)
        argv = cmdline(c.frontend_pid(0))
        # Passed through in order, after the flags up sets.
        assert argv[-2:] == ["--allow_plaintext_auth=true",
                             "--idle_timeout=30s"], argv
        assert greeting(c.smtp_port()).startswith("220 ")
    finally:
        dev("down", "--dir", str(path))

    path = tmp_path / "none"
    dev("up", "--dir", str(path), "--frontends", "0")
    try:
        env = read_env(path / "cluster.env")
        assert env["FRONTEND_PIDS"] == ""
        assert "SMTP_PORT" not in env and "TLS_CA" not in env
        c = Cluster(path)
        assert c.frontend_pids == [] and c.tls_ca is None
        assert not (path / "frontend0").exists()
        c.ctl("node", "info")
    finally:
        r = dev("down", "--dir", str(path))
    assert "frontend" not in r.stderr


def test_option_errors(tmp_path):
    env = dict(os.environ, MERPATI_BUILD_DIR=str(BUILD_DIR))
    for args, want in (
            (("restart", "--node", "0", "--frontend", "0"), "exclude"),
            (("up", "--add-node", "--frontends", "2"), "--add-node"),
            (("up", "--frontends", "x"), "--frontends"),
            (("restart", "--frontends", "2"), "takes no --frontends")):
        r = subprocess.run([str(SOURCE_DIR / "dev"), args[0], "--dir",
                            str(tmp_path / "x"), *args[1:]],
                           capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL, env=env)
        assert r.returncode != 0 and want in r.stderr, (args, r.stderr)
    assert not (tmp_path / "x").exists()

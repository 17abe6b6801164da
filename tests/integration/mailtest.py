"""Helpers the IMAP and POP3 integration tests share (test_imap.py,
test_imap_clients.py, test_pop3.py): the test password, users made with
merpatictl, a TLS context that trusts the deployment's test CA, a raw
socket connection with buffered line reading, message builders, curl and
the client side of SCRAM-SHA-256. Nothing here asserts more than the
protocol itself requires; each test module keeps its own checks.
"""
import base64
import hashlib
import hmac
import os
import shutil
import socket
import ssl
import subprocess
import uuid

import pytest

PASSWORD = "correct horse battery staple"


# ================================================================ users

def unique_domain():
    return f"i{uuid.uuid4().hex[:10]}.test"


def add_user(cluster, name="alice", domain=None, ctl=None):
    """User name@domain with PASSWORD; without domain, a new one is made."""
    ctl = ctl or cluster.ctl
    dom = domain or unique_domain()
    if domain is None:
        ctl("domain", "add", dom)
    u = f"{name}@{dom}"
    ctl("user", "add", u, input=PASSWORD + "\n")
    return u


def tls_ctx(cluster):
    """Verifies the frontend's certificate for "localhost" with the test
    CA (hostname checking on)."""
    return ssl.create_default_context(cafile=cluster.tls_ca)


# ======================================================= raw connection

class LineConn:
    """A blocking connection to 127.0.0.1 (with TLS, the certificate is
    checked for "localhost") that reads CRLF-terminated lines through a
    buffer. Subclasses name the greeting they expect (GREETING, a prefix or
    a tuple of prefixes) and may bound how much a line may buffer
    (MAX_LINE)."""

    GREETING = b""
    MAX_LINE = None

    def __init__(self, port, tls=None, timeout=30):
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls is not None:
            s = tls.wrap_socket(s, server_hostname="localhost")
        self.sock = s
        self.buf = b""
        self.greeting = self.line()
        assert self.greeting.startswith(self.GREETING), self.greeting

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed; unread {self.buf!r}")
        self.buf += chunk

    def line(self):
        while b"\r\n" not in self.buf:
            if self.MAX_LINE is not None:
                assert len(self.buf) < self.MAX_LINE, \
                    f"no CRLF in {self.MAX_LINE} bytes of response"
            self._fill()
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln

    def read(self, n):
        while len(self.buf) < n:
            self._fill()
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def closed(self, timeout=10):
        """True once the server has closed the connection (data that still
        comes is kept in buf)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                d = self.sock.recv(65536)
                if not d:
                    return True
                self.buf += d
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            return True
        except socket.timeout:
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ============================================================= messages

def mk(subject, body="Hello.\r\n", extra="", frm="sender@example.org", date=None):
    date = date or "Mon, 7 Dec 2026 10:00:00 +0000"
    return (f"From: {frm}\r\nTo: rcpt@example.org\r\nSubject: {subject}\r\n"
            f"Date: {date}\r\nMessage-ID: <{uuid.uuid4().hex}@example.org>\r\n"
            f"{extra}\r\n{body}").encode()


def bulk_message(n):
    return (f"From: bulk@example.org\r\nTo: rcpt@example.org\r\n"
            f"Subject: bulk {n:04d}\r\nMessage-ID: <bulk-{n}@example.org>\r\n"
            f"Date: Mon, 7 Dec 2026 10:00:00 +0000\r\n\r\n"
            f"message number {n}\r\n").encode()


# ========================================================= client tools

def tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (deploy/local/packages.txt)")
    return path


def run_curl(cluster, port, url, *args, user=None, password=PASSWORD, check=True):
    """curl on url (its "PORT" replaced by port, "localhost" resolved to
    127.0.0.1, the test CA trusted) as user."""
    cmd = [tool("curl"), "-sS", "--max-time", "60", "--cacert", cluster.tls_ca,
           "--resolve", f"localhost:{port}:127.0.0.1", "--user", f"{user}:{password}",
           *args, url.replace("PORT", str(port))]
    r = subprocess.run(cmd, capture_output=True, timeout=90, stdin=subprocess.DEVNULL)
    if check:
        assert r.returncode == 0, f"curl {url} exited {r.returncode}: {r.stderr!r}"
    return r


# ======================================================== SCRAM-SHA-256

class Scram:
    """The client side of SCRAM-SHA-256 (RFC 5802/7677), messages base64
    encoded as SASL carries them."""

    def __init__(self, user, password):
        self.password = password
        self.cnonce = base64.b64encode(os.urandom(18)).decode()
        self.first_bare = f"n={user},r={self.cnonce}"

    def first(self):
        """client-first-message (no channel binding)."""
        return base64.b64encode(("n,," + self.first_bare).encode())

    def final(self, server_first_b64):
        """client-final-message with its proof, for the server-first-message;
        the server nonce must extend ours."""
        server_first = base64.b64decode(server_first_b64).decode()
        attrs = dict(a.split("=", 1) for a in server_first.split(","))
        assert attrs["r"].startswith(self.cnonce) and len(attrs["r"]) > len(self.cnonce), \
            server_first
        salt = base64.b64decode(attrs["s"])
        self.salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt,
                                          int(attrs["i"]))
        client_key = hmac.new(self.salted, b"Client Key", "sha256").digest()
        stored_key = hashlib.sha256(client_key).digest()
        final_wo_proof = f"c=biws,r={attrs['r']}"
        self.auth_msg = f"{self.first_bare},{server_first},{final_wo_proof}".encode()
        sig = hmac.new(stored_key, self.auth_msg, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, sig))
        return base64.b64encode(
            f"{final_wo_proof},p={base64.b64encode(proof).decode()}".encode())

    def verify(self, server_final_b64):
        """The server-final-message must carry the server signature (RFC
        5802 §5)."""
        server_final = base64.b64decode(server_final_b64).decode()
        server_key = hmac.new(self.salted, b"Server Key", "sha256").digest()
        want = base64.b64encode(hmac.new(server_key, self.auth_msg, "sha256").digest()).decode()
        assert server_final == f"v={want}", "server signature does not verify"

#!/usr/bin/env python3
"""testca.py: a throwaway certificate authority for local runs and tests.

    python3 deploy/local/testca.py DIR [NAME...]

makes, in DIR:

    ca.pem / ca.key      a test CA (EC P-256, 10 years)
    cert.pem / key.pem   a server certificate signed by it, subjectAltName
                         DNS:localhost, DNS:NAME..., IP:127.0.0.1, IP:::1
                         (CN = the first NAME, else localhost)

and prints the four paths as KEY=path lines (CA, CA_KEY, CERT, KEY), which a
shell can source. `./dev up` and the integration tests use it through
make_test_ca(directory, names).

It is idempotent: files that exist and are still good (not expiring within a
day, key matching its certificate, server certificate signed by this CA and
naming every requested name) are kept; anything else is made again. A new CA
forces a new server certificate. Concurrent callers on one DIR are serialised
by a lock file (DIR/.testca.lock). Files are written to a temporary name and
renamed, so a reader never sees half a file; keys are mode 0600.

Standard library only; shells out to the `openssl` command. Never use these
certificates for anything but tests: the CA key sits beside the certificates.
"""

import fcntl
import os
import re
import secrets
import subprocess
import sys
import tempfile

CA_DAYS = 3650
CERT_DAYS = 825
CHECKEND_SECONDS = 86400   # regenerate what expires within a day
OPENSSL_TIMEOUT = 60.0     # seconds for one openssl command

CA_CN = "Merpati test CA"

# Names go into an openssl config file; refusing anything else keeps that
# file free of injected sections.
NAME_RE = re.compile(r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")


class TestCAError(Exception):
    """An openssl command failed or a name was refused."""


def _openssl(args, stdin=None):
    """Runs `openssl ARGS`; returns (returncode, stdout, stderr) as text."""
    env = dict(os.environ)
    # The system openssl.cnf must not add extensions or policies of its own.
    env["OPENSSL_CONF"] = os.devnull
    try:
        p = subprocess.run(["openssl"] + list(args), input=stdin,
                           capture_output=True, text=True, env=env,
                           timeout=OPENSSL_TIMEOUT, check=False)
    except FileNotFoundError as e:
        raise TestCAError("the openssl command is not installed") from e
    except subprocess.TimeoutExpired as e:
        raise TestCAError("openssl %s: timed out" % args[0]) from e
    return p.returncode, p.stdout, p.stderr


def _must(args, stdin=None):
    rc, out, err = _openssl(args, stdin)
    if rc != 0:
        raise TestCAError("openssl %s failed: %s" % (" ".join(args), err.strip()))
    return out


def _write_atomic(path, data, mode):
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _pubkey_of_cert(cert):
    rc, out, _ = _openssl(["x509", "-in", cert, "-noout", "-pubkey"])
    return out if rc == 0 else None


def _pubkey_of_key(key):
    rc, out, _ = _openssl(["pkey", "-in", key, "-pubout"])
    return out if rc == 0 else None


def _pair_ok(cert, key):
    """The certificate exists, is not about to expire, and key is its key."""
    if not (os.path.isfile(cert) and os.path.isfile(key)):
        return False
    rc, _, _ = _openssl(["x509", "-in", cert, "-noout",
                         "-checkend", str(CHECKEND_SECONDS)])
    if rc != 0:
        return False
    a = _pubkey_of_cert(cert)
    return a is not None and a == _pubkey_of_key(key)


def _san_names(cert):
    """The DNS and IP entries of cert's subjectAltName, as a set of
    'DNS:x' / 'IP:y' strings (lowercased)."""
    rc, out, _ = _openssl(["x509", "-in", cert, "-noout", "-ext", "subjectAltName"])
    if rc != 0:
        return set()
    found = set()
    for line in out.splitlines()[1:]:
        for item in line.split(","):
            item = item.strip()
            if item.startswith("DNS:"):
                found.add("DNS:" + item[4:].lower())
            elif item.startswith("IP Address:"):
                found.add("IP:" + item[len("IP Address:"):].lower())
    return found


def _wanted_sans(names):
    dns = ["localhost"]
    for n in names:
        if n.lower() not in dns:
            dns.append(n.lower())
    return dns, ["127.0.0.1", "::1"]


def _normalise_ip(ip):
    # openssl prints ::1 as "0:0:0:0:0:0:0:1"
    if ip == "::1":
        return "0:0:0:0:0:0:0:1"
    return ip


def _server_ok(paths, names):
    if not _pair_ok(paths["cert"], paths["key"]):
        return False
    rc, _, _ = _openssl(["verify", "-CAfile", paths["ca"], paths["cert"]])
    if rc != 0:
        return False
    dns, ips = _wanted_sans(names)
    have = _san_names(paths["cert"])
    want = {"DNS:" + d for d in dns} | {"IP:" + _normalise_ip(i) for i in ips}
    return want <= have


def _make_key(path):
    pem = _must(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])
    _write_atomic(path, pem, 0o600)


def _serial():
    return "0x" + secrets.token_hex(16)


def _make_ca(paths, workdir):
    _make_key(paths["ca_key"])
    conf = os.path.join(workdir, "ca.cnf")
    with open(conf, "w") as f:
        f.write("[req]\ndistinguished_name = dn\nprompt = no\n"
                "[dn]\nCN = %s\n"
                "[v3_ca]\nbasicConstraints = critical, CA:TRUE, pathlen:0\n"
                "keyUsage = critical, keyCertSign, cRLSign\n"
                "subjectKeyIdentifier = hash\n" % CA_CN)
    out = os.path.join(workdir, "ca.pem")
    _must(["req", "-new", "-x509", "-config", conf, "-extensions", "v3_ca",
           "-key", paths["ca_key"], "-days", str(CA_DAYS), "-sha256",
           "-set_serial", _serial(), "-out", out])
    with open(out) as f:
        _write_atomic(paths["ca"], f.read(), 0o644)


def _make_server(paths, names, workdir):
    _make_key(paths["key"])
    dns, ips = _wanted_sans(names)
    cn = names[0] if names else "localhost"
    san = ", ".join(["DNS:" + d for d in dns] + ["IP:" + i for i in ips])
    conf = os.path.join(workdir, "srv.cnf")
    with open(conf, "w") as f:
        f.write("[req]\ndistinguished_name = dn\nprompt = no\n"
                "[dn]\nCN = %s\n"
                "[v3_srv]\nbasicConstraints = critical, CA:FALSE\n"
                "keyUsage = critical, digitalSignature\n"
                "extendedKeyUsage = serverAuth, clientAuth\n"
                "subjectKeyIdentifier = hash\n"
                "authorityKeyIdentifier = keyid\n"
                "subjectAltName = %s\n" % (cn, san))
    csr = os.path.join(workdir, "srv.csr")
    _must(["req", "-new", "-config", conf, "-key", paths["key"], "-out", csr])
    out = os.path.join(workdir, "cert.pem")
    _must(["x509", "-req", "-in", csr, "-CA", paths["ca"], "-CAkey", paths["ca_key"],
           "-set_serial", _serial(), "-days", str(CERT_DAYS), "-sha256",
           "-extfile", conf, "-extensions", "v3_srv", "-out", out])
    with open(out) as f:
        _write_atomic(paths["cert"], f.read(), 0o644)


def make_test_ca(directory, names=()):
    """Makes (or reuses) the test CA and a server certificate for names in
    directory. Returns {"ca", "ca_key", "cert", "key"} -> absolute paths."""
    names = list(names)
    for n in names:
        if not NAME_RE.match(n) or len(n) > 253:
            raise TestCAError("not a DNS name: %r" % n)
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    paths = {
        "ca": os.path.join(directory, "ca.pem"),
        "ca_key": os.path.join(directory, "ca.key"),
        "cert": os.path.join(directory, "cert.pem"),
        "key": os.path.join(directory, "key.pem"),
    }
    with open(os.path.join(directory, ".testca.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".work-") as work:
            new_ca = False
            if not _pair_ok(paths["ca"], paths["ca_key"]):
                _make_ca(paths, work)
                new_ca = True
            if new_ca or not _server_ok(paths, names):
                _make_server(paths, names, work)
                if not _server_ok(paths, names):
                    raise TestCAError("made a server certificate that does not check out")
    return paths


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print("usage: testca.py DIR [NAME...]", file=sys.stderr)
        return 2
    try:
        paths = make_test_ca(argv[1], argv[2:])
    except (TestCAError, OSError) as e:
        print("testca: %s" % e, file=sys.stderr)
        return 1
    for key in ("ca", "ca_key", "cert", "key"):
        print("%s=%s" % (key.upper(), paths[key]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

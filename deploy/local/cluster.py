#!/usr/bin/env python3
"""cluster.py: start, stop and restart a local Merpati deployment on 127.0.0.1.

Behind `./dev up`, `down`, `restart` and `status`. A deployment is one
directory:

    DIR/etcd/cmd         etcd's command line, shell-quoted
    DIR/etcd/pid         its PID while it runs
    DIR/etcd/etcd.log    its stdout and stderr (appended across restarts)
    DIR/etcd/data/       its data directory
    DIR/nodeI/cmd        the node's command line, shell-quoted (I = 0..N-1)
    DIR/nodeI/pid        its PID while it runs
    DIR/nodeI/node.log   its stdout and stderr (appended across restarts)
    DIR/nodeI/data/      its data directory
    DIR/frontendI/cmd    a protocol frontend's command line (I = 0..F-1)
    DIR/frontendI/pid    its PID while it runs
    DIR/frontendI/frontend.log  its stdout and stderr (appended)
    DIR/tls/             the test CA (ca.pem) and the frontends' certificate
                         for localhost (cert.pem, key.pem), from testca.py
    DIR/cluster.env      ports, PIDs, ... as KEY=value lines (shell-sourceable)

etcd (one member, named "default") starts first, the nodes after it and the
frontends (merpati-frontend) once the nodes are ready; the frontends stop
first, then the nodes, then etcd. A frontend is ready once its log says
event=fe_ready and its SMTP port answers with a 220 greeting. The nodes get `--etcd`, `--cluster` and
`--advertise` (and for fewer than 3 nodes `--rf`/`--min_isr`) only when
`merpati-node --help` lists `--etcd`, so a node binary that does not know
them yet still runs; such nodes count as ready once they answer `merpatictl
node info`, are registered in etcd, every shard has enough in-sync replicas
to take writes, and `merpatictl cluster status` succeeds.

It never uses fixed ports: the kernel picks free ones. It only ever signals a
PID it recorded, and only after checking that the PID still runs the recorded
command line (/proc/PID/cmdline), so a reused PID is never hit. Processes run
in their own session with stdin from /dev/null, so neither Ctrl-C in the
shell that started them nor a caller waiting for our output is tied to them.
"""

import argparse
import glob
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

READY_TIMEOUT = 30.0   # seconds for a node to answer `merpatictl node info`
FE_TIMEOUT = 30.0      # seconds for a frontend to log fe_ready and greet
ETCD_TIMEOUT = 30.0    # seconds for etcd to answer `etcdctl endpoint health`
CLUSTER_TIMEOUT = 30.0  # seconds for nodes to register in etcd / cluster status
STOP_TIMEOUT = 10.0    # seconds between SIGTERM and SIGKILL
CTL_TIMEOUT = 5.0      # one readiness probe
PORT_ATTEMPTS = 3      # a free port can be taken before the node binds it

CLUSTER = "default"    # the nodes' --cluster: etcd keys live under /merpati/CLUSTER/
FE_HOSTNAME = "localhost"  # the frontends' --hostname and their certificate's name
# A SIGTERMed frontend lets transactions in flight finish for this long
# (unless --frontend-arg sets --shutdown_timeout): well inside STOP_TIMEOUT,
# so that `down` never has to SIGKILL a frontend that is merely draining.
FE_SHUTDOWN_TIMEOUT = "5s"
# Outbound mail's MX lookups go to this resolver unless --frontend-arg sets
# --dns_server: a loopback address, so a local deployment (and every test)
# never sends a DNS query off the machine. Nothing listens there by default:
# remote domains then fail temporarily and wait in the queue. Tests that
# deliver outbound start their own dnsmasq and pass its address.
FE_DNS_SERVER = "127.0.0.1:53"
ETCD_NAME = "default"  # the etcd member's --name

# What the sanitizers print; a node log containing one fails `down`.
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "WARNING: ThreadSanitizer")

# Paths go into space-separated lists in cluster.env and into shell-quoted
# command lines; refusing odd characters keeps both trivially parseable.
SAFE_PATH_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                      "0123456789/._-+,:@%=")


class Failure(Exception):
    """An error for people: printed without a traceback."""


def say(msg):
    print(f"dev: {msg}", file=sys.stderr, flush=True)


def check_path(what, path):
    bad = sorted(set(path) - SAFE_PATH_CHARS)
    if bad:
        raise Failure(f"{what} {path!r} holds characters ./dev does not "
                      f"support ({''.join(bad)!r}); use a plainer path")


# ------------------------------------------------------------ processes

def proc_argv(pid):
    """The argv of a live process, or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # The state follows the last ')' (the command name may hold any byte).
        if stat[stat.rindex(b")") + 2:][:1] in (b"Z", b"X"):
            return None
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return [a.decode(errors="surrogateescape") for a in raw.split(b"\0")[:-1]]


def argv_matches(cmdline, argv):
    """Whether a process's cmdline is argv, also when argv[0] is a script
    that the kernel ran through its interpreter ("python3 SCRIPT ARGS")."""
    if cmdline is None or not argv:
        return False
    if cmdline == argv:
        return True
    extra = len(cmdline) - len(argv)
    return 0 < extra <= 2 and cmdline[extra:] == argv


def alive(pid):
    return proc_argv(pid) is not None


def free_ports(n):
    """n distinct ports that were free a moment ago on 127.0.0.1."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def stop_procs(procs, timeout=STOP_TIMEOUT):
    """SIGTERM, wait up to timeout, then SIGKILL. A PID is signalled only
    while it runs the process's recorded command line. Returns the processes
    that had to be killed."""
    def still(p):
        return argv_matches(proc_argv(p.pid), p.argv)

    def signal_all(ps, sig):
        for p in ps:
            if still(p):
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    pass

    signal_all(procs, signal.SIGTERM)
    # A process stopped with SIGSTOP (tests do that) handles the pending
    # SIGTERM only once it runs again.
    signal_all(procs, signal.SIGCONT)
    deadline = time.monotonic() + timeout
    left = [p for p in procs if still(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if still(p)]
    signal_all(left, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(still(p) for p in left) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


stop_nodes = stop_procs


def flag_value(argv, flag):
    """The value after `flag` in argv (flags are recorded as two words)."""
    i = argv.index(flag)
    return argv[i + 1]


def set_flag(argv, flag, value):
    """Replace the value of `flag` in argv, or append the flag."""
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]


# ------------------------------------------------- etcd and the nodes

class Proc:
    """A process of the deployment: its directory holds cmd, pid and a log."""

    log_name = "proc.log"
    has_data = True        # start() makes DIR/data

    def __init__(self, base, dirname):
        self.dir = os.path.join(base, dirname)
        self.log = os.path.join(self.dir, self.log_name)
        self.data = os.path.join(self.dir, "data")
        self.cmd_file = os.path.join(self.dir, "cmd")
        self.pid_file = os.path.join(self.dir, "pid")
        self.offset_file = os.path.join(self.dir, "log.offset")
        self.argv = None
        self.pid = None

    def _flag(self, flag):
        return flag_value(self.argv, flag)

    def load(self):
        with open(self.cmd_file) as f:
            self.argv = shlex.split(f.read())
        try:
            with open(self.pid_file) as f:
                self.pid = int(f.read().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            self.pid = None
        return self

    def save_cmd(self):
        with open(self.cmd_file, "w") as f:
            f.write(" ".join(shlex.quote(a) for a in self.argv) + "\n")

    def running(self):
        """True if the recorded PID still runs the recorded command line."""
        return self.pid is not None and argv_matches(proc_argv(self.pid),
                                                     self.argv)

    def child_env(self):
        return None  # inherit ours

    def start(self):
        os.makedirs(self.data if self.has_data else self.dir, exist_ok=True)
        with open(self.log, "ab") as log:
            self.log_start = log.tell()
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.dir, close_fds=True,
                start_new_session=True, env=self.child_env())
        self.pid = self.proc.pid
        with open(self.pid_file, "w") as f:
            f.write(f"{self.pid}\n")

    def exited(self):
        """Exit status if the process we started has ended, else None."""
        proc = getattr(self, "proc", None)
        if proc is not None:
            return proc.poll()
        return None if alive(self.pid) else "unknown"

    def log_tail(self, lines=25):
        """The last lines the process wrote since we last started it."""
        try:
            with open(self.log, "rb") as f:
                f.seek(getattr(self, "log_start", 0))
                text = f.read().decode(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return "    (no log)"
        return "".join(f"    {t}\n" for t in text) or "    (nothing logged)\n"

    def port_taken(self):
        return "in use" in self.log_tail(40).lower()

    def logged_since_start(self, mark):
        """Whether the process wrote `mark` to its log since we started it."""
        try:
            with open(self.log, "rb") as f:
                f.seek(getattr(self, "log_start", 0))
                return mark.encode() in f.read()
        except FileNotFoundError:
            return False

    def mark_log_offset(self):
        """Where `down` starts looking for sanitizer reports."""
        size = os.path.getsize(self.log) if os.path.exists(self.log) else 0
        with open(self.offset_file, "w") as f:
            f.write(f"{size}\n")

    def sanitizer_report(self):
        """Sanitizer lines written to the log since `up`, if any."""
        try:
            with open(self.offset_file) as f:
                offset = int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            offset = 0
        try:
            with open(self.log, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return None
        hits = [ln for ln in text.splitlines()
                if any(m in ln for m in SANITIZER_MARKS)]
        return "\n".join(hits[:10]) if hits else None


class Node(Proc):
    log_name = "node.log"

    def __init__(self, base, index):
        super().__init__(base, f"node{index}")
        self.index = index

    @property
    def name(self):
        return f"node{self.index}"

    @property
    def addr(self):
        return self._flag("--listen")

    @property
    def port(self):
        return int(self.addr.rsplit(":", 1)[1])

    @property
    def node_id(self):
        return self._flag("--node_id")

    @property
    def etcd_endpoint(self):
        """The --etcd the node was started with, or None."""
        return self._flag("--etcd") if "--etcd" in self.argv else None

    @property
    def cluster(self):
        return self._flag("--cluster") if "--cluster" in self.argv else CLUSTER

    def set_port(self, port):
        """Point --listen (and --advertise, if given) at a new port."""
        addr = f"127.0.0.1:{port}"
        set_flag(self.argv, "--listen", addr)
        if "--advertise" in self.argv:
            set_flag(self.argv, "--advertise", addr)



class Frontend(Proc):
    """A protocol frontend (merpati-frontend): no data of its own, one
    listener on 127.0.0.1 per role."""

    log_name = "frontend.log"
    has_data = False
    # (role, the flag that sets its address), in the order of set_ports().
    ROLES = (("smtp", "--smtp_listen"), ("submission", "--submission_listen"),
             ("submissions", "--submissions_listen"),
             ("imap", "--imap_listen"), ("imaps", "--imaps_listen"),
             ("pop3", "--pop3_listen"), ("pop3s", "--pop3s_listen"))

    def __init__(self, base, index):
        super().__init__(base, f"frontend{index}")
        self.index = index

    @property
    def name(self):
        return f"frontend{self.index}"

    def port(self, role):
        flag = dict(self.ROLES)[role]
        return int(self._flag(flag).rsplit(":", 1)[1])

    @property
    def smtp_port(self):
        return self.port("smtp")

    @property
    def addrs(self):
        """"smtp=127.0.0.1:P submission=... submissions=..." for people."""
        return " ".join(f"{role}={self._flag(flag)}"
                        for role, flag in self.ROLES)

    def set_ports(self, ports):
        """Point the listeners at new ports, in the order of ROLES."""
        for (_, flag), port in zip(self.ROLES, ports):
            set_flag(self.argv, flag, f"127.0.0.1:{port}")


class Etcd(Proc):
    """The deployment's etcd: one member on two loopback ports."""

    log_name = "etcd.log"
    name = "etcd"

    def __init__(self, base):
        super().__init__(base, "etcd")

    def make_argv(self, etcd_bin, client_port, peer_port):
        client = f"http://127.0.0.1:{client_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        self.argv = [
            etcd_bin, "--name", ETCD_NAME, "--data-dir", self.data,
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{ETCD_NAME}={peer}",
            "--initial-cluster-state", "new",
            # One member: no peer to miss heartbeats from, so a short
            # election timeout only shortens the wait for a restarted etcd
            # to elect itself (~1.5 s with the default 1000 ms).
            "--heartbeat-interval", "100", "--election-timeout", "500",
            # zap: 3.4's default logger (capnslog) warns that it is deprecated.
            "--logger", "zap", "--log-outputs", "stderr"]

    @property
    def port(self):
        return int(self._flag("--listen-client-urls").rsplit(":", 1)[1])

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.port}"

    def child_env(self):
        return etcd_env()


def load_etcd(base):
    """The deployment's recorded etcd, or None (none recorded: a deployment
    started before ./dev ran etcd)."""
    e = Etcd(base)
    if not os.path.exists(e.cmd_file):
        return None
    return e.load()


def list_nodes(base):
    """Every node directory of the deployment that has a recorded command."""
    nodes = []
    for path in glob.glob(os.path.join(base, "node*", "cmd")):
        name = os.path.basename(os.path.dirname(path))
        if name[4:].isdigit():
            nodes.append(Node(base, int(name[4:])).load())
    return sorted(nodes, key=lambda n: n.index)


def list_frontends(base):
    """Every frontend directory of the deployment that has a recorded
    command."""
    fes = []
    for path in glob.glob(os.path.join(base, "frontend*", "cmd")):
        name = os.path.basename(os.path.dirname(path))
        if name[8:].isdigit():
            fes.append(Frontend(base, int(name[8:])).load())
    return sorted(fes, key=lambda f: f.index)


def deployment_frontends(base):
    """The frontends named by cluster.env (else every frontend directory)."""
    env = read_env(os.path.join(base, "cluster.env"))
    fes = list_frontends(base)
    if "FRONTEND_DIRS" in env:
        keep = set(env["FRONTEND_DIRS"].split())
        fes = [f for f in fes if f.dir in keep]
    return fes


def deployment_nodes(base):
    """The nodes named by cluster.env (else every node directory)."""
    env = read_env(os.path.join(base, "cluster.env"))
    nodes = list_nodes(base)
    if "NODE_DIRS" in env:
        keep = set(env["NODE_DIRS"].split())
        nodes = [n for n in nodes if n.dir in keep]
    return nodes


# ----------------------------------------------------------------- etcd

def etcd_env():
    """Our environment without ETCD_* / ETCDCTL_*: etcd and etcdctl read
    their flags from those too, and a sourced cluster.env (ETCD_PORT, ...)
    or an operator's settings must not change what we start."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ETCD_", "ETCDCTL_"))}
    # etcd 3.4 refuses to run on arm64 unless told it may.
    arch = {"aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())
    if arch:
        env["ETCD_UNSUPPORTED_ARCH"] = arch
    env["ETCDCTL_API"] = "3"
    return env


def find_tool(name, package):
    path = shutil.which(name) or (f"/usr/bin/{name}"
                                  if os.access(f"/usr/bin/{name}", os.X_OK)
                                  else None)
    if not path:
        raise Failure(f"{name} not found: install the Debian package "
                      f"{package} (./dev deps)")
    return os.path.abspath(path)


def etcdctl(endpoint, *args, timeout=CTL_TIMEOUT):
    """Run etcdctl (API v3) against endpoint; (returncode, output)."""
    argv = [find_tool("etcdctl", "etcd-client"), f"--endpoints={endpoint}",
            "--dial-timeout=2s", f"--command-timeout={int(timeout)}s", *args]
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout + 5, env=etcd_env())
    except subprocess.TimeoutExpired:
        return 124, f"etcdctl {' '.join(args)} timed out"
    return r.returncode, (r.stdout + r.stderr).strip()


class ProcDied(Failure):
    def __init__(self, proc, status, what):
        self.proc = proc
        super().__init__(f"{proc.name} exited before it {what} (status "
                         f"{status}); log tail of {proc.log}:\n"
                         f"{proc.log_tail()}")


def port_open(port):
    """Whether something accepts connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_etcd(etcd, timeout=ETCD_TIMEOUT):
    """Wait until etcd answers `etcdctl endpoint health`."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        status = etcd.exited()
        if status is not None:
            raise ProcDied(etcd, status, f"served {etcd.endpoint}")
        # etcdctl waits out its whole timeout on a port nobody listens on
        # yet: ask it only once etcd accepts connections.
        if port_open(etcd.port):
            rc, out = etcdctl(etcd.endpoint, "endpoint", "health", timeout=2)
            if rc == 0:
                return
            last = out or f"exit {rc}"
        else:
            last = f"nothing listens on {etcd.endpoint} yet"
        if time.monotonic() > deadline:
            raise Failure(
                f"etcd ({etcd.endpoint}, pid {etcd.pid}) did not answer "
                f"`etcdctl endpoint health` within {timeout:.0f} s (last: "
                f"{last}); log tail of {etcd.log}:\n{etcd.log_tail()}")
        time.sleep(0.05)


def start_etcd(etcd):
    """Start the deployment's etcd on two free ports and wait for it. The
    caller stops it if this fails."""
    etcd_bin = find_tool("etcd", "etcd-server")
    os.makedirs(etcd.dir, exist_ok=True)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        etcd.make_argv(etcd_bin, *free_ports(2))
        etcd.save_cmd()
        etcd.start()
        try:
            wait_etcd(etcd)
            return
        except ProcDied:
            # Someone may have taken a port between our probe and etcd's
            # bind; only then are other ports worth a try.
            if attempt == PORT_ATTEMPTS or not etcd.port_taken():
                raise
            say("etcd: port taken, retrying on other ports")


# ---------------------------------------------------------- cluster.env

def read_env(path):
    env = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#") or "=" not in line:
                    continue
                key, value = line.split("=", 1)
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                env[key] = value
    except FileNotFoundError:
        pass
    return env


def env_value(v):
    # check_path() keeps quotes, '$' and backslashes out, so quoting a value
    # that holds spaces is enough.
    return f'"{v}"' if (" " in v or not v) else v


def write_env(base, nodes, build_dir, etcd=None, frontends=None):
    """Write DIR/cluster.env. frontends=None: those recorded on disk (the
    PIDs of their pid files)."""
    if frontends is None:
        frontends = deployment_frontends(base)
    env = [
        ("NODE_ADDRS", " ".join(n.addr for n in nodes)),
        ("NODE_PIDS", " ".join(str(n.pid) for n in nodes)),
        ("NODE_PORTS", " ".join(str(n.port) for n in nodes)),
        ("NODE_IDS", " ".join(n.node_id for n in nodes)),
        ("NODE_DIRS", " ".join(n.dir for n in nodes)),
        ("MERPATI_NODE", nodes[0].addr),
        ("BUILD_DIR", build_dir),
    ]
    if etcd is not None:
        env += [
            ("ETCD_ENDPOINTS", etcd.endpoint),
            ("ETCD_PID", str(etcd.pid)),
            ("ETCD_PORT", str(etcd.port)),
            ("ETCD_DIR", etcd.dir),
            ("CLUSTER", CLUSTER),
        ]
        if nodes[0].etcd_endpoint:
            # merpatictl without --node then routes through the cluster.
            env += [("MERPATI_ETCD", nodes[0].etcd_endpoint),
                    ("MERPATI_CLUSTER", nodes[0].cluster)]
    # The frontends' lists are there (maybe empty) in every cluster.env;
    # the ports of the first frontend and the CA only when one exists.
    env += [
        ("FRONTEND_PIDS", " ".join(str(f.pid) for f in frontends)),
        ("FRONTEND_SMTP_PORTS",
         " ".join(str(f.port("smtp")) for f in frontends)),
        ("FRONTEND_SUBMISSION_PORTS",
         " ".join(str(f.port("submission")) for f in frontends)),
        ("FRONTEND_SUBMISSIONS_PORTS",
         " ".join(str(f.port("submissions")) for f in frontends)),
        ("FRONTEND_IMAP_PORTS",
         " ".join(str(f.port("imap")) for f in frontends)),
        ("FRONTEND_IMAPS_PORTS",
         " ".join(str(f.port("imaps")) for f in frontends)),
        ("FRONTEND_POP3_PORTS",
         " ".join(str(f.port("pop3")) for f in frontends)),
        ("FRONTEND_POP3S_PORTS",
         " ".join(str(f.port("pop3s")) for f in frontends)),
        ("FRONTEND_LOGS", " ".join(f.log for f in frontends)),
        ("FRONTEND_DIRS", " ".join(f.dir for f in frontends)),
    ]
    if frontends:
        env += [("SMTP_PORT", str(frontends[0].port("smtp"))),
                ("SUBMISSION_PORT", str(frontends[0].port("submission"))),
                ("SUBMISSIONS_PORT", str(frontends[0].port("submissions"))),
                ("IMAP_PORT", str(frontends[0].port("imap"))),
                ("IMAPS_PORT", str(frontends[0].port("imaps"))),
                ("POP3_PORT", str(frontends[0].port("pop3"))),
                ("POP3S_PORT", str(frontends[0].port("pop3s"))),
                ("TLS_CA", tls_paths(base)["ca"])]
    tmp = os.path.join(base, "cluster.env.tmp")
    with open(tmp, "w") as f:
        for k, v in env:
            f.write(f"{k}={env_value(v)}\n")
        # So that merpatictl (MERPATI_NODE) sees them after `. cluster.env`.
        f.write("export " + " ".join(k for k, _ in env) + "\n")
    os.replace(tmp, os.path.join(base, "cluster.env"))


# ------------------------------------------------------------ readiness

def help_text(binary):
    """What `binary --help` prints (stdout and stderr), "" if it fails."""
    try:
        r = subprocess.run([binary, "--help"], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=CTL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return r.stdout + r.stderr


def has_flag(text, flag):
    """Whether a --help text lists `flag` (as "--flag=X", "--flag X" or
    "[--flag ...]"), not just a longer flag that starts with it."""
    return re.search(r"(^|[\s\[])" + re.escape(flag) + r"([=\s\]]|$)", text,
                     re.M) is not None


def cluster_flags(node_bin, nodes, endpoint, port, node_args):
    """The cluster flags for a node of an N-node deployment, or [] when
    merpati-node does not know --etcd yet. The replication settings only
    count when the first node creates the cluster in etcd: the node's
    defaults (3 replicas, 2 in sync) would leave a 1-node deployment unable
    to write, so a deployment of N < 3 nodes gets rf = N and min_isr =
    N - 1 (at least 1), unless NODE_FLAGS set them; a larger one gets the
    node's defaults."""
    text = help_text(node_bin)
    if not has_flag(text, "--etcd"):
        return []
    flags = ["--etcd", endpoint, "--cluster", CLUSTER,
             "--advertise", f"127.0.0.1:{port}"]
    if nodes >= 3:
        return flags
    given = {a.split("=", 1)[0] for a in node_args}
    for flag, value in (("--rf", nodes), ("--min_isr", max(1, nodes - 1))):
        if has_flag(text, flag) and flag not in given:
            flags += [flag, str(value)]
    return flags


def ctl_cluster_argv(ctl):
    """merpatictl's global flags for `cluster status`, or None when it has
    no `cluster` command yet."""
    text = help_text(ctl)
    if not re.search(r"^\s+cluster(\s|$)", text, re.M):
        return None
    return {"cluster_flag": re.search(r"(^|[\s\[])--cluster([=\s\]]|$)",
                                      text, re.M) is not None}


def probe(ctl, addr):
    try:
        r = subprocess.run([ctl, "--node", addr, "node", "info"],
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=CTL_TIMEOUT)
    except subprocess.TimeoutExpired:
        return False, "merpatictl node info timed out"
    return r.returncode == 0, (r.stderr or r.stdout).strip()


class NodeDied(Failure):
    def __init__(self, node, status):
        self.node = node
        super().__init__(f"{node.name} ({node.addr}) exited before it served "
                         f"(status {status}); log tail of {node.log}:\n"
                         f"{node.log_tail()}")


def wait_ready(nodes, ctl, timeout=READY_TIMEOUT):
    """Wait until every node answers `merpatictl node info`."""
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    last = {}
    while pending:
        for n in list(pending):
            status = n.exited()
            if status is not None:
                raise NodeDied(n, status)
            ok, msg = probe(ctl, n.addr)
            if ok:
                pending.remove(n)
            else:
                last[n.index] = msg
        if not pending:
            break
        if time.monotonic() > deadline:
            n = pending[0]
            raise Failure(
                f"{n.name} ({n.addr}, pid {n.pid}) did not answer "
                f"`merpatictl node info` within {timeout:.0f} s "
                f"(last: {last.get(n.index) or 'no answer'}); log tail of "
                f"{n.log}:\n{n.log_tail()}")
        time.sleep(0.1)


def smtp_greeting(port, timeout=2.0):
    """(True, line) once 127.0.0.1:port greets with 220 (RFC 5321 §4.2:
    the last line of the reply is "220 ..."), else (False, why)."""
    try:
        with socket.create_connection(("127.0.0.1", port),
                                      timeout=timeout) as s:
            buf = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and len(buf) < 4096:
                chunk = s.recv(1024)
                if not chunk:
                    break
                buf += chunk
                lines = buf.split(b"\r\n")
                done = [ln for ln in lines[:-1] if ln[3:4] != b"-"]
                if done:
                    line = done[0].decode(errors="replace")
                    if line.startswith("220 "):
                        try:
                            s.sendall(b"QUIT\r\n")
                        except OSError:
                            pass
                        return True, line
                    return False, f"greeting {line!r}"
            return False, f"no complete greeting (got {buf[:200]!r})"
    except OSError as e:
        return False, f"127.0.0.1:{port}: {e.strerror or e}"


def wait_frontends(fes, timeout=FE_TIMEOUT):
    """Wait until every frontend has logged event=fe_ready (since we
    started it) and its SMTP port greets with 220."""
    deadline = time.monotonic() + timeout
    pending = list(fes)
    last = {}
    while pending:
        for f in list(pending):
            status = f.exited()
            if status is not None:
                raise ProcDied(f, status, f"served ({f.addrs})")
            if not f.logged_since_start("event=fe_ready"):
                last[f.index] = "no event=fe_ready in its log yet"
                continue
            ok, what = smtp_greeting(f.smtp_port)
            if ok:
                pending.remove(f)
            else:
                last[f.index] = what
        if not pending:
            break
        if time.monotonic() > deadline:
            f = pending[0]
            raise Failure(
                f"{f.name} ({f.addrs}, pid {f.pid}) was not ready within "
                f"{timeout:.0f} s (last: {last.get(f.index)}); log tail of "
                f"{f.log}:\n{f.log_tail()}")
        time.sleep(0.1)


def start_frontends(fes):
    """Start frontends (argv set) and wait until they serve, moving a
    frontend to other ports when someone took one of its ports before it
    bound it. The caller stops them if this fails."""
    for f in fes:
        f.mark_log_offset()
        f.start()
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            wait_frontends(fes)
            return
        except ProcDied as e:
            if attempt == PORT_ATTEMPTS or not e.proc.port_taken():
                raise
            f = e.proc
            f.set_ports(free_ports(len(Frontend.ROLES)))
            f.save_cmd()
            say(f"{f.name}: port taken, retrying on {f.addrs}")
            f.start()


def tls_paths(base):
    """Where the deployment's test CA and certificate live."""
    d = os.path.join(base, "tls")
    return {"ca": os.path.join(d, "ca.pem"), "cert": os.path.join(d, "cert.pem"),
            "key": os.path.join(d, "key.pem")}


def make_tls(base):
    """The test CA and a certificate for FE_HOSTNAME in DIR/tls (made by
    testca.py, kept when still good)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        import testca
    except ImportError as e:
        raise Failure(f"cannot load deploy/local/testca.py: {e}") from e
    finally:
        sys.path.pop(0)
    try:
        return testca.make_test_ca(os.path.join(base, "tls"), [FE_HOSTNAME])
    except (testca.TestCAError, OSError) as e:
        raise Failure(f"cannot make the test CA in {base}/tls: {e}") from e


def frontend_argv(fe_bin, etcd, cluster, ports, tls, log_level, fe_args):
    """A frontend's command line: the deployment's etcd and cluster, its
    three listeners, the test certificate, then the caller's flags (which
    the frontend reads last, so they win)."""
    argv = [fe_bin, "--etcd", etcd.endpoint, "--cluster", cluster,
            "--hostname", FE_HOSTNAME]
    for (_, flag), port in zip(Frontend.ROLES, ports):
        argv += [flag, f"127.0.0.1:{port}"]
    argv += ["--tls_cert", tls["cert"], "--tls_key", tls["key"]]
    given = {a.split("=", 1)[0] for a in fe_args}
    if "--shutdown_timeout" not in given:
        argv += ["--shutdown_timeout", FE_SHUTDOWN_TIMEOUT]
    if "--dns_server" not in given:
        argv += ["--dns_server", FE_DNS_SERVER]
    if log_level:
        argv += ["--log_level", log_level]
    return argv + list(fe_args)


def check_alive(nodes):
    for n in nodes:
        status = n.exited()
        if status is not None:
            raise NodeDied(n, status)


def parse_words(value):
    """A record value of DESIGN.md's etcd keys: "k=v k=v ..." as a dict."""
    return dict(w.split("=", 1) for w in value.split() if "=" in w)


def shards_pending(endpoint, cluster):
    """Why the cluster cannot take writes yet, or None when every shard
    has a record with at least min_isr in-sync replicas (keys and values as
    DESIGN.md "Cluster" gives them). No `config` record: a layout we do not
    know, so nothing to wait for."""
    prefix = f"/merpati/{cluster}/"
    rc, out = etcdctl(endpoint, "get", "--prefix", prefix)
    if rc != 0:
        return f"etcdctl get --prefix {prefix} failed: {out or 'exit %d' % rc}"
    lines = out.splitlines()
    recs = {k[len(prefix):]: v for k, v in zip(lines[0::2], lines[1::2])
            if k.startswith(prefix)}
    try:
        config = parse_words(recs["config"])
        shards, min_isr = int(config["shards"]), int(config.get("min_isr", 1))
    except (KeyError, ValueError):
        return None
    for i in range(shards):
        rec = recs.get(f"shards/{i}")
        if rec is None:
            return f"shard {i} has no record yet"
        isr = [x for x in parse_words(rec).get("isr", "").split(",") if x]
        if len(isr) < min_isr:
            return (f"shard {i} has {len(isr)} in-sync replicas, fewer than "
                    f"min_isr={min_isr} ({rec})")
    return None


def wait_cluster(nodes, ctl, timeout=CLUSTER_TIMEOUT):
    """For nodes started with --etcd: wait until each has registered under
    /merpati/CLUSTER/nodes/, every shard has a record with enough in-sync
    replicas to take writes, and, when merpatictl has a `cluster` command,
    until `merpatictl cluster status` succeeds."""
    nodes = [n for n in nodes if n.etcd_endpoint]
    if not nodes:
        return
    endpoint, cluster = nodes[0].etcd_endpoint, nodes[0].cluster
    prefix = f"/merpati/{cluster}/nodes/"
    deadline = time.monotonic() + timeout
    while True:
        check_alive(nodes)
        rc, out = etcdctl(endpoint, "get", "--prefix", "--keys-only", prefix)
        listed = {k[len(prefix):] for k in out.splitlines()
                  if k.startswith(prefix)} if rc == 0 else set()
        missing = [n for n in nodes if n.node_id not in listed]
        if not missing:
            break
        if time.monotonic() > deadline:
            n = missing[0]
            seen = (", ".join(sorted(listed)) or "none") if rc == 0 else \
                f"etcdctl failed: {out or 'exit %d' % rc}"
            raise Failure(
                f"{n.name} (id {n.node_id}) did not register under {prefix} "
                f"in etcd {endpoint} within {timeout:.0f} s (registered: "
                f"{seen}); log tail of {n.log}:\n{n.log_tail()}")
        time.sleep(0.1)

    while True:
        check_alive(nodes)
        why = shards_pending(endpoint, cluster)
        if why is None:
            break
        if time.monotonic() > deadline:
            raise Failure(f"the cluster in etcd {endpoint} cannot take writes "
                          f"after {timeout:.0f} s: {why}")
        time.sleep(0.1)

    cl = ctl_cluster_argv(ctl)
    if cl is None:
        return
    argv = [ctl, "--etcd", endpoint]
    if cl["cluster_flag"]:
        argv += ["--cluster", cluster]
    argv += ["cluster", "status"]
    last = "no answer"
    while True:
        check_alive(nodes)
        try:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL,
                               capture_output=True, text=True,
                               timeout=CTL_TIMEOUT)
            if r.returncode == 0:
                return
            last = (r.stderr or r.stdout).strip() or f"exit {r.returncode}"
        except subprocess.TimeoutExpired:
            last = "timed out"
        if time.monotonic() > deadline:
            raise Failure(f"`{' '.join(argv[1:])}` did not succeed within "
                          f"{timeout:.0f} s (last: {last})")
        time.sleep(0.2)


def start_nodes(nodes, ctl):
    """Start nodes (argv set) and wait until they serve, moving a node to
    another port when someone took its port before it bound it. The caller
    stops them if this fails."""
    for n in nodes:
        n.mark_log_offset()
        n.start()
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            wait_ready(nodes, ctl)
            break
        except NodeDied as e:
            # Someone may have taken the port between our probe and the
            # node's bind; only then is another port worth a try.
            if attempt == PORT_ATTEMPTS or not e.node.port_taken():
                raise
            n = e.node
            n.set_port(free_ports(1)[0])
            n.save_cmd()
            say(f"{n.name}: port taken, retrying on {n.addr}")
            n.start()
    wait_cluster(nodes, ctl)


def port_taken(node):
    return node.port_taken()


# ------------------------------------------------------------- commands

def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _binaries(build):
    node_bin = os.path.join(build, "storage-node", "merpati-node")
    ctl = os.path.join(build, "tools", "merpatictl")
    for b in (node_bin, ctl):
        if not os.access(b, os.X_OK):
            raise Failure(f"{b} is missing: build first (./dev build)")
    return node_bin, ctl


def _frontend_binary(build):
    fe_bin = os.path.join(build, "frontend", "merpati-frontend")
    if not os.access(fe_bin, os.X_OK):
        raise Failure(f"{fe_bin} is missing: build it (ninja -C {build} "
                      "merpati-frontend), or start no frontend (--frontends 0)")
    return fe_bin


def _cleanup(procs):
    """Stop what we started (a failed up): frontends first, then nodes,
    then etcd."""
    for kind in (Frontend, Node, Etcd):
        stop_procs([p for p in procs if isinstance(p, kind) and p.running()])
    for p in procs:
        _unlink(p.pid_file)


def _print_nodes(nodes, what=None):
    for n in nodes:
        print(f"{n.name}  {n.addr}  pid {n.pid}  "
              + (what or f"log {n.log}"))


def _print_frontends(fes, what=None):
    for f in fes:
        print(f"{f.name}  {f.addrs}  pid {f.pid}  "
              + (what or f"log {f.log}"))


def cmd_up(a):
    base = os.path.abspath(a.dir)
    build = os.path.abspath(a.build_dir)
    check_path("--dir", base)
    check_path("build directory", build)
    if a.add_node:
        return cmd_add_node(a, base, build)
    node_bin, ctl = _binaries(build)
    if a.nodes < 1:
        raise Failure("--nodes must be at least 1")
    if a.frontends < 0:
        raise Failure("--frontends must be 0 or more")
    fe_bin = _frontend_binary(build) if a.frontends else None
    os.makedirs(base, exist_ok=True)
    busy = [p for p in list_frontends(base) + list_nodes(base) if p.running()]
    old_etcd = load_etcd(base)
    if old_etcd is not None and old_etcd.running():
        busy.insert(0, old_etcd)
    if busy:
        raise Failure(f"{base} already runs " + ", ".join(
            f"{p.name} (pid {p.pid})" for p in busy) +
            f"; stop it first: ./dev down --dir {base}")

    nodes = [Node(base, i) for i in range(a.nodes)]
    fes = [Frontend(base, i) for i in range(a.frontends)]
    etcd = Etcd(base)
    try:
        start_etcd(etcd)
        for n, port in zip(nodes, free_ports(a.nodes)):
            os.makedirs(n.dir, exist_ok=True)
            n.argv = [node_bin, "--listen", f"127.0.0.1:{port}",
                      "--data_dir", n.data, "--node_id", f"n{n.index}"]
            n.argv += cluster_flags(node_bin, a.nodes, etcd.endpoint, port,
                                    a.node_args)
            if a.log_level:
                n.argv += ["--log_level", a.log_level]
            n.argv += a.node_args
            n.save_cmd()
        start_nodes(nodes, ctl)
        if fes:
            tls = make_tls(base)
            nports = len(Frontend.ROLES)
            ports = free_ports(nports * len(fes))
            for f in fes:
                os.makedirs(f.dir, exist_ok=True)
                f.argv = frontend_argv(
                    fe_bin, etcd, nodes[0].cluster,
                    ports[f.index * nports:(f.index + 1) * nports], tls,
                    a.log_level, a.frontend_args)
                f.save_cmd()
            start_frontends(fes)
        write_env(base, nodes, build, etcd, fes)
    except BaseException:
        _cleanup([p for p in fes + nodes + [etcd] if p.pid is not None])
        raise
    print(f"etcd  {etcd.endpoint}  pid {etcd.pid}  log {etcd.log}")
    _print_nodes(nodes)
    _print_frontends(fes)
    print(f"env: {os.path.join(base, 'cluster.env')}")
    return 0


def cmd_add_node(a, base, build):
    """up --add-node: one more node for a running deployment, with the
    flags of its first node, a new index, id, port and data directory."""
    env = read_env(os.path.join(base, "cluster.env"))
    nodes = deployment_nodes(base)
    if not env or not nodes:
        raise Failure(f"no deployment in {base}: start one with "
                      f"./dev up --dir {base}")
    etcd = load_etcd(base)
    if etcd is not None and not etcd.running():
        raise Failure(f"etcd of {base} is not running: "
                      f"./dev restart --dir {base} --etcd")
    _, ctl = _binaries(build)
    index = max(n.index for n in nodes) + 1
    n = Node(base, index)
    if os.path.exists(n.cmd_file):
        stale = Node(base, index).load()
        if stale.running():
            raise Failure(f"{base}/{n.name} already runs (pid {stale.pid}) "
                          "but is not in cluster.env")
    argv = list(nodes[0].argv)
    set_flag(argv, "--data_dir", n.data)
    set_flag(argv, "--node_id", f"n{index}")
    n.argv = argv
    n.set_port(free_ports(1)[0])
    if a.log_level:
        set_flag(n.argv, "--log_level", a.log_level)
    n.argv += a.node_args
    os.makedirs(n.dir, exist_ok=True)
    n.save_cmd()
    try:
        start_nodes([n], ctl)
        write_env(base, nodes + [n], env.get("BUILD_DIR") or build, etcd)
    except BaseException:
        _cleanup([n] if n.pid is not None else [])
        raise
    _print_nodes([n])
    print(f"env: {os.path.join(base, 'cluster.env')}")
    return 0


def cmd_down(a):
    base = os.path.abspath(a.dir)
    nodes = list_nodes(base) if os.path.isdir(base) else []
    fes = list_frontends(base) if os.path.isdir(base) else []
    etcd = load_etcd(base) if os.path.isdir(base) else None

    def running_targets(procs):
        targets = []
        for p in procs:
            if p.pid is None:
                continue
            if p.running():
                targets.append(p)
            elif alive(p.pid):
                say(f"{p.name}: pid {p.pid} no longer runs the recorded "
                    "command; not signalling it")
                _unlink(p.pid_file)
            else:
                say(f"{p.name}: was not running (pid {p.pid} is gone)")
                _unlink(p.pid_file)
        return targets

    def stop(targets):
        rc = 0
        killed = stop_procs(targets)
        for p in targets:
            _unlink(p.pid_file)
            if p in killed:
                say(f"{p.name}: pid {p.pid} ignored SIGTERM for "
                    f"{STOP_TIMEOUT:.0f} s; killed with SIGKILL")
                rc = 1
            else:
                say(f"{p.name}: stopped (pid {p.pid})")
        return rc

    # The frontends first (they call the nodes while they drain), then
    # the nodes (they may still talk to etcd while they stop).
    fe_targets = running_targets(fes)
    rc = stop(fe_targets)
    node_targets = running_targets(nodes)
    rc |= stop(node_targets)
    etcd_targets = running_targets([etcd] if etcd is not None else [])
    rc |= stop(etcd_targets)
    if not fe_targets and not node_targets and not etcd_targets:
        say(f"nothing running in {base}")
    for n in fes + nodes:
        report = n.sanitizer_report()
        if report:
            say(f"{n.name}: sanitizer report in {n.log}:\n{report}")
            rc = 1
    return rc


def restart_etcd(etcd):
    """(Re)start etcd from its recorded command line (same ports, same data
    directory) and wait until it is healthy."""
    if etcd.running():
        if stop_procs([etcd]):
            say("etcd: ignored SIGTERM; killed")
    etcd.start()
    wait_etcd(etcd)


def cmd_restart(a):
    base = os.path.abspath(a.dir)
    env = read_env(os.path.join(base, "cluster.env"))
    build = a.build_dir or env.get("BUILD_DIR")
    if not build:
        raise Failure(f"no {base}/cluster.env: start it with ./dev up --dir {base}")
    ctl = os.path.join(build, "tools", "merpatictl")
    nodes = deployment_nodes(base)
    if not nodes:
        raise Failure(f"no nodes recorded in {base}")
    etcd = load_etcd(base)
    if a.etcd:
        if etcd is None:
            raise Failure(f"no etcd recorded in {base} (started before ./dev "
                          f"ran etcd): ./dev down --dir {base}, then up")
        try:
            restart_etcd(etcd)
        finally:
            write_env(base, nodes, build, etcd)
        print(f"etcd  {etcd.endpoint}  pid {etcd.pid}  restarted")
        return 0
    fes = deployment_frontends(base)
    if a.frontend is not None:
        fe = [f for f in fes if f.index == a.frontend]
        if not fe:
            raise Failure(f"no frontend{a.frontend} in {base}")
        if fe[0].running() and stop_procs(fe):
            say(f"{fe[0].name}: ignored SIGTERM; killed")
        try:
            fe[0].start()
            wait_frontends(fe)
        finally:
            write_env(base, nodes, build, etcd, fes)
        _print_frontends(fe, "restarted")
        return 0
    etcd_dead = False
    fe_restart = []
    if a.node is not None:
        to_restart = [n for n in nodes if n.index == a.node]
        if not to_restart:
            raise Failure(f"no node{a.node} in {base}")
        if to_restart[0].running():
            killed = stop_nodes(to_restart)
            if killed:
                say(f"{to_restart[0].name}: ignored SIGTERM; killed")
    else:
        etcd_dead = etcd is not None and not etcd.running()
        to_restart = [n for n in nodes if not n.running()]
        fe_restart = [f for f in fes if not f.running()]
        if not to_restart and not etcd_dead and not fe_restart:
            say("everything is running; nothing to restart")
    try:
        if etcd_dead:
            restart_etcd(etcd)
        for n in to_restart:
            n.start()
        wait_ready(to_restart, ctl)
        wait_cluster(to_restart, ctl)
        # The frontends last: they need etcd and serve through the nodes.
        for f in fe_restart:
            f.start()
        wait_frontends(fe_restart)
    finally:
        # The PIDs changed whether or not they became ready.
        write_env(base, nodes, build, etcd, fes)
    if etcd_dead:
        print(f"etcd  {etcd.endpoint}  pid {etcd.pid}  restarted")
    _print_nodes(to_restart, "restarted")
    _print_frontends(fe_restart, "restarted")
    return 0


def cmd_status(a):
    base = os.path.abspath(a.dir)
    nodes = list_nodes(base) if os.path.isdir(base) else []
    fes = deployment_frontends(base) if os.path.isdir(base) else []
    etcd = load_etcd(base) if os.path.isdir(base) else None
    if not nodes and etcd is None:
        say(f"no deployment in {base}")
        return 1
    down = 0
    procs = ([etcd] if etcd is not None else []) + nodes + fes
    for p in procs:
        state = "running" if p.running() else "stopped"
        down += state != "running"
        addr = p.endpoint if p is etcd else \
            p.addrs if isinstance(p, Frontend) else p.addr
        print(f"{p.name}  {addr}  {state}"
              + (f"  pid {p.pid}" if state == "running" else ""))
    return 1 if down else 0


def cmd_ports(a):
    print(" ".join(str(p) for p in free_ports(a.count)))
    return 0


def main(argv):
    p = argparse.ArgumentParser(prog="cluster.py", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--build-dir")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up")
    up.add_argument("--dir", required=True)
    up.add_argument("--nodes", type=int, default=1)
    up.add_argument("--add-node", action="store_true",
                    help="add one node to the running deployment in --dir")
    up.add_argument("--log-level")
    up.add_argument("--frontends", type=int, default=1,
                    help="protocol frontends to start (default 1; 0: none)")
    up.add_argument("--frontend-arg", action="append", default=[],
                    dest="frontend_args", metavar="FLAG",
                    help="an extra merpati-frontend flag, given as "
                         "--frontend-arg=--flag=value (repeatable)")
    up.add_argument("node_args", nargs="*",
                    help="extra merpati-node flags (after --)")
    down = sub.add_parser("down")
    down.add_argument("--dir", required=True)
    rs = sub.add_parser("restart")
    rs.add_argument("--dir", required=True)
    which = rs.add_mutually_exclusive_group()
    which.add_argument("--node", type=int)
    which.add_argument("--etcd", action="store_true",
                       help="restart etcd (stopping it first if it runs)")
    which.add_argument("--frontend", type=int,
                       help="restart frontend I (stopping it first if it runs)")
    st = sub.add_parser("status")
    st.add_argument("--dir", required=True)
    po = sub.add_parser("ports")
    po.add_argument("count", type=int, nargs="?", default=1)
    a = p.parse_args(argv)
    if a.cmd == "up" and not a.build_dir:
        p.error("up needs --build-dir")
    # SIGTERM while starting must stop what was started (cmd_up's cleanup).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    fn = {"up": cmd_up, "down": cmd_down, "restart": cmd_restart,
          "status": cmd_status, "ports": cmd_ports}[a.cmd]
    try:
        return fn(a)
    except Failure as e:
        say(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

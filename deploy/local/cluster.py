#!/usr/bin/env python3
"""cluster.py: start, stop and restart a local Merpati deployment on 127.0.0.1.

Behind `./dev up`, `down`, `restart` and `status`. A deployment is one
directory:

    DIR/nodeI/cmd        the node's command line, shell-quoted (I = 0..N-1)
    DIR/nodeI/pid        its PID while it runs
    DIR/nodeI/node.log   its stdout and stderr (appended across restarts)
    DIR/nodeI/data/      its data directory
    DIR/cluster.env      ports, PIDs, ... as KEY=value lines (shell-sourceable)

It never uses fixed ports: the kernel picks free ones. It only ever signals a
PID it recorded, and only after checking that the PID still runs the recorded
command line (/proc/PID/cmdline), so a reused PID is never hit. Nodes run in
their own session with stdin from /dev/null, so neither Ctrl-C in the shell
that started them nor a caller waiting for our output is tied to them.
"""

import argparse
import glob
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

READY_TIMEOUT = 30.0   # seconds for a node to answer `merpatictl node info`
STOP_TIMEOUT = 10.0    # seconds between SIGTERM and SIGKILL
CTL_TIMEOUT = 5.0      # one readiness probe
PORT_ATTEMPTS = 3      # a free port can be taken before the node binds it

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


def stop_nodes(nodes, timeout=STOP_TIMEOUT):
    """SIGTERM, wait up to timeout, then SIGKILL. A PID is signalled only
    while it runs the node's recorded command line. Returns the nodes that
    had to be killed."""
    def still(n):
        return argv_matches(proc_argv(n.pid), n.argv)

    def signal_all(ns, sig):
        for n in ns:
            if still(n):
                try:
                    os.kill(n.pid, sig)
                except ProcessLookupError:
                    pass

    signal_all(nodes, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    left = [n for n in nodes if still(n)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [n for n in left if still(n)]
    signal_all(left, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(still(n) for n in left) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


# ---------------------------------------------------------------- nodes

class Node:
    def __init__(self, base, index):
        self.index = index
        self.dir = os.path.join(base, f"node{index}")
        self.log = os.path.join(self.dir, "node.log")
        self.data = os.path.join(self.dir, "data")
        self.cmd_file = os.path.join(self.dir, "cmd")
        self.pid_file = os.path.join(self.dir, "pid")
        self.offset_file = os.path.join(self.dir, "log.offset")
        self.argv = None
        self.pid = None

    @property
    def name(self):
        return f"node{self.index}"

    def _flag(self, flag):
        i = self.argv.index(flag)
        return self.argv[i + 1]

    @property
    def addr(self):
        return self._flag("--listen")

    @property
    def port(self):
        return int(self.addr.rsplit(":", 1)[1])

    @property
    def node_id(self):
        return self._flag("--node_id")

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

    def start(self):
        os.makedirs(self.data, exist_ok=True)
        with open(self.log, "ab") as log:
            self.log_start = log.tell()
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.dir, close_fds=True,
                start_new_session=True)
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
        """The last lines the node wrote since we last started it."""
        try:
            with open(self.log, "rb") as f:
                f.seek(getattr(self, "log_start", 0))
                text = f.read().decode(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return "    (no log)"
        return "".join(f"    {t}\n" for t in text) or "    (nothing logged)\n"

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


def list_nodes(base):
    """Every node directory of the deployment that has a recorded command."""
    nodes = []
    for path in glob.glob(os.path.join(base, "node*", "cmd")):
        name = os.path.basename(os.path.dirname(path))
        if name[4:].isdigit():
            nodes.append(Node(base, int(name[4:])).load())
    return sorted(nodes, key=lambda n: n.index)


def deployment_nodes(base):
    """The nodes named by cluster.env (else every node directory)."""
    env = read_env(os.path.join(base, "cluster.env"))
    nodes = list_nodes(base)
    if "NODE_DIRS" in env:
        keep = set(env["NODE_DIRS"].split())
        nodes = [n for n in nodes if n.dir in keep]
    return nodes


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


def write_env(base, nodes, build_dir):
    env = [
        ("NODE_ADDRS", " ".join(n.addr for n in nodes)),
        ("NODE_PIDS", " ".join(str(n.pid) for n in nodes)),
        ("NODE_PORTS", " ".join(str(n.port) for n in nodes)),
        ("NODE_IDS", " ".join(n.node_id for n in nodes)),
        ("NODE_DIRS", " ".join(n.dir for n in nodes)),
        ("MERPATI_NODE", nodes[0].addr),
        ("BUILD_DIR", build_dir),
    ]
    tmp = os.path.join(base, "cluster.env.tmp")
    with open(tmp, "w") as f:
        for k, v in env:
            f.write(f"{k}={env_value(v)}\n")
        # So that merpatictl (MERPATI_NODE) sees them after `. cluster.env`.
        f.write("export " + " ".join(k for k, _ in env) + "\n")
    os.replace(tmp, os.path.join(base, "cluster.env"))


# ------------------------------------------------------------ readiness

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


def port_taken(node):
    return "in use" in node.log_tail(40).lower()


# ------------------------------------------------------------- commands

def cmd_up(a):
    base = os.path.abspath(a.dir)
    build = os.path.abspath(a.build_dir)
    check_path("--dir", base)
    check_path("build directory", build)
    node_bin = os.path.join(build, "storage-node", "merpati-node")
    ctl = os.path.join(build, "tools", "merpatictl")
    for b in (node_bin, ctl):
        if not os.access(b, os.X_OK):
            raise Failure(f"{b} is missing: build first (./dev build)")
    if a.nodes < 1:
        raise Failure("--nodes must be at least 1")
    os.makedirs(base, exist_ok=True)
    busy = [n for n in list_nodes(base) if n.running()]
    if busy:
        raise Failure(f"{base} already runs " + ", ".join(
            f"{n.name} (pid {n.pid})" for n in busy) +
            f"; stop it first: ./dev down --dir {base}")

    nodes = [Node(base, i) for i in range(a.nodes)]
    started = []
    try:
        ports = free_ports(a.nodes)
        for n, port in zip(nodes, ports):
            os.makedirs(n.dir, exist_ok=True)
            n.argv = [node_bin, "--listen", f"127.0.0.1:{port}",
                      "--data_dir", n.data, "--node_id", f"n{n.index}"]
            if a.log_level:
                n.argv += ["--log_level", a.log_level]
            n.argv += a.node_args
            n.save_cmd()
            with open(n.offset_file, "w") as f:
                f.write(f"{os.path.getsize(n.log) if os.path.exists(n.log) else 0}\n")
            n.start()
            started.append(n)
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                wait_ready(nodes, ctl)
                break
            except NodeDied as e:
                # Someone may have taken the port between our probe and the
                # node's bind; only then is another port worth a try.
                if attempt == PORT_ATTEMPTS or not port_taken(e.node):
                    raise
                n = e.node
                n.argv[n.argv.index("--listen") + 1] = \
                    f"127.0.0.1:{free_ports(1)[0]}"
                n.save_cmd()
                say(f"{n.name}: port taken, retrying on {n.addr}")
                n.start()
        write_env(base, nodes, build)
    except BaseException:
        stop_nodes([n for n in started if n.running()])
        for n in started:
            _unlink(n.pid_file)
        raise
    for n in nodes:
        print(f"{n.name}  {n.addr}  pid {n.pid}  log {n.log}")
    print(f"env: {os.path.join(base, 'cluster.env')}")
    return 0


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def cmd_down(a):
    base = os.path.abspath(a.dir)
    nodes = list_nodes(base) if os.path.isdir(base) else []
    targets = []
    for n in nodes:
        if n.pid is None:
            continue
        if n.running():
            targets.append(n)
        elif alive(n.pid):
            say(f"{n.name}: pid {n.pid} no longer runs the recorded command; "
                "not signalling it")
            _unlink(n.pid_file)
        else:
            say(f"{n.name}: was not running (pid {n.pid} is gone)")
            _unlink(n.pid_file)
    if not targets:
        say(f"nothing running in {base}")
    killed = stop_nodes(targets)
    rc = 0
    for n in targets:
        _unlink(n.pid_file)
        if n in killed:
            say(f"{n.name}: pid {n.pid} ignored SIGTERM for "
                f"{STOP_TIMEOUT:.0f} s; killed with SIGKILL")
            rc = 1
        else:
            say(f"{n.name}: stopped (pid {n.pid})")
    for n in nodes:
        report = n.sanitizer_report()
        if report:
            say(f"{n.name}: sanitizer report in {n.log}:\n{report}")
            rc = 1
    return rc


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
    if a.node is not None:
        todo = [n for n in nodes if n.index == a.node]
        if not todo:
            raise Failure(f"no node{a.node} in {base}")
        if todo[0].running():
            killed = stop_nodes(todo)
            if killed:
                say(f"{todo[0].name}: ignored SIGTERM; killed")
    else:
        todo = [n for n in nodes if not n.running()]
        if not todo:
            say("every node is running; nothing to restart")
    for n in todo:
        n.start()
    try:
        wait_ready(todo, ctl)
    finally:
        # The PIDs changed whether or not they became ready.
        write_env(base, nodes, build)
    for n in todo:
        print(f"{n.name}  {n.addr}  pid {n.pid}  restarted")
    return 0


def cmd_status(a):
    base = os.path.abspath(a.dir)
    nodes = list_nodes(base) if os.path.isdir(base) else []
    if not nodes:
        say(f"no deployment in {base}")
        return 1
    down = 0
    for n in nodes:
        state = "running" if n.running() else "stopped"
        down += state != "running"
        print(f"{n.name}  {n.addr}  {state}"
              + (f"  pid {n.pid}" if state == "running" else ""))
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
    up.add_argument("--log-level")
    up.add_argument("node_args", nargs="*",
                    help="extra merpati-node flags (after --)")
    down = sub.add_parser("down")
    down.add_argument("--dir", required=True)
    rs = sub.add_parser("restart")
    rs.add_argument("--dir", required=True)
    rs.add_argument("--node", type=int)
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

"""The processes of a loopback cluster for the operator scripts (drill.py, gray.py): BZZZ
nodes, the gateway, and the TCP proxy of tcpproxy.py, each on a free port; every process
started here is stopped by its PID on exit (normal, exception, sys.exit, Ctrl-C, SIGTERM)
once `install_cleanup()` was called. Python standard library only."""

import atexit
import json
import os
import signal
import subprocess
import sys
import threading
import time

from netutil import free_port, request

HERE = os.path.dirname(os.path.abspath(__file__))

_started = []
_started_lock = threading.Lock()


def spawn(argv, **kwargs):
    """Popen(argv, **kwargs), remembered so `stop_all` stops it."""
    proc = subprocess.Popen(argv, **kwargs)
    with _started_lock:
        _started.append(proc)
    return proc


def stop(proc):
    """Stops `proc` by its PID (continuing it first, in case it was SIGSTOPped) and waits."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        except ProcessLookupError:
            pass
    proc.wait()


def stop_all():
    with _started_lock:
        procs = list(reversed(_started))
        _started.clear()
    for proc in procs:
        stop(proc)


def install_cleanup():
    """Stop every started process when this script exits, SIGTERM and SIGHUP included."""
    atexit.register(stop_all)

    def exit_on(signum, _frame):
        sys.exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, exit_on)


def http(method, url, body=None, timeout=10):
    """`request` with the body parsed as JSON (the raw text when it is not JSON)."""
    status, headers, raw = request(method, url, body, timeout)
    try:
        parsed = json.loads(raw or b"null")
    except ValueError:
        parsed = raw.decode(errors="replace")
    return status, headers, parsed


def wait_for(check, within, what, dump=None):
    """Polls `check` every 20 ms until it is true (its time) or `within` seconds passed
    (then exits, after printing `dump()` when given)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if check():
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.02)
    if dump:
        print(json.dumps(dump(), indent=1), file=sys.stderr)
    sys.exit(f"{os.path.basename(sys.argv[0])}: {what} did not happen within {within} s")


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def metrics(url):
    """The samples of a Prometheus text page: {'name{labels}': value}."""
    _, _, raw = request("GET", url + "/metrics")
    samples = {}
    for line in raw.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                samples[key] = float(value)
            except ValueError:
                pass
    return samples


def counters(samples, name):
    """{labels: value} of the samples of `name` (labels as written, '' when none)."""
    out = {}
    for key, value in samples.items():
        base, _, labels = key.partition("{")
        if base == name:
            out[labels.rstrip("}")] = value
    return out


def cpu_seconds(pid):
    """User + system CPU seconds `pid` has used (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Node:
    def __init__(self, bin_dir, name, root, peers_p2p):
        self.bin = os.path.join(bin_dir, "bzzz-node")
        self.name = name
        self.http_port = free_port()
        self.p2p_port = free_port()
        self.dir = os.path.join(root, name)
        self.peers = peers_p2p
        self.proc = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.http_port}"

    def start(self):
        env = {
            "PATH": os.environ.get("PATH", ""),
            "BZZZ_HTTP_ADDR": f"127.0.0.1:{self.http_port}",
            "BZZZ_P2P_ADDR": f"/ip4/127.0.0.1/tcp/{self.p2p_port}",
            "BZZZ_BOOTSTRAP_PEERS": ",".join(self.peers),
            "BZZZ_DATA_DIR": self.dir,
            "BZZZ_NODE_NAME": self.name,
            "RUST_LOG": "warn",
        }
        self.proc = spawn([self.bin], env=env, stdout=subprocess.DEVNULL)

    def healthy(self):
        return http("GET", self.url + "/health", timeout=1)[0] == 200

    def sigstop(self):
        """Hung: the kernel still accepts its connections, the process answers nothing."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def sigcont(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self):
        stop(self.proc)
        self.proc = None


def start_nodes(bin_dir, root, count=3, within=30):
    """`count` nodes, each bootstrapping from all, started and healthy."""
    nodes = [Node(bin_dir, f"bzzz-{i + 1}", root, []) for i in range(count)]
    for node in nodes:
        node.peers = [f"/ip4/127.0.0.1/tcp/{n.p2p_port}" for n in nodes]
    for node in nodes:
        node.start()
    wait_for(lambda: all(n.healthy() for n in nodes), within, "nodes healthy")
    return nodes


class Gateway:
    """The gateway on a free port, `mode` (hybrid by default) in front of `endpoints`, its
    log appended to gateway.log beside the journal directory; `env` adds settings."""

    def __init__(self, bin_dir, endpoints, journal, mode="hybrid", env=None):
        self.bin = os.path.join(bin_dir, "rustle-gateway")
        self.port = free_port()
        self.endpoints = endpoints
        self.journal = journal
        self.mode = mode
        self.env = dict(env or {})
        self.proc = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self):
        return os.path.join(os.path.dirname(self.journal), "gateway.log")

    def start(self):
        env = {
            "PATH": os.environ.get("PATH", ""),
            "RUSTLE_LISTEN_ADDR": f"127.0.0.1:{self.port}",
            "RUSTLE_BACKEND_MODE": self.mode,
            "RUSTLE_BZZZ_ENDPOINTS": ",".join(self.endpoints),
            "RUSTLE_JOURNAL_DIR": self.journal,
            "RUST_LOG": "info",
        }
        env.update(self.env)
        with open(self.log_path, "a") as log:
            self.proc = spawn([self.bin], env=env, stdout=log)
        wait_for(lambda: http("GET", self.url + "/health", timeout=1)[0] == 200, 30, "gateway start")

    def status(self):
        return http("GET", self.url + "/v1/status")[2]["response"]["data"]

    def metrics(self):
        return metrics(self.url)

    def sigkill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        stop(self.proc)
        self.proc = None


class Proxy:
    """tcpproxy.py in its own process (so it competes with no client thread for the
    interpreter): one listener per target, `url(i)` in front of `targets[i]`."""

    def __init__(self, targets, delay_ms=0):
        argv = [sys.executable, os.path.join(HERE, "tcpproxy.py"), "--delay-ms", str(delay_ms)]
        argv += [t.split("://")[-1] for t in targets]
        self.proc = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lock = threading.Lock()
        first = self.proc.stdout.readline()
        if not first:
            sys.exit("tcpproxy.py did not start")
        self.ports = json.loads(first)["listen"]

    def url(self, i):
        return f"http://127.0.0.1:{self.ports[i]}"

    def _command(self, line):
        with self.lock:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline()
        if not answer:
            sys.exit("tcpproxy.py exited")
        return json.loads(answer)

    def set_delay(self, i, ms):
        self._command(f"delay {i} {ms}")

    def events(self):
        """The requests forwarded since the last call: [(monotonic t, listener, method,
        path)], t on the same clock as time.monotonic() here."""
        return [tuple(e) for e in self._command("events")]

    def stop(self):
        stop(self.proc)

#!/usr/bin/env python3
"""Tools nobody here wrote, run against the real binaries (part of .ci/run).

  schemathesis  the gateway (local backend, admin token set) against its own /openapi.json:
                every check, a bounded number of examples per operation, a fixed seed
  promtool      `promtool check metrics` on the /metrics of a node and of a gateway in front
                of it (after traffic, so every labelled series exists), then
                `promtool check rules` and `promtool test rules` on docker/prometheus/

  mcp           the official MCP Python SDK (scripts/mcp_client.py) against /mcp of a
                gateway (local backend, credentials required): every tool, resources, tool
                errors, a forbidden write and a call without credentials; then against
                two hybrid gateways over three real nodes, requests alternating

  sse           SSE clients nobody here wrote (httpx + httpx-sse, scripts/sse_client.py)
                against GET /v1/watch of two hybrid gateways over three real nodes: every
                change once with the write's data, resume by Last-Event-ID at the same and
                at the other gateway, initial=true and synced, refusals (400, 410 in the
                stream, 503 beyond RUSTLE_MAX_WATCHES) and keep-alive comments

Binaries come from target/<profile>/ (PROFILE=debug by default: the ones `cargo test`
built), or from BIN_DIR when set. ST_CONFIG replaces schemathesis.toml. Processes are started on port 0 and found through the address they log; they are
stopped on exit. Python standard library only.
"""

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.parse

from netutil import request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILE = os.environ.get("PROFILE", "debug")
BIN = os.environ.get("BIN_DIR") or os.path.join(ROOT, "target", PROFILE)
API_KEY = "rk_schemathesis-key-that-may-do-everything-0123456789"
# Examples per operation and the seed: a few minutes on 2 cores, the same inputs every run.
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "60"))
SEED = os.environ.get("SCHEMATHESIS_SEED", "20261125")
# Seconds a started binary has to log that it is ready.
READY_WITHIN = 60


def log(msg):
    print(f"adversarial: {msg}", flush=True)


class Service:
    """A binary started with `env`, ready once it logs `message` (JSON logs); its address
    is that line's `field`."""

    def __init__(self, name, env, message, field):
        self.name = name
        full = {"PATH": os.environ.get("PATH", ""), "RUST_LOG": "info"}
        full.update(env)
        self.proc = subprocess.Popen([os.path.join(BIN, name)], env=full,
                                     stdout=subprocess.PIPE, text=True)
        self.addr = None
        # A binary that neither gets ready nor exits must not hang CI: kill it after a
        # minute, which ends the read below.
        watchdog = threading.Timer(READY_WITHIN, self.proc.kill)
        watchdog.start()
        for line in self.proc.stdout:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            fields = entry.get("fields", {})
            if fields.get("message") == message:
                self.addr = fields.get(field)
                break
        watchdog.cancel()
        if not self.addr:
            self.stop()
            sys.exit(f"adversarial: {name} exited, or was not ready within {READY_WITHIN} s")
        # Keep draining its output so it never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    @property
    def url(self):
        return f"http://{self.addr}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def call(method, url, body=None):
    status, _, raw = request(method, url, body)
    return status, raw.decode(errors="replace")


def schemathesis(workdir):
    if importlib.util.find_spec("schemathesis") is None:
        sys.exit("adversarial: schemathesis is not installed (pip install schemathesis)")
    # Authentication on, with a key that may do everything, so every operation is
    # exercised behind the same checks users get.
    policy = os.path.join(workdir, "policy.toml")
    with open(policy, "w") as f:
        f.write(f"""[[principals]]
name = "schemathesis"
key_sha256 = "{hashlib.sha256(API_KEY.encode()).hexdigest()}"
roles = ["all"]

[roles.all]
grants = [{{ ops = ["read", "search", "write", "delete", "watch", "admin"], pattern = "ucxl://any:any@any:any/**" }}]
""")
    gateway = Service("rustle-gateway", {
        "RUSTLE_LISTEN_ADDR": "127.0.0.1:0",
        "RUSTLE_BACKEND_MODE": "mock",
        "RUSTLE_AUTH_POLICY": policy,
        "RUSTLE_AUDIT_LOG": "off",
        "RUSTLE_DATA_DIR": workdir,
        "RUSTLE_JOURNAL_DIR": os.path.join(workdir, "journal"),
        "RUST_LOG": "warn,rustle_gateway=info",
    }, "listening", "addr")
    try:
        argv = [sys.executable, "-m", "schemathesis.cli", "--no-color",
                "--config-file", os.environ.get('ST_CONFIG') or os.path.join(ROOT, 'schemathesis.toml'), "run", f"{gateway.url}/openapi.json",
                "--checks", "all",
                "--max-examples", str(MAX_EXAMPLES),
                "--seed", SEED,
                # One worker: with two, hypothesis's lambda descriptions call ast.parse from
                # two threads, which CPython 3.11 does not survive ("AST constructor recursion
                # depth mismatch"); the run takes seconds either way.
                "--workers", "1",
                "--header", f"Authorization: Bearer {API_KEY}",
                "--request-timeout", "10",
                "--report", "junit",
                "--report-dir", os.path.join(workdir, "schemathesis-report"),
                "--suppress-health-check", "too_slow",
                "--generation-database", "none"]
        log(" ".join(argv))
        code = subprocess.run(argv, cwd=workdir).returncode
    finally:
        gateway.stop()
    if code != 0:
        sys.exit(f"adversarial: schemathesis failed (exit {code})")
    log("schemathesis: no failures")


def promtool(workdir):
    tool = shutil.which("promtool")
    if not tool:
        sys.exit("adversarial: promtool is not installed (Debian package prometheus)")
    node = Service("bzzz-node", {
        "BZZZ_HTTP_ADDR": "127.0.0.1:0",
        "BZZZ_P2P_ADDR": "/ip4/127.0.0.1/tcp/0",
        "BZZZ_DATA_DIR": os.path.join(workdir, "node"),
        "BZZZ_NODE_NAME": "promtool",
    }, "ready", "http")
    gateway = None
    try:
        gateway = Service("rustle-gateway", {
            "RUSTLE_LISTEN_ADDR": "127.0.0.1:0",
            "RUSTLE_BACKEND_MODE": "hybrid",
            "RUSTLE_BZZZ_ENDPOINTS": node.url,
            "RUSTLE_JOURNAL_DIR": os.path.join(workdir, "journal"),
        }, "listening", "addr")
        # Traffic, so the labelled series (requests, attempts, search) exist.
        address = urllib.parse.quote("ucxl://agent:ci@promtool:check/notes/a", safe="")
        for method, path, body in [
            ("PUT", f"/v1/envelopes?address={address}", {"content": {"n": 1}}),
            ("GET", f"/v1/envelopes?address={address}", None),
            ("GET", f"/v1/envelopes/history?address={address}", None),
            ("GET", "/v1/search?pattern=" + urllib.parse.quote("ucxl://*:*@promtool:*/**", safe=""), None),
            ("GET", "/v1/envelopes?address=not-an-address", None),
            ("GET", "/v1/status", None),
        ]:
            status, text = call(method, gateway.url + path, body)
            if status >= 500:
                sys.exit(f"adversarial: {method} {path} answered {status}: {text}")
        failed = False
        for name, url in [("gateway", gateway.url), ("node", node.url)]:
            status, text = call("GET", url + "/metrics")
            if status != 200:
                sys.exit(f"adversarial: {name} /metrics answered {status}")
            out = subprocess.run([tool, "check", "metrics"], input=text, text=True,
                                 capture_output=True)
            report = (out.stdout + out.stderr).strip()
            series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
            if out.returncode != 0 or report:
                failed = True
                log(f"promtool check metrics: {name}: problems:\n{report}")
            else:
                log(f"promtool check metrics: {name}: clean ({series} samples)")
        if failed:
            sys.exit(1)
    finally:
        if gateway:
            gateway.stop()
        node.stop()
    rules = os.path.join(ROOT, "docker", "prometheus")
    for argv in ([tool, "check", "rules", "alerts.yml"],
                 [tool, "check", "config", "prometheus.yml"],
                 [tool, "test", "rules", "alerts.test.yml"]):
        log(" ".join(argv[1:]))
        if subprocess.run(argv, cwd=rules).returncode != 0:
            sys.exit(f"adversarial: {' '.join(argv[1:])} failed")


READER_KEY = "rk_mcp-reader-key-that-may-only-read-0123456789"


def mcp(workdir):
    if importlib.util.find_spec("mcp") is None:
        sys.exit("adversarial: the MCP Python SDK is not installed (pip install mcp)")
    policy = os.path.join(workdir, "mcp-policy.toml")
    with open(policy, "w") as f:
        f.write(f"""[[principals]]
name = "agent"
key_sha256 = "{hashlib.sha256(API_KEY.encode()).hexdigest()}"
roles = ["all"]

[[principals]]
name = "reader"
key_sha256 = "{hashlib.sha256(READER_KEY.encode()).hexdigest()}"
roles = ["reader"]

[roles.all]
grants = [{{ ops = ["read", "search", "write", "delete"], pattern = "ucxl://any:any@any:any/**" }}]

[roles.reader]
grants = [{{ ops = ["read"], pattern = "ucxl://any:any@any:any/**" }}]
""")
    data = os.path.join(workdir, "mcp-data")
    gateway = Service("rustle-gateway", {
        "RUSTLE_LISTEN_ADDR": "127.0.0.1:0",
        "RUSTLE_BACKEND_MODE": "mock",
        "RUSTLE_AUTH": "required",
        "RUSTLE_AUTH_POLICY": policy,
        "RUSTLE_AUDIT_LOG": "off",
        "RUSTLE_DATA_DIR": data,
        "RUSTLE_JOURNAL_DIR": os.path.join(data, "journal"),
        "RUST_LOG": "warn,rustle_gateway=info",
    }, "listening", "addr")
    try:
        argv = [sys.executable, os.path.join(ROOT, "scripts", "mcp_client.py"),
                "--url", f"{gateway.url}/mcp", "--key", API_KEY, "--reader-key", READER_KEY]
        log("mcp_client.py against a mock-mode gateway")
        if subprocess.run(argv, timeout=300).returncode != 0:
            sys.exit("adversarial: the MCP client's checks failed")
    finally:
        gateway.stop()
    mcp_hybrid(workdir, policy)


def mcp_hybrid(workdir, policy):
    """The same client against two hybrid gateways over three real nodes, its requests
    alternating between the gateways."""
    import cluster
    cluster.install_cleanup()
    root = os.path.join(workdir, "mcp-cluster")
    os.makedirs(root)
    nodes = cluster.start_nodes(BIN, root)
    gateways = []
    try:
        for name in ("a", "b"):
            os.makedirs(os.path.join(root, name))
            gateway = cluster.Gateway(BIN, [n.url for n in nodes],
                                      os.path.join(root, name, "journal"), env={
                                          "RUSTLE_AUTH": "required",
                                          "RUSTLE_AUTH_POLICY": policy,
                                          "RUSTLE_AUDIT_LOG": "off",
                                          "RUST_LOG": "warn",
                                      })
            gateway.start()
            gateways.append(gateway)
        argv = [sys.executable, os.path.join(ROOT, "scripts", "mcp_client.py"),
                "--url", f"{gateways[0].url}/mcp", "--also-url", f"{gateways[1].url}/mcp",
                "--key", API_KEY, "--reader-key", READER_KEY]
        log("mcp_client.py against two hybrid gateways over three nodes, alternating")
        if subprocess.run(argv, timeout=300).returncode != 0:
            sys.exit("adversarial: the MCP client's checks failed (hybrid)")
    finally:
        for gateway in gateways:
            gateway.stop()
        for node in nodes:
            node.kill()


# The sse stage's settings: keep-alives often enough to be seen (and to let the gateway
# notice closed streams quickly), and a stream limit small enough to reach.
SSE_HEARTBEAT_MS = 200
SSE_MAX_WATCHES = 6


def sse(workdir):
    """scripts/sse_client.py (httpx + httpx-sse) against GET /v1/watch of two hybrid
    gateways over three real nodes."""
    if importlib.util.find_spec("httpx_sse") is None:
        sys.exit("adversarial: httpx-sse is not installed (pip install httpx httpx-sse)")
    import cluster
    cluster.install_cleanup()
    root = os.path.join(workdir, "sse-cluster")
    os.makedirs(root)
    nodes = cluster.start_nodes(BIN, root)
    gateways = []
    try:
        for name in ("a", "b"):
            os.makedirs(os.path.join(root, name))
            gateway = cluster.Gateway(BIN, [n.url for n in nodes],
                                      os.path.join(root, name, "journal"), env={
                                          "RUSTLE_AUDIT_LOG": "off",
                                          "RUSTLE_WATCH_HEARTBEAT_MS": str(SSE_HEARTBEAT_MS),
                                          "RUSTLE_MAX_WATCHES": str(SSE_MAX_WATCHES),
                                          "RUST_LOG": "warn",
                                      })
            gateway.start()
            gateways.append(gateway)
        argv = [sys.executable, os.path.join(ROOT, "scripts", "sse_client.py"),
                "--url", gateways[0].url, "--also-url", gateways[1].url,
                "--heartbeat-ms", str(SSE_HEARTBEAT_MS),
                "--max-watches", str(SSE_MAX_WATCHES)]
        log("sse_client.py against two hybrid gateways over three nodes")
        try:
            code = subprocess.run(argv, timeout=180).returncode
        except subprocess.TimeoutExpired:
            sys.exit("adversarial: the SSE client did not finish within 180 s")
        if code != 0:
            for gateway in gateways:
                log(f"{gateway.log_path}:")
                with open(gateway.log_path) as f:
                    print(f.read()[-4000:], flush=True)
            sys.exit("adversarial: the SSE client's checks failed")
    finally:
        for gateway in gateways:
            gateway.stop()
        for node in nodes:
            node.kill()


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["schemathesis", "promtool", "mcp", "sse", "all"])
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="adversarial-") as workdir:
        if args.stage in ("promtool", "all"):
            promtool(workdir)
        if args.stage in ("schemathesis", "all"):
            schemathesis(workdir)
        if args.stage in ("mcp", "all"):
            mcp(workdir)
        if args.stage in ("sse", "all"):
            sse(workdir)


if __name__ == "__main__":
    main()

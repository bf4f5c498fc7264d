#!/usr/bin/env python3
"""The failure drill of issue 4, as a new user would run it (not a test: it prints figures).

Three bzzz-node processes and the gateway (hybrid mode, default resilience settings) on
loopback, 8 clients writing steadily, then:

  1. kill one node (SIGKILL)             -> no client sees an error
  2. kill the other two                  -> writes answered 202 (fallback); once every
                                            breaker is open, fallback write latency
  3. SIGKILL the gateway, restart it     -> the journal is intact (pending count kept)
  4. restart the three nodes             -> time from their health to real traffic with an
                                            empty journal
  5. stop the clients                    -> every acknowledged write is read back from the
                                            cluster

Usage: scripts/drill.py [--bin-dir target/release] [--phase-seconds 4]
Build first: cargo build --release -p bzzz-node -p rustle-gateway
Only the Python standard library is used.
"""

import argparse
import os
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

from cluster import Gateway, Node, http, install_cleanup, percentile, wait_for

CLIENTS = 8
# Each client writes steadily at this rate (writes per second).
RATE = 50


class Clients:
    """8 threads writing one new address each time; every answer is recorded."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.log = []  # (t, status, backend, latency_s, address, id)
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(CLIENTS)]

    def run(self, client):
        n = 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            next_at += 1.0 / RATE
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            n += 1
            address = f"ucxl://drill:client{client}@bzzz:drill/writes/{n}"
            url = self.gateway.url + "/v1/envelopes?address=" + urllib.parse.quote(address, safe="")
            started = time.monotonic()
            try:
                status, headers, body = http("PUT", url, {"content": {"client": client, "n": n}})
                backend = headers.get("x-rustle-backend", headers.get("X-Rustle-Backend", ""))
                envelope_id = body["response"]["data"]["id"] if status in (200, 201, 202) else None
            except OSError:
                status, backend, envelope_id = 0, "", None  # the gateway is down (restart)
                time.sleep(0.01)
            elapsed = time.monotonic() - started
            with self.lock:
                self.log.append((started, status, backend, elapsed, address, envelope_id))

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()

    def since(self, t0, t1=None):
        with self.lock:
            return [e for e in self.log if e[0] >= t0 and (t1 is None or e[0] < t1)]


def summary(entries):
    by_status = {}
    for e in entries:
        by_status[e[1]] = by_status.get(e[1], 0) + 1
    ms = [e[3] * 1e3 for e in entries if e[1] in (200, 201, 202)]
    return by_status, percentile(ms, 0.5), percentile(ms, 0.99)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", default="target/release")
    parser.add_argument("--phase-seconds", type=float, default=4.0)
    args = parser.parse_args()
    install_cleanup()
    phase = args.phase_seconds
    root = tempfile.mkdtemp(prefix="rustle-drill-")
    print(f"drill: work directory {root} (gateway.log is there)")
    journal = os.path.join(root, "journal")

    nodes = []
    for i in range(3):
        nodes.append(Node(args.bin_dir, f"bzzz-{i + 1}", root, []))
    for node in nodes:
        node.peers = [f"/ip4/127.0.0.1/tcp/{n.p2p_port}" for n in nodes]
    for node in nodes:
        node.start()
    wait_for(lambda: all(n.healthy() for n in nodes), 30, "nodes healthy")
    gateway = Gateway(args.bin_dir, [n.url for n in nodes], journal)
    gateway.start()
    clients = Clients(gateway)
    figures = {}
    try:
        clients.start()
        t0 = time.monotonic()
        time.sleep(phase)
        figures["baseline"] = summary(clients.since(t0))

        # 1. one node dies
        t1 = time.monotonic()
        nodes[2].kill()
        time.sleep(phase)
        figures["one node killed"] = summary(clients.since(t1))

        # 2. the whole cluster dies
        t2 = time.monotonic()
        nodes[0].kill()
        nodes[1].kill()
        open_at = wait_for(
            lambda: all(not e["available"] for e in gateway.status()["endpoints"]),
            30,
            "every endpoint unavailable",
        )
        figures["entering fallback"] = summary(clients.since(t2, open_at))
        figures["fallback entry seconds"] = open_at - t2
        time.sleep(phase)
        figures["fallback, breakers open"] = summary(clients.since(open_at))

        # 3. SIGKILL the gateway during the outage and restart it
        pending_before = gateway.status()["journal"]["pending"]
        gateway.sigkill()
        killed_at = time.monotonic()
        # Writes acknowledged before the kill; the in-flight ones may or may not have landed.
        acknowledged_202 = sum(1 for e in clients.since(t2, killed_at) if e[1] == 202)
        gateway.start()
        pending_after = gateway.status()["journal"]["pending"]
        figures["journal pending before SIGKILL"] = pending_before
        figures["journal pending after restart"] = pending_after
        figures["202 answers before SIGKILL"] = acknowledged_202
        figures["gateway down (client connection errors)"] = sum(
            1 for e in clients.since(killed_at) if e[1] == 0
        )
        time.sleep(phase / 2)

        # 4. the nodes come back
        for node in nodes:
            node.start()
        healthy_at = wait_for(lambda: all(n.healthy() for n in nodes), 60, "nodes healthy again")

        first_real = wait_for(
            lambda: any(e[2] == "real" for e in clients.since(healthy_at)),
            60,
            "a write served by the cluster",
        )
        figures["node health -> first write served by the cluster (s)"] = first_real - healthy_at

        def back_on_real():
            s = gateway.status()
            if s["journal"]["pending"] != 0 or s["fallback"]["active"]:
                return False
            recent = clients.since(time.monotonic() - 0.2)
            return bool(recent) and all(e[2] == "real" for e in recent[-CLIENTS:])

        real_at = wait_for(back_on_real, 60, "real traffic with an empty journal", gateway.status)
        figures["node health -> journal replayed and empty (s)"] = real_at - healthy_at
        with urllib.request.urlopen(gateway.url + "/metrics", timeout=10) as r:
            metrics = r.read().decode()
        replayed = [l.split()[-1] for l in metrics.splitlines() if l.startswith("rustle_journal_replayed_total")]
        figures["journal entries replayed (since restart)"] = replayed[0] if replayed else "?"
        time.sleep(phase)
        figures["after recovery"] = summary(clients.since(real_at))
    finally:
        clients.finish()

    # 5. every acknowledged write is on the cluster (read from the nodes, not the gateway)
    acknowledged = [e for e in clients.log if e[1] in (200, 201, 202)]
    missing = []
    for i, (_, _, _, _, address, envelope_id) in enumerate(acknowledged):
        node = nodes[i % 3]
        url = node.url + "/ucxi/v1/get?address=" + urllib.parse.quote(address, safe="")
        status, _, body = http("GET", url)
        if status != 200 or body["response"]["data"]["id"] != envelope_id:
            missing.append((address, status))
    figures["acknowledged writes"] = len(acknowledged)
    figures["acknowledged writes missing on the cluster"] = len(missing)

    gateway.sigkill()
    for node in nodes:
        node.kill()

    print("RUSTLE Gateway failure drill (3 nodes, hybrid mode, 8 writers, default settings)")
    for key, value in figures.items():
        if isinstance(value, tuple):
            by_status, p50, p99 = value
            statuses = ", ".join(f"{k}: {v}" for k, v in sorted(by_status.items()))
            print(f"  {key:48} answers {{{statuses}}}  p50 {p50:.2f} ms  p99 {p99:.2f} ms")
        elif isinstance(value, float):
            print(f"  {key:48} {value:.3f}")
        else:
            print(f"  {key:48} {value}")
    if missing:
        print("  first missing:", missing[:5])
        sys.exit(1)


if __name__ == "__main__":
    main()

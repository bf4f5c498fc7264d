#!/usr/bin/env python3
"""Gray failures: nodes that are slow or hung rather than dead (not a test: it prints
figures, each against the target of the issue "Gray failures: slow and hung nodes, hedged
reads, fast recovery", PASS or MISS).

Three bzzz-node processes and the gateway (hybrid mode, default settings) on loopback; each
scenario starts its own cluster in a fresh directory:

  slow      node 3 answers 150 ms late (a delaying TCP proxy, tcpproxy.py, in front of it;
            its health checks pass). Every node is behind such a proxy, the other two with
            no delay, so the all-healthy baseline is measured the same way and the proxies
            count what each node was sent. ~300 addresses seeded through the gateway (about
            a third of them written through node 3), then 8 closed-loop readers for 1 s of
            warm-up (not counted: node 3's latency is not known yet) and 10 s measured,
            first with no delay (the baseline), then with node 3 slow. A ninth client
            writes then reads its own address (read-your-writes).
  hung      node 3 SIGSTOPped (the kernel accepts its connections, nothing answers) 4 s
            into 15 s of open-loop mixed load (200 req/s, 70% reads, 30% writes of ~300
            seeded addresses, a third of them last written through node 3), SIGCONT at the
            end. Every node behind a proxy with no delay, to see when the gateway stopped
            sending to node 3.
  all-hung  every node SIGSTOPped for 10 s under writes (16 clients, 10 new addresses a
            second each, X-Request-Timeout-Ms: 3000), SIGCONT, the journal drained, then
            every write read back from the nodes: each acknowledged one present, each
            failed one (4xx, 5xx, no answer) absent.
  recovery  every node SIGSTOPped, 20,000 writes journaled (16 clients), SIGCONT: the time
            to an empty journal and fallback left, while another client writes 50 new
            addresses a second; then the 20,000 read back from the nodes.

Usage: scripts/gray.py [slow|hung|all-hung|recovery|all] [--bin-dir DIR] [--keep]
       (--help for each scenario's knobs: delay, readers, rate, deadline, journal size)
Build first: cargo build --release -p bzzz-node -p rustle-gateway (binaries from
target/release, or --bin-dir / BIN_DIR). Each scenario takes under 30 s here.
Latencies are measured by Python clients on kept-alive connections, sharing the two cores
with the gateway, the nodes and the proxy. Every process started is stopped on exit.
Python standard library only.
"""

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse

from cluster import (Gateway, Proxy, counters, cpu_seconds, install_cleanup, percentile, start_nodes, stop_all,
                     wait_for)
from netutil import Client

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OK = (200, 201, 202)


def log(msg):
    print(f"gray: {msg}", file=sys.stderr, flush=True)


def verdict(ok):
    return "PASS" if ok else "MISS"


def table(title, header, rows):
    print()
    print(title)
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    sys.stdout.flush()


def ms(seconds):
    return f"{seconds * 1e3:.1f} ms"


def share(part, whole):
    return f"{100.0 * part / whole:.1f}% ({part}/{whole})" if whole else "-"


def quoted(address):
    return urllib.parse.quote(address, safe="")


def put(client, address, content, deadline_ms=None, timeout=10):
    """(status, headers, envelope id or None)."""
    headers = {"X-Request-Timeout-Ms": str(deadline_ms)} if deadline_ms else None
    status, head, raw = client.request(
        "PUT", "/v1/envelopes?address=" + quoted(address), {"content": content}, headers, timeout
    )
    return status, head, envelope_id(status, raw)


def get(client, path, address, timeout=10):
    status, head, raw = client.request("GET", path + "?address=" + quoted(address), timeout=timeout)
    return status, head, envelope_id(status, raw)


def envelope_id(status, raw):
    if status not in OK:
        return None
    try:
        return json.loads(raw)["response"]["data"]["id"]
    except (ValueError, KeyError, TypeError):
        return None


class Poller(threading.Thread):
    """Samples the gateway's /v1/status every `every` seconds: [(t, data)]."""

    def __init__(self, gateway, every=0.05):
        super().__init__(daemon=True)
        self.client = Client(gateway.url, timeout=2)
        self.every = every
        self.samples = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            t = time.monotonic()
            try:
                status, _, raw = self.client.request("GET", "/v1/status")
                if status == 200:
                    self.samples.append((t, json.loads(raw)["response"]["data"]))
            except (OSError, ValueError):
                pass
            self.halt.wait(self.every)

    def stop(self):
        self.halt.set()
        self.join()

    def first(self, predicate, after):
        """The time of the first sample at or after `after` where `predicate(data)`."""
        for t, data in list(self.samples):
            if t >= after and predicate(data):
                return t
        return None


def endpoint(data, url):
    return next(e for e in data["endpoints"] if e["url"] == url)


def since(t, t0):
    return f"{t - t0:+.2f} s" if t is not None else "never"


class Scenario:
    """A fresh directory, three nodes (optionally each behind a proxy), one gateway."""

    def __init__(self, args, name, proxied, gateway_env=None):
        self.args = args
        self.name = name
        self.root = tempfile.mkdtemp(prefix=f"rustle-gray-{name}-")
        log(f"{name}: work directory {self.root} (gateway.log is there)")
        self.nodes = start_nodes(args.bin_dir, self.root)
        self.proxy = Proxy([n.url for n in self.nodes]) if proxied else None
        if self.proxy:
            self.endpoints = [self.proxy.url(i) for i in range(3)]
        else:
            self.endpoints = [n.url for n in self.nodes]
        self.gateway = Gateway(args.bin_dir, self.endpoints, os.path.join(self.root, "journal"), env=gateway_env)
        self.gateway.start()
        wait_for(
            lambda: all(e["up"] and e["available"] for e in self.gateway.status()["endpoints"]),
            30,
            "every endpoint up at the gateway",
        )

    def address(self, role, i):
        return f"ucxl://gray:{role}@bzzz:{self.name}/{role}/{i}"

    def seed(self, count, min_node3, threads=4):
        """Writes new addresses until `min_node3` went through node 3 and `count - min_node3`
        through the others (at most 3 × count in all): {address: (endpoint url, id)}."""
        written = {}
        errors = []
        lock = threading.Lock()
        counter = iter(range(3 * count))

        def enough():
            n3 = sum(1 for e, _ in written.values() if e == self.endpoints[2])
            return n3 >= min_node3 and len(written) - n3 >= count - min_node3

        def run():
            client = Client(self.gateway.url)
            while True:
                with lock:
                    if enough():
                        return
                    i = next(counter, None)
                if i is None:
                    return
                address = self.address("seed", i)
                try:
                    status, head, eid = put(client, address, {"seed": i})
                except OSError as e:
                    status, head, eid = str(e), {}, None
                with lock:
                    if status == 201:
                        written[address] = (head.get("x-rustle-endpoint"), eid)
                    else:
                        errors.append((address, status))
                        return

        workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if errors:
            sys.exit(f"gray: seeding failed: {errors[:3]}")
        return written

    def close(self):
        stop_all()
        if not self.args.keep:
            shutil.rmtree(self.root, ignore_errors=True)


# --- slow ---------------------------------------------------------------------------------


def read_phase(sc, tag, addresses, node3_addresses, readers, warmup, seconds):
    """Closed-loop readers for `warmup` + `seconds`; figures of the measured part."""
    gw = sc.gateway
    halt = threading.Event()
    lock = threading.Lock()
    reads = []  # (start, latency, status, endpoint, address, attempts)
    ryw = []  # (start, write endpoint, write status, written id, read status, read id)

    def reader(seed):
        rng = random.Random(seed)
        client = Client(gw.url)
        while not halt.is_set():
            address = rng.choice(addresses)
            start = time.monotonic()
            try:
                status, head, _ = get(client, "/v1/envelopes", address)
                ep, attempts = head.get("x-rustle-endpoint"), head.get("x-rustle-attempts")
            except OSError:
                status, ep, attempts = 0, None, None
            elapsed = time.monotonic() - start
            with lock:
                reads.append((start, elapsed, status, ep, address, attempts))

    def read_your_writes():
        client = Client(gw.url)
        i = 0
        while not halt.is_set():
            i += 1
            address = sc.address(f"ryw-{tag}", i)
            start = time.monotonic()
            try:
                wstatus, whead, wid = put(client, address, {"ryw": i})
                rstatus, _, rid = get(client, "/v1/envelopes", address)
            except OSError:
                wstatus, whead, wid, rstatus, rid = 0, {}, None, 0, None
            with lock:
                ryw.append((start, whead.get("x-rustle-endpoint"), wstatus, wid, rstatus, rid))
            time.sleep(0.02)

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(readers)]
    threads.append(threading.Thread(target=read_your_writes, daemon=True))
    for t in threads:
        t.start()
    time.sleep(warmup)
    t_w = time.monotonic()
    m0 = gw.metrics()
    sc.proxy.events()  # what the warm-up sent
    time.sleep(seconds)
    t_e = time.monotonic()
    m1 = gw.metrics()
    events = sc.proxy.events()
    halt.set()
    for t in threads:
        t.join()

    window = [r for r in reads if t_w <= r[0] < t_e]
    n3 = sc.endpoints[2]

    def sent_address(e):
        return urllib.parse.parse_qs(urllib.parse.urlsplit(e[3]).query).get("address", [""])[0]

    # The node reads of the readers' addresses (not the read-your-writes client's).
    read_set = set(addresses)
    sent = [e for e in events if t_w <= e[0] < t_e and e[2] == "GET" and e[3].startswith("/ucxi/v1/get?")
            and sent_address(e) in read_set]
    sent_n3 = [e for e in sent if e[1] == 2]
    sent_aff = [e for e in sent if sent_address(e) in node3_addresses]
    aff = [r for r in window if r[4] in node3_addresses]
    ok = [r for r in window if r[2] == 200]
    hedges = {}
    for labels, value in counters(m1, "rustle_hedges_total").items():
        hedges[labels] = value - counters(m0, "rustle_hedges_total").get(labels, 0.0)
    ryw_window = [w for w in ryw if t_w <= w[0] < t_e]
    # Per second of the window: the share of node-3-written addresses' reads node 3 answered.
    timeline = []
    for second in range(int(seconds)):
        part = [r for r in aff if t_w + second <= r[0] < t_w + second + 1]
        timeline.append(f"{100.0 * sum(1 for r in part if r[3] == n3) / len(part):.0f}" if part else "-")
    return {
        "aff_timeline": " ".join(timeline),
        "reads": len(window),
        "rate": len(window) / (t_e - t_w),
        "failures": sum(1 for r in window if r[2] != 200),
        "p50": percentile([r[1] for r in ok], 0.5),
        "p99": percentile([r[1] for r in ok], 0.99),
        "answered": {url: sum(1 for r in window if r[3] == url) for url in sc.endpoints},
        "sent": len(sent),
        "sent_n3": len(sent_n3),
        "aff_reads": len(aff),
        "aff_answered_n3": sum(1 for r in aff if r[3] == n3),
        "aff_sent": len(sent_aff),
        "aff_sent_n3": sum(1 for e in sent_aff if e[1] == 2),
        "aff_p50": percentile([r[1] for r in aff if r[2] == 200], 0.5),
        "aff_p99": percentile([r[1] for r in aff if r[2] == 200], 0.99),
        "multi_attempt": sum(1 for r in window if r[5] not in (None, "1")),
        "hedges": hedges,
        "ryw": len(ryw_window),
        "ryw_stale": sum(1 for w in ryw_window if w[2] != 201 or w[4] != 200 or w[3] != w[5]),
        "ryw_via_n3": sum(1 for w in ryw_window if w[1] == n3),
    }


def scenario_slow(args):
    sc = Scenario(args, "slow", proxied=True)
    try:
        seeded = sc.seed(300, 100)
        n3 = sc.endpoints[2]
        # Exactly a third of the addresses read were last written through node 3.
        node3_addresses = sorted(a for a, (e, _) in seeded.items() if e == n3)[:100]
        addresses = sorted(node3_addresses + sorted(a for a, (e, _) in seeded.items() if e != n3)[:200])
        node3_addresses = set(node3_addresses)
        log(f"slow: {len(seeded)} addresses seeded, {len(node3_addresses)} written through node 3")
        log("slow: baseline (no delay)")
        base = read_phase(sc, "base", addresses, node3_addresses, args.readers, 1.0, args.seconds)
        sc.proxy.set_delay(2, args.delay_ms)
        poller = Poller(sc.gateway, 0.2)
        poller.start()
        log(f"slow: node 3 answering {args.delay_ms:.0f} ms late")
        slow = read_phase(sc, "slow", addresses, node3_addresses, args.readers, 1.0, args.seconds)
        poller.stop()
        sc.proxy.set_delay(2, 0)
        n3_up = [endpoint(d, n3)["up"] for _, d in poller.samples]
        last = poller.samples[-1][1] if poller.samples else {"endpoints": []}
        n3_status = endpoint(last, n3) if poller.samples else {}
        ewma = " / ".join(f"{endpoint(last, url)['ewma_latency_ms']:.1f}" for url in sc.endpoints) if poller.samples else "?"
    finally:
        sc.close()

    def hedge_text(h):
        return ", ".join(f"{k.split('=')[1].strip(chr(34))} {v:.0f}" for k, v in sorted(h.items()) if v) or "0"

    rows = []
    rows.append(["reads measured (10 s, after 1 s warm-up)", base["reads"], slow["reads"], "", ""])
    rows.append(["read rate", f"{base['rate']:.0f}/s", f"{slow['rate']:.0f}/s", "", ""])
    rows.append(["failed reads", base["failures"], slow["failures"], "0", verdict(slow["failures"] == 0)])
    limit = 1.5 * base["p50"]
    rows.append(["read p50", ms(base["p50"]), ms(slow["p50"]), f"≤ 1.5 × baseline = {ms(limit)}",
                 verdict(slow["p50"] <= limit)])
    rows.append(["read p99", ms(base["p99"]), ms(slow["p99"]), "", ""])
    rows.append(["reads sent to node 3 (proxy count, hedges included)", share(base["sent_n3"], base["sent"]),
                 share(slow["sent_n3"], slow["sent"]), "≤ 10%",
                 verdict(slow["sent"] and slow["sent_n3"] <= 0.10 * slow["sent"])])
    for i, url in enumerate(sc.endpoints):
        rows.append([f"reads answered by node {i + 1} (X-Rustle-Endpoint)",
                     share(base["answered"][url], base["reads"]), share(slow["answered"][url], slow["reads"]), "", ""])
    rows.append([f"node-3-written addresses ({len(node3_addresses)}): reads sent to node 3",
                 share(base["aff_sent_n3"], base["aff_sent"]), share(slow["aff_sent_n3"], slow["aff_sent"]),
                 "≤ 10%", verdict(slow["aff_sent"] and slow["aff_sent_n3"] <= 0.10 * slow["aff_sent"])])
    rows.append(["node-3-written addresses: reads answered by node 3",
                 share(base["aff_answered_n3"], base["aff_reads"]), share(slow["aff_answered_n3"], slow["aff_reads"]),
                 "", ""])
    rows.append(["node-3-written addresses: % answered by node 3, each second", base["aff_timeline"],
                 slow["aff_timeline"], "", ""])
    rows.append(["node-3-written addresses: read p50 / p99", f"{ms(base['aff_p50'])} / {ms(base['aff_p99'])}",
                 f"{ms(slow['aff_p50'])} / {ms(slow['aff_p99'])}", "", ""])
    rows.append(["reads with more than one attempt", base["multi_attempt"], slow["multi_attempt"], "", ""])
    rows.append(["rustle_hedges_total (by outcome)", hedge_text(base["hedges"]), hedge_text(slow["hedges"]),
                 "shown", verdict(any(slow["hedges"].values()))])
    rows.append(["read-your-writes: stale or failed / pairs (written via node 3)",
                 f"{base['ryw_stale']}/{base['ryw']} ({base['ryw_via_n3']})",
                 f"{slow['ryw_stale']}/{slow['ryw']} ({slow['ryw_via_n3']})", "0",
                 verdict(slow["ryw_stale"] == 0)])
    rows.append(["node 3 up at the gateway (status every 0.2 s)", "",
                 f"{sum(n3_up)}/{len(n3_up)} samples; health_failures {n3_status.get('health_failures')}",
                 "health checks pass", verdict(n3_up and all(n3_up))])
    rows.append(["gateway latency estimate, nodes 1 / 2 / 3 (status `ewma_latency_ms`, at the end)", "", ewma, "", ""])
    table(f"slow: node 3 answers {args.delay_ms:.0f} ms late; {args.readers} closed-loop readers of "
          f"{len(addresses)} addresses ({len(node3_addresses)} last written through node 3)",
          ["figure", "all healthy", "node 3 slow", "target", ""], rows)


# --- hung ---------------------------------------------------------------------------------


class OpenLoop:
    """Requests at a fixed rate (the k-th at t0 + k / rate) from a pool of threads; latency
    counts from the scheduled time, so a stalled pool shows as latency (no coordinated
    omission). `make(k, rng)` returns (kind, method, path, body)."""

    def __init__(self, gateway, rate, seconds, make, threads=64, timeout=10, headers=None):
        self.gateway = gateway
        self.rate = rate
        self.seconds = seconds
        self.make = make
        self.timeout = timeout
        self.headers = headers
        self.lock = threading.Lock()
        self.next = 0
        self.log = []  # (k, scheduled, sent, done, kind, status, endpoint, backend, attempts)
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]
        self.t0 = None

    def start(self):
        self.t0 = time.monotonic() + 0.1
        for t in self.threads:
            t.start()

    def run(self, i):
        client = Client(self.gateway.url, timeout=self.timeout)
        rng = random.Random(i)
        while True:
            with self.lock:
                k = self.next
                self.next += 1
            scheduled = self.t0 + k / self.rate
            if scheduled >= self.t0 + self.seconds:
                return
            pause = scheduled - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            kind, method, path, body = self.make(k, rng)
            sent = time.monotonic()
            try:
                status, head, raw = client.request(method, path, body, self.headers)
                ep, backend, attempts = (head.get("x-rustle-endpoint"), head.get("x-rustle-backend"),
                                         head.get("x-rustle-attempts"))
            except OSError:
                status, ep, backend, attempts = 0, None, None, None
            done = time.monotonic()
            with self.lock:
                self.log.append((k, scheduled, sent, done, kind, status, ep, backend, attempts))

    def join(self):
        for t in self.threads:
            t.join()


def scenario_hung(args):
    sc = Scenario(args, "hung", proxied=True)
    try:
        seeded = sorted(sc.seed(300, 100))
        poller = Poller(sc.gateway, 0.05)
        poller.start()

        def make(k, rng):
            address = rng.choice(seeded)
            if rng.random() < 0.7:
                return "read", "GET", "/v1/envelopes?address=" + quoted(address), None
            return "write", "PUT", "/v1/envelopes?address=" + quoted(address), {"content": {"k": k}}

        load = OpenLoop(sc.gateway, args.rate, args.hung_seconds, make)
        sc.proxy.events()
        log(f"hung: {args.rate} req/s for {args.hung_seconds:.0f} s, node 3 SIGSTOPped at +{args.stop_at:.0f} s")
        load.start()
        time.sleep(max(0.0, load.t0 + args.stop_at - time.monotonic()))
        t_stop = time.monotonic()
        sc.nodes[2].sigstop()
        time.sleep(max(0.0, load.t0 + args.hung_seconds - time.monotonic()))
        t_cont = time.monotonic()
        sc.nodes[2].sigcont()
        load.join()
        # Until node 3 is back (or 10 s), for the last figure.
        back = time.monotonic() + 10.0
        while time.monotonic() < back and poller.first(
            lambda d: endpoint(d, sc.endpoints[2])["up"] and endpoint(d, sc.endpoints[2])["available"], t_cont
        ) is None:
            time.sleep(0.1)
        poller.stop()
        events = sc.proxy.events()
    finally:
        sc.close()

    n3 = sc.endpoints[2]
    entries = load.log
    errors = [e for e in entries if e[5] not in OK]
    late = [e for e in entries if e[3] - e[1] > 1.0]
    after = [e for e in entries if e[1] >= t_stop]
    late_after = [e for e in after if e[3] - e[1] > 1.0]
    by_status = {}
    for e in entries:
        by_status[e[5]] = by_status.get(e[5], 0) + 1

    def lat(kind, lo, hi):
        xs = [e[3] - e[1] for e in entries if e[4] == kind and lo <= e[1] < hi and e[5] in OK]
        return f"{ms(percentile(xs, 0.5))} / {ms(percentile(xs, 0.99))} / {ms(max(xs) if xs else float('nan'))}"

    last_answer = max((e[3] for e in entries if e[6] == n3 and e[3] < t_cont), default=None)
    # What the proxy forwarded to node 3 between SIGSTOP and SIGCONT (health checks apart).
    to_n3 = sorted(e[0] for e in events if e[1] == 2 and t_stop <= e[0] < t_cont and not e[3].startswith("/health"))
    # Traffic "stopped" at the last request that had more than 3 others (a half-open
    # breaker's probes) within the second before it.
    stopped = t_stop
    for i, t in enumerate(to_n3):
        if sum(1 for u in to_n3[: i + 1] if u > t - 1.0) > 3:
            stopped = t
    buckets = {}
    for t in to_n3:
        b = int((t - t_stop) / 0.5)
        buckets[b] = buckets.get(b, 0) + 1
    timeline = ", ".join(f"{b * 0.5:.1f}-{b * 0.5 + 0.5:.1f} s: {n}" for b, n in sorted(buckets.items()))
    down_at = poller.first(lambda d: not endpoint(d, n3)["up"], t_stop)
    unavailable_at = poller.first(lambda d: not endpoint(d, n3)["available"], t_stop)
    open_at = poller.first(lambda d: endpoint(d, n3)["breaker"]["state"] == "open", t_stop)
    up_again = poller.first(lambda d: endpoint(d, n3)["up"] and endpoint(d, n3)["available"], t_cont)
    ok_share = len(late) <= 0.01 * len(entries)
    rows = [
        ["requests (open loop, from the scheduled time)", f"{len(entries)}; answers {dict(sorted(by_status.items()))}", "", ""],
        ["client errors (non-2xx, no answer)", len(errors), "0", verdict(not errors)],
        ["answers slower than 1 s, whole run", share(len(late), len(entries)), "≤ 1%", verdict(ok_share)],
        ["answers slower than 1 s, after the SIGSTOP", share(len(late_after), len(after)), "", ""],
        ["of those: reads / writes; answered on a 2nd attempt or later",
         f"{sum(1 for e in late if e[4] == 'read')} / {sum(1 for e in late if e[4] == 'write')}; "
         f"{sum(1 for e in late if e[8] not in (None, '1'))}", "", ""],
        ["reads p50 / p99 / max, before the SIGSTOP", lat("read", 0, t_stop), "", ""],
        ["reads p50 / p99 / max, after", lat("read", t_stop, t_cont), "", ""],
        ["writes p50 / p99 / max, before the SIGSTOP", lat("write", 0, t_stop), "", ""],
        ["writes p50 / p99 / max, after", lat("write", t_stop, t_cont), "", ""],
        ["last answer from node 3 (X-Rustle-Endpoint)", since(last_answer, t_stop), "", ""],
        ["requests forwarded to node 3 after the SIGSTOP (per 0.5 s)", f"{len(to_n3)} ({timeline or 'none'})", "", ""],
        ["node 3 stopped receiving traffic (beyond 3 probes a second)", since(stopped, t_stop),
         "≤ +1.5 s (about a health interval)", verdict(stopped - t_stop <= 1.5)],
        ["node 3 breaker open / unavailable / down (`up` false)",
         f"{since(open_at, t_stop)} / {since(unavailable_at, t_stop)} / {since(down_at, t_stop)}", "", ""],
        ["node 3 up and available again after the SIGCONT", since(up_again, t_cont), "", ""],
    ]
    table(f"hung: node 3 SIGSTOPped {args.stop_at:.0f} s into {args.hung_seconds:.0f} s of {args.rate} req/s "
          f"(70% reads, 30% writes; health interval 1 s); times from the SIGSTOP",
          ["figure", "value", "target", ""], rows)


# --- all-hung -----------------------------------------------------------------------------


class Writers:
    """`count` threads each writing a new address `rate` times a second (paced, never
    more than one in flight), with `deadline_ms` as X-Request-Timeout-Ms."""

    def __init__(self, sc, role, count, rate, deadline_ms=None, timeout=10):
        self.sc = sc
        self.role = role
        self.rate = rate
        self.deadline_ms = deadline_ms
        self.timeout = timeout
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.log = []  # (start, done, status, address, id, backend)
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(count)]

    def run(self, w):
        client = Client(self.sc.gateway.url, timeout=self.timeout)
        n = 0
        next_at = time.monotonic()
        while not self.halt.is_set():
            next_at = max(next_at + 1.0 / self.rate, time.monotonic() - 1.0)
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            n += 1
            address = self.sc.address(self.role, f"w{w}/{n}")
            start = time.monotonic()
            try:
                status, head, eid = put(client, address, {"w": w, "n": n}, self.deadline_ms, self.timeout)
                backend = head.get("x-rustle-backend")
            except OSError:
                status, eid, backend = 0, None, None
            with self.lock:
                self.log.append((start, time.monotonic(), status, address, eid, backend))

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.halt.set()
        for t in self.threads:
            t.join()


def read_back(nodes, wanted, threads=8):
    """{address: set of (node index, status, id)} for each address, read from each node."""
    found = {}
    lock = threading.Lock()
    work = list(wanted)
    pos = [0]

    def run():
        clients = [Client(n.url) for n in nodes]
        while True:
            with lock:
                if pos[0] >= len(work):
                    return
                address = work[pos[0]]
                pos[0] += 1
            answers = []
            for i, client in enumerate(clients):
                try:
                    status, _, eid = get(client, "/ucxi/v1/get", address)
                except OSError:
                    status, eid = 0, None
                answers.append((i, status, eid))
            with lock:
                found[address] = answers

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return found


def wait_drained(sc, within=120):
    return wait_for(
        lambda: (lambda s: s["journal"]["pending"] == 0 and not s["fallback"]["active"])(sc.gateway.status()),
        within,
        "an empty journal with fallback left",
        sc.gateway.status,
    )


def scenario_all_hung(args):
    deadline = args.deadline_ms / 1e3
    slack = 0.2
    sc = Scenario(args, "all-hung", proxied=False)
    try:
        poller = Poller(sc.gateway, 0.05)
        poller.start()
        writers = Writers(sc, "w", 16, 10, args.deadline_ms, timeout=deadline + 2.0)
        writers.start()
        time.sleep(2.0)
        t_stop = time.monotonic()
        for node in sc.nodes:
            node.sigstop()
        log(f"all-hung: every node SIGSTOPped for {args.hold:.0f} s")
        time.sleep(args.hold)
        t_cont = time.monotonic()
        for node in sc.nodes:
            node.sigcont()
        time.sleep(4.0)
        writers.finish()
        wait_drained(sc)
        poller.stop()
        t_drained = poller.first(lambda d: d["journal"]["pending"] == 0 and not d["fallback"]["active"], t_cont)
        entries = writers.log
        acknowledged = {e[3]: e[4] for e in entries if e[2] in OK}
        failed = [e[3] for e in entries if e[2] not in OK]
        log(f"all-hung: reading {len(entries)} writes back from the nodes")
        found = read_back(sc.nodes, [e[3] for e in entries])
    finally:
        sc.close()

    all_down = poller.first(lambda d: not any(e["available"] for e in d["endpoints"]), t_stop)
    active = poller.first(lambda d: d["fallback"]["active"], t_stop)
    judged = all_down if all_down is not None else active
    phases = [("healthy", 0, t_stop), ("hung, before every endpoint was unavailable", t_stop, judged or t_cont),
              ("hung, every endpoint unavailable", judged or t_cont, t_cont), ("after the SIGCONT", t_cont, float("inf"))]
    rows = []
    for name, lo, hi in phases:
        part = [e for e in entries if lo <= e[0] < hi]
        statuses = {}
        for e in part:
            statuses[e[2]] = statuses.get(e[2], 0) + 1
        worst = max((e[1] - e[0] for e in part), default=0.0)
        rows.append([f"writes {name}", f"{len(part)}; {dict(sorted(statuses.items()))}; slowest {ms(worst)}", "", ""])
    late = [e for e in entries if e[1] - e[0] > deadline + slack]
    rows.append([f"answered later than the deadline + {slack:.1f} s (or not at all)", len(late), "0", verdict(not late)])
    fallback_non202 = [e for e in entries if judged is not None and judged <= e[0] < t_cont and e[2] != 202]
    rows.append(["not 202 once every endpoint was unavailable (until the SIGCONT)", len(fallback_non202), "0",
                 verdict(judged is not None and not fallback_non202)])
    rows.append(["every endpoint unavailable / fallback active", f"{since(all_down, t_stop)} / {since(active, t_stop)}",
                 "", ""])
    missing = [a for a, eid in acknowledged.items() if not any(s == 200 and i == eid for _, s, i in found.get(a, []))]
    on_every = sum(1 for a, eid in acknowledged.items() if all(s == 200 and i == eid for _, s, i in found.get(a, [])))
    present = [a for a in failed if any(s == 200 for _, s, _ in found.get(a, []))]
    unknown = [a for a in failed if any(s not in (200, 404) for _, s, _ in found.get(a, []))]
    rows.append(["acknowledged writes (200/201/202)", f"{len(acknowledged)} ({on_every} on all three nodes)", "", ""])
    rows.append(["acknowledged writes missing from the cluster", len(missing), "0", verdict(not missing)])
    rows.append(["writes answered as failed", len(failed), "", ""])
    rows.append(["failed writes present in the cluster", len(present), "0", verdict(not present)])
    if unknown:
        rows.append(["failed writes a node could not say about (neither 200 nor 404)", len(unknown), "", ""])
    rows.append(["SIGCONT → journal empty, fallback left (writers still writing)", since(t_drained, t_cont), "", ""])
    table(f"all-hung: every node SIGSTOPped for {args.hold:.0f} s under 16 × 10 writes/s, "
          f"X-Request-Timeout-Ms {args.deadline_ms}; times from the SIGSTOP",
          ["figure", "value", "target", ""], rows)
    if missing or present:
        print("  first missing:", missing[:3], " first failed but present:", present[:3])


# --- recovery -----------------------------------------------------------------------------


def scenario_recovery(args):
    sc = Scenario(args, "recovery", proxied=False)
    try:
        total = args.writes
        for node in sc.nodes:
            node.sigstop()
        t_stop = time.monotonic()
        log(f"recovery: every node SIGSTOPped; journaling {total} writes")
        lock = threading.Lock()
        counter = iter(range(total))
        results = []  # (status, address, id)

        def bulk(w):
            client = Client(sc.gateway.url)
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                address = sc.address("outage", i)
                try:
                    status, _, eid = put(client, address, {"i": i})
                except OSError:
                    status, eid = 0, None
                with lock:
                    results.append((status, address, eid))

        workers = [threading.Thread(target=bulk, args=(w,), daemon=True) for w in range(16)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        t_written = time.monotonic()
        pending = sc.gateway.status()["journal"]["pending"]
        log(f"recovery: {pending} journaled in {t_written - t_stop:.1f} s; SIGCONT")

        poller = Poller(sc.gateway, 0.02)
        poller.start()
        background = Writers(sc, "other", 1, 50)
        health = {}

        def watch_health(i, node):
            client = Client(node.url, timeout=1)
            while i not in health:
                try:
                    if client.request("GET", "/health", timeout=1)[0] == 200:
                        health[i] = time.monotonic()
                        return
                except OSError:
                    pass
                time.sleep(0.01)

        procs = [sc.gateway.proc] + [n.proc for n in sc.nodes]
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        t_cont = time.monotonic()
        for node in sc.nodes:
            node.sigcont()
        background.start()
        watchers = [threading.Thread(target=watch_health, args=(i, n), daemon=True) for i, n in enumerate(sc.nodes)]
        for w in watchers:
            w.start()
        t_drained = wait_drained(sc)
        cpu = [cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0)]
        time.sleep(2.0)
        background.finish()
        poller.stop()
        for w in watchers:
            w.join(timeout=5)
        replayed = counters(sc.gateway.metrics(), "rustle_journal_replayed_total")
        acknowledged = {a: eid for s, a, eid in results if s in OK}
        log(f"recovery: reading {len(acknowledged)} acknowledged writes back from the nodes")
        found = read_back(sc.nodes[:1], list(acknowledged))
    finally:
        sc.close()

    statuses = {}
    for s, _, _ in results:
        statuses[s] = statuses.get(s, 0) + 1
    healthy_at = max(health.values()) if len(health) == 3 else None
    up_at = poller.first(lambda d: all(e["up"] for e in d["endpoints"]), t_cont)
    first_real = min((e[1] for e in background.log if e[5] == "real"), default=None)
    drain = t_drained - t_cont

    def bg(lo, hi):
        part = [e for e in background.log if lo <= e[0] < hi]
        by = {}
        for e in part:
            key = f"{e[2]} {e[5]}"
            by[key] = by.get(key, 0) + 1
        xs = [e[1] - e[0] for e in part if e[2] in OK]
        return (f"{len(part)}; {dict(sorted(by.items()))}; p50 {ms(percentile(xs, 0.5))}, "
                f"p99 {ms(percentile(xs, 0.99))}, max {ms(max(xs) if xs else float('nan'))}")

    missing = [a for a, eid in acknowledged.items() if not any(s == 200 and i == eid for _, s, i in found.get(a, []))]
    bg_errors = [e for e in background.log if e[2] not in OK]
    rows = [
        [f"writes while every node was hung", f"{len(results)}; {dict(sorted(statuses.items()))}; "
         f"{t_written - t_stop:.1f} s", "", ""],
        ["journal pending at the SIGCONT", pending, f"{args.writes:,}", verdict(pending >= args.writes)],
        ["SIGCONT → every node's /health 200 (asked directly)", since(healthy_at, t_cont), "", ""],
        ["SIGCONT → every endpoint up at the gateway", since(up_at, t_cont), "", ""],
        ["SIGCONT → first background write served by the cluster", since(first_real, t_cont), "", ""],
        ["SIGCONT → journal empty, fallback left", f"{drain:.2f} s ({pending / drain:.0f} entries/s)",
         "< 3 s", verdict(drain < 3.0)],
        ["every endpoint up at the gateway → journal empty",
         f"{t_drained - up_at:.2f} s ({pending / (t_drained - up_at):.0f} entries/s)" if up_at else "-", "", ""],
        ["CPU seconds from the SIGCONT to the empty journal: gateway; nodes 1, 2, 3",
         f"{cpu[0]:.2f}; {', '.join(f'{c:.2f}' for c in cpu[1:])} (2 cores × {drain:.2f} s = {2 * drain:.2f})", "", ""],
        ["rustle_journal_replayed_total", ", ".join(f"{v:.0f}" for v in replayed.values()) or "?", "", ""],
        ["background writes (new addresses, 50/s) during the drain", bg(t_cont, t_drained), "", ""],
        ["background writes after the drain (2 s)", bg(t_drained, float("inf")), "", ""],
        ["background writes failed", len(bg_errors), "0", verdict(not bg_errors)],
        ["acknowledged outage writes missing from the cluster (read from node 1)", len(missing), "0",
         verdict(not missing)],
    ]
    table(f"recovery: {len(results)} writes journaled while every node was SIGSTOPped; then SIGCONT",
          ["figure", "value", "target", ""], rows)


SCENARIOS = {
    "slow": scenario_slow,
    "hung": scenario_hung,
    "all-hung": scenario_all_hung,
    "recovery": scenario_recovery,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", nargs="?", default="all", choices=[*SCENARIOS, "all"])
    parser.add_argument("--bin-dir", default=os.environ.get("BIN_DIR") or os.path.join(ROOT, "target", "release"))
    parser.add_argument("--keep", action="store_true", help="keep each scenario's directory (logs, data)")
    parser.add_argument("--delay-ms", type=float, default=150.0, help="slow: node 3's extra latency")
    parser.add_argument("--readers", type=int, default=8, help="slow: closed-loop readers")
    parser.add_argument("--seconds", type=float, default=10.0, help="slow: measured seconds per phase")
    parser.add_argument("--rate", type=int, default=200, help="hung: requests per second")
    parser.add_argument("--hung-seconds", type=float, default=15.0, help="hung: load duration")
    parser.add_argument("--stop-at", type=float, default=4.0, help="hung: SIGSTOP this far into the load")
    parser.add_argument("--deadline-ms", type=int, default=3000, help="all-hung: X-Request-Timeout-Ms")
    parser.add_argument("--hold", type=float, default=10.0, help="all-hung: seconds every node stays hung")
    parser.add_argument("--writes", type=int, default=20000, help="recovery: writes journaled")
    args = parser.parse_args()
    for binary in ("bzzz-node", "rustle-gateway"):
        if not os.access(os.path.join(args.bin_dir, binary), os.X_OK):
            sys.exit(f"gray: {os.path.join(args.bin_dir, binary)} not found: build it, or pass --bin-dir")
    install_cleanup()
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    print("RUSTLE Gateway gray failures (3 nodes, hybrid mode, default settings)")
    for name in names:
        started = time.monotonic()
        SCENARIOS[name](args)
        print(f"\n{name}: {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Load generator for the watch stages of bench/bench.py (`watch-latency`, `watch-idle`):
SSE watchers and a fixed-rate writer, each a process of its own that bench.py starts
pinned to the load generator's CPU. Python standard library only.

    watchload.py watchers --base URL --pattern P --count N --out FILE
        Opens N `GET /v1/watch?pattern=P` streams (raw sockets, one epoll loop) and prints
        `open N` once every stream has answered 200 text/event-stream. Then it reads every
        event: for each `put`/`delete` it keeps the envelope id (`"id":"..."` of the data
        line), the wall-clock time the loop parsed it (time.time() right after the recv
        that completed it) and the kernel's receive timestamp of that recv (SO_TIMESTAMPNS:
        when the last segment of it reached the socket, before this process ran). On a line
        `stop WRITES` on stdin it stops reading, matches what each stream received against
        the writer's record WRITES, writes FILE (JSON; latencies as base64 float64 arrays)
        and exits. The kernel timestamp is the last segment's that a recv took: with
        `--recv` small (about one event), a watcher that reads late still gets each
        event's own arrival time.

    watchload.py conns --base URL --count N
        The baseline of watch-idle: opens N kept-alive HTTP/1.1 connections, sends one
        `GET /health` on each and reads its answer, prints `open N`, and holds them idle
        until a line on stdin; then closes them and prints `done`.

    watchload.py burn --share F [--procs P]
        A control for watch-latency: P processes each using the share F of a CPU (process
        CPU time, in 10 ms periods) until killed, standing in for the watchers' CPU on the
        load CPU.

    watchload.py writer --base URL --rate R --seconds S --out FILE [--conns C]
        PUTs new addresses at a fixed rate (open loop: write k is due at start + k/R, on
        one of C kept-alive connections; a write that finds every connection busy is sent
        late and its lateness recorded) and writes FILE: one row per write,
        [k, id, t_due, t_send, t_ack, status, t_created] (wall-clock seconds; t_created is
        the answer's `created_at`: when the node, or the gateway in mock mode, took the
        write, on the same clock).

Latency of a (write, watcher) pair: the watcher's event time minus the write's t_send
("send") or t_ack ("ack"; negative when the event came before the answer); and the kernel
receive time minus t_created ("kernel_created": from the node taking the write to the
event reaching the watcher's socket).
"""

import argparse
import array
import base64
import datetime
import json
import os
import re
import resource
import selectors
import socket
import struct
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from netutil import Client  # noqa: E402

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
ID_RE = re.compile(rb'\ndata: \{"op":"(?:put|delete)","address":"[^"]*","id":"([^"]+)"')
EVENT_RE = re.compile(rb"\nevent: (put|delete|error|synced)\n")
COMMENT = b"\n: keep-alive"
RECV = 1 << 18


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class Watcher:
    def __init__(self, n, base, pattern, recv=RECV):
        u = urllib.parse.urlsplit(base)
        self.n = n
        self.recv = recv
        self.sock = socket.create_connection((u.hostname, u.port))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        path = "/v1/watch?pattern=" + urllib.parse.quote(pattern, safe="")
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n"
                          "Accept: text/event-stream\r\n\r\n".encode())
        self.sock.setblocking(False)
        self.head = b""
        self.status = None
        self.chunked = False
        self.buf = b"\n"  # so the first event's lines start after a newline too
        self.ids = []
        self.t_user = array.array("d")
        self.t_kernel = array.array("d")
        self.events = {}
        self.comments = 0
        self.closed = False
        self.bytes = 0

    def feed(self):
        try:
            data, anc, _, _ = self.sock.recvmsg(self.recv, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, anc = b"", []
        now = time.time()
        if not data:
            self.closed = True
            return
        self.bytes += len(data)
        kernel = now
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
                sec, nsec = struct.unpack("qq", raw[:16])
                kernel = sec + nsec / 1e9
        if self.status is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end].decode("latin-1"), self.head[end + 4:]
            self.head = b""
            m = re.match(r"HTTP/1\.1 (\d{3})", head)
            self.status = int(m.group(1)) if m else 0
            lower = head.lower()
            self.content_type_ok = "content-type: text/event-stream" in lower
            self.chunked = "transfer-encoding: chunked" in lower
            self.head_text = head
        buf = self.buf + data
        last = buf.rfind(b"\n\n")
        if last < 0:
            self.buf = buf
            return
        # Whole events only (with chunked encoding each event is one chunk: the chunk
        # headers sit between events, never inside one)
        done, self.buf = buf[:last + 1], buf[last + 1:]
        for m in ID_RE.finditer(done):
            self.ids.append(m.group(1))
            self.t_user.append(now)
            self.t_kernel.append(kernel)
        for m in EVENT_RE.finditer(done):
            name = m.group(1).decode()
            self.events[name] = self.events.get(name, 0) + 1
        self.comments += done.count(COMMENT)


def watchers(args):
    raise_nofile(args.count + 64)
    sel = selectors.DefaultSelector()
    ws = []
    for n in range(args.count):
        w = Watcher(n, args.base, args.pattern, args.recv)
        ws.append(w)
        sel.register(w.sock, selectors.EVENT_READ, w)
    sel.register(sys.stdin, selectors.EVENT_READ, None)
    announced = False
    command = None
    stdin_buf = b""
    cpu0 = time.process_time()
    while command is None:
        for key, _ in sel.select(timeout=0.5):
            w = key.data
            if w is None:
                chunk = os.read(sys.stdin.fileno(), 4096)
                if not chunk:
                    command = "stop"
                    break
                stdin_buf += chunk
                if b"\n" in stdin_buf:
                    command = stdin_buf.split(b"\n", 1)[0].decode().strip()
                continue
            w.feed()
            if w.closed:
                sel.unregister(w.sock)
        if not announced and all(w.status is not None for w in ws):
            bad = [w for w in ws if w.status != 200 or not w.content_type_ok]
            if bad:
                print(f"refused {len(bad)} {bad[0].status} {bad[0].head_text[:300]!r}", flush=True)
            else:
                print(f"open {len(ws)}", flush=True)
            announced = True
        if not announced and any(w.closed for w in ws):
            print("refused closed", flush=True)
            announced = True
    cpu = time.process_time() - cpu0
    parts = command.split(maxsplit=1)
    writes = {}
    if len(parts) == 2:
        with open(parts[1]) as f:
            for row in json.load(f):
                if row[1]:
                    created = row[6] if len(row) > 6 and row[6] is not None else float("nan")
                    writes[row[1].encode()] = (row[3], row[4], created)
    out = {"count": len(ws), "cpu_s": cpu, "watchers": []}
    for w in ws:
        seen = {}
        send, ack, kernel_send = array.array("d"), array.array("d"), array.array("d")
        kernel_created = array.array("d")
        foreign = 0
        for wid, tu, tk in zip(w.ids, w.t_user, w.t_kernel):
            seen[wid] = seen.get(wid, 0) + 1
            if seen[wid] > 1:
                continue
            t = writes.get(wid)
            if t is None:
                foreign += 1
                continue
            send.append(tu - t[0])
            ack.append(tu - t[1])
            kernel_send.append(tk - t[0])
            kernel_created.append(tk - t[2])
        out["watchers"].append({
            "n": w.n,
            "status": w.status,
            "closed": w.closed,
            "bytes": w.bytes,
            "events": w.events,
            "comments": w.comments,
            "received": len(w.ids),
            "duplicates": sum(c - 1 for c in seen.values() if c > 1),
            "missing": sum(1 for wid in writes if wid not in seen),
            "foreign": foreign,
            "send": base64.b64encode(send.tobytes()).decode(),
            "ack": base64.b64encode(ack.tobytes()).decode(),
            "kernel_send": base64.b64encode(kernel_send.tobytes()).decode(),
            "kernel_created": base64.b64encode(kernel_created.tobytes()).decode(),
        })
    for w in ws:
        w.sock.close()
    with open(args.out, "w") as f:
        json.dump(out, f)
    print("done", flush=True)


def conns(args):
    raise_nofile(args.count + 64)
    u = urllib.parse.urlsplit(args.base)
    socks = []
    for _ in range(args.count):
        s = socket.create_connection((u.hostname, u.port))
        s.sendall(f"GET /health HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        if not head.startswith(b"HTTP/1.1 200") or not m:
            print(f"refused {head[:200]!r}", flush=True)
            return
        while len(body) < int(m.group(1)):
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        socks.append(s)
    print(f"open {len(socks)}", flush=True)
    sys.stdin.readline()
    for s in socks:
        s.close()
    print("done", flush=True)


def burn(args):
    for _ in range(args.procs - 1):
        if os.fork() == 0:
            break
    period = 0.01
    while True:
        start, c0 = time.monotonic(), time.process_time()
        while time.process_time() - c0 < args.share * period:
            pass
        rest = start + period - time.monotonic()
        if rest > 0:
            time.sleep(rest)


def writer(args):
    body = None
    rows = []
    lock = threading.Lock()
    total = int(args.rate * args.seconds)
    state = {"next": 0}
    start = time.time() + 0.2
    prefix = f"ucxl://bench:writer@rustle:bench/watch/{args.tag}-"

    def run():
        client = Client(args.base, timeout=30)
        try:
            while True:
                with lock:
                    k = state["next"]
                    if k >= total:
                        return
                    state["next"] = k + 1
                due = start + k / args.rate
                delay = due - time.time()
                if delay > 0:
                    time.sleep(delay)
                address = urllib.parse.quote(f"{prefix}{k:07d}.json", safe="")
                body = {"content": {"bench": "watch", "k": k}}
                t_send = time.time()
                try:
                    status, _, raw = client.request("PUT", f"/v1/envelopes?address={address}", body)
                except OSError as e:
                    rows.append([k, None, due, t_send, time.time(), f"error: {e}"])
                    continue
                t_ack = time.time()
                wid = created = None
                if status in (200, 201):
                    try:
                        data = json.loads(raw)["response"]["data"]
                        wid = data["id"]
                        created = datetime.datetime.fromisoformat(data["created_at"]).timestamp()
                    except (ValueError, KeyError, TypeError):
                        status = f"{status} without an id"
                rows.append([k, wid, due, t_send, t_ack, status, created])
        finally:
            client.close()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(args.conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows.sort()
    with open(args.out, "w") as f:
        json.dump(rows, f)
    del body


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    w = sub.add_parser("watchers")
    w.add_argument("--base", required=True)
    w.add_argument("--pattern", required=True)
    w.add_argument("--count", type=int, required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--recv", type=int, default=RECV,
                   help="bytes per recvmsg: small, each kernel timestamp is close to its event's")
    c = sub.add_parser("conns")
    c.add_argument("--base", required=True)
    c.add_argument("--count", type=int, required=True)
    b = sub.add_parser("burn")
    b.add_argument("--share", type=float, required=True, help="per process")
    b.add_argument("--procs", type=int, default=1)
    r = sub.add_parser("writer")
    r.add_argument("--base", required=True)
    r.add_argument("--rate", type=float, required=True)
    r.add_argument("--seconds", type=float, required=True)
    r.add_argument("--conns", type=int, default=16)
    r.add_argument("--tag", default="w")
    r.add_argument("--out", required=True)
    args = p.parse_args()
    if args.mode == "watchers":
        watchers(args)
    elif args.mode == "conns":
        conns(args)
    elif args.mode == "burn":
        burn(args)
    else:
        writer(args)


if __name__ == "__main__":
    main()

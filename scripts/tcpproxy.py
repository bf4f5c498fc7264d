#!/usr/bin/env python3
"""A TCP proxy for failure drills: one listener on 127.0.0.1 per target, forwarding bytes
both ways, every chunk of the target's answers delayed by the listener's delay (a slow
node; its health checks still pass while the delay is below the health timeout). The delay
is latency, not bandwidth: a chunk is sent `delay` after it arrived, whatever came before.
It also notes the request line of every HTTP request it forwards, so a drill can tell
which node was sent what, and when (hedges and abandoned attempts included, which the
answering node named by `X-Rustle-Endpoint` does not show).

  python3 scripts/tcpproxy.py [--delay-ms 150] HOST:PORT [HOST:PORT ...]

prints {"listen": [port, ...]} on one line, then reads commands on stdin, one a line, each
answered by one JSON line; it exits when stdin closes (so it never outlives its driver):

  delay INDEX MS   the delay of listener INDEX (0-based) from now on
  events           the requests forwarded since the last `events`:
                   [[t, index, method, path], ...], t from CLOCK_MONOTONIC (Python's
                   time.monotonic() in any process of this machine)

Python standard library only.
"""

import argparse
import asyncio
import json
import os
import sys
import threading
import time

METHODS = (b"GET ", b"PUT ", b"POST ", b"DELETE ", b"HEAD ", b"PATCH ", b"OPTIONS ")
CHUNK = 65536


class Listener:
    def __init__(self, index, host, port, delay):
        self.index = index
        self.host = host
        self.port = port
        self.delay = delay  # seconds


class Proxy:
    def __init__(self, listeners):
        self.listeners = listeners
        self.lock = threading.Lock()
        self.events = []

    def note(self, listener, chunk):
        if chunk.startswith(METHODS):
            line = chunk.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            event = [time.monotonic(), listener.index, line[0], line[1] if len(line) > 1 else ""]
            with self.lock:
                self.events.append(event)

    def take_events(self):
        with self.lock:
            events, self.events = self.events, []
        return events

    async def handle(self, listener, client_reader, client_writer):
        try:
            node_reader, node_writer = await asyncio.open_connection(listener.host, listener.port)
        except OSError:
            client_writer.close()
            return
        up = asyncio.create_task(self.requests(listener, client_reader, node_writer))
        down = asyncio.create_task(self.answers(listener, node_reader, client_writer))
        _, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for writer in (node_writer, client_writer):
            writer.close()

    async def requests(self, listener, reader, writer):
        """Client to node, as it comes."""
        try:
            while True:
                chunk = await reader.read(CHUNK)
                if not chunk:
                    return
                self.note(listener, chunk)
                writer.write(chunk)
                await writer.drain()
        except OSError:
            return

    async def answers(self, listener, reader, writer):
        """Node to client, each chunk `listener.delay` after it arrived (in order)."""
        loop = asyncio.get_running_loop()
        queue = asyncio.Queue()

        async def send():
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            while True:
                chunk = await reader.read(CHUNK)
                queue.put_nowait((loop.time() + listener.delay, chunk))
                if not chunk:
                    break
            await sender
        except OSError:
            pass
        finally:
            sender.cancel()

    def command(self, line):
        words = line.split()
        if words[:1] == ["delay"] and len(words) == 3:
            self.listeners[int(words[1])].delay = float(words[2]) / 1e3
            return {"ok": True}
        if words == ["events"]:
            return self.take_events()
        return {"error": f"unknown command {line.strip()!r}"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay-ms", type=float, default=0.0, help="initial delay of every listener")
    parser.add_argument("targets", nargs="+", metavar="HOST:PORT")
    args = parser.parse_args()
    listeners = []
    for i, target in enumerate(args.targets):
        host, _, port = target.rpartition(":")
        listeners.append(Listener(i, host or "127.0.0.1", int(port), args.delay_ms / 1e3))
    proxy = Proxy(listeners)

    async def serve():
        loop = asyncio.get_running_loop()
        servers = []
        for listener in listeners:
            server = await asyncio.start_server(
                lambda r, w, l=listener: proxy.handle(l, r, w), "127.0.0.1", 0, backlog=1024
            )
            servers.append(server)
        ports = [s.sockets[0].getsockname()[1] for s in servers]
        print(json.dumps({"listen": ports}), flush=True)
        done = asyncio.Event()

        def read_commands():
            for line in sys.stdin:
                if line.strip() == "quit":
                    break
                print(json.dumps(proxy.command(line)), flush=True)
            loop.call_soon_threadsafe(done.set)

        threading.Thread(target=read_commands, daemon=True).start()
        await done.wait()

    asyncio.run(serve())
    # Connections still open are abandoned with the process.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()

"""Loopback helpers shared by the operator scripts (drill.py, gray.py, adversarial.py) and
the benchmark harness (bench/bench.py). Python standard library only."""

import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request


def free_port():
    """A port free on 127.0.0.1 now (for programs that cannot be told to bind port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(method, url, body=None, timeout=10):
    """`method url` with `body` as JSON: (status, headers, raw body bytes); an HTTP error
    status is an answer, not an exception."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


class Client:
    """One kept-alive HTTP/1.1 connection to `base` (http://host:port), for load
    generators: a thread each, so a request costs no TCP handshake. A request that fails
    (timeout, reset, garbled answer) raises OSError and drops the connection; the next
    request opens a new one."""

    def __init__(self, base, timeout=10):
        parsed = urllib.parse.urlsplit(base)
        self.host = parsed.hostname
        self.port = parsed.port
        self.timeout = timeout
        self.conn = None

    def request(self, method, path, body=None, headers=None, timeout=None):
        """(status, headers with lower-case names, raw body bytes)."""
        data = None if body is None else json.dumps(body).encode()
        head = dict(headers or {})
        if data is not None:
            head["content-type"] = "application/json"
        wanted = self.timeout if timeout is None else timeout
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=wanted)
        elif self.conn.sock is not None:
            self.conn.sock.settimeout(wanted)
        self.conn.timeout = wanted
        try:
            self.conn.request(method, path, body=data, headers=head)
            r = self.conn.getresponse()
            raw = r.read()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            if isinstance(e, OSError):
                raise
            raise OSError(f"{type(e).__name__}: {e}") from e
        if r.will_close:
            self.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, raw

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

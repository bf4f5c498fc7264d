"""Loopback helpers shared by the operator scripts (drill.py, adversarial.py) and the
benchmark harness (bench/bench.py). Python standard library only."""

import json
import socket
import urllib.error
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

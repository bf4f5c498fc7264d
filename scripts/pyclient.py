#!/usr/bin/env python3
"""A Python client generated from a running gateway's served /openapi.json by
openapi-python-client (PyPI), and a short scenario run with the generated functions.

  python scripts/pyclient.py --url http://127.0.0.1:8080 --key KEY [--also-url URL]

Fetches the served document (and, with --also-url, checks that the other gateway serves
the same one), generates the client into a temporary directory (`--meta none`: a bare
package; `--fail-on-warning`: every schema must become a class; ruff, beside the Python
running this, formats it, offline), imports it and runs against each URL, with the
generated functions and models only: a store with an Idempotency-Key (201), the same store
again (200, the first version), a second version, the first by `*~1`, the history, a
search read in two pages by cursor, a delete (and its retry), a fetch after it (404) and a bad address
(400) as typed error models with their code and details, a bad search limit (400 naming
the field) and a call without credentials (401). Exits non-zero on the first mismatch;
prints how long generation and each run took.
"""

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

PACKAGE = "rustle_gateway_client"


def check(ok, what, detail=""):
    if not ok:
        sys.exit(f"pyclient: FAILED: {what} {detail}")
    print(f"pyclient: ok: {what}", flush=True)


def served_document(url):
    with urllib.request.urlopen(f"{url}/openapi.json", timeout=10) as r:
        check(r.status == 200, f"GET {url}/openapi.json", r.status)
        return r.read()


def generate(document, into):
    """Runs the generator on `document` (bytes); returns the seconds it took."""
    bin_dir = os.path.dirname(sys.executable)
    path = bin_dir + os.pathsep + os.environ.get("PATH", "")
    tool = shutil.which("openapi-python-client", path=path)
    if tool is None:
        sys.exit("pyclient: openapi-python-client is not installed (pip install openapi-python-client)")
    spec = os.path.join(into, "openapi.json")
    with open(spec, "wb") as f:
        f.write(document)
    started = time.monotonic()
    out = subprocess.run(
        [tool, "generate", "--path", spec, "--meta", "none", "--fail-on-warning",
         "--output-path", os.path.join(into, PACKAGE)],
        env={**os.environ, "PATH": path}, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - started
    report = (out.stdout + out.stderr).strip()
    check(out.returncode == 0, "openapi-python-client generate --fail-on-warning", "\n" + report)
    # Without ruff the client still works, unformatted; the generator only warns.
    check("ruff is not in PATH" not in report, "ruff formatted the client", report)
    return took


class Generated:
    """The generated package's modules, by the names the scenario uses."""

    def __init__(self, root):
        sys.path.insert(0, root)
        p = PACKAGE
        self.client = importlib.import_module(p)
        self.put_envelope = importlib.import_module(f"{p}.api.envelopes.put_envelope")
        self.get_envelope = importlib.import_module(f"{p}.api.envelopes.get_envelope")
        self.delete_envelope = importlib.import_module(f"{p}.api.envelopes.delete_envelope")
        self.history = importlib.import_module(f"{p}.api.envelopes.history")
        self.search = importlib.import_module(f"{p}.api.search.search")
        self.models = importlib.import_module(f"{p}.models")
        self.types = importlib.import_module(f"{p}.types")


def typed_error(g, answer, status, code, what):
    """`answer` is the documented error model with `status` and `code`; returns its error."""
    m = g.models
    check(answer.status_code == status and isinstance(answer.parsed, m.ErrorResponse),
          f"{what}: {status} as ErrorResponse", f"{answer.status_code} {answer.content[:300]!r}")
    error = answer.parsed.error
    check(isinstance(error, m.ErrorBody) and error.code == code,
          f"{what}: code {code.value}", error.code)
    check(isinstance(error.details, m.ErrorDetails), f"{what}: details is ErrorDetails")
    check(answer.headers.get("x-request-id") == error.request_id,
          f"{what}: X-Request-Id is the error's request_id")
    return error


def scenario(g, url, key):
    m = g.models
    unset = g.types.UNSET
    client = g.client.AuthenticatedClient(base_url=url, token=key,
                                          raise_on_unexpected_status=True)
    project = f"py{uuid.uuid4().hex[:12]}"
    address = f"ucxl://agent:pyclient@{project}:task/notes/a"

    def store(addr, content, idempotency_key):
        body = m.PutEnvelope(content=content,
                             metadata=m.PutEnvelopeMetadataType0.from_dict({"by": "pyclient"}))
        return g.put_envelope.sync_detailed(client=client, address=addr, body=body,
                                            idempotency_key=idempotency_key)

    first = store(address, {"n": 1}, "py-key-1")
    check(first.status_code == 201 and isinstance(first.parsed, m.EnvelopeResponse),
          "store: 201 EnvelopeResponse", f"{first.status_code} {first.content[:300]!r}")
    created = first.parsed.response
    check(created.code == m.Code.UCXL_201_CREATED, "store: UCXL-201-CREATED", created.code)
    v1 = created.data
    check(isinstance(v1, m.Envelope) and v1.id == "py-key-1" and v1.version == 1
          and v1.address == address and v1.content == {"n": 1}
          and v1.metadata["by"] == "pyclient" and v1.content_type == "application/json",
          "store: the envelope, id = Idempotency-Key, version 1", v1)

    again = store(address, {"n": 1}, "py-key-1")
    check(again.status_code == 200 and isinstance(again.parsed, m.EnvelopeResponse),
          "retry with the same key: 200 EnvelopeResponse", again.status_code)
    check(again.parsed.response.code == m.Code.UCXL_200_OK, "retry: UCXL-200-OK")
    check(again.parsed.response.data.to_dict() == v1.to_dict(),
          "retry: the version stored first, unchanged", again.parsed.response.data)

    second = store(address, {"n": 2}, "py-key-2")
    check(second.status_code == 201 and second.parsed.response.data.version == 2,
          "a second version: 201, version 2", second.status_code)

    old = g.get_envelope.sync_detailed(
        client=client, address=f"ucxl://agent:pyclient@{project}:task/*~1/notes/a")
    check(old.status_code == 200 and isinstance(old.parsed, m.EnvelopeResponse),
          "fetch *~1: 200 EnvelopeResponse", old.status_code)
    check(old.parsed.response.data.version == 1 and old.parsed.response.data.content == {"n": 1}
          and old.parsed.response.data.id == "py-key-1", "fetch *~1: version 1")
    latest = g.get_envelope.sync_detailed(client=client, address=address)
    check(latest.status_code == 200 and latest.parsed.response.data.version == 2
          and latest.parsed.response.data.content == {"n": 2}, "fetch latest: version 2")

    listed = g.history.sync_detailed(client=client, address=address)
    check(listed.status_code == 200 and isinstance(listed.parsed, m.HistoryResponse),
          "history: 200 HistoryResponse", listed.status_code)
    versions = listed.parsed.response.data.versions
    check([(v.version, v.id) for v in versions] == [(1, "py-key-1"), (2, "py-key-2")],
          "history: both versions, oldest first", [v.to_dict() for v in versions])

    others = [f"ucxl://agent:pyclient@{project}:task/notes/{name}" for name in ("b", "c")]
    for i, other in enumerate(others):
        check(store(other, {"i": i}, f"py-key-{other[-1]}").status_code == 201,
              f"store {other}")
    pattern = f"ucxl://any:any@{project}:any/**"
    page1 = g.search.sync_detailed(client=client, pattern=pattern, limit=2)
    check(page1.status_code == 200 and isinstance(page1.parsed, m.SearchResponse),
          "search: 200 SearchResponse", page1.status_code)
    data1 = page1.parsed.response.data
    check(len(data1.items) == 2 and isinstance(data1.next_cursor, str)
          and not data1.partial, "search page 1: 2 items and a next_cursor", data1.to_dict())
    page2 = g.search.sync_detailed(client=client, pattern=pattern, limit=2,
                                   cursor=data1.next_cursor)
    data2 = page2.parsed.response.data
    check(page2.status_code == 200 and len(data2.items) == 1
          and data2.next_cursor in (None, unset), "search page 2: the last item, no cursor",
          data2.to_dict())
    found = [i.address for i in data1.items + data2.items]
    check(found == sorted([address] + others), "search: every address once, sorted", found)
    check(isinstance(data2.items[0], m.SearchItem) and data2.items[0].version == 1,
          "search: items are SearchItems")

    deleted = g.delete_envelope.sync_detailed(client=client, address=address,
                                              idempotency_key="py-delete-1")
    check(deleted.status_code == 200 and isinstance(deleted.parsed, m.DeleteResponse),
          "delete: 200 DeleteResponse", f"{deleted.status_code} {deleted.content[:300]!r}")
    check(deleted.parsed.response.data.address == address
          and deleted.parsed.response.data.id == "py-delete-1", "delete: the tombstone")
    again = g.delete_envelope.sync_detailed(client=client, address=address,
                                            idempotency_key="py-delete-1")
    check(again.status_code == 200 and isinstance(again.parsed, m.DeleteResponse)
          and again.parsed.response.data.to_dict() == deleted.parsed.response.data.to_dict(),
          "delete retried with the same key: 200, the same tombstone", again.status_code)

    gone = g.get_envelope.sync_detailed(client=client, address=address)
    error = typed_error(g, gone, 404, m.Code.UCXL_404_NOT_FOUND, "fetch after delete")
    check(error.details.address == address and error.path == "/v1/envelopes",
          "404: details.address and path", error.to_dict())

    bad = g.get_envelope.sync_detailed(client=client, address="ucxl://agent:py client@p:t/x")
    error = typed_error(g, bad, 400, m.Code.UCXL_400_INVALID_ADDRESS, "a bad address")
    check(error.details.field == "role" and error.details.provided == "py client"
          and isinstance(error.details.reason, str) and isinstance(error.details.expected, str),
          "400: details name the component, the input, the form and the reason",
          error.details.to_dict())

    limit = g.search.sync_detailed(client=client, pattern=pattern, limit=0)
    error = typed_error(g, limit, 400, m.Code.UCXL_400_BAD_REQUEST, "limit=0")
    check(error.details.field == "limit" and error.details.provided == 0,
          "400: details.field limit, provided 0", error.details.to_dict())

    anonymous = g.client.Client(base_url=url, raise_on_unexpected_status=True)
    refused = g.get_envelope.sync_detailed(client=anonymous, address=address)
    typed_error(g, refused, 401, m.Code.UCXL_401_UNAUTHORIZED, "no credentials")
    check(refused.headers.get("www-authenticate", "").startswith("Bearer"),
          "401: WWW-Authenticate: Bearer")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="a gateway (http://host:port)")
    p.add_argument("--also-url", action="append", default=[],
                   help="another gateway: the same document, the same scenario")
    p.add_argument("--key", required=True, help="an API key that may read, search, write, delete")
    args = p.parse_args()
    document = served_document(args.url)
    for other in args.also_url:
        check(json.loads(served_document(other)) == json.loads(document),
              f"{other} serves the same document")
    with tempfile.TemporaryDirectory(prefix="pyclient-") as root:
        took = generate(document, root)
        print(f"pyclient: generated in {took:.1f} s", flush=True)
        g = Generated(root)
        for url in [args.url] + args.also_url:
            started = time.monotonic()
            scenario(g, url, args.key)
            print(f"pyclient: scenario against {url} in {time.monotonic() - started:.1f} s",
                  flush=True)


if __name__ == "__main__":
    main()

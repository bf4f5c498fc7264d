#!/usr/bin/env python3
"""A real MCP client nobody here wrote (the official Python SDK, `mcp` on PyPI) against a
running gateway's /mcp, over Streamable HTTP.

  python3 scripts/mcp_client.py --url http://127.0.0.1:8080/mcp --key KEY [--reader-key KEY2]

Runs: initialize, tools/list, ucxl_store (twice) -> ucxl_fetch (latest and *~1) ->
ucxl_history -> ucxl_search -> resources/templates/list, resources/read, resources/list ->
ucxl_delete -> ucxl_fetch (a tool error, 404), an invalid address (a tool error naming the
component), a call without credentials (refused with 401) and, with --reader-key, a write
the reader may not do (a tool error naming the operation). Exits non-zero on the first
check that fails. `--project` picks the UCXL project the addresses use (default: a fresh
one), so runs against a shared cluster do not collide.
"""

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
import uuid

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

TOOLS = ["ucxl_store", "ucxl_fetch", "ucxl_history", "ucxl_search", "ucxl_delete"]


def check(ok, what, detail=""):
    if not ok:
        sys.exit(f"mcp_client: FAILED: {what} {detail}")
    print(f"mcp_client: ok: {what}", flush=True)


def structured(result):
    return result.structured_content or {}


class Alternating(httpx2.AsyncBaseTransport):
    """Sends each request to the next of `urls` in turn: one client, several gateway
    processes, no affinity (the server keeps no session, so none is needed)."""

    def __init__(self, urls):
        self.urls = [httpx2.URL(u) for u in urls]
        self.sent = 0
        self.inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request):
        target = self.urls[self.sent % len(self.urls)]
        self.sent += 1
        request.url = request.url.copy_with(host=target.host, port=target.port)
        request.headers["host"] = f"{target.host}:{target.port}"
        return await self.inner.handle_async_request(request)

    async def aclose(self):
        await self.inner.aclose()


ALSO = []


async def session_run(url, key, body):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if ALSO:
        http = httpx2.AsyncClient(headers=headers, transport=Alternating([url, *ALSO]),
                                  timeout=httpx2.Timeout(30, read=300))
    else:
        http = create_mcp_http_client(headers=headers)
    async with http:
        async with streamable_http_client(url, http_client=http) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                info = await session.initialize()
                return await body(session, info)


async def main_flow(session, info, project):
    check(info.server_info.name == "rustle-gateway", "initialize names the server",
          info.server_info.name)
    tools = await session.list_tools()
    names = [t.name for t in tools.tools]
    check(names == TOOLS, "tools/list gives the five tools", names)
    schema = tools.tools[0].input_schema
    check("address" in schema.get("required", []), "ucxl_store's schema requires address")

    address = f"ucxl://claude:architect@{project}:design/decisions/transport.json"
    first = await session.call_tool("ucxl_store", {
        "address": address, "content": {"decision": "libp2p"},
        "metadata": {"by": "mcp_client"}, "idempotency_key": f"k-{project}"})
    check(not first.is_error and structured(first).get("data", {}).get("version") == 1,
          "ucxl_store stores version 1", structured(first))
    check(first.content and first.content[0].text.startswith("UCXL-20"),
          "ucxl_store has a text rendering")
    second = await session.call_tool("ucxl_store", {"address": address,
                                                    "content": {"decision": "nats"}})
    check(not second.is_error and structured(second)["data"]["version"] == 2,
          "ucxl_store stores version 2", structured(second))

    latest = await session.call_tool("ucxl_fetch", {"address": address})
    check(not latest.is_error and structured(latest)["data"]["content"] == {"decision": "nats"},
          "ucxl_fetch gives the latest", structured(latest))
    v1 = address.replace(":design/", ":design/*~1/")
    old = await session.call_tool("ucxl_fetch", {"address": v1})
    check(not old.is_error and structured(old)["data"]["content"] == {"decision": "libp2p"},
          "ucxl_fetch of *~1 gives version 1", structured(old))

    history = await session.call_tool("ucxl_history", {"address": address})
    check(not history.is_error and len(structured(history)["data"]["versions"]) == 2,
          "ucxl_history lists two versions", structured(history))

    found = await session.call_tool("ucxl_search", {
        "pattern": f"ucxl://any:any@{project}:any/**", "limit": 10})
    items = structured(found).get("data", {}).get("items", [])
    check(not found.is_error and [i["address"] for i in items] == [address],
          "ucxl_search finds the address", structured(found))

    templates = await session.list_resource_templates()
    check(templates.resource_templates[0].uri_template
          == "ucxl://{agent}:{role}@{project}:{task}/{path}", "the resource template")
    read = await session.read_resource(address)
    check(json.loads(read.contents[0].text) == {"decision": "nats"},
          "resources/read gives the latest content", read.contents[0])
    listed = await session.list_resources()
    check(any(str(r.uri) == address for r in listed.resources) or listed.next_cursor,
          "resources/list pages through the addresses")

    deleted = await session.call_tool("ucxl_delete", {"address": address})
    check(not deleted.is_error, "ucxl_delete deletes", structured(deleted))
    gone = await session.call_tool("ucxl_fetch", {"address": address})
    check(gone.is_error and structured(gone).get("code") == "UCXL-404-NOT_FOUND",
          "ucxl_fetch after the delete is a 404 tool error", structured(gone))

    bad = await session.call_tool("ucxl_fetch", {
        "address": f"ucxl://claude!:architect@{project}:design/x"})
    err = structured(bad)
    check(bad.is_error and err.get("code") == "UCXL-400-INVALID_ADDRESS"
          and err.get("details", {}).get("field") == "agent",
          "an invalid address is a tool error naming the component", err)


async def reader_flow(session, _info, project):
    denied = await session.call_tool("ucxl_store", {
        "address": f"ucxl://claude:architect@{project}:design/x", "content": 1})
    err = structured(denied)
    check(denied.is_error and err.get("code") == "UCXL-403-FORBIDDEN"
          and err.get("details", {}).get("operation") == "write",
          "a forbidden write is a tool error naming the operation", err)


def unauthenticated(url):
    """Without credentials: 401 with a Bearer challenge, before any MCP handling."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "content-type": "application/json",
        "accept": "application/json, text/event-stream"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("www-authenticate")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("www-authenticate")


async def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--key", help="a bearer key that may read, write, search and delete")
    p.add_argument("--reader-key", help="a bearer key that may not write")
    p.add_argument("--project", default=f"mcp{uuid.uuid4().hex[:12]}")
    p.add_argument("--also-url", action="append", default=[],
                   help="another gateway's /mcp: requests alternate between the URLs")
    p.add_argument("--no-auth", action="store_true",
                   help="the gateway needs no credentials: skip the 401 check")
    args = p.parse_args()
    ALSO.extend(args.also_url)

    await session_run(args.url, args.key, lambda s, i: main_flow(s, i, args.project))
    if args.reader_key:
        await session_run(args.url, args.reader_key,
                          lambda s, i: reader_flow(s, i, args.project))
    if not args.no_auth:
        status, challenge = unauthenticated(args.url)
        check(status == 401 and (challenge or "").startswith("Bearer"),
              "a call without credentials is refused with 401 and a Bearer challenge",
              (status, challenge))
        refused = False
        try:
            await session_run(args.url, None, lambda s, i: None)
        except BaseException as e:  # the SDK raises an exception group on 401
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            refused = True
        check(refused, "the SDK client without credentials cannot connect")
    print("mcp_client: all checks passed", flush=True)


if __name__ == "__main__":
    asyncio.run(main())

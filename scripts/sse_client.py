#!/usr/bin/env python3
"""SSE clients nobody here wrote (httpx with httpx-sse, from PyPI) against a running
gateway's `GET /v1/watch`, and a second gateway in front of the same nodes.

  python3 scripts/sse_client.py --url http://127.0.0.1:8080 --also-url http://127.0.0.1:8081
                                [--heartbeat-ms 200] [--max-watches N]

Checks (one line each; every check runs, the exit status is 1 when any failed):
  stream    one watch on each gateway; 10 versions over 3 addresses and a delete written
            through the first: each arrives once on both, its data matching the write's
            answer (id, version, hash, size, created_at; the delete's id and deleted_at),
            each event with an id of its own; a write in another project is not shown
  resume    5 events read, the connection closed, 5 more writes; Last-Event-ID of the last
            read to the same gateway: exactly the unread and new changes, once, in order;
            the same cursor at the other gateway: the same changes; ?cursor= there with a
            later cursor: exactly the ones after it
  initial   initial=true on each gateway: one put per live address (its latest version), no
            ids, then `synced` (its id its data's cursor, `initial` the count), then a live
            write, once
  bad input an invalid pattern and a malformed ?cursor= are 400 with a UCXL code;
            Last-Event-ID: garbage is 400 naming the header; a well-formed cursor of feeds
            the gateway does not know is a 200 stream of one `error` event (UCXL-410-GONE),
            then its end; with --max-watches, the stream beyond the limit is 503 with
            Retry-After (and the slot comes back when a stream closes)
  keep-alive raw httpx lines: `: keep-alive` comments on an idle stream, the stream's headers

`--heartbeat-ms` is the gateways' RUSTLE_WATCH_HEARTBEAT_MS (keep it short: the keep-alive
check waits for two). Each run uses fresh UCXL projects, so runs against a shared cluster do
not collide.
"""

import argparse
import asyncio
import contextlib
import json
import sys
import time
import uuid

import httpx
from httpx_sse import aconnect_sse, connect_sse

# Seconds an expected event may take (a change reaches the other gateway through the nodes'
# feeds), and the silence after the expected events that shows nothing more is coming.
WAIT = 10.0
QUIET = 1.0
TIMEOUT = httpx.Timeout(10.0, read=30.0)
RUN = uuid.uuid4().hex[:10]

failed = []


def check(ok, what, detail=""):
    if ok:
        print(f"sse_client: ok: {what}", flush=True)
    else:
        print(f"sse_client: FAILED: {what}{': ' + detail if detail else ''}", flush=True)
        failed.append(what)
    return ok


def project(kind):
    return f"sse{kind}{RUN}"


def everything_in(p):
    return f"ucxl://any:any@{p}:any/**"


def brief(events):
    """Events as short text for failure messages."""
    out = []
    for e in events:
        try:
            d = json.loads(e.data)
        except ValueError:
            d = {}
        what = d.get("address", "").rpartition("/")[2] if isinstance(d, dict) else ""
        out.append(f"{e.event}({what} v{d.get('version', '-') if isinstance(d, dict) else '-'} "
                   f"id=…{str(d.get('id', ''))[-8:] if isinstance(d, dict) else ''} "
                   f"cursor={'yes' if e.id else 'none'})")
    return "[" + ", ".join(out) + "]"


ENDED = object()


class Watch:
    """One `GET /v1/watch` stream read by httpx-sse's `aiter_sse()` in a task of its own;
    `next()` waits for the next event with a timeout, so silence can be observed without
    breaking the stream."""

    def __init__(self, client, base, pattern, last_event_id=None, **params):
        self.client = client
        self.url = f"{base}/v1/watch"
        self.params = {"pattern": pattern, **{k: v for k, v in params.items() if v is not None}}
        self.headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
        self.queue = asyncio.Queue()
        self.task = None
        self.cm = None
        self.response = None
        self.ended = False

    async def __aenter__(self):
        self.cm = aconnect_sse(self.client, "GET", self.url, params=self.params,
                               headers=dict(self.headers))
        source = await self.cm.__aenter__()
        self.response = source.response
        if self.response.status_code == 200:
            self.task = asyncio.create_task(self._pump(source))
        else:
            await self.response.aread()
        return self

    async def _pump(self, source):
        try:
            async for sse in source.aiter_sse():
                # httpx-sse 0.4 dispatches an empty "message" for the blank line after a
                # comment once an id was seen (its decoder does not apply the spec's "empty
                # data buffer: dispatch nothing"): those are the keep-alives, not events.
                if sse.event == "message" and not sse.data:
                    continue
                await self.queue.put(sse)
        except Exception as e:  # noqa: BLE001 - handed to the reader
            await self.queue.put(e)
        else:
            await self.queue.put(ENDED)

    async def next(self, timeout=WAIT):
        """The next event; None after `timeout` of silence; ENDED when the stream ended."""
        if self.ended:
            return ENDED
        try:
            item = await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None
        if item is ENDED:
            self.ended = True
        elif isinstance(item, Exception):
            self.ended = True
            raise item
        return item

    async def take(self, n, timeout=WAIT):
        """Up to `n` events, each within `timeout` of the previous one."""
        out = []
        while len(out) < n:
            e = await self.next(timeout)
            if e is None or e is ENDED:
                break
            out.append(e)
        return out

    async def rest(self, quiet=QUIET):
        """Whatever else arrives before `quiet` seconds of silence (nothing, normally)."""
        return await self.take(1000, quiet)

    def error_body(self):
        """The body of a refusal (an open stream has none to show)."""
        if self.task is not None:
            return ""
        try:
            return self.response.json()
        except ValueError:
            return {"raw": self.response.text[:300]}

    async def __aexit__(self, *exc):
        if self.task:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        with contextlib.suppress(Exception):
            await self.cm.__aexit__(None, None, None)


async def put(client, base, address, content):
    r = await client.put(f"{base}/v1/envelopes", params={"address": address},
                         json={"content": content})
    if r.status_code not in (201, 202):
        raise RuntimeError(f"PUT {address}: {r.status_code} {r.text[:300]}")
    return {"op": "put", "address": address, **r.json()["response"]["data"]}


async def delete(client, base, address):
    r = await client.delete(f"{base}/v1/envelopes", params={"address": address})
    if r.status_code not in (200, 202):
        raise RuntimeError(f"DELETE {address}: {r.status_code} {r.text[:300]}")
    return {"op": "delete", "address": address, **r.json()["response"]["data"]}


def matches(event, write):
    """Whether `event` is the change `write` answered (the fields both have agree)."""
    try:
        data = json.loads(event.data)
    except ValueError:
        return False, "data is not JSON"
    if event.event != write["op"] or data.get("op") != write["op"]:
        return False, f"event {event.event!r} op {data.get('op')!r}, wrote a {write['op']}"
    fields = (["address", "id", "version", "hash", "size", "created_at"] if write["op"] == "put"
              else ["address", "id", "deleted_at"])
    if write["op"] == "put":
        fields.append("content_type")
        if write.get("written_by") is not None:
            fields.append("written_by")
    for field in fields:
        if field not in write:
            continue
        if data.get(field) != write[field]:
            return False, f"{field}: event {data.get(field)!r}, write answer {write[field]!r}"
    if write["op"] == "put" and "created_at" not in data:
        return False, "no created_at"
    return True, ""


def same_changes(events, writes, what, ordered):
    """Checks that `events` are exactly `writes`: each once, its data that of the write,
    each with an id of its own (and, when `ordered`, in the order written)."""
    by_id = {}
    for e in events:
        try:
            by_id.setdefault(json.loads(e.data).get("id"), []).append(e)
        except (ValueError, AttributeError):
            by_id.setdefault(None, []).append(e)
    wanted = [w["id"] for w in writes]
    missing = [w for w in writes if w["id"] not in by_id]
    twice = {k: len(v) for k, v in by_id.items() if len(v) > 1}
    unexpected = [k for k in by_id if k not in set(wanted)]
    ok = check(not missing and not twice and not unexpected and len(events) == len(writes),
               f"{what}: each of the {len(writes)} changes exactly once",
               f"missing {[(w['op'], w['address'].rpartition('/')[2], w.get('version')) for w in missing]}"
               f", twice {twice}, not written {unexpected}; got {brief(events)}")
    if not ok:
        return False
    problems = []
    for w in writes:
        good, why = matches(by_id[w["id"]][0], w)
        if not good:
            problems.append(f"{w['address'].rpartition('/')[2]} {w['op']} {w.get('version', '')}: {why}")
    ok &= check(not problems, f"{what}: event data match the write answers", "; ".join(problems))
    ids = [e.id for e in events]
    ok &= check(all(i and i.startswith("w1.") for i in ids) and len(set(ids)) == len(ids),
                f"{what}: every event has an id (w1. cursor) of its own",
                f"ids {[i[:24] for i in ids]}")
    if ordered:
        got = [json.loads(e.data)["id"] for e in events]
        ok &= check(got == wanted, f"{what}: in the order written", f"got {brief(events)}")
    else:
        # Through the other gateway, across addresses the order is that in which its reads
        # of the nodes' feeds saw them; each address's versions still come in order.
        versions = {}
        for e in events:
            d = json.loads(e.data)
            if d.get("op") == "put":
                versions.setdefault(d["address"], []).append(d["version"])
        ok &= check(all(v == sorted(v) for v in versions.values()),
                    f"{what}: each address's versions in order", f"{versions}")
    return ok


async def stream_check(cli, a, b):
    """1. A watch on each gateway; 10 versions over 3 addresses and a delete through `a`."""
    p = project("s")
    addresses = [f"ucxl://agent:sse@{p}:t/notes/{n}" for n in ("a", "b", "c")]
    async with Watch(cli, a, everything_in(p)) as wa, Watch(cli, b, everything_in(p)) as wb:
        for name, w in (("A", wa), ("B", wb)):
            ct = w.response.headers.get("content-type", "")
            if not check(w.response.status_code == 200 and ct.startswith("text/event-stream"),
                         f"stream: gateway {name} answers 200 text/event-stream",
                         f"{w.response.status_code} {ct} {w.error_body()}"):
                return
        writes = []
        for i, k in enumerate([0, 1, 2, 0, 1, 2, 0, 1, 0, 2]):
            writes.append(await put(cli, a, addresses[k], {"n": i, "by": "sse_client"}))
        await put(cli, a, f"ucxl://agent:sse@other{p}:t/notes/a", {"elsewhere": True})
        writes.append(await delete(cli, a, addresses[2]))
        versions = sorted(w.get("version", 0) for w in writes if w["address"] == addresses[0])
        check(versions == [1, 2, 3, 4], "stream: the writes were answered versions 1..n",
              f"{versions}")
        for name, w in (("A (written through)", wa), ("B (other gateway)", wb)):
            events = await w.take(len(writes))
            events += await w.rest()
            same_changes(events, writes, f"stream {name}", ordered=name.startswith("A"))


async def resume_check(cli, a, b):
    """2. Read 5, close, write 5, resume at the same gateway, then at the other one."""
    p = project("r")
    addresses = [f"ucxl://agent:sse@{p}:t/log/{n}" for n in ("x", "y")]
    writes = []
    async with Watch(cli, a, everything_in(p)) as w:
        if not check(w.response.status_code == 200, "resume: stream opened",
                     f"{w.response.status_code} {w.error_body()}"):
            return
        for i in range(8):
            writes.append(await put(cli, a, addresses[i % 2], {"i": i}))
        read = await w.take(5)
    # The connection is closed here, 3 changes unread.
    if not check(len(read) == 5 and [json.loads(e.data)["id"] for e in read]
                 == [x["id"] for x in writes[:5]],
                 "resume: the first 5 changes read", f"got {brief(read)}"):
        return
    last = read[-1].id
    for i in range(8, 13):
        writes.append(await put(cli, a, addresses[i % 2], {"i": i}))
    unseen = writes[5:]
    async with Watch(cli, a, everything_in(p), last_event_id=last) as w:
        if check(w.response.status_code == 200, "resume: Last-Event-ID accepted (same gateway)",
                 f"{w.response.status_code} {w.error_body()}"):
            events = await w.take(len(unseen))
            events += await w.rest()
            same_changes(events, unseen, "resume (same gateway, Last-Event-ID)", ordered=True)
            # and it goes on live
            live = await put(cli, a, addresses[0], {"live": 1})
            events = await w.take(1)
            events += await w.rest()
            same_changes(events, [live], "resume (same gateway): then a live change",
                         ordered=True)
            writes.append(live)
            unseen.append(live)
    later = None
    async with Watch(cli, b, everything_in(p), last_event_id=last) as w:
        if check(w.response.status_code == 200, "resume: the first gateway's cursor accepted "
                 "by the other one", f"{w.response.status_code} {w.error_body()}"):
            events = await w.take(len(unseen))
            events += await w.rest()
            if same_changes(events, unseen, "resume (other gateway, Last-Event-ID)",
                            ordered=False):
                later = events[3]
    if later is None:
        return
    # A later cursor, one the other gateway issued, through ?cursor= at the first gateway.
    after = json.loads(later.data)["id"]
    rest = unseen[[x["id"] for x in unseen].index(after) + 1:]
    async with Watch(cli, a, everything_in(p), cursor=later.id) as w:
        if check(w.response.status_code == 200, "resume: ?cursor= from the other gateway "
                 "accepted", f"{w.response.status_code} {w.error_body()}"):
            events = await w.take(len(rest))
            events += await w.rest()
            same_changes(events, rest, "resume (?cursor= issued by the other gateway)",
                         ordered=False)


async def initial_check(cli, a, b):
    """3. initial=true: the latest version of each live address, synced, then live."""
    p = project("i")
    one = f"ucxl://agent:sse@{p}:t/one"
    two = f"ucxl://agent:sse@{p}:t/two"
    gone = f"ucxl://agent:sse@{p}:t/gone"
    await put(cli, a, one, 1)
    latest = {one: await put(cli, a, one, 2), two: await put(cli, a, two, "two")}
    await put(cli, a, gone, 0)
    await delete(cli, a, gone)
    async with Watch(cli, a, everything_in(p), initial="true") as wa, \
            Watch(cli, b, everything_in(p), initial="true") as wb:
        streams = []
        for name, w in (("A", wa), ("B", wb)):
            if not check(w.response.status_code == 200, f"initial {name}: stream opened",
                         f"{w.response.status_code} {w.error_body()}"):
                return
            listed = await w.take(2)
            synced = await w.next()
            what = f"initial {name}"
            by_address = {json.loads(e.data).get("address"): e for e in listed}
            ok = check(len(listed) == 2 and set(by_address) == set(latest)
                       and all(e.event == "put" for e in listed),
                       f"{what}: one put per live address (the deleted one not listed)",
                       f"got {brief(listed)}")
            if ok:
                problems = [why for addr, x in latest.items()
                            for good, why in [matches(by_address[addr], x)] if not good]
                check(not problems, f"{what}: each the latest version (id, version, hash)",
                      "; ".join(problems))
            check(all(e.id == "" for e in listed), f"{what}: listed puts carry no id",
                  f"ids {[e.id for e in listed]}")
            good = synced not in (None, ENDED) and synced.event == "synced"
            if check(good, f"{what}: then synced", f"got {synced!r}"):
                data = json.loads(synced.data)
                check(synced.id.startswith("w1.") and data.get("cursor") == synced.id
                      and data.get("initial") == 2,
                      f"{what}: synced's id is its data's cursor, initial = 2",
                      f"id {synced.id!r} data {data}")
            streams.append((what, w))
        live = await put(cli, a, two, "two, again")
        for what, w in streams:
            events = await w.take(1)
            events += await w.rest()
            same_changes(events, [live], f"{what}: then a live change", ordered=True)


def bad_input_check(a, max_watches):
    """4. Refusals before the stream, and a cursor that cannot be continued."""
    pattern = everything_in(project("b"))
    with httpx.Client(timeout=TIMEOUT) as cli:
        url = f"{a}/v1/watch"

        def refused(what, params, headers=None, field=None):
            with connect_sse(cli, "GET", url, params=params, headers=headers or {}) as source:
                r = source.response
                r.read()
            try:
                body = r.json()
                code = body["error"]["code"]
            except (ValueError, KeyError, TypeError):
                body, code = r.text[:200], ""
            ok = r.status_code == 400 and code.startswith("UCXL-400")
            if ok and field:
                ok = body["error"].get("details", {}).get("field") == field
            check(ok, f"bad input: {what} is 400 with a UCXL code" +
                  (f" naming {field}" if field else ""), f"{r.status_code} {body}")

        refused("an invalid pattern", {"pattern": "ucxl://nope"})
        refused("an empty pattern", {"pattern": ""})
        refused("?cursor=garbage", {"pattern": pattern, "cursor": "garbage"}, field="cursor")
        refused("Last-Event-ID: garbage", {"pattern": pattern}, {"Last-Event-ID": "garbage"},
                field="Last-Event-ID")

        with connect_sse(cli, "GET", url, params={"pattern": pattern},
                         headers={"Last-Event-ID": "w1.0123456789abcdef0123456789abcdef-7"}) \
                as source:
            status = source.response.status_code
            events = list(source.iter_sse()) if status == 200 else []
        good = (status == 200 and len(events) == 1 and events[0].event == "error")
        detail = f"{status} {brief(events)} {[e.data for e in events]}"
        if check(good, "bad input: a cursor of unknown feeds is a 200 stream of one error "
                 "event, then its end", detail):
            body = json.loads(events[0].data)
            err = body.get("error", {})
            check(err.get("code") == "UCXL-410-GONE"
                  and err.get("details", {}).get("reason") == "unknown_feeds",
                  "bad input: that error event is UCXL-410-GONE (unknown_feeds)", f"{body}")

        if max_watches:
            limit_check(cli, url, pattern, max_watches)


def limit_check(cli, url, pattern, max_watches):
    """Beyond RUSTLE_MAX_WATCHES: 503 with Retry-After; a closed stream frees its slot."""
    # The earlier checks' streams are closed; the gateway notices at its next keep-alive.
    status_url = url.replace("/v1/watch", "/v1/status")
    deadline = time.monotonic() + WAIT
    while cli.get(status_url).json()["response"]["data"]["watch"]["active"] != 0:
        if time.monotonic() > deadline:
            check(False, "limit: the earlier streams are gone from /v1/status")
            return
        time.sleep(0.05)
    with contextlib.ExitStack() as held:
        opened = []
        for _ in range(max_watches):
            r = held.enter_context(cli.stream("GET", url, params={"pattern": pattern}))
            opened.append(r.status_code)
        with cli.stream("GET", url, params={"pattern": pattern}) as r:
            r.read()
            status, retry = r.status_code, r.headers.get("retry-after")
            try:
                code = r.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = r.text[:200]
        check(opened == [200] * max_watches and status == 503 and retry
              and code.startswith("UCXL-503"),
              f"limit: {max_watches} streams open, the next is 503 with Retry-After",
              f"opened {opened}, then {status} Retry-After {retry!r} {code}")
    # All closed: the slots come back (the gateway notices at its next keep-alive).
    deadline = time.monotonic() + WAIT
    while True:
        with cli.stream("GET", url, params={"pattern": pattern}) as r:
            status = r.status_code
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    check(status == 200, "limit: closed streams free their slots", f"still {status}")


def keepalive_check(a, heartbeat_ms):
    """5. Raw lines: keep-alive comments on an idle stream (httpx-sse skips comments)."""
    within = max(3.0, 5 * heartbeat_ms / 1000)
    pattern = everything_in(project("k"))
    with httpx.Client(timeout=httpx.Timeout(10.0, read=within)) as cli:
        with cli.stream("GET", f"{a}/v1/watch", params={"pattern": pattern}) as r:
            headers = r.headers
            check(r.status_code == 200
                  and headers.get("content-type", "").startswith("text/event-stream")
                  and headers.get("cache-control") == "no-store"
                  and headers.get("x-accel-buffering") == "no",
                  "keep-alive: 200 text/event-stream, Cache-Control: no-store, "
                  "X-Accel-Buffering: no", f"{r.status_code} {dict(headers)}")
            start = time.monotonic()
            comments, others = [], []
            try:
                for line in r.iter_lines():
                    if line.startswith(":"):
                        comments.append((time.monotonic() - start, line))
                        if len(comments) == 2:
                            break
                    elif line:
                        others.append(line)
            except httpx.ReadTimeout:
                pass
    texts = {c[1][1:].strip() for c in comments}
    check(len(comments) == 2 and texts == {"keep-alive"} and not others,
          f"keep-alive: `: keep-alive` comments on an idle stream "
          f"(RUSTLE_WATCH_HEARTBEAT_MS={heartbeat_ms})",
          f"comments {comments}, other lines {others}")
    if len(comments) == 2:
        gap = comments[1][0] - comments[0][0]
        check(gap >= heartbeat_ms / 2000, "keep-alive: spaced by the heartbeat",
              f"{gap * 1000:.0f} ms apart")


async def async_checks(a, b):
    async with httpx.AsyncClient(timeout=TIMEOUT) as cli:
        for name, run in (("stream", stream_check), ("resume", resume_check),
                          ("initial", initial_check)):
            started = time.monotonic()
            try:
                await run(cli, a, b)
            except Exception as e:  # noqa: BLE001 - a check that blew up failed
                check(False, f"{name}: ran to the end", f"{type(e).__name__}: {e}")
            print(f"sse_client: {name}: {time.monotonic() - started:.1f} s", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="a gateway's base URL")
    p.add_argument("--also-url", required=True,
                   help="a second gateway's base URL, in front of the same nodes")
    p.add_argument("--heartbeat-ms", type=int, default=200,
                   help="the gateways' RUSTLE_WATCH_HEARTBEAT_MS")
    p.add_argument("--max-watches", type=int, default=0,
                   help="the first gateway's RUSTLE_MAX_WATCHES, to check the limit (0: not)")
    args = p.parse_args()
    a, b = args.url.rstrip("/"), args.also_url.rstrip("/")
    asyncio.run(async_checks(a, b))
    for name, run in (("bad input", lambda: bad_input_check(a, args.max_watches)),
                      ("keep-alive", lambda: keepalive_check(a, args.heartbeat_ms))):
        started = time.monotonic()
        try:
            run()
        except Exception as e:  # noqa: BLE001
            check(False, f"{name}: ran to the end", f"{type(e).__name__}: {e}")
        print(f"sse_client: {name}: {time.monotonic() - started:.1f} s", flush=True)
    if failed:
        sys.exit(f"sse_client: {len(failed)} check(s) failed: {failed}")
    print("sse_client: all checks passed", flush=True)


if __name__ == "__main__":
    main()

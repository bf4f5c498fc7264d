#!/usr/bin/env python3
"""Writes the seed inputs of the node_record and node_answer targets (seeds/<target>/).

Valid records and answers, each with one thing wrong, so the fuzzer starts next to every
decision the decoders make. Run from fuzz/: `python3 make_seeds.py`.
"""
import hashlib
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def jcs(v):
    # Enough of RFC 8785 for these seeds: sorted keys, no spaces, ASCII-free strings.
    return json.dumps(v, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def digest(content):
    c = jcs(content).encode()
    return "sha256:" + hashlib.sha256(c).hexdigest(), len(c)


def ver(id, content, t, ctype="application/json", meta=None, hash=None, size=None):
    h, n = digest(content)
    return {"kind": "version", "id": id, "content": content, "content_type": ctype,
            "metadata": meta or {}, "created_at": t, "hash": hash or h,
            "size": n if size is None else size}


def tomb(id, t):
    return {"kind": "tombstone", "id": id, "created_at": t}


A = "ucxl://agent:role@proj:task/notes/a.json"
T = "2026-11-24T10:00:00Z"


def record(entries, address=A):
    return {"address": address, "set": {"entries": entries}}


RECORDS = {
    "one_version": record([ver("v1", {"k": 1}, "2026-11-24T10:00:00.000001Z")]),
    "version_tombstone_version": record([
        ver("v1", {"k": 1}, "2026-11-24T10:00:00Z"), tomb("d1", "2026-11-24T10:00:01Z"),
        ver("v2", [1, 2.5, "x", None, True], "2026-11-24T10:00:02Z", "text/plain",
            {"author": "a"})]),
    "unsorted_duplicates": record([
        ver("b", 1, "2026-11-24T10:00:05Z"), ver("a", 2, "2026-11-24T10:00:01Z"),
        ver("b", 3, "2026-11-24T10:00:00Z"), tomb("a", "2026-11-24T10:00:09Z")]),
    "wrong_hash": record([ver("v1", {"k": 1}, T, hash="sha256:" + "0" * 64)]),
    "wrong_size": record([ver("v1", {"k": 1}, T, size=999)]),
    "temporal_address": record([], A + "/*^"),
    "versioned_address": record([], "ucxl://agent:role@proj:task/*~2/notes"),
    "pattern_address": record([], "ucxl://*:*@proj:task/notes"),
    "nanoseconds": record([ver("v1", "s", "2026-11-24T10:00:00.123456789Z")]),
    "offset_time": record([ver("v1", "s", "2026-11-24T12:00:00+02:00")]),
    "same_time_ids": record([ver("z", 1, T), ver("y", 2, T), tomb("x", T)]),
    "unicode_content": record(
        [ver("u", {"\u00e9": "\U0001F600", "\u0000": "nul", "b": 1e300, "a": -0.0}, T)],
        "ucxl://agent:role@proj:task/caf%C3%A9/\u00e9t\u00e9"),
    "empty_set": record([]),
    "extra_fields": {"address": A, "set": {"entries": [], "more": 1}, "x": 2},
}

ENVELOPE = {"id": "v1", "address": A, "version": 1, "content": {"k": 1},
            "content_type": "application/json", "metadata": {},
            "created_at": "2026-11-24T10:00:00.000001Z", "hash": digest({"k": 1})[0],
            "size": 7}


def ok(code, data):
    return json.dumps({"response": {"code": code, "message": "m", "data": data,
                                     "request_id": "r", "timestamp": T}})


def err(code):
    return json.dumps({"error": {"code": code, "message": "m", "details": {},
                                 "source": "bzzz-node", "path": "/ucxi/v1/get",
                                 "request_id": "r", "timestamp": T}})


# The first byte: status = [200, 201, 400, 404, 409, 413, 302, 500][b % 8]; shape = b // 64
# (0 and 1: an envelope, 2: a history, 3: any JSON).
ANSWERS = {
    "get_ok": (0, ok("UCXL-200-OK", ENVELOPE)),
    "put_created": (1, ok("UCXL-201-CREATED", ENVELOPE)),
    "code_mismatch": (0, ok("UCXL-201-CREATED", ENVELOPE)),
    "not_found": (3, err("UCXL-404-NOT_FOUND")),
    "refusal_code_mismatch": (3, err("UCXL-409-CONFLICT")),
    "conflict": (4, err("UCXL-409-CONFLICT")),
    "error_on_200": (0, err("UCXL-404-NOT_FOUND")),
    "redirect": (6, ok("UCXL-200-OK", ENVELOPE)),
    "server_error": (7, err("UCXL-500-INTERNAL_ERROR")),
    "history_ok": (128, ok("UCXL-200-OK", {"address": A, "versions": [
        {"version": 1, "id": "v1", "created_at": T, "hash": ENVELOPE["hash"], "size": 7,
         "content_type": "application/json"}]})),
    "value_ok": (192, ok("UCXL-200-OK", {"items": [], "next_cursor": None})),
    "bad_code_text": (0, ok("UCXL-2OO-OK", ENVELOPE)),
    "nanosecond_envelope": (0, ok("UCXL-200-OK", dict(
        ENVELOPE, created_at="2026-11-24T10:00:00.123456789Z"))),
    "offset_envelope": (0, ok("UCXL-200-OK", dict(
        ENVELOPE, created_at="2026-11-24T12:00:00+02:00"))),
    "truncated": (0, ok("UCXL-200-OK", ENVELOPE)[:60]),
}


def main():
    for target in ("node_record", "node_answer"):
        os.makedirs(os.path.join(HERE, "seeds", target), exist_ok=True)
    for name, value in RECORDS.items():
        with open(os.path.join(HERE, "seeds", "node_record", name), "w") as f:
            f.write(json.dumps(value, ensure_ascii=False))
    nested = json.dumps(record([]))[:-1] + ', "x": ' + "[" * 200 + "]" * 200 + "}"
    with open(os.path.join(HERE, "seeds", "node_record", "deep_nesting"), "w") as f:
        f.write(nested)
    with open(os.path.join(HERE, "seeds", "node_record", "not_json"), "w") as f:
        f.write('{"address":')
    for name, (selector, body) in ANSWERS.items():
        with open(os.path.join(HERE, "seeds", "node_answer", name), "wb") as f:
            f.write(bytes([selector]) + body.encode())


if __name__ == "__main__":
    main()

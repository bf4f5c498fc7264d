#!/usr/bin/env python3
"""The observability profile's queries against a real Prometheus (part of .ci/run).

Starts three bzzz-nodes and a hybrid gateway (scripts/cluster.py, binaries of
target/<PROFILE>/ or BIN_DIR) and Debian's Prometheus server (`prometheus`, or $PROMETHEUS)
with docker/prometheus/prometheus.yml, its targets pointed at those processes and its
intervals at 1 s, and docker/prometheus/alerts.yml as rule file. Then drives the traffic
that makes every series the dashboard and the alerts use exist: writes, reads, history,
searches, a bad address and an unknown path; one node stopped; every node stopped
(fallback, journal, a partial search, the fallback alerts pending); the nodes back (journal
replayed); traffic again. Once every target was scraped after that and every rule
evaluated, it evaluates through /api/v1/query every query of docker/grafana/dashboards/*.json
(template variables evaluated first and substituted as Grafana does) and every alerting
rule, and reads /api/v1/rules. It fails on

  - a query Prometheus refuses (syntax, types) or answers with an error;
  - a metric name a query uses that no scraped target exports (names from the query's
    PromQL, tokenized here: Prometheus 2.42 has no parse API);
  - a panel without queries, a variable used but not defined, a multi-value variable
    matched with = instead of =~, a variable query with no values, a panel not using the
    dashboard's data source variable;
  - an alerting rule of alerts.yml not loaded, not yet evaluated, or with an error.

Then it shows that the check bites: a copy of the dashboard with a misspelled metric, a
panel without queries and a broken query must each be refused.

  python3 scripts/observability.py              the check (PROFILE=debug by default)
  python3 scripts/observability.py --self-test  the PromQL tokenizer and the dashboard
                                                checks on known inputs (no processes)

Processes are stopped by their PID on every exit path. Python standard library only.
"""

import argparse
import copy
import datetime
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

import cluster
from netutil import free_port, request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILE = os.environ.get("PROFILE", "debug")
BIN = os.environ.get("BIN_DIR") or os.path.join(ROOT, "target", PROFILE)
PROMETHEUS_DIR = os.path.join(ROOT, "docker", "prometheus")
DASHBOARDS = os.path.join(ROOT, "docker", "grafana", "dashboards")
# Scrape and rule evaluation interval of the Prometheus started here.
INTERVAL = "1s"
# What Grafana's interval variables stand for here (1 s scrapes: a minute holds them all).
GRAFANA_GLOBALS = {
    "__rate_interval": "1m", "__interval": "15s", "__range": "1m",
    "__rate_interval_ms": "60000", "__interval_ms": "15000", "__range_s": "60",
    "__range_ms": "60000",
}
# The dashboard's panels name their data source by this variable (type datasource).
DATASOURCE_VARIABLE = "datasource"


def log(msg):
    print(f"observability: {msg}", flush=True)


# ---------------------------------------------------------------------------------------
# PromQL: the metric names a query uses.

class PromQLError(ValueError):
    pass


IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
MATCH_OP = re.compile(r"=~|!~|!=|=")
# Words that are never metric names where they stand.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
# Keywords followed by a list of label names in parentheses.
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}


def _skip_space(s, i):
    """Past whitespace and # comments."""
    while i < len(s):
        if s[i].isspace():
            i += 1
        elif s[i] == "#":
            end = s.find("\n", i)
            i = len(s) if end < 0 else end + 1
        else:
            break
    return i


def _string(s, i):
    """The string literal at s[i] (its text, escapes kept) and the index after it."""
    quote = s[i]
    j = i + 1
    while j < len(s):
        if s[j] == "\\" and quote != "`":
            j += 2
            continue
        if s[j] == quote:
            return s[i + 1:j], j + 1
        j += 1
    raise PromQLError(f"unterminated string at {i}")


def _closing(s, i, close):
    """The index after the `close` that ends the bracket opened at s[i] (strings skipped)."""
    j = i + 1
    while j < len(s):
        if s[j] in "\"'`":
            _, j = _string(s, j)
            continue
        if s[j] == close:
            return j + 1
        j += 1
    raise PromQLError(f"unclosed {s[i]!r} at {i}")


def _matchers(s, i, names):
    """Reads the label matchers `{...}` at s[i]; a `__name__="x"` matcher (or a quoted
    name alone, Prometheus 3's form) names metric x. Returns the index after `}`."""
    i += 1
    while True:
        i = _skip_space(s, i)
        if i >= len(s):
            raise PromQLError("unclosed '{'")
        if s[i] == "}":
            return i + 1
        if s[i] == ",":
            i += 1
            continue
        quoted = s[i] in "\"'`"
        if quoted:
            label, i = _string(s, i)
        else:
            m = IDENT.match(s, i)
            if not m:
                raise PromQLError(f"unexpected {s[i]!r} in label matchers at {i}")
            label, i = m.group(), m.end()
        i = _skip_space(s, i)
        op = MATCH_OP.match(s, i)
        if not op:
            if not quoted:
                raise PromQLError(f"label {label} without a matcher at {i}")
            names.add(label)
            continue
        i = _skip_space(s, op.end())
        if i >= len(s) or s[i] not in "\"'`":
            raise PromQLError(f"label {label} without a quoted value at {i}")
        value, i = _string(s, i)
        if label == "__name__":
            if op.group() != "=":
                raise PromQLError(f"__name__{op.group()}\"{value}\": which metrics this names "
                                  "cannot be checked")
            names.add(value)


def metric_names(expr):
    """The metric names `expr` selects: identifiers that are not functions or aggregations
    (followed by `(`), not keywords, not label names (inside `{}`, `by ()`, `without ()`,
    `on ()`, `ignoring ()`, `group_left ()`, `group_right ()`), plus `__name__="..."`
    matchers. Strings, durations, ranges and numbers are skipped."""
    names = set()
    i = 0
    n = len(expr)
    while i < n:
        i = _skip_space(expr, i)
        if i >= n:
            break
        c = expr[i]
        if c in "\"'`":
            _, i = _string(expr, i)
        elif c == "{":
            i = _matchers(expr, i, names)
        elif c == "[":
            i = _closing(expr, i, "]")
        elif c.isdigit() or (c == "." and i + 1 < n and expr[i + 1].isdigit()):
            while i < n and (expr[i].isalnum() or expr[i] in "._"):
                i += 1
        elif m := IDENT.match(expr, i):
            word, i = m.group(), m.end()
            low = word.lower()
            after = _skip_space(expr, i)
            follows_paren = after < n and expr[after] == "("
            if low in LABEL_LISTS:
                if follows_paren:
                    i = _closing(expr, after, ")")
            elif low in KEYWORDS or follows_paren:
                pass
            elif low in AGGREGATIONS and (nxt := IDENT.match(expr, after)) \
                    and nxt.group().lower() in ("by", "without"):
                pass
            else:
                names.add(word)
        else:
            i += 1
    return names


# ---------------------------------------------------------------------------------------
# Grafana dashboards: panels, queries, variables.

# $name, ${name}, ${name:format}, [[name]]; not $1 (label_replace's capture groups).
VARIABLE_REF = re.compile(
    r"\$\{([A-Za-z_]\w*)(?::[^}]*)?\}|\[\[([A-Za-z_]\w*)(?::[^\]]*)?\]\]|\$([A-Za-z_]\w*)")


def panels(dashboard):
    """Every panel, those inside rows included."""
    for p in dashboard.get("panels", []):
        yield p
        yield from p.get("panels", []) if p.get("type") == "row" else ()


def variable_query(var):
    q = var.get("query", "")
    return q.get("query", "") if isinstance(q, dict) else q


def structure(dashboard):
    """(queries, variables, problems) of a dashboard, without asking Prometheus: queries
    as (where, expr), variables as (name, query), in order."""
    problems, queries, variables = [], [], []
    template = dashboard.get("templating", {}).get("list", [])
    multi = set()
    datasource_var = False
    for var in template:
        name, kind = var.get("name", ""), var.get("type")
        if kind == "datasource":
            if var.get("query") != "prometheus":
                problems.append(f"variable {name}: a data source variable not of type prometheus")
            datasource_var = datasource_var or name == DATASOURCE_VARIABLE
        elif kind == "query":
            variables.append((name, variable_query(var)))
            if var.get("multi") or var.get("includeAll"):
                multi.add(name)
        else:
            problems.append(f"variable {name}: type {kind} is not checked here (query or datasource)")
    if not datasource_var:
        problems.append(f"no data source variable ${DATASOURCE_VARIABLE} (type datasource)")
    wanted_ds = f"${{{DATASOURCE_VARIABLE}}}"
    for p in panels(dashboard):
        if p.get("type") == "row":
            continue
        where = f"panel {p.get('title')!r}"
        ds = (p.get("datasource") or {}).get("uid")
        if ds != wanted_ds:
            problems.append(f"{where}: data source {ds!r}, not {wanted_ds}")
        exprs = [(t.get("refId", "?"), t.get("expr", "")) for t in p.get("targets", [])
                 if not t.get("hide")]
        exprs = [(ref, e) for ref, e in exprs if e.strip()]
        if not exprs:
            problems.append(f"{where}: no queries")
        for ref, expr in exprs:
            queries.append((f"{where} {ref}", expr))
    for where, expr in queries + [(f"variable {n}", q) for n, q in variables]:
        for name in multi:
            if re.search(r'(?<![=!])(=|!=)\s*"[^"]*\$\{?' + name + r'\b', expr):
                problems.append(f"{where}: multi-value ${name} matched with = or != (use =~ or !~)")
    return queries, variables, problems


def substitute(expr, values):
    """`expr` with Grafana's variables replaced by `values` (name -> text), and the names
    of those used but unknown."""
    unknown = []

    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in values:
            return values[name]
        unknown.append(name)
        return m.group(0)

    return VARIABLE_REF.sub(repl, expr), unknown


def regex_value(options):
    """What Grafana puts in a PromQL regex matcher for a multi-value variable set to All:
    the values, regex-escaped, alternated, inside a double-quoted PromQL string."""
    escaped = [re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", v) for v in options]
    text = escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    return text.replace("\\", "\\\\")


LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.*),\s*)?(\w+)\s*\)\s*$", re.S)


def variable_promql(query):
    """The PromQL query and label whose values a Grafana variable query lists, or None."""
    m = LABEL_VALUES.match(query)
    if not m:
        return None
    selector, label = m.group(1), m.group(2)
    if not selector:
        selector = f'{{{label}!=""}}'
    return f"group by ({label}) ({selector})", label


# ---------------------------------------------------------------------------------------
# Against a running Prometheus.

class Prometheus:
    """Debian's Prometheus server on a free port, with `config` (text) and alerts.yml beside
    it, storage in `workdir`; stopped on exit (cluster.spawn)."""

    def __init__(self, binary, workdir, config):
        os.makedirs(workdir)
        path = os.path.join(workdir, "prometheus.yml")
        with open(path, "w") as f:
            f.write(config)
        shutil.copy(os.path.join(PROMETHEUS_DIR, "alerts.yml"), workdir)
        self.port = free_port()
        self.log_path = os.path.join(workdir, "prometheus.log")
        argv = [binary, f"--config.file={path}", f"--storage.tsdb.path={workdir}/tsdb",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        with open(self.log_path, "w") as out:
            self.proc = cluster.spawn(argv, stdout=out, stderr=subprocess.STDOUT)
        cluster.wait_for(lambda: self.proc.poll() is None and request(
            "GET", self.url + "/-/ready", timeout=1)[0] == 200, 30, "Prometheus ready",
            dump=self.log_tail)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self):
        with open(self.log_path) as f:
            return f.read()[-3000:]

    def api(self, path, **params):
        """The `data` of an API answer, or raises PromQLError with Prometheus's error."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, _, raw = request("GET", url, timeout=30)
        try:
            body = json.loads(raw)
        except ValueError:
            raise PromQLError(f"HTTP {status}: {raw[:200]!r}") from None
        if body.get("status") != "success":
            raise PromQLError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr):
        return self.api("query", query=expr)["result"]


def prometheus_config(text, gateway, nodes):
    """docker/prometheus/prometheus.yml with its compose targets replaced by `gateway` and
    `nodes` (host:port) and its intervals by INTERVAL."""
    swaps = [('"gateway:8080"', f'"{gateway}"'),
             ("scrape_interval: 15s", f"scrape_interval: {INTERVAL}"),
             ("evaluation_interval: 15s", f"evaluation_interval: {INTERVAL}")]
    swaps += [(f'"bzzz-{i + 1}:8080"', f'"{n}"') for i, n in enumerate(nodes)]
    for old, new in swaps:
        if text.count(old) != 1:
            sys.exit(f"observability: docker/prometheus/prometheus.yml has {old} "
                     f"{text.count(old)} times, not once: update prometheus_config()")
        text = text.replace(old, new)
    return text


def exported_types(urls):
    """{metric family: TYPE} from the /metrics of `urls`."""
    types = {}
    for url in urls:
        _, _, raw = request("GET", url + "/metrics")
        for line in raw.decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[:2] == ["#", "TYPE"]:
                types[parts[2]] = parts[3]
    return types


def missing_hint(name, types):
    for suffix in ("_bucket", "_sum", "_count", "_total", ""):
        if suffix and name.endswith(suffix):
            base = name[: -len(suffix)]
        elif not suffix:
            base = name
        else:
            continue
        if base in types:
            return f" ({base} is exported as a {types[base]})"
    return ""


def check_queries(prom, queries, exported, types, empty):
    """Evaluates `queries` [(where, expr)]; problems found. Queries without result are
    appended to `empty`."""
    problems = []
    for where, expr in queries:
        try:
            names = metric_names(expr)
        except PromQLError as e:
            problems.append(f"{where}: {e}: {expr}")
            names = set()
        for name in sorted(names - exported):
            problems.append(f"{where}: {name} is not exported by any scraped target"
                            f"{missing_hint(name, types)}")
        try:
            if not prom.query(expr):
                empty.append(where)
        except PromQLError as e:
            problems.append(f"{where}: Prometheus refused the query: {e}\n    {expr}")
    return problems


def check_dashboard(prom, dashboard, exported, types, empty):
    """Every problem of `dashboard` against `prom`: its structure, its variables (evaluated
    in order and substituted into the later ones and into every panel query as Grafana
    does with All selected), its queries."""
    queries, variables, problems = structure(dashboard)
    values = dict(GRAFANA_GLOBALS)
    values[DATASOURCE_VARIABLE] = "prometheus"
    for name, query in variables:
        text, unknown = substitute(query, values)
        problems += [f"variable {name}: ${u} is not defined" for u in unknown]
        wanted = variable_promql(text)
        if wanted is None:
            problems.append(f"variable {name}: {query!r} is not label_values(...), which "
                            "this check evaluates")
            continue
        expr, label = wanted
        before = len(problems)
        problems += check_queries(prom, [(f"variable {name}", expr)], exported, types, [])
        if len(problems) > before:
            continue
        options = sorted({r["metric"].get(label, "") for r in prom.query(expr)} - {""})
        if not options:
            problems.append(f"variable {name}: {query!r} lists no values")
            continue
        values[name] = regex_value(options)
    resolved = []
    for where, expr in queries:
        text, unknown = substitute(expr, values)
        problems += [f"{where}: ${u} is not defined" for u in unknown]
        resolved.append((where, text))
    return problems + check_queries(prom, resolved, exported, types, empty)


def parse_time(text):
    """An RFC 3339 time of Prometheus's API (nanoseconds allowed) as a Unix time."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text)
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text}")
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    t = datetime.datetime.fromisoformat(m.group(1) + zone).timestamp()
    return t + float("0" + (m.group(2) or ""))


def alert_count():
    with open(os.path.join(PROMETHEUS_DIR, "alerts.yml")) as f:
        return sum(1 for line in f if re.match(r"\s*- alert:", line))


def loaded_rules(prom):
    return [r for g in prom.api("rules")["groups"] for r in g["rules"]]


# ---------------------------------------------------------------------------------------
# The run.

def put(gateway, address, n):
    url = gateway.url + "/v1/envelopes?address=" + urllib.parse.quote(address, safe="")
    return cluster.http("PUT", url, {"content": {"n": n}})[0]


def traffic(gateway, tag, expect_write):
    """Writes, reads, history, a search, a bad address and an unknown path."""
    quote = lambda a: urllib.parse.quote(a, safe="")  # noqa: E731
    for n in range(5):
        address = f"ucxl://agent:obs@bzzz:obs/{tag}/{n}"
        status = put(gateway, address, n)
        if status != expect_write:
            sys.exit(f"observability: {tag}: write answered {status}, not {expect_write}")
        for path in (f"/v1/envelopes?address={quote(address)}",
                     f"/v1/envelopes/history?address={quote(address)}"):
            status, _, body = cluster.http("GET", gateway.url + path)
            if status != 200:
                sys.exit(f"observability: {tag}: GET {path} answered {status}: {body}")
    search = "/v1/search?pattern=" + quote("ucxl://*:*@bzzz:obs/**")
    status, _, body = cluster.http("GET", gateway.url + search)
    if status != 200:
        sys.exit(f"observability: {tag}: search answered {status}: {body}")
    for path, want in (("/v1/envelopes?address=not-an-address", 400), ("/no/such/path", 404),
                       ("/v1/status", 200)):
        status = cluster.http("GET", gateway.url + path)[0]
        if status != want:
            sys.exit(f"observability: {tag}: GET {path} answered {status}, not {want}")


def alerts_in(prom, names):
    active = {a["labels"]["alertname"] for a in prom.api("alerts")["alerts"]
              if a["state"] in ("pending", "firing")}
    return names <= active


def drive(prom, gateway, nodes):
    """Traffic through every state the dashboard shows; returns when it ended."""
    log("traffic: cluster healthy")
    traffic(gateway, "healthy", 201)
    log("traffic: one node stopped (writes still 201)")
    nodes[1].kill()
    traffic(gateway, "one-down", 201)
    log("traffic: every node stopped (writes 202: fallback, journal, partial search)")
    nodes[0].kill()
    nodes[2].kill()
    traffic(gateway, "all-down", 202)
    # The fallback alerts go pending on the real series (the rules match what is exported).
    wanted = {"RustleFallbackActive", "RustleAllEndpointsDown", "RustleEndpointDown"}
    cluster.wait_for(lambda: alerts_in(prom, wanted), 60, f"alerts {sorted(wanted)} pending",
                     dump=lambda: prom.api("alerts"))
    log(f"alerts pending: {', '.join(sorted(wanted))}")
    log("traffic: nodes back (journal replayed)")
    for node in nodes:
        node.start()
    cluster.wait_for(lambda: all(n.healthy() for n in nodes), 60, "nodes healthy again")

    def replayed():
        s = gateway.status()
        return s["journal"]["pending"] == 0 and not s["fallback"]["active"]

    cluster.wait_for(replayed, 60, "journal replayed", dump=gateway.status)
    traffic(gateway, "recovered", 201)
    return time.time()


def wait_for_scrapes(prom, targets, since):
    """Until every target was scraped after `since` and is up, and every rule evaluated
    after it."""
    def scraped():
        up = prom.query("timestamp(up == 1)")
        return len(up) == targets and min(float(r["value"][1]) for r in up) > since

    cluster.wait_for(scraped, 60, "every target scraped after the traffic",
                     dump=lambda: prom.api("targets"))

    def evaluated():
        rules = loaded_rules(prom)
        return rules and all(parse_time(r["lastEvaluation"]) > since for r in rules)

    cluster.wait_for(evaluated, 60, "every rule evaluated after the traffic",
                     dump=lambda: prom.api("rules"))


def check_rules(prom, exported, types):
    problems = []
    rules = loaded_rules(prom)
    alerts = [r for r in rules if r["type"] == "alerting"]
    if len(alerts) != alert_count():
        problems.append(f"{len(alerts)} alerting rules loaded, alerts.yml has {alert_count()}")
    for r in rules:
        if r["health"] != "ok" or r.get("lastError"):
            problems.append(f"rule {r['name']}: health {r['health']}: {r.get('lastError')}")
    problems += check_queries(prom, [(f"rule {r['name']}", r["query"]) for r in alerts],
                              exported, types, [])
    return problems, len(alerts)


def bites(prom, dashboard, exported, types):
    """The check refuses a misspelled metric, a panel without queries and a broken query."""
    broken = copy.deepcopy(dashboard)
    ps = [p for p in panels(broken) if p.get("type") != "row"]
    ps[0]["targets"][0]["expr"] = ps[0]["targets"][0]["expr"].replace(
        "rustle_requests_total", "rustle_requests_totl")
    ps[1]["targets"] = []
    ps[2]["targets"][0]["expr"] += " +"
    found = "\n".join(check_dashboard(prom, broken, exported, types, []))
    for what, sign in (("a misspelled metric", "rustle_requests_totl is not exported"),
                       ("a panel without queries", f"panel {ps[1]['title']!r}: no queries"),
                       ("a broken query", f"panel {ps[2]['title']!r} A: Prometheus refused")):
        if sign not in found:
            sys.exit(f"observability: the check did not refuse {what} ({sign!r}); it said:\n{found}")
    log("the check refuses a misspelled metric, a panel without queries and a broken query")


def run(workdir):
    binary = os.environ.get("PROMETHEUS") or shutil.which("prometheus")
    if not binary:
        sys.exit("observability: the Prometheus server is not installed (Debian package prometheus)")
    dashboards = sorted(glob.glob(os.path.join(DASHBOARDS, "*.json")))
    if not dashboards:
        sys.exit(f"observability: no dashboard in {DASHBOARDS}")
    cluster.install_cleanup()
    started = time.monotonic()
    nodes = cluster.start_nodes(BIN, workdir)
    gateway = cluster.Gateway(BIN, [n.url for n in nodes], os.path.join(workdir, "gw", "journal"),
                              env={"RUSTLE_AUDIT_LOG": "off", "RUST_LOG": "warn"})
    os.makedirs(os.path.join(workdir, "gw"))
    gateway.start()
    hostport = lambda url: url.split("://")[1]  # noqa: E731
    with open(os.path.join(PROMETHEUS_DIR, "prometheus.yml")) as f:
        config = prometheus_config(f.read(), hostport(gateway.url), [hostport(n.url) for n in nodes])
    prom = Prometheus(binary, os.path.join(workdir, "prometheus"), config)
    log(f"{binary} on {prom.url}: scraping the gateway and three nodes every {INTERVAL}")
    ended = drive(prom, gateway, nodes)
    wait_for_scrapes(prom, 1 + len(nodes), ended)
    exported = set(prom.api("label/__name__/values"))
    types = exported_types([gateway.url] + [n.url for n in nodes])
    log(f"{len(exported)} metric names in Prometheus")

    problems, total, empty = [], 0, []
    for path in dashboards:
        with open(path) as f:
            dashboard = json.load(f)
        rel = os.path.relpath(path, ROOT)
        found = check_dashboard(prom, dashboard, exported, types, empty)
        queries, variables, _ = structure(dashboard)
        total += len(queries) + len(variables)
        problems += [f"{rel}: {p}" for p in found]
    rule_problems, alerts = check_rules(prom, exported, types)
    problems += [f"docker/prometheus/alerts.yml: {p}" for p in rule_problems]
    total += alerts
    if empty:
        log(f"no data now (fine, e.g. nothing in the window): {'; '.join(empty)}")
    if problems:
        print("\n".join(f"  {p}" for p in problems), file=sys.stderr)
        sys.exit(f"observability: {len(problems)} problems in {total} queries")
    log(f"{total} queries ({len(dashboards)} dashboard(s), their variables, {alerts} alerting "
        f"rules) evaluated: no errors, every metric exported, every rule healthy")
    with open(dashboards[0]) as f:
        bites(prom, json.load(f), exported, types)
    log(f"ok in {time.monotonic() - started:.0f} s")


# ---------------------------------------------------------------------------------------
# Self-test: the tokenizer and the dashboard checks on known inputs.

NAME_CASES = [
    ('sum by (route) (rate(rustle_requests_total{instance=~"$instance", status=~"5.."}[5m]))',
     {"rustle_requests_total"}),
    ("histogram_quantile(0.99, sum by (le, route) (rate(bzzz_request_duration_seconds_bucket[5m])))",
     {"bzzz_request_duration_seconds_bucket"}),
    ("max by (instance) (rustle_fallback_active) == 1", {"rustle_fallback_active"}),
    ("rustle_journal_pending > 0 and deriv(rustle_journal_pending[10m]) > 0",
     {"rustle_journal_pending"}),
    ("sum(rate(a_total[1m] offset 5m)) by (job) / on (job) group_left (x) b", {"a_total", "b"}),
    ('{__name__="up", job="x"}', {"up"}),
    ('count_values("version", build_info) # a comment naming fake_metric', {"build_info"}),
    ("sum without (instance) (x) * 1e-3 + Inf", {"x"}),
    ("rate(x[5m:1m]) unless y", {"x", "y"}),
    ("max(process_open_fds / process_max_fds)", {"process_open_fds", "process_max_fds"}),
    ("sum by(le)(y_bucket)", {"y_bucket"}),
    ("a @ start()", {"a"}),
    ("sum by (alertname, alertstate) (ALERTS)", {"ALERTS"}),
    ("topk(3, sum by (route) (z)) > bool 1", {"z"}),
    ('label_replace(m, "dst", "$1", "src", "(.*)")', {"m"}),
    ("sum(q) by (route) or vector(0)", {"q"}),
    ("rate(ns:recorded:rate5m[1m])", {"ns:recorded:rate5m"}),
    ('{"utf8.name", le="1"}', {"utf8.name"}),
]
NAME_ERRORS = ['{__name__=~"rustle_.*"}', 'x{a="b}', "rate(x[5m)", "x{a}"]


def self_test():
    failures = []
    for expr, want in NAME_CASES:
        got = metric_names(expr)
        if got != want:
            failures.append(f"metric_names({expr!r}) = {sorted(got)}, want {sorted(want)}")
    for expr in NAME_ERRORS:
        try:
            metric_names(expr)
            failures.append(f"metric_names({expr!r}) raised nothing")
        except PromQLError:
            pass
    if regex_value(["127.0.0.1:9", "/v1/{id}"]) != r"(127\\.0\\.0\\.1:9|/v1/\\{id\\})":
        failures.append(f"regex_value: {regex_value(['127.0.0.1:9', '/v1/{id}'])}")
    if variable_promql("label_values(up{job=~\"a\"}, instance)") != \
            ('group by (instance) (up{job=~"a"})', "instance"):
        failures.append("variable_promql(label_values(selector, label))")
    if variable_promql("label_values(job)") != ('group by (job) ({job!=""})', "job"):
        failures.append("variable_promql(label_values(label))")
    text, unknown = substitute(
        'label_replace(rate(x{i=~"$i", r=~"${r:regex}"}[$__rate_interval]), "d", "$1", "s", "(.*)") $nope',
        {"i": "a", "r": "b", "__rate_interval": "1m"})
    if text != 'label_replace(rate(x{i=~"a", r=~"b"}[1m]), "d", "$1", "s", "(.*)") $nope' \
            or unknown != ["nope"]:
        failures.append(f"substitute: {text!r} {unknown}")
    if abs(parse_time("2026-11-30T16:00:01.123456789Z") - 1796054401.123456789) > 1e-6:
        failures.append("parse_time")
    ds = {"type": "prometheus", "uid": "${datasource}"}
    dashboard = {
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            {"name": "instance", "type": "query", "multi": True, "includeAll": True,
             "query": {"query": "label_values(m, instance)"}}]},
        "panels": [
            {"type": "row", "title": "r", "panels": [
                {"type": "timeseries", "title": "inside", "datasource": ds,
                 "targets": [{"refId": "A", "expr": 'm{instance="$instance"}'}]}]},
            {"type": "timeseries", "title": "empty", "datasource": ds, "targets": [{"expr": " "}]},
            {"type": "stat", "title": "hidden", "datasource": ds,
             "targets": [{"expr": "m", "hide": True}]},
            {"type": "timeseries", "title": "fixed", "datasource": {"uid": "abc"},
             "targets": [{"refId": "A", "expr": 'm{instance=~"$instance"}'}]},
        ]}
    queries, variables, problems = structure(dashboard)
    want = ["panel 'inside' A: multi-value $instance matched with = or != (use =~ or !~)",
            "panel 'empty': no queries", "panel 'hidden': no queries",
            "panel 'fixed': data source 'abc', not ${datasource}"]
    if sorted(problems) != sorted(want):
        failures.append(f"structure problems: {problems}")
    if [w for w, _ in queries] != ["panel 'inside' A", "panel 'fixed' A"] or \
            variables != [("instance", "label_values(m, instance)")]:
        failures.append(f"structure queries {queries} variables {variables}")
    no_ds = {"templating": {"list": []}, "panels": []}
    if structure(no_ds)[2] != ["no data source variable $datasource (type datasource)"]:
        failures.append(f"structure without a data source variable: {structure(no_ds)[2]}")
    if missing_hint("h_bucket", {"h": "summary"}) != " (h is exported as a summary)":
        failures.append("missing_hint")
    if failures:
        sys.exit("observability: self-test failed:\n  " + "\n  ".join(failures))
    log(f"self-test: {len(NAME_CASES) + len(NAME_ERRORS)} PromQL cases and the dashboard checks pass")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--self-test", action="store_true", help="only the checks on known inputs")
    args = p.parse_args()
    self_test()
    if args.self_test:
        return
    with tempfile.TemporaryDirectory(prefix="observability-") as workdir:
        try:
            run(workdir)
        finally:
            # Before the directory goes: Prometheus and the nodes write into it.
            cluster.stop_all()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Checks deploy/grafana/agora.json.

    dashboard.py [--metrics SCRAPE] [DASHBOARD]

* valid JSON, a uid and title, unique panel ids, every panel placed;
* the guide's four indicators are there, with their target and alert
  thresholds drawn at agora's values ([rollout] in config/default.toml for
  p99 and error rate; 500 req/s and 85 % CPU as in deploy/prometheus/alerts.yaml);
* every metric name a query uses (panels and template variables) is one
  agora exports. With --metrics, against a Prometheus text exposition (a
  scrape of agora's /metrics; histogram series may be named with their
  _bucket/_count/_sum suffix); without, against the "agora_..." string
  literals in the Rust sources (src/, modules/) plus the standard process_*
  metrics.
Exit 1 when anything is wrong, naming the panel.
"""
import argparse
import json
import os
import re
import sys
import tomllib

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROCESS = {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
           "process_max_fds", "process_virtual_memory_bytes", "process_start_time_seconds",
           "process_threads"}
SUFFIXES = ("_bucket", "_count", "_sum")
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "offset", "bool", "inf", "nan"}
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr):
    """The metric names a PromQL expression selects (a small lexer, enough for
    what dashboards hold: no metric name inside strings or label matchers)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)   # strings
    e = re.sub(r"\{[^{}]*\}", " ", e)                                      # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)                                      # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)                                     # $variables
    names = set()
    for m in NAME.finditer(e):
        word, rest = m.group(0), e[m.end():]
        if word.lower() in KEYWORDS or re.match(r"\s*\(", rest):          # functions, aggregations
            continue
        if re.fullmatch(r"[0-9].*", word):
            continue
        # Durations and numbers like 5m, 1e3 are not names (NAME needs a letter first).
        names.add(word)
    return names


def known_from_sources():
    names = set(PROCESS)
    lit = re.compile(r'"(agora_[a-z0-9_]+)"')
    for top in ("src", "modules"):
        for d, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".rs"):
                    with open(os.path.join(d, f), encoding="utf-8") as fh:
                        names.update(lit.findall(fh.read()))
    return names, names  # every histogram name may take the suffixes


def known_from_scrape(path):
    names, histos = set(), set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"#\s*TYPE\s+(\S+)\s+(\S+)", line)
            if m:
                names.add(m.group(1))
                if m.group(2) in ("histogram", "summary"):
                    histos.add(m.group(1))
                continue
            m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", line)
            if m and not line.startswith("#"):
                names.add(m.group(1))
    return names, histos


def exported(name, names, histos):
    if name in names:
        return True
    for s in SUFFIXES:
        if name.endswith(s) and name[: -len(s)] in histos:
            return True
    return False


def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--metrics", help="a Prometheus text exposition scrape of agora's /metrics")
    ap.add_argument("dashboard", nargs="?", default=os.path.join(ROOT, "deploy", "grafana", "agora.json"))
    a = ap.parse_args()
    errors = []
    err = errors.append
    try:
        with open(a.dashboard, encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        print(f"dashboard: {a.dashboard}: {e}")
        return 1
    with open(os.path.join(ROOT, "config", "default.toml"), "rb") as f:
        r = tomllib.load(f)["rollout"]

    names, histos = known_from_scrape(a.metrics) if a.metrics else known_from_sources()
    source = a.metrics or "the Rust sources"
    for key in ("uid", "title", "panels"):
        if not dash.get(key):
            err(f"no {key}")
    ids, queries, by_title = set(), [], {}
    for p in walk(dash.get("panels", [])):
        title = p.get("title", "?")
        by_title[title] = p
        if p.get("id") in ids:
            err(f"panel {title!r}: duplicate id {p.get('id')}")
        ids.add(p.get("id"))
        if not all(k in p.get("gridPos", {}) for k in ("h", "w", "x", "y")):
            err(f"panel {title!r}: no gridPos")
        if p.get("type") == "row":
            continue
        targets = p.get("targets", [])
        if not targets:
            err(f"panel {title!r}: no query")
        for t in targets:
            if not t.get("expr"):
                err(f"panel {title!r}: target {t.get('refId')} has no expr")
            queries.append((f"panel {title!r}", t.get("expr", "")))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        if v.get("type") == "query":
            q = q.get("query", "") if isinstance(q, dict) else q or ""
            m = re.fullmatch(r"\s*label_values\(\s*(.*),\s*\w+\s*\)\s*", q)
            queries.append((f"variable {v.get('name')}", m.group(1) if m else q))

    used = set()
    for where, expr in queries:
        found = metric_names(expr)
        if not found:
            err(f"{where}: no metric name in `{expr}`")
        for n in sorted(found):
            used.add(n)
            if not exported(n, names, histos):
                err(f"{where}: {n} is not exported by agora (per {source})")

    def steps_of(title):
        p = by_title.get(title)
        if p is None:
            err(f"no panel {title!r} (one of the guide's four indicators)")
            return set()
        return {s.get("value") for s in p["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])}

    for title, want in (("p99 latency", {r["promote_max_p99_ms"] / 1000, r["rollback_p99_ms"] / 1000}),
                        ("Error rate", {r["promote_max_error_rate"], r["rollback_error_rate"]}),
                        ("Throughput", {500}),
                        ("CPU utilisation", {0.85})):
        got = steps_of(title)
        for w in want:
            if not any(g is not None and abs(g - w) < 1e-12 for g in got):
                err(f"panel {title!r}: no threshold drawn at {w:g}")

    if errors:
        print("dashboard: FAILED", *errors, sep="\n  ")
        return 1
    print(f"dashboard: {len(ids)} panels, {len(used)} metrics, all exported (per {source})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

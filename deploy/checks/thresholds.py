#!/usr/bin/env python3
"""The release and alert thresholds in the manifests are agora's own.

    thresholds.py RENDERED-SPLIT.yaml

Compares, against the [rollout] defaults of config/default.toml:
* every canary Rollout: setWeight steps == rollout.steps, an analysis with
  agora-release after each one;
* AnalysisTemplate agora-release: error rate success < promote_max_error_rate,
  failure > rollback_error_rate; p99 success < promote_max_p99_ms, failure >
  rollback_p99_ms; at least min_samples requests; an analysis spans at least
  step_secs;
* the blue-green Rollout of the edge has a pre-promotion analysis;
* deploy/prometheus/alerts.yaml: AgoraErrorRateHigh fires above
  rollback_error_rate, AgoraLatencyP99High above rollback_p99_ms.
"""
import os
import re
import sys
import tomllib

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
NUM = r"([0-9]+(?:\.[0-9]+)?)"


def seconds(d):
    m = re.fullmatch(r"([0-9]+)(s|m|h)", str(d))
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)] if m else None


def condition(metric, key, op):
    """The number in `result[0] <op> N` of a metric's condition."""
    m = re.fullmatch(r"\s*result\[0\]\s*" + re.escape(op) + r"\s*" + NUM + r"\s*", metric.get(key, ""))
    return float(m.group(1)) if m else None


def main():
    with open(os.path.join(ROOT, "config", "default.toml"), "rb") as f:
        r = tomllib.load(f)["rollout"]
    docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
    errors = []
    err = errors.append

    templates = {d["metadata"]["name"]: d for d in docs if d["kind"] == "AnalysisTemplate"}
    rollouts = [d for d in docs if d["kind"] == "Rollout"]
    canaries = [d for d in rollouts if "canary" in d["spec"]["strategy"]]
    bluegreens = [d for d in rollouts if "blueGreen" in d["spec"]["strategy"]]
    if not canaries:
        err("no canary Rollout found")
    if not bluegreens:
        err("no blue-green Rollout found")

    for ro in canaries:
        name = ro["metadata"]["name"]
        steps = ro["spec"]["strategy"]["canary"].get("steps", [])
        weights = [s["setWeight"] for s in steps if "setWeight" in s]
        if weights != list(r["steps"]):
            err(f"Rollout {name}: setWeight {weights} != [rollout] steps {r['steps']}")
        for i, s in enumerate(steps):
            if "setWeight" in s:
                nxt = steps[i + 1] if i + 1 < len(steps) else {}
                names = [t["templateName"] for t in nxt.get("analysis", {}).get("templates", [])]
                if "agora-release" not in names:
                    err(f"Rollout {name}: no agora-release analysis after setWeight {s['setWeight']}")
    for ro in bluegreens:
        bg = ro["spec"]["strategy"]["blueGreen"]
        if not bg.get("prePromotionAnalysis", {}).get("templates"):
            err(f"Rollout {ro['metadata']['name']}: blue-green without a pre-promotion analysis")
        for phase in ("prePromotionAnalysis", "postPromotionAnalysis"):
            for t in bg.get(phase, {}).get("templates", []):
                if t["templateName"] not in templates:
                    err(f"Rollout {ro['metadata']['name']}: {phase} names a missing AnalysisTemplate {t['templateName']}")

    t = templates.get("agora-release")
    if t is None:
        err("no AnalysisTemplate agora-release")
    else:
        metrics = {m["name"]: m for m in t["spec"]["metrics"]}
        want = {
            ("error-rate", "successCondition", "<"): r["promote_max_error_rate"],
            ("error-rate", "failureCondition", ">"): r["rollback_error_rate"],
            ("p99-latency", "successCondition", "<"): r["promote_max_p99_ms"] / 1000,
            ("p99-latency", "failureCondition", ">"): r["rollback_p99_ms"] / 1000,
            ("samples", "successCondition", ">="): r["min_samples"],
        }
        for (metric, key, op), value in want.items():
            if metric not in metrics:
                err(f"agora-release: no metric {metric}")
                continue
            got = condition(metrics[metric], key, op)
            if got is None or abs(got - value) > 1e-12:
                err(f"agora-release {metric} {key}: `{metrics[metric].get(key)}`, want result[0] {op} {value:g}")
        for m in metrics.values():
            span = (m.get("count", 1) - 1) * (seconds(m.get("interval", "0s")) or 0)
            if span < r["step_secs"]:
                err(f"agora-release {m['name']}: measurements span {span}s < step_secs {r['step_secs']}")

    alerts = {}
    with open(os.path.join(ROOT, "deploy", "prometheus", "alerts.yaml")) as f:
        for g in yaml.safe_load(f)["groups"]:
            for rule in g["rules"]:
                if "alert" in rule:
                    alerts[rule["alert"]] = rule["expr"]
    for alert, value in (("AgoraErrorRateHigh", r["rollback_error_rate"]),
                         ("AgoraLatencyP99High", r["rollback_p99_ms"] / 1000)):
        m = re.search(r">\s*" + NUM + r"\s*$", alerts.get(alert, ""))
        if not m or abs(float(m.group(1)) - value) > 1e-12:
            err(f"alert {alert}: threshold {m.group(1) if m else '?'} != {value:g} from [rollout]")

    if errors:
        print("thresholds: FAILED", *errors, sep="\n  ")
        return 1
    print(f"thresholds: {len(canaries)} canaries, {len(bluegreens)} blue-green and the alerts "
          f"match [rollout] (steps {r['steps']}, error rate < {r['promote_max_error_rate']} / "
          f"> {r['rollback_error_rate']}, p99 < {r['promote_max_p99_ms']} / > {r['rollback_p99_ms']} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

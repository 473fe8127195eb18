#!/usr/bin/env python3
"""Offline checks of the rendered Kubernetes manifests (kubectl kustomize).

    manifests.py --schemas DIR RENDERED.yaml...

* built-in kinds against the Kubernetes schemas (kubernetes-validate, strict);
* Rollout and AnalysisTemplate against the Argo Rollouts JSON schemas in DIR
  (check-jsonschema; DIR is ../shared/schemas/argo-rollouts, never copied
  into the repository);
* what every agora pod must have (docs/deploy.md): readiness /health/ready,
  liveness /health/live, requests and limits, runAsNonRoot, a read-only root
  filesystem, secrets from the Secret agora-secrets (keys listed in
  deploy/k8s/secrets.env.example), a termination grace longer than
  http.shutdown_timeout_secs plus the preStop pause;
* the placement settings of each process as docs/extraction.md has them.

Exit 1 on the first file with problems reported (all are listed).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import tomllib

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODULES = ["order", "inventory", "payment", "notification"]
ARGO = {"Rollout": "rollout.schema.json", "AnalysisTemplate": "analysistemplate.schema.json"}
BUILTIN = {"Namespace", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget"}
SECRET_KEYS_ALWAYS = {"AGORA__AUTH__HS256_SECRET", "AGORA__PAYMENT__PROVIDER_SECRET_KEY",
                      "AGORA__AUTH__SERVICE_PRIVATE_KEY_PEM"}


def bin_path(name):
    here = os.path.join(os.path.dirname(sys.executable), name)
    return here if os.path.exists(here) else name


def env_of(container, configmaps):
    """name -> ('value', v) | ('secret', key) for one container."""
    env = {}
    for src in container.get("envFrom", []):
        cm = configmaps.get(src.get("configMapRef", {}).get("name"))
        if cm is not None:
            env.update({k: ("value", v) for k, v in cm.get("data", {}).items()})
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = ("value", e["value"])
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = ("secret", ref["name"], ref["key"])
        else:
            env[e["name"]] = ("other",)
    return env


def check_pod(name, spec, configmaps, services, settings, secret_keys, errors):
    def err(msg):
        errors.append(f"{name}: {msg}")

    shutdown = settings["http"]["shutdown_timeout_secs"]
    sc = spec.get("securityContext", {})
    containers = spec.get("containers", [])
    for c in containers:
        csc = c.get("securityContext", {})
        if not (sc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
            err("runAsNonRoot is not set")
        if not csc.get("readOnlyRootFilesystem"):
            err(f"container {c['name']}: readOnlyRootFilesystem is not true")
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(kind, {}):
                    err(f"container {c['name']}: no {kind}.{r}")
        if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/health/ready":
            err(f"container {c['name']}: readiness probe is not GET /health/ready")
        if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/health/live":
            err(f"container {c['name']}: liveness probe is not GET /health/live")
        pause = 0
        cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        if len(cmd) == 2 and cmd[0] == "sleep":
            pause = int(cmd[1])
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if grace <= shutdown + pause:
            err(f"terminationGracePeriodSeconds {grace} is not longer than "
                f"http.shutdown_timeout_secs {shutdown} + preStop {pause}")

        env = env_of(c, configmaps)
        for k, v in env.items():
            secretish = k in SECRET_KEYS_ALWAYS or k.endswith("__DATABASE_URL") or k.endswith("_PEM") and "PRIVATE" in k
            if secretish and v[0] != "secret":
                err(f"{k} is not taken from a Secret")
            if v[0] == "secret":
                if v[1] != "agora-secrets":
                    err(f"{k} comes from Secret {v[1]}, not agora-secrets")
                if v[2] not in secret_keys:
                    err(f"{k}: key {v[2]} is not in deploy/k8s/secrets.env.example")
        if env.get("AGORA__AUTH__HS256_SECRET", ("none",))[0] != "secret":
            err("AGORA__AUTH__HS256_SECRET must come from the Secret (agora refuses the development secret)")
        for key in ("AGORA__HTTP__ADDR", "AGORA__ADMIN__ADDR"):
            if env.get(key, ("none", ""))[1:2] and not str(env[key][1]).startswith("0.0.0.0:"):
                err(f"{key} should listen on 0.0.0.0 (probes and Prometheus reach the pod)")
        if env.get("AGORA__HTTP__SHUTDOWN_TIMEOUT_SECS", ("value", str(shutdown)))[1] != str(shutdown):
            err("AGORA__HTTP__SHUTDOWN_TIMEOUT_SECS differs from the grace period's assumption")

        # Placement (docs/extraction.md).
        mods = env.get("AGORA__MODULES", ("value", ",".join(MODULES)))[1]
        hosted = [m.strip() for m in mods.split(",") if m.strip()]
        for m in hosted:
            if m not in MODULES:
                err(f"AGORA__MODULES names an unknown module {m}")
        for m in MODULES:
            urls = env.get(f"AGORA__REMOTE__{m.upper()}__URLS", ("value", ""))[1]
            db = f"AGORA__{m.upper()}__DATABASE_URL"
            if m in hosted:
                if urls:
                    err(f"hosts {m} but sets AGORA__REMOTE__{m.upper()}__URLS")
                if db not in env:
                    err(f"hosts {m} but has no {db}")
            else:
                if not urls:
                    err(f"does not host {m} and has no AGORA__REMOTE__{m.upper()}__URLS")
                for u in urls.split(","):
                    host = u.split("://", 1)[-1].split(":")[0].split("/")[0]
                    if host not in services:
                        err(f"AGORA__REMOTE__{m.upper()}__URLS: no Service named {host}")
        if hosted and len(hosted) < len(MODULES):
            if not env.get("AGORA__BUS__URL", ("value", ""))[1].startswith("nats://"):
                err("hosts only some modules but AGORA__BUS__URL is not nats://")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--schemas", required=True)
    ap.add_argument("rendered", nargs="+")
    a = ap.parse_args()
    with open(os.path.join(ROOT, "config", "default.toml"), "rb") as f:
        settings = tomllib.load(f)
    secret_keys = set()
    with open(os.path.join(ROOT, "deploy", "k8s", "secrets.env.example")) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                secret_keys.add(line.split("=", 1)[0])

    failed = False
    for path in a.rendered:
        docs = [d for d in yaml.safe_load_all(open(path)) if d]
        errors = []
        configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
        services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
        with tempfile.TemporaryDirectory() as tmp:
            builtin, argo = [], {k: [] for k in ARGO}
            for i, d in enumerate(docs):
                kind = d["kind"]
                f = os.path.join(tmp, f"{i:02d}-{kind}-{d['metadata']['name']}.yaml")
                with open(f, "w") as out:
                    yaml.safe_dump(d, out)
                if kind in ARGO:
                    argo[kind].append(f)
                elif kind in BUILTIN:
                    builtin.append(f)
                else:
                    errors.append(f"{kind} {d['metadata']['name']}: no schema to check this kind against")
                if kind in ("Deployment", "Rollout"):
                    check_pod(f"{kind} {d['metadata']['name']}", d["spec"]["template"]["spec"],
                              configmaps, services, settings, secret_keys, errors)
            if builtin:
                r = subprocess.run([bin_path("kubernetes-validate"), "--strict", "--quiet", *builtin])
                if r.returncode:
                    errors.append("kubernetes-validate failed (above)")
            for kind, files in argo.items():
                if files:
                    r = subprocess.run([bin_path("check-jsonschema"), "--schemafile",
                                        os.path.join(a.schemas, ARGO[kind]), *files])
                    if r.returncode:
                        errors.append(f"check-jsonschema of {kind} failed (above)")
        kinds = sorted({d["kind"] for d in docs})
        if errors:
            failed = True
            print(f"{path}: FAILED", *errors, sep="\n  ")
        else:
            print(f"{path}: {len(docs)} objects valid ({', '.join(kinds)})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

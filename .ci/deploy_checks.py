"""Checks on deploy/ that schema validators cannot make; run by .ci/validate-deploy.

  deploy_checks.py settings RENDERED.yaml...   every COMPOSER_PROXY_* name used by the
                                               manifests, compose.yaml and the systemd env file
                                               is a real setting, and the Deployment keeps its
                                               probes, resources and securityContext
  deploy_checks.py dashboard DASHBOARD OUT     the dashboard is well-formed; its queries are
                                               written to OUT as recording rules, so that
                                               `promtool check rules OUT` parses each one

Exits non-zero with one line per problem.
"""

import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
problems = []


def problem(where, what):
    problems.append(f"{where}: {what}")


def known_env_names():
    """COMPOSER_PROXY_<SETTING> for every setting of config/default.toml (the proxy refuses
    any other COMPOSER_PROXY_* variable at start)."""
    settings = tomllib.loads((ROOT / "config/default.toml").read_text())
    return {f"COMPOSER_PROXY_{key.upper()}" for key in settings}


# A secret of a named upstream (src/config/upstreams.rs): COMPOSER_PROXY_UPSTREAM_<NAME>_<FIELD>.
UPSTREAM_SECRET = re.compile(
    r"COMPOSER_PROXY_UPSTREAM_[A-Z0-9_]+_"
    r"(PUBLIC_KEY|PRIVATE_KEY|PUBLIC_KEY_FILE|PRIVATE_KEY_FILE|AUTH_JSON|FALLBACK_KEYS_FILE)"
)


def check_env_names(where, names, known):
    for name in names:
        if name.startswith("COMPOSER_PROXY_") and name not in known:
            if UPSTREAM_SECRET.fullmatch(name):
                continue
            problem(where, f"{name} is not a setting of config/default.toml")


def check_deployment(where, doc, known):
    spec = doc["spec"]["template"]["spec"]
    if spec.get("enableServiceLinks") is not False:
        # Service links inject COMPOSER_PROXY_SERVICE_HOST & co., which the proxy refuses.
        problem(where, "enableServiceLinks must be false")
    pod_sc = spec.get("securityContext", {})
    if pod_sc.get("runAsNonRoot") is not True:
        problem(where, "pod securityContext.runAsNonRoot must be true")
    for c in spec["containers"]:
        name = f"{where} container {c['name']}"
        check_env_names(name, [e["name"] for e in c.get("env", [])], known)
        probes = {
            "livenessProbe": "/healthz",
            "readinessProbe": "/readyz",
        }
        for probe, path in probes.items():
            got = c.get(probe, {}).get("httpGet", {}).get("path")
            if got != path:
                problem(name, f"{probe} must GET {path}, not {got}")
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for what in ("cpu", "memory"):
                if what not in res.get(kind, {}):
                    problem(name, f"resources.{kind}.{what} is missing")
        sc = c.get("securityContext", {})
        expected = {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        }
        for key, value in expected.items():
            if sc.get(key) is not value:
                problem(name, f"securityContext.{key} must be {value}")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            problem(name, "securityContext.capabilities.drop must be [ALL]")
        seccomp = sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}
        if seccomp.get("type") != "RuntimeDefault":
            problem(name, "seccompProfile must be RuntimeDefault")


def check_storage(path, docs):
    """One rendering either shares a ReadWriteMany claim or a bucket, never neither: with
    COMPOSER_PROXY_OBJECT_STORE_URL the cache volume is a per-pod emptyDir and no claim is
    rendered; without it the cache volume is the shared claim."""
    bucket = any(
        d["kind"] == "ConfigMap" and "COMPOSER_PROXY_OBJECT_STORE_URL" in d.get("data", {})
        for d in docs
    )
    claims = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        volumes = {v["name"]: v for v in d["spec"]["template"]["spec"].get("volumes", [])}
        cache = volumes.get("cache", {})
        if bucket and ("emptyDir" not in cache or claims):
            problem(path, "with a bucket the cache volume is an emptyDir and there is no claim")
        if not bucket and "persistentVolumeClaim" not in cache:
            problem(path, "without a bucket the cache volume must be the shared claim")


def settings(rendered_files):
    known = known_env_names()
    kinds = set()
    for path in rendered_files:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
        check_storage(path, docs)
        for doc in docs:
            kind = doc["kind"]
            kinds.add(kind)
            where = f"{path} {kind}/{doc['metadata']['name']}"
            if kind == "ConfigMap":
                check_env_names(where, doc.get("data", {}), known)
            elif kind == "Deployment":
                check_deployment(where, doc, known)
            elif kind == "PersistentVolumeClaim":
                if "ReadWriteMany" not in doc["spec"].get("accessModes", []):
                    problem(where, "the shared cache needs accessModes ReadWriteMany")
            elif kind == "NetworkPolicy":
                if sorted(doc["spec"].get("policyTypes", [])) != ["Egress", "Ingress"]:
                    problem(where, "must restrict both Ingress and Egress")
    for kind in ("Deployment", "Service", "ConfigMap", "PersistentVolumeClaim",
                 "PodDisruptionBudget", "NetworkPolicy", "HorizontalPodAutoscaler"):
        if kind not in kinds:
            problem(" ".join(rendered_files), f"no {kind} rendered")

    for compose_path in ("deploy/container/compose.yaml",
                         "deploy/container/compose.object-storage.yaml"):
        compose = yaml.safe_load((ROOT / compose_path).read_text())
        for name, service in compose["services"].items():
            where = f"{compose_path} service {name}"
            check_env_names(where, service.get("environment", {}), known)
            for secret in service.get("secrets", []):
                if secret not in compose.get("secrets", {}):
                    problem(compose_path, f"service {name} uses undeclared secret {secret}")

    env_path = "deploy/systemd/composer-proxy.env"
    for number, line in enumerate((ROOT / env_path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=.*", line)
        if not match:
            problem(f"{env_path}:{number}", "not a NAME=value line")
            continue
        check_env_names(f"{env_path}:{number}", [match.group(1)], known)

    unit_path = "deploy/systemd/composer-proxy.service"
    for number, line in enumerate((ROOT / unit_path).read_text().splitlines(), 1):
        match = re.fullmatch(r"Environment=([A-Z_][A-Z0-9_]*)=.*", line.strip())
        if match:
            check_env_names(f"{unit_path}:{number}", [match.group(1)], known)

    dockerfile_path = "deploy/container/Dockerfile"
    for number, line in enumerate((ROOT / dockerfile_path).read_text().splitlines(), 1):
        # Sources copied from the build context must exist (a rename would break the build).
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from=") for w in words):
            for source in [w for w in words[1:-1] if not w.startswith("--")]:
                if not (ROOT / source).exists():
                    problem(f"{dockerfile_path}:{number}", f"COPY source {source} does not exist")
        for name in re.findall(r"\b(COMPOSER_PROXY_[A-Z0-9_]+)=", line):
            check_env_names(f"{dockerfile_path}:{number}", [name], known)


# Grafana's own variables, replaced by values that make each query plain PromQL.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$job": ".*",
    "$instance": ".*",
    "$upstream": ".*",
}


def dashboard(path, out):
    board = json.loads(Path(path).read_text())
    for key in ("title", "uid", "panels", "schemaVersion"):
        if key not in board:
            problem(path, f"no {key}")
    rules = []
    ids = set()

    def walk(panels):
        for panel in panels:
            pid = panel.get("id")
            if pid in ids:
                problem(path, f"panel id {pid} used twice")
            ids.add(pid)
            if "gridPos" not in panel:
                problem(path, f"panel {panel.get('title')!r} has no gridPos")
            if panel.get("type") == "row":
                walk(panel.get("panels", []))
                continue
            targets = panel.get("targets", [])
            if not targets:
                problem(path, f"panel {panel.get('title')!r} has no query")
            for target in targets:
                expr = target.get("expr", "")
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                if "$" in expr:
                    problem(path, f"panel {panel.get('title')!r}: unknown variable in {expr}")
                rules.append({"record": f"dashboard:panel_{pid}:{target['refId']}", "expr": expr})

    walk(board.get("panels", []))
    names = {v["name"] for v in board.get("templating", {}).get("list", [])}
    for variable in ("datasource", "job", "instance"):
        if variable not in names:
            problem(path, f"no ${variable} variable")
    Path(out).write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))


def main():
    command, *args = sys.argv[1:]
    if command == "settings":
        settings(args)
    elif command == "dashboard":
        dashboard(*args)
    else:
        sys.exit(f"unknown command {command}")
    for line in problems:
        print(line, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()

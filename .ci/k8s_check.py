"""Checks of k8s/ that need more than a command line; run by .ci/k8s, in its virtualenv.

    k8s_check.py manifests KUBE_VERSIONS HELP RENDERED...   schemas, annotations, consistency
    k8s_check.py serve-env RENDERED OUT                     the ConfigMap's env, NUL-separated
    k8s_check.py exercise BIN DATA_DIR MAIN ADMIN OUT PID   drive a running gatehouse, scrape it
    k8s_check.py metrics SCRAPE OUT                         OpenMetrics -> Prometheus text 0.0.4
    k8s_check.py references SCRAPE                          dashboard and rules name real metrics

Each prints nothing when all is well and exits 1 with one line per problem otherwise.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
MONITORING = K8S / "monitoring"
EXAMPLES = K8S / "examples"

problems = []


def problem(msg):
    problems.append(msg)


def finish():
    for p in problems:
        print(f"k8s: {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def where(doc, source):
    md = doc.get("metadata") or {}
    return f"{source}: {doc.get('kind')}/{md.get('name')}"


def duration_secs(text, what):
    """gatehouse's duration syntax (config.rs parse_duration): 250ms, 10s, 5m, 2h, 1d; bare = s."""
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h|d|)\s*", str(text))
    if not m:
        problem(f"{what}: '{text}' is not a gatehouse duration")
        return 0.0
    n, unit = int(m.group(1)), m.group(2)
    return n * {"ms": 0.001, "s": 1, "": 1, "m": 60, "h": 3600, "d": 86400}[unit]


# ---------------------------------------------------------------------------------------------
# manifests


def check_builtin(doc, source, versions):
    import kubernetes_validate.utils as kv

    for version in versions:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            problem(f"{where(doc, source)} (Kubernetes {version}): {path}: {e.message}")
        except kv.SchemaNotFoundError:
            problem(f"{where(doc, source)}: no schema for {doc['apiVersion']} in Kubernetes {version}")


def diff_unknown(given, dumped, path, out):
    """Fields of `given` that the model dropped or changed (unknown or mistyped fields)."""
    if isinstance(given, dict):
        if not isinstance(dumped, dict):
            out.append(f"{path}: expected an object")
            return
        for k, v in given.items():
            if k not in dumped:
                out.append(f"{path}.{k}: unknown field")
            else:
                diff_unknown(v, dumped[k], f"{path}.{k}", out)
    elif isinstance(given, list):
        if not isinstance(dumped, list) or len(dumped) != len(given):
            out.append(f"{path}: expected a list")
            return
        for i, (g, d) in enumerate(zip(given, dumped)):
            diff_unknown(g, d, f"{path}[{i}]", out)
    elif given != dumped and str(given) != str(dumped):
        out.append(f"{path}: {given!r} read as {dumped!r}")


def check_crd(doc, source):
    """prometheus-operator objects, against models generated from its CRD schemas; strict by
    comparing what the model kept with what was given."""
    import pydantic
    from cloudcoil.models.prometheus_operator import v1

    model = {"ServiceMonitor": v1.ServiceMonitor, "PrometheusRule": v1.PrometheusRule}[doc["kind"]]
    try:
        obj = model.model_validate(doc)
    except pydantic.ValidationError as e:
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            problem(f"{where(doc, source)}: {loc}: {err['msg']}")
        return
    dumped = obj.model_dump(mode="json", by_alias=True, exclude_none=True)
    out = []
    diff_unknown(doc, dumped, "", out)
    for o in out:
        problem(f"{where(doc, source)}: {o.lstrip('.')}")
    if doc["kind"] == "ServiceMonitor":
        for ep in doc["spec"].get("endpoints", []):
            if ep.get("port") != "admin" or ep.get("path", "/metrics") != "/metrics":
                problem(f"{where(doc, source)}: must scrape /metrics on the Service port 'admin'")


# The nginx variables that auth-url and auth-signin may contain: none that a client sets.
# ($host is the server name the request matched; $escaped_request_uri is escaped.)
SIGNIN_VARS = {"scheme", "host", "escaped_request_uri"}
CLIENT_TEXT = re.compile(r"\$(http_|arg_|cookie_|args\b|query_string\b|request_uri\b|request_body\b)")


def check_ingress(doc, source, header_timeout):
    ann = (doc.get("metadata") or {}).get("annotations") or {}
    name = where(doc, source)
    prefix = "nginx.ingress.kubernetes.io/"
    for key, value in ann.items():
        value = str(value)
        short = key.split("/", 1)[-1]
        if short.endswith("-snippet") or short.endswith("-snippets"):
            problem(f"{name}: annotation {key}: snippets put raw nginx configuration in an Ingress")
            continue
        if short == "auth-cache-key" and key.startswith(prefix):
            # The one place where the credential must be templated: the key has to cover it.
            for needed in ("$http_authorization", "$cookie_"):
                if needed not in value:
                    problem(f"{name}: {key} must include {needed}... (every credential gatehouse reads)")
            continue
        if CLIENT_TEXT.search(value):
            problem(f"{name}: annotation {key} templates client-controlled text: {value}")
    if prefix + "auth-url" not in ann:
        return
    url = str(ann[prefix + "auth-url"])
    if "$" in url:
        problem(f"{name}: auth-url must be a fixed URL (no nginx variable): {url}")
    if not re.fullmatch(r"http://[a-z0-9.-]+:8080/auth", url):
        problem(f"{name}: auth-url should be http://<gatehouse service>:8080/auth, not {url}")
    signin = ann.get(prefix + "auth-signin")
    if signin is not None:
        signin = str(signin)
        for var in re.findall(r"\$\{?(\w+)", signin):
            if var not in SIGNIN_VARS:
                problem(f"{name}: auth-signin uses ${var}; allowed: {sorted(SIGNIN_VARS)}")
        if not re.search(r"[?&]rd=[^&]", signin):
            problem(f"{name}: auth-signin needs its own rd= (ingress-nginx's default uses $http_host)")
    headers = {h.strip().lower() for h in str(ann.get(prefix + "auth-response-headers", "")).split(",")}
    for h in ("authorization", "x-auth-request-user", "x-auth-request-email", "x-auth-request-amr"):
        if h not in headers:
            problem(f"{name}: auth-response-headers lacks {h}")
    if int(ann.get(prefix + "auth-keepalive", 0)) <= 0:
        problem(f"{name}: auth-keepalive should keep connections to gatehouse alive")
    timeout = int(ann.get(prefix + "auth-keepalive-timeout", 60))
    if header_timeout and timeout >= header_timeout:
        problem(f"{name}: auth-keepalive-timeout {timeout}s must be below GATEHOUSE_HEADER_TIMEOUT ({header_timeout:g}s)")
    if prefix + "auth-cache-key" in ann:
        durations = str(ann.get(prefix + "auth-cache-duration", "200 202 401 5m"))
        for spec in durations.split(","):
            for tok in spec.split():
                if not re.fullmatch(r"\d{3}", tok) and duration_secs(tok, f"{name}: auth-cache-duration") > 10:
                    problem(f"{name}: auth-cache-duration {tok}: a cached 200 outlives a revocation; keep it at 10s or less")


def check_deployment(docs, source, flags, version):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    deps = [d for d in by_kind.get("Deployment", []) if d["metadata"]["name"] == "gatehouse"]
    if len(deps) != 1:
        problem(f"{source}: expected one Deployment gatehouse")
        return None
    dep = deps[0]
    pod = dep["spec"]["template"]["spec"]
    [c] = [c for c in pod["containers"] if c["name"] == "gatehouse"]
    name = where(dep, source)
    image = f"ghcr.io/gatehouse/gatehouse:{version}"
    if c["image"] != image:
        problem(f"{name}: image {c['image']}, but Cargo.toml says {image}")
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in by_kind.get("ConfigMap", [])}
    secrets = {d["metadata"]["name"] for d in by_kind.get("Secret", [])}
    env = {}
    for ef in c.get("envFrom", []):
        ref = ef.get("configMapRef", {}).get("name")
        if ref not in configmaps:
            problem(f"{name}: envFrom names ConfigMap {ref}, which is not rendered")
            continue
        env.update(configmaps[ref])
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef", {}).get("name")
        if ref is not None and ref not in secrets:
            problem(f"{name}: env {e['name']} names Secret {ref}, which is not rendered")
        env[e["name"]] = e.get("value", f"<secret {ref}>")
    for key in env:
        if key.startswith("GATEHOUSE_") and key not in flags:
            problem(f"{name}: {key} is not a flag of `gatehouse serve` (typo? it would be ignored)")
    # Listeners and ports.
    args = c.get("args", [])
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    listen = {"--listen": "http", "--admin-listen": "admin"}
    for flag, port_name in listen.items():
        addr = args[args.index(flag) + 1] if flag in args else env.get("GATEHOUSE_" + flag[2:].upper().replace("-", "_"))
        if addr is None or not addr.endswith(f":{ports.get(port_name)}"):
            problem(f"{name}: {flag} {addr} does not listen on container port {port_name} ({ports.get(port_name)})")
        if addr is not None and addr.startswith("127."):
            problem(f"{name}: {flag} {addr} is loopback: unreachable from the kubelet and the Service")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("admin", ports.get("admin")):
            problem(f"{name}: {probe} must be GET {path} on the admin port")
    # Shutdown: readiness 503 for the delay, then the drain; Kubernetes must not kill earlier.
    delay = duration_secs(env.get("GATEHOUSE_SHUTDOWN_DELAY", "0s"), f"{name}: GATEHOUSE_SHUTDOWN_DELAY")
    drain = duration_secs(env.get("GATEHOUSE_SHUTDOWN_TIMEOUT", "10s"), f"{name}: GATEHOUSE_SHUTDOWN_TIMEOUT")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if delay < 5:
        problem(f"{name}: GATEHOUSE_SHUTDOWN_DELAY {delay:g}s: endpoints need a few seconds to drop a pod")
    if grace <= delay + drain:
        problem(f"{name}: terminationGracePeriodSeconds {grace} must exceed shutdown delay + timeout ({delay + drain:g}s)")
    # The restricted Pod Security profile, and the keys volume.
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
        problem(f"{name}: runAsNonRoot")
    if not csc.get("readOnlyRootFilesystem"):
        problem(f"{name}: readOnlyRootFilesystem")
    if csc.get("allowPrivilegeEscalation") is not False:
        problem(f"{name}: allowPrivilegeEscalation must be false")
    if csc.get("capabilities", {}).get("drop") != ["ALL"]:
        problem(f"{name}: capabilities must drop ALL")
    seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    if seccomp != "RuntimeDefault":
        problem(f"{name}: seccompProfile RuntimeDefault")
    keys_dir = env.get("GATEHOUSE_KEYS_DIR")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    m = mounts.get(keys_dir)
    if m is None or not m.get("readOnly") or "secret" not in vols.get(m["name"], {}):
        problem(f"{name}: GATEHOUSE_KEYS_DIR {keys_dir} must be a read-only Secret mount")
    # Redis.
    url_ref = next((e for e in c.get("env", []) if e["name"] == "GATEHOUSE_REDIS_URL"), None)
    if url_ref is None or "secretKeyRef" not in url_ref.get("valueFrom", {}):
        problem(f"{name}: GATEHOUSE_REDIS_URL must come from a Secret")
    for s in by_kind.get("Secret", []):
        if s["metadata"]["name"].startswith("gatehouse-redis"):
            import base64

            url = base64.b64decode(s["data"]["url"]).decode()
            if not re.match(r"^rediss?(\+cluster|\+sentinel)?://[^/]", url):
                problem(f"{where(s, source)}: url is not a gatehouse Redis URL")
    # Replicas, PDB, HPA, NetworkPolicy agree.
    hpa = by_kind.get("HorizontalPodAutoscaler", [{}])[0].get("spec", {})
    if dep["spec"].get("replicas", hpa.get("minReplicas")) != hpa.get("minReplicas"):
        problem(f"{name}: replicas differ from the HPA's minReplicas")
    if not by_kind.get("PodDisruptionBudget"):
        problem(f"{source}: no PodDisruptionBudget")
    for np in by_kind.get("NetworkPolicy", []):
        ports_in = {p["port"] for rule in np["spec"].get("ingress", []) for p in rule.get("ports", [])}
        if ports_in != {ports.get("http"), ports.get("admin")}:
            problem(f"{where(np, source)}: ingress ports {sorted(ports_in)} are not the container's")
    return env


def cmd_manifests(versions, help_file, rendered):
    versions = versions.split()
    flags = set(re.findall(r"env: (GATEHOUSE_[A-Z0-9_]+)", Path(help_file).read_text()))
    if not flags:
        problem("no GATEHOUSE_* flag found in `gatehouse serve --help`")
    cargo = (ROOT / "Cargo.toml").read_text()
    version = re.search(r'^version\s*=\s*"([^"]+)"', cargo, re.M).group(1)
    header_timeout = None
    sources = [(p, load_all(p)) for p in rendered]
    sources += [(p, load_all(p)) for p in sorted(EXAMPLES.glob("*.yaml"))]
    for source, docs in sources:
        source = os.path.relpath(source, ROOT)
        if not docs:
            problem(f"{source}: no object")
        for doc in docs:
            if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind") \
                    or not (doc.get("metadata") or {}).get("name"):
                problem(f"{source}: an object without apiVersion, kind or metadata.name")
                continue
            if doc["apiVersion"].startswith("monitoring.coreos.com/"):
                check_crd(doc, source)
            else:
                check_builtin(doc, source, versions)
        if "examples" not in source:
            env = check_deployment(docs, source, flags, version)
            if env and "GATEHOUSE_HEADER_TIMEOUT" in env:
                header_timeout = duration_secs(env["GATEHOUSE_HEADER_TIMEOUT"], "GATEHOUSE_HEADER_TIMEOUT")
            # The rules file and the PrometheusRule must say the same thing.
            rules = yaml.safe_load((MONITORING / "gatehouse-rules.yaml").read_text())
            for pr in [d for d in docs if d["kind"] == "PrometheusRule"]:
                if pr["spec"] != rules:
                    problem(f"{where(pr, source)}: spec differs from k8s/monitoring/gatehouse-rules.yaml")
            if not any(d["kind"] == "PrometheusRule" for d in docs):
                problem(f"{source}: no PrometheusRule")
    for source, docs in sources:
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind") == "Ingress":
                check_ingress(doc, os.path.relpath(source, ROOT), header_timeout)
    if not any(d.get("kind") == "Ingress" for _, docs in sources for d in docs):
        problem("no Ingress found to check (k8s/examples/)")


# ---------------------------------------------------------------------------------------------
# a running gatehouse


def cmd_serve_env(rendered, out):
    """The GATEHOUSE_* variables the Deployment gets from its ConfigMap, NUL-separated, so that
    the scraped gatehouse also proves that every value parses."""
    docs = load_all(rendered)
    [dep] = [d for d in docs if d["kind"] == "Deployment"]
    [c] = dep["spec"]["template"]["spec"]["containers"]
    names = {ef["configMapRef"]["name"] for ef in c.get("envFrom", []) if "configMapRef" in ef}
    env = {}
    for d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] in names:
            env.update(d.get("data", {}))
    Path(out).write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in sorted(env.items())))


def http(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def cmd_exercise(binary, data_dir, main, admin, out, pid):
    """Sends /auth one request of every kind (so that every labelled series exists), revokes the
    session, scrapes /metrics, then checks the shutdown contract: /readyz 503 at once."""
    base, adm = f"http://127.0.0.1:{main}", f"http://127.0.0.1:{admin}"
    stat = Path(f"/proc/{Path(pid).read_text().strip()}/stat")
    deadline = time.monotonic() + 30
    while True:
        try:
            if http(f"{adm}/healthz")[0] == 200:
                break
        except OSError:
            pass
        # Exited (a zombie until the shell reaps it): a bad setting, reported in its log.
        if not stat.exists() or stat.read_text().rsplit(") ", 1)[1].startswith("Z"):
            problem("gatehouse exited at start with the ConfigMap's settings")
            return
        if time.monotonic() > deadline:
            problem("gatehouse did not answer /healthz within 30 s")
            return
        time.sleep(0.05)
    status = http(f"{adm}/readyz")[0]
    if status != 200:
        problem(f"/readyz answered {status}")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
    token = subprocess.run(
        [binary, "session", "create", "--data-dir", data_dir, "--sub", "ci", "--username", "ci",
         "--email", "ci@example.org", "--scope", "read", "--ttl", "1h"],
        check=True, capture_output=True, text=True, env=clean).stdout.strip()
    expect = [
        ({"Authorization": f"Bearer {token}"}, 200),   # miss: a store call and a signature
        ({"Authorization": f"Bearer {token}"}, 200),   # hit
        ({"Cookie": f"gatehouse_session={token}"}, 200),
        ({"Authorization": "Bearer not-a-token"}, 401),
        ({}, 401),
    ]
    for headers, want in expect:
        status, h, _ = http(f"{base}/auth", headers)
        if status != want:
            problem(f"/auth with {list(headers) or 'nothing'} answered {status}, expected {want}")
        if status == 200 and not h.get("Authorization", "").startswith("Bearer "):
            problem("/auth 200 without a Bearer JWT")
    subprocess.run([binary, "session", "revoke", "--data-dir", data_dir, token],
                   check=True, capture_output=True, env=clean)
    deadline = time.monotonic() + 5
    while http(f"{base}/auth", {"Authorization": f"Bearer {token}"})[0] != 401:
        if time.monotonic() > deadline:
            problem("a revoked session was still allowed after 5 s")
            break
        time.sleep(0.1)
    status, headers, body = http(f"{adm}/metrics")
    if status != 200:
        problem(f"/metrics answered {status}")
    Path(out).write_bytes(body)
    # SIGTERM: readiness must fail at once while /auth is still served (GATEHOUSE_SHUTDOWN_DELAY).
    os.kill(int(Path(pid).read_text()), signal.SIGTERM)
    deadline = time.monotonic() + 1
    while http(f"{adm}/readyz")[0] != 503:
        if time.monotonic() > deadline:
            problem("/readyz did not turn 503 within 1 s of SIGTERM")
            break
        time.sleep(0.02)
    status = http(f"{base}/auth")[0]
    if status != 401:
        problem(f"/auth answered {status} during the shutdown delay, expected 401 (still serving)")


def cmd_metrics(scrape, out):
    """OpenMetrics (what gatehouse serves, and what Prometheus asks for) to the Prometheus text
    format that promtool 2.x lints: counter families take their `_total` name; UNIT and EOF go."""
    text = Path(scrape).read_text()
    if not text.endswith("# EOF\n"):
        problem("the scrape does not end with # EOF")
    counters = set(re.findall(r"^# TYPE (\S+) counter$", text, re.M))
    lines = []
    for line in text.splitlines():
        if line == "# EOF" or line.startswith("# UNIT "):
            continue
        m = re.match(r"^# (HELP|TYPE) (\S+)(.*)$", line)
        if m and m.group(2) in counters and not m.group(2).endswith("_total"):
            line = f"# {m.group(1)} {m.group(2)}_total{m.group(3)}"
        lines.append(line)
    Path(out).write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# dashboard and rules against the scrape

# Series of other exporters that the rules read (kube-state-metrics, Prometheus itself).
EXTERNAL = {"up", "kube_deployment_status_replicas_available", "kube_deployment_spec_replicas"}
# Labels that Prometheus adds to every scraped series, or that histograms have.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "container", "endpoint", "le"}
# Label values that appear only after the event: the first failed store call.
LATER = {("gatehouse_store_requests_total", "result", "error")}


def scraped_series(scrape):
    series = {}
    for line in Path(scrape).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s", line)
        labels = series.setdefault(m.group(1), {})
        for k, v in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""):
            labels.setdefault(k, set()).add(v)
    return series


def check_expr(expr, what, series, external):
    names = set(re.findall(r"\b((?:gatehouse|process)_\w+)", expr))
    names |= set(re.findall(r"([a-zA-Z_:][\w:]*)\s*\{", expr))
    for n in sorted(names):
        if n not in series and n not in external:
            problem(f"{what}: {n} is not in gatehouse's /metrics")
    for n, matchers in re.findall(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", expr):
        if n not in series:
            continue
        for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers):
            if label in TARGET_LABELS:
                continue
            if label not in series[n]:
                problem(f"{what}: {n} has no label {label}")
                continue
            if op in ("=", "=~") and "$" not in value:
                for v in value.split("|") if op == "=~" else [value]:
                    if v not in series[n][label] and (n, label, v) not in LATER:
                        problem(f'{what}: {n}{{{label}="{v}"}} never appears in /metrics')


def cmd_references(scrape):
    series = scraped_series(scrape)
    dash = json.loads((MONITORING / "gatehouse-dashboard.json").read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                exprs.append((f"dashboard panel '{p.get('title')}'", t.get("expr", "")))
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query", "")
        if v.get("type") == "query":
            exprs.append((f"dashboard variable {v.get('name')}", q))
    if len(exprs) < 10:
        problem(f"the dashboard has only {len(exprs)} queries")
    ids = [p["id"] for p in dash["panels"]]
    if len(ids) != len(set(ids)):
        problem("the dashboard has duplicate panel ids")
    for what, expr in exprs:
        if not expr.strip():
            problem(f"{what}: empty query")
        check_expr(expr, what, series, set())
    rules = yaml.safe_load((MONITORING / "gatehouse-rules.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            check_expr(rule["expr"], f"rule {rule.get('alert') or rule.get('record')}", series, EXTERNAL)
    # Every metric docs/architecture.md promises is on the dashboard.
    shown = " ".join(e for _, e in exprs)
    for n in series:
        family = re.sub(r"_(bucket|sum|count)$", "", n)
        if n.startswith("gatehouse_") and family not in shown:
            problem(f"{n} is exported but not on the dashboard")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "manifests": lambda: cmd_manifests(args[0], args[1], args[2:]),
        "serve-env": lambda: cmd_serve_env(*args),
        "exercise": lambda: cmd_exercise(*args),
        "metrics": lambda: cmd_metrics(*args),
        "references": lambda: cmd_references(*args),
    }[cmd]()
    finish()


if __name__ == "__main__":
    main()

"""Deployment files: every manifest, compose file, the dashboard and the Prometheus config parse
and keep the invariants deploy/README.md promises. No Docker engine or cluster is needed (none
exists on our machines): these are static checks, plus the gateway's own config loader run
on every config a deployment mounts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from gateway import config as gwconfig

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"

DEMO_CLIENT_KEY = "sk-demo-key"

# --- the metric names the gateway exports (fixed; tests elsewhere pin the exporter) --------------
METRIC_LABELS: dict[str, set[str]] = {
    "gateway_requests_total": {"pool", "key", "endpoint", "status"},
    "gateway_prompt_tokens_total": {"pool", "key"},
    "gateway_completion_tokens_total": {"pool", "key"},
    "gateway_backend_outstanding": {"pool", "backend"},
    "gateway_backend_up": {"pool", "backend"},
    "gateway_backend_restarts_total": {"pool", "backend"},
    "gateway_pool_queue_depth": {"pool"},
    "gateway_rate_limited_total": {"key", "reason"},
    "gateway_usage_records_dropped_total": set(),
    "gateway_usage_buffer_records": set(),
    "gateway_ratelimit_degraded_total": {"reason"},
    "gateway_backend_prompt_tokens_total": {"pool", "backend"},
    "gateway_backend_cached_prompt_tokens_total": {"pool", "backend"},
    "gateway_backend_engine_prefix_cache_queries_total": {"pool", "backend"},
    "gateway_backend_engine_prefix_cache_hits_total": {"pool", "backend"},
    "gateway_backend_predicted_prompt_bytes_total": {"pool", "backend"},
    "gateway_backend_predicted_cached_bytes_total": {"pool", "backend"},
    "gateway_backend_routed_total": {"pool", "backend", "reason"},
    "gateway_backend_locality_skipped_overloaded_total": {"pool", "backend"},
}
HISTOGRAM_LABELS: dict[str, set[str]] = {
    "gateway_request_duration_seconds": {"pool", "endpoint"},
    "gateway_time_to_first_token_seconds": {"pool"},
    "gateway_overhead_seconds": {"pool"},
}
ALLOWED_SERIES: dict[str, set[str]] = {
    **METRIC_LABELS,
    **{f"{h}_{s}": labels | ({"le"} if s == "bucket" else set())
       for h, labels in HISTOGRAM_LABELS.items() for s in ("bucket", "sum", "count")},
}
# Prometheus' own target labels, present on every series.
TARGET_LABELS = {"job", "instance"}


# --- helpers --------------------------------------------------------------------------------------


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_objects() -> list[dict[str, Any]]:
    return [d for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml" for d in load_yaml_docs(p)]


def k8s_get(kind: str, name: str) -> dict[str, Any]:
    for obj in k8s_objects():
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind} {name} in deploy/kubernetes")


def workloads() -> list[dict[str, Any]]:
    return [o for o in k8s_objects() if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def compose(name: str = "compose.yaml") -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / name).read_text())
    assert isinstance(data, dict) and "services" in data, name
    return data


_COMPOSE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def compose_default(value: str) -> str:
    """A compose value with `${VAR:-default}` replaced by its default (what runs with no .env)."""
    def sub(m: re.Match[str]) -> str:
        assert m.group(2) is not None, f"{value!r}: ${{{m.group(1)}}} has no default, so the stack needs a .env"
        return m.group(2)

    return _COMPOSE_VAR.sub(sub, value)


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: compose_default(str(v)) for k, v in env.items()}


def merged_service(name: str, *files: str) -> dict[str, Any]:
    """A service as `docker compose -f a -f b` merges it: mappings merged, volumes by target."""
    out: dict[str, Any] = {}
    for f in files:
        svc = compose(f)["services"].get(name) or {}
        for key, value in svc.items():
            if key == "environment":
                out[key] = {**(out.get(key) or {}), **value}
            elif key == "volumes":
                by_target = {volume_target(v): v for v in out.get(key, [])}
                by_target.update({volume_target(v): v for v in value})
                out[key] = list(by_target.values())
            else:
                out[key] = value
    return out


def volume_source(v: str | dict[str, Any]) -> str:
    return v["source"] if isinstance(v, dict) else v.split(":")[0]


def volume_target(v: str | dict[str, Any]) -> str:
    return v["target"] if isinstance(v, dict) else v.split(":")[1]


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path (relative to deploy/) of the service's bind mounts."""
    return {volume_target(v): (DEPLOY / volume_source(v)).resolve()
            for v in service.get("volumes", []) if volume_source(v).startswith(".")}


def flag_value(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def needed_vars(text: str) -> set[str]:
    """`${VAR}` references without a default in a gateway config."""
    return {m.group(1) for m in gwconfig._ENV_RE.finditer(text) if m.group(2) is None}


def dockerfile_stages(path: Path) -> list[list[tuple[str, str]]]:
    """Instructions (KEYWORD, arguments) per stage, continuation lines joined, comments dropped."""
    lines: list[str] = []
    buf = ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") and not buf:
            continue
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        line = (buf + raw).strip()
        buf = ""
        if line:
            lines.append(line)
    stages: list[list[tuple[str, str]]] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args.strip()))
    return stages


def instr(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [a for k, a in stage if k == keyword]


# --- Kubernetes -----------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_and_they_parse() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    for name in present:
        for doc in load_yaml_docs(K8S / name):
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), name


def test_every_container_has_requests_and_probes() -> None:
    assert workloads()
    for w in workloads():
        for c in w["spec"]["template"]["spec"]["containers"]:
            where = f"{w['metadata']['name']}/{c['name']}"
            requests = c.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= requests.keys(), f"{where}: resource requests"
            assert "memory" in c["resources"].get("limits", {}), f"{where}: memory limit"
            assert "readinessProbe" in c and "livenessProbe" in c, f"{where}: probes"


def test_gateway_deployment() -> None:
    dep = k8s_get("Deployment", "gateway")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]

    # Non-root, numerically (the image's USER is 10001, checked below).
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] not in (None, 0)
    assert c["securityContext"]["allowPrivilegeEscalation"] is False

    # Probes on /health at the container's port.
    port_names = {p["name"] for p in c["ports"]} | {p["containerPort"] for p in c["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
        assert c[probe]["httpGet"]["port"] in port_names
    assert 8000 in {p["containerPort"] for p in c["ports"]}
    assert flag_value(c["args"], "--host") == "0.0.0.0"

    # The config is mounted where the command reads it, from the ConfigMap that holds it.
    config_path = PurePosixPath(flag_value(c["args"], "--config") or "")
    env = {e["name"]: e for e in c["env"]}
    assert env["GATEWAY_CONFIG"]["value"] == str(config_path)
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    mount = mounts[str(config_path.parent)]
    assert mount.get("readOnly") is True and "subPath" not in mount
    volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
    cm = k8s_get("ConfigMap", volume["configMap"]["name"])
    assert config_path.name in cm["data"]

    # Every writable path the read-only root filesystem needs is a volume.
    if c["securityContext"].get("readOnlyRootFilesystem"):
        assert {"/var/lib/gateway", "/tmp"} <= mounts.keys()


def test_gateway_keys_come_from_the_secret() -> None:
    dep = k8s_get("Deployment", "gateway")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    secret = k8s_get("Secret", "gateway-keys")
    env = {e["name"]: e for e in c["env"]}
    assert "GATEWAY_ADMIN_KEY" in env
    for e in env.values():
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"], e
    text = k8s_get("ConfigMap", "gateway-config")["data"]["config.yaml"]
    assert needed_vars(text) <= env.keys(), "every ${VAR} of the config is in the container's env"
    # The Secret ships example values and says so.
    assert "EXAMPLE" in (K8S / "gateway-secret.yaml").read_text()


def test_k8s_config_validates_and_points_at_services() -> None:
    text = k8s_get("ConfigMap", "gateway-config")["data"]["config.yaml"]
    cfg = gwconfig.loads(text, environ=dict(k8s_get("Secret", "gateway-keys")["stringData"]))
    assert cfg.store == "redis://redis:6379/0"
    services = {o["metadata"]["name"]: {p["port"] for p in o["spec"]["ports"]}
                for o in k8s_objects() if o["kind"] == "Service"}
    assert 6379 in services["redis"]
    assert cfg.pools and all(p.endpoints and not p.spawn for p in cfg.pools.values())
    for pool in cfg.pools.values():
        for url in pool.endpoints:
            m = re.match(r"https?://([^:/]+):(\d+)", url)
            assert m and int(m.group(2)) in services.get(m.group(1), set()), f"{url}: no such Service"
    assert cfg.auth.keys[0].key_sha256 == hashlib.sha256(DEMO_CLIENT_KEY.encode()).hexdigest()


def test_engine_example_has_a_gpu_and_health_probes() -> None:
    engines = [w for w in workloads() if w["metadata"]["labels"].get("app.kubernetes.io/component") == "engine"]
    assert engines
    for w in engines:
        for c in w["spec"]["template"]["spec"]["containers"]:
            assert c["image"].startswith("vllm/vllm-openai")
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert c[probe]["httpGet"]["path"] == "/health"


def test_gateway_service_selects_the_gateway_pods() -> None:
    svc = k8s_get("Service", "gateway")
    labels = k8s_get("Deployment", "gateway")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["port"] == 8000


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
    assert kinds.count("Deployment") == 3 and "Secret" in kinds and "ConfigMap" in kinds
    assert all(d["metadata"].get("namespace") == "llm-gateway"
               for d in yaml.safe_load_all(out.stdout) if d and d["kind"] != "Namespace")


# --- compose --------------------------------------------------------------------------------------


def test_compose_services_and_files_exist() -> None:
    for name in ("compose.yaml", "compose.gpu.yaml"):
        for svc_name, svc in compose(name)["services"].items():
            for target, host in bind_mounts(svc).items():
                assert host.exists(), f"{name}: {svc_name} mounts missing {host} at {target}"
            for spec in (svc.get("ports") or []):
                assert str(spec).startswith("127.0.0.1:"), f"{name}: {svc_name} publishes {spec} beyond loopback"
    services = compose()["services"]
    assert {"gateway", "redis", "open-webui", "prometheus", "grafana"} <= services.keys()
    build = services["gateway"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()


def test_compose_gateway() -> None:
    gw = compose()["services"]["gateway"]
    config_path = flag_value(gw["command"], "--config")
    assert config_path and env_of(gw)["GATEWAY_CONFIG"] == config_path
    assert flag_value(gw["command"], "--host") == "0.0.0.0"
    host_file = bind_mounts(gw)[config_path]
    text = host_file.read_text()
    env = env_of(gw)
    assert needed_vars(text) <= env.keys()
    cfg = gwconfig.loads(text, environ=env)
    assert cfg.store == "redis://redis:6379/0"
    assert {"qwen3-8b", "llama-3.1-8b", "bge-m3", "deepseek-r1"} <= cfg.pools.keys()
    assert all(s.engine == "sim" for p in cfg.pools.values() for s in p.spawn)
    assert "gpt-4o-mini" in cfg.pools["qwen3-8b"].aliases
    assert cfg.pools["deepseek-r1"].reasoning == "deepseek_r1"
    hc = " ".join(gw["healthcheck"]["test"])
    assert "/health" in hc and "127.0.0.1:8000" in hc
    assert gw["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_open_webui_talks_to_the_gateway_with_its_key() -> None:
    services = compose()["services"]
    env = env_of(services["open-webui"])
    assert env["OPENAI_API_BASE_URL"] == "http://gateway:8000/v1"
    assert env["ENABLE_OLLAMA_API"] == "False"
    # The key Open WebUI sends is the one the gateway's config accepts.
    key_hash = hashlib.sha256(env["OPENAI_API_KEY"].encode()).hexdigest()
    assert env_of(services["gateway"])["GATEWAY_CLIENT_KEY_SHA256"] == key_hash
    assert env["RAG_OPENAI_API_BASE_URL"] == "http://gateway:8000/v1"
    cfg_text = bind_mounts(services["gateway"])["/etc/gateway/config.yaml"].read_text()
    cfg = gwconfig.loads(cfg_text, environ=env_of(services["gateway"]))
    assert cfg.pools[env["RAG_EMBEDDING_MODEL"]].kind == "embedding"


def test_compose_env_example_matches_the_defaults() -> None:
    example = dict(line.split("=", 1) for line in (DEPLOY / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert hashlib.sha256(example["GATEWAY_CLIENT_KEY"].encode()).hexdigest() == example["GATEWAY_CLIENT_KEY_SHA256"]
    for files in (("compose.yaml",), ("compose.yaml", "compose.gpu.yaml")):
        for name in compose(files[-1])["services"]:
            for value in (merged_service(name, *files).get("environment") or {}).values():
                for var in _COMPOSE_VAR.findall(str(value)):
                    assert var[0] in example, f"{var[0]} is used by compose but not in .env.example"


def test_compose_prometheus_and_grafana_wiring() -> None:
    services = compose()["services"]
    prom = services["prometheus"]
    prom_cfg = flag_value(prom["command"], "--config.file")
    assert bind_mounts(prom)[prom_cfg] == (DEPLOY / "prometheus.yml").resolve()

    graf = bind_mounts(services["grafana"])
    prov = graf["/etc/grafana/provisioning"]
    assert prov == (DEPLOY / "grafana" / "provisioning").resolve()
    (provider,) = yaml.safe_load((prov / "dashboards" / "gateway.yaml").read_text())["providers"]
    dash_dir = provider["options"]["path"]
    dashboards = {t: h for t, h in graf.items() if PurePosixPath(t).parent == PurePosixPath(dash_dir)}
    assert (DEPLOY / "grafana" / "gateway.json").resolve() in dashboards.values()
    (ds,) = yaml.safe_load((prov / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert ds["url"] == "http://prometheus:9090" and ds["type"] == "prometheus"
    dash = json.loads((DEPLOY / "grafana" / "gateway.json").read_text())
    var = next(v for v in dash["templating"]["list"] if v["type"] == "datasource")
    assert var["current"]["value"] == ds["uid"]


def test_compose_gpu_variant() -> None:
    files = ("compose.yaml", "compose.gpu.yaml")
    vllm = merged_service("vllm", *files)
    assert vllm["image"].startswith("vllm/vllm-openai")
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert "gpu" in device["capabilities"]
    assert "/health" in " ".join(vllm["healthcheck"]["test"])
    served = flag_value(vllm["command"], "--served-model-name")
    port = flag_value(vllm["command"], "--port")

    gw = merged_service("gateway", *files)
    config_path = flag_value(gw["command"], "--config")
    mounts = bind_mounts(gw)
    assert mounts[config_path] == (DEPLOY / "config" / "compose.gpu.yaml").resolve()
    assert len([v for v in gw["volumes"] if volume_target(v) == config_path]) == 1
    text = mounts[config_path].read_text()
    env = env_of(gw)
    assert needed_vars(text) <= env.keys()
    cfg = gwconfig.loads(text, environ=env)
    assert f"http://vllm:{port}/v1" in cfg.pools[served].endpoints
    # The engine key the gateway sends is the one vLLM was started with.
    assert compose_default(flag_value(vllm["command"], "--api-key") or "") == env["VLLM_API_KEY"]

    prom = bind_mounts(merged_service("prometheus", *files))
    targets = [t for f in prom["/etc/prometheus/engines"].glob("*.yml") for group in yaml.safe_load(f.read_text())
               for t in group["targets"]]
    assert f"vllm:{port}" in targets


# --- Prometheus -----------------------------------------------------------------------------------


def test_prometheus_scrapes_gateway_and_engines() -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    gw = jobs["gateway"]
    assert gw.get("metrics_path", "/metrics") == "/metrics"
    sd = gw["dns_sd_configs"][0]
    assert sd["names"] == ["gateway"] and sd["port"] == 8000
    engines = jobs["engines"]
    (files,) = engines["file_sd_configs"]
    mount = bind_mounts(compose()["services"]["prometheus"])
    directory = str(PurePosixPath(files["files"][0]).parent)
    assert directory in mount and mount[directory].is_dir()


# --- Grafana dashboard ----------------------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}


def promql_parts(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) used by a PromQL expression (Grafana variables allowed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    labels = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", " ".join(re.findall(r"\{([^}]*)\}", s))))
    for group in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", s):
        labels |= {x.strip() for x in group.split(",") if x.strip()}
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"(?<![A-Za-z0-9_:])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", " ", s)
    metrics = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        if m.group(0) in _KEYWORDS or s[m.end():].lstrip().startswith("("):
            continue  # a keyword or a function
        metrics.add(m.group(0))
    return metrics, labels


def test_promql_parts_reads_metrics_and_labels() -> None:
    metrics, labels = promql_parts(
        'histogram_quantile(0.95, sum by (le, pool) (rate(gateway_request_duration_seconds_bucket'
        '{pool=~"$pool", status!~"2.."}[$__rate_interval]))) / clamp_min(vllm:num_requests_running, 1e-9)')
    assert metrics == {"gateway_request_duration_seconds_bucket", "vllm:num_requests_running"}
    assert labels == {"le", "pool", "status"}


def dashboard_panels() -> list[dict[str, Any]]:
    dash = json.loads((DEPLOY / "grafana" / "gateway.json").read_text())
    out: list[dict[str, Any]] = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_dashboard_uses_only_known_metrics_and_labels() -> None:
    used: set[str] = set()
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            metrics, labels = promql_parts(target["expr"])
            assert metrics, f"{panel['title']}: no metric in {target['expr']}"
            allowed_labels = set(TARGET_LABELS)
            for m in metrics:
                if m.startswith("vllm:"):
                    allowed_labels |= {"model_name"} | ({"le"} if m.endswith("_bucket") else set())
                    continue
                assert m in ALLOWED_SERIES, f"{panel['title']}: unknown metric {m}"
                allowed_labels |= ALLOWED_SERIES[m]
            assert labels <= allowed_labels, f"{panel['title']}: labels {labels - allowed_labels} not on {metrics}"
            used |= metrics
    dash = json.loads((DEPLOY / "grafana" / "gateway.json").read_text())
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            metrics, _ = promql_parts(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", var["definition"]))
            assert metrics <= ALLOWED_SERIES.keys()
    # What the issue asks the dashboard to show.
    for needed in ("gateway_requests_total", "gateway_request_duration_seconds_bucket",
                   "gateway_time_to_first_token_seconds_bucket", "gateway_prompt_tokens_total",
                   "gateway_completion_tokens_total", "gateway_backend_up", "gateway_backend_outstanding",
                   "gateway_pool_queue_depth", "gateway_rate_limited_total", "gateway_overhead_seconds_bucket",
                   "gateway_backend_cached_prompt_tokens_total", "gateway_backend_engine_prefix_cache_hits_total",
                   "gateway_backend_routed_total"):
        assert needed in used, f"the dashboard shows nothing of {needed}"
    assert any(m.startswith("vllm:") for m in used)


def test_dashboard_quantiles_come_from_histograms() -> None:
    quantile_exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])
                      if "histogram_quantile" in t["expr"]]
    assert {q for e in quantile_exprs for q in re.findall(r"histogram_quantile\((0\.\d+)", e)} >= {"0.5", "0.95", "0.99"}
    for e in quantile_exprs:
        metrics, labels = promql_parts(e)
        assert all(m.endswith("_bucket") for m in metrics) and "le" in labels, e


def test_dashboard_layout_and_datasources() -> None:
    dash = json.loads((DEPLOY / "grafana" / "gateway.json").read_text())
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in dashboard_panels():
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not (mine & cells), f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}"
            assert p["targets"]


# --- Dockerfiles ----------------------------------------------------------------------------------


def _healthcheck_hits_health(stage: list[tuple[str, str]]) -> bool:
    (hc,) = instr(stage, "HEALTHCHECK")
    env = " ".join(instr(stage, "ENV"))
    return "/health" in hc or ("GATEWAY_HEALTH_URL" in hc and re.search(r"GATEWAY_HEALTH_URL=\S+/health\b", env) is not None)


def _user_is_non_root(stage: list[tuple[str, str]]) -> bool:
    users = instr(stage, "USER")
    return bool(users) and users[-1].split(":")[0] not in ("root", "0")


def test_dockerfile() -> None:
    stages = dockerfile_stages(ROOT / "Dockerfile")
    final = stages[-1]
    assert final[0][1].startswith("python:3.11-slim")
    assert _user_is_non_root(final)
    assert _healthcheck_hits_health(final)
    assert any("pip install --no-cache-dir ." in a for s in stages for a in instr(s, "RUN"))
    env = " ".join(instr(final, "ENV"))
    assert "GATEWAY_CONFIG=/etc/gateway/config.yaml" in env
    assert instr(final, "EXPOSE") == ["8000"]
    cmd = json.loads(instr(final, "CMD")[-1])
    assert flag_value(cmd, "--host") == "0.0.0.0" and flag_value(cmd, "--port") == "8000"
    assert json.loads(instr(final, "ENTRYPOINT")[-1]) == ["gateway"]
    # The image's demo path names a file the build copies.
    assert (ROOT / "config" / "demo.yaml").is_file()
    assert any(a.startswith("config/ /usr/share/gateway/config/") for a in instr(final, "COPY"))


def test_dockerfile_vllm_variant() -> None:
    stages = dockerfile_stages(DEPLOY / "Dockerfile.vllm")
    final = stages[-1]
    assert final[0][1].startswith("vllm/vllm-openai")
    assert _user_is_non_root(final)
    assert _healthcheck_hits_health(final)
    assert any("install --no-cache-dir /opt/gateway-src" in a for a in instr(final, "RUN"))
    assert "GATEWAY_CONFIG=/etc/gateway/config.yaml" in " ".join(instr(final, "ENV"))
    text = (DEPLOY / "config" / "vllm-spawn.yaml").read_text()
    cfg = gwconfig.loads(text, environ={v: "a" * 64 if v.endswith("SHA256") else "x" for v in needed_vars(text)})
    assert [s.engine for p in cfg.pools.values() for s in p.spawn] == ["vllm"]


def _pattern(p: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(p):
        if p.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif p.startswith("**", i):
            out, i = out + ".*", i + 2
        elif p[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif p[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(p[i]), i + 1
    return re.compile(out)


def build_context() -> set[str]:
    """Files of the repository that .dockerignore lets into the build context (Docker's rules:
    the last matching pattern wins, a pattern matching a directory covers what is inside)."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            neg = line.startswith("!")
            rules.append((neg, _pattern(line.lstrip("!").strip("/"))))
    kept = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in (".git", ".venv", "var", "node_modules")]
        for f in filenames:
            rel = os.path.relpath(os.path.join(dirpath, f), ROOT)
            parts = rel.split("/")
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            excluded = False
            for neg, pat in rules:
                if any(pat.fullmatch(p) for p in prefixes):
                    excluded = not neg
            if not excluded:
                kept.add(rel)
    return kept


def test_build_context_holds_what_the_images_need() -> None:
    ctx = build_context()
    needed = {"pyproject.toml", "gateway/__init__.py", "gateway/cli.py", "gateway/data/cl100k_base.tiktoken",
              "gateway/sim/__main__.py", "config/demo.yaml"}
    assert needed <= ctx, needed - ctx
    assert not any(f.startswith(("deploy/", "tests/", "scripts/", "docs/")) or "__pycache__" in f
                   or f.endswith(".pyc") or f.startswith(".env") for f in ctx)
    # Every COPY source of both Dockerfiles is in the context.
    for path in (ROOT / "Dockerfile", DEPLOY / "Dockerfile.vllm"):
        for stage in dockerfile_stages(path):
            for args in instr(stage, "COPY"):
                if args.startswith("--from"):
                    continue
                *sources, _dest = args.split()
                for src in sources:
                    src = src.rstrip("/")
                    assert src == "." or src in ctx or any(f.startswith(src + "/") for f in ctx), f"{path.name}: {src}"


# --- deploy configs -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in (DEPLOY / "config").glob("*.yaml")))
def test_deploy_configs_validate(name: str) -> None:
    text = (DEPLOY / "config" / name).read_text()
    env = {v: hashlib.sha256(b"k").hexdigest() if v.endswith("SHA256") else "k" for v in needed_vars(text)}
    cfg = gwconfig.loads(text, environ=env)
    assert cfg.server.host == "0.0.0.0" and cfg.server.port == 8000
    assert cfg.auth.mode == "keys" and cfg.auth.keys
    with pytest.raises(gwconfig.ConfigError, match="environment variables not set"):
        gwconfig.loads(text, environ={})


# --- the Open WebUI end-to-end script (its run needs Open WebUI: scripts/e2e_openwebui.sh) --------


def _driver() -> Any:
    spec = importlib.util.spec_from_file_location("e2e_openwebui", ROOT / "scripts" / "e2e_openwebui.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up while being built
    spec.loader.exec_module(mod)
    return mod


def test_e2e_script_never_downloads_a_browser() -> None:
    sh = (ROOT / "scripts" / "e2e_openwebui.sh").read_text()
    code = [ln for ln in sh.splitlines() if not ln.lstrip().startswith("#")]
    assert not any("playwright install" in ln for ln in code)
    assert "executable_path=args.chromium" in (ROOT / "scripts" / "e2e_openwebui.py").read_text()
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "e2e_openwebui.sh")], check=True, timeout=30)


def test_e2e_driver_reads_reasoning_in_both_storage_formats() -> None:
    drv = _driver()
    args = drv.parse_args(["--root", str(ROOT)])
    assert Path(args.config) == ROOT / "config" / "demo.yaml" and Path(args.open_webui).is_absolute()
    new = {"output": [{"type": "reasoning", "content": [{"type": "output_text", "text": "R"}]},
                      {"type": "message", "content": [{"type": "output_text", "text": "A"}]}]}
    assert drv.stored_reasoning(new) == ("R", "A")
    old = {"content": '<details type="reasoning" done="true" duration="1">\n> R\n</details>\nA'}
    assert drv.stored_reasoning(old) == ("> R", "A")
    assert drv.stored_reasoning({"content": "just text"}) == ("", "just text")

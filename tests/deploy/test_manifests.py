"""The deploy files, checked offline by real validators and by what the design needs from them.

There is no Docker engine or cluster on these machines: compose is validated against the compose-spec
schema (check-jsonschema's vendored copy), the Kubernetes manifests against the Kubernetes OpenAPI
schemas (kubernetes-validate, strict: unknown fields are errors). The assertions after the schemas are
the wiring a schema cannot see: a headless Service the StatefulSet names, per-pod advertised URLs, one
registry shared by the trainer and every worker, health-gated start, scrape targets that exist.
Neither validator is optional: a missing one fails these tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))


def k8s_resources() -> list[dict]:
    return [doc for path in K8S for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> dict[str, dict]:
    return {r["metadata"]["name"]: r for r in k8s_resources() if r["kind"] == kind}


def env_of(container: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# ------------------------------------------------------------------------------------------ compose
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_matches_the_compose_spec():
    done = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(DEPLOY / "compose.yaml")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_runs_the_whole_product_in_order(compose):
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert "healthcheck" in services["kafka"]
    coldstart = {name: s for name, s in services.items() if s.get("image", "").startswith("coldstart")}
    assert sorted(coldstart) == ["serve", "trainer", "worker-0", "worker-1"]
    for name, service in services.items():
        assert service.get("restart") in ("unless-stopped", "always"), name
    for name, service in coldstart.items():
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy", name
        assert "healthcheck" in service, name
        assert "registry:/var/lib/coldstart/registry" in service["volumes"], name  # one shared registry
        assert service["environment"]["COLDSTART_ANNOUNCE_SECRET"].startswith("${COLDSTART_ANNOUNCE_SECRET:?")
    urls = {coldstart[w]["environment"]["COLDSTART_ADVERTISED_URL"] for w in ("worker-0", "worker-1")}
    assert urls == {"http://worker-0:6066", "http://worker-1:6066"}


def test_compose_replica_follows_a_workers_ranker_read_only(compose):
    """The replica reads worker-0's ranker checkpoint from worker-0's own state volume, never writes it,
    and answers on a host port of its own."""
    serve = compose["services"]["serve"]
    assert serve["command"] == ["coldstart", "serve"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in serve["volumes"] if v.endswith(":ro"))
    checkpoint = Path(serve["environment"]["COLDSTART_SERVE_RANKER_PATH"])
    assert mounts == {"worker-0-state": str(checkpoint.parent)}
    assert checkpoint.name == "ranker.safetensors"  # streams/app.py saves it as data_dir/ranker.safetensors
    worker_state = next(v for v in compose["services"]["worker-0"]["volumes"] if v.startswith("worker-0-state:"))
    assert worker_state.split(":")[1] == "/var/lib/coldstart/worker"  # the image's COLDSTART_DATA_DIR
    host_ports = [p.split(":")[0] for s in compose["services"].values() for p in s.get("ports", [])]
    assert len(host_ports) == len(set(host_ports))


def test_prometheus_scrapes_the_compose_services(compose):
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
               for job in config["scrape_configs"]}
    assert targets == {"coldstart-worker": ["worker-0:6066", "worker-1:6066"], "coldstart-replica": ["serve:6066"],
                       "coldstart-trainer": ["trainer:6067"]}
    for target in targets["coldstart-worker"] + targets["coldstart-replica"] + targets["coldstart-trainer"]:
        assert target.split(":")[0] in compose["services"]
    prometheus = compose["services"]["prometheus"]
    assert "./prometheus:/etc/prometheus:ro" in prometheus["volumes"]


def test_grafana_is_provisioned_with_the_dashboard(compose):
    volumes = compose["services"]["grafana"]["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in volumes
    source = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    dashboard = json.loads((DEPLOY / "grafana" / "coldstart.json").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {uid}
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "coldstart.yml").read_text())
    mounted = [v.split(":")[1] for v in volumes if v.startswith("./grafana/coldstart.json")]
    assert mounted and Path(mounted[0]).parent == Path(provider["providers"][0]["options"]["path"])


def test_image_runs_as_a_user_and_leaves_local_state_out():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "COPY . ." not in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", "var/"} <= set(ignored)


# --------------------------------------------------------------------------------------- kubernetes
def test_manifests_match_the_kubernetes_schemas():
    import kubernetes_validate  # a missing validator fails, never skips

    checked = 0
    for resource in k8s_resources():
        if resource["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # Prometheus Operator CRDs: no schema offline; checked against alerts.yml below
        kubernetes_validate.validate(resource, "1.30.0", strict=True)
        checked += 1
    assert checked >= 6


def test_statefulset_has_its_headless_service_probes_and_own_urls():
    service = by_kind("Service")["coldstart-worker"]
    statefulset = by_kind("StatefulSet")["coldstart-worker"]
    assert service["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    pod = statefulset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "livenessProbe" in container
    assert pod["securityContext"]["runAsNonRoot"] is True
    env = env_of(container)
    assert env["COLDSTART_ADVERTISED_URL"] == \
        "http://$(POD_NAME).coldstart-worker.$(POD_NAMESPACE).svc.cluster.local:6066"
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["COLDSTART_ANNOUNCE_SECRET"]["secretKeyRef"]["key"] == "announce-secret"


def test_each_worker_pod_runs_a_replica_behind_the_serve_service():
    """The replica shares its pod's state volume read only (the worker's ranker checkpoint) and gives
    the pod its readiness: a worker is 503 at every rebalance, when reads must still be answered."""
    pod = by_kind("StatefulSet")["coldstart-worker"]["spec"]["template"]["spec"]
    worker, serve = pod["containers"]
    assert serve["args"] == ["coldstart", "serve"]
    assert "readinessProbe" not in worker and serve["readinessProbe"]["httpGet"]["path"] == "/health"
    env = env_of(serve)
    mounts = {m["name"]: m for m in serve["volumeMounts"]}
    worker_env = env_of(worker)
    assert mounts["state"]["readOnly"] is True
    assert Path(env["COLDSTART_SERVE_RANKER_PATH"]) == Path(worker_env["COLDSTART_DATA_DIR"]) / "ranker.safetensors"
    assert mounts["state"]["mountPath"] == worker_env["COLDSTART_DATA_DIR"]
    assert env["COLDSTART_REGISTRY_URI"] == worker_env["COLDSTART_REGISTRY_URI"]
    assert env["COLDSTART_ANNOUNCE_SECRET"] == worker_env["COLDSTART_ANNOUNCE_SECRET"]  # verifies the same swaps
    port = serve["ports"][0]
    assert str(port["containerPort"]) == env["COLDSTART_WEB_PORT"] != str(worker["ports"][0]["containerPort"])
    assert "cpu" in serve["resources"]["requests"]
    service = by_kind("Service")["coldstart-serve"]
    assert service["spec"]["selector"].items() <= by_kind("StatefulSet")["coldstart-worker"]["spec"]["template"][
        "metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]


def test_trainer_has_a_gpu_and_shares_the_registry_with_workers():
    trainer = by_kind("Deployment")["coldstart-trainer"]["spec"]["template"]["spec"]
    assert trainer["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == 1
    claim = by_kind("PersistentVolumeClaim")["coldstart-registry"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    worker = by_kind("StatefulSet")["coldstart-worker"]["spec"]["template"]["spec"]
    for pod in (trainer, worker):
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        registry_volume = next(name for name, c in claims.items() if c == "coldstart-registry")
        assert mounts[registry_volume] == env_of(pod["containers"][0])["COLDSTART_REGISTRY_URI"]


def test_operator_resources_scrape_every_job_and_carry_the_tested_rules():
    monitors = by_kind("ServiceMonitor")
    services = by_kind("Service")
    monitored = {"coldstart-worker": "coldstart-worker", "coldstart-replica": "coldstart-serve",
                 "coldstart-trainer": "coldstart-trainer"}  # job -> Service
    assert set(monitors) == set(monitored)
    for job, service_name in monitored.items():
        selector = monitors[job]["spec"]["selector"]["matchLabels"]
        matched = [name for name, s in services.items() if selector.items() <= s["metadata"]["labels"].items()]
        assert matched == [service_name], (job, matched)
        service = services[service_name]
        job_label = monitors[job]["spec"]["jobLabel"]
        assert service["metadata"]["labels"][job_label] == job  # the job the rules name
        port = monitors[job]["spec"]["endpoints"][0]["port"]
        assert port in {p["name"] for p in service["spec"]["ports"]}
    rule = by_kind("PrometheusRule")["coldstart"]
    assert rule["spec"] == yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())

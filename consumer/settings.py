"""One settings object, read from the environment (and ``.env``).

The prototype's variable names are kept so existing ``.env`` files work.
Nothing here is read at import time: ``Settings()`` is built once by the
entry point and passed down.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumer.gpu_budget import CUDA_CONTEXT_GB, DEFAULT_BUDGET_GB, GPU_MAX_NUM_SEQS_BF16, GPU_MAX_NUM_SEQS_FP8

# The output budget, by construction (consumer/engine/output.py builds the
# grammar these numbers describe; tests/engine/test_output.py checks they match it):
# - every token vLLM's grammar lets through is at least one byte of output, so
#   an output never has more tokens than UTF-8 bytes;
# - the feedback grammar allows no escapes and only characters of at most 2
#   UTF-8 bytes (U+0020..U+07FF: Latin with every Catalan letter, Greek,
#   Cyrillic; no `"`, `\`, control characters, emoji or typographic quotes);
# - the JSON around it is fixed, in the fine-tune's layout:
#   `{"nota": N, "feedback": ""}` is 27 bytes, and the end-of-sequence token
#   after it is one more token.
# So `JSON_OVERHEAD_TOKENS + WORST_TOKENS_PER_FEEDBACK_CHAR * chars` tokens
# always hold the whole object: it closes inside max_tokens.
JSON_OVERHEAD_TOKENS = 28
WORST_TOKENS_PER_FEEDBACK_CHAR = 2
DEFAULT_FEEDBACK_MAX_CHARS = 176  # what the prototype's 200 tokens were meant to hold
CPU_DEFAULT_MAX_NUM_SEQS = 256
DEFAULT_REVIEW_CONFIDENCE = 0.5  # REVIEW_CONFIDENCE's default; why: beside the setting
DEFAULT_TIE_MARGIN = 0.03  # TIE_MARGIN's default; why: beside the setting
# Named because code outside this module needs the same value as its default (the fake engine,
# consumer.kafka.TopicReader): the why stays beside each setting.
DEFAULT_MAX_MODEL_LEN = 2048
DEFAULT_SCREEN_ANSWERS = True
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DECISIONS_RETENTION_DAYS = 183  # the EU AI Act's six months for a high-risk system's logs (Art. 19, 26(6))


def max_tokens_for(feedback_chars: int) -> int:
    """The smallest max_tokens in which a feedback of ``feedback_chars`` always closes."""
    return JSON_OVERHEAD_TOKENS + WORST_TOKENS_PER_FEEDBACK_CHAR * feedback_chars


class PromptFormat(StrEnum):
    """How an item becomes the model's input."""

    AUTO = "auto"  # gemma_finetune for Gemma-family models, else chat_template
    GEMMA_FINETUNE = "gemma_finetune"  # byte-exact training format of the fine-tune
    CHAT_TEMPLATE = "chat_template"  # the model's own chat template


class SchedulingPolicy(StrEnum):
    """Which admitted job's item goes to the engine next (pipeline/policy.py)."""

    FAIR = "fair"  # tenants by weight, then shortest remaining job first within an ageing bound
    FIFO = "fifo"  # arrival order (what vLLM alone does with everything in flight)


class _Section(BaseSettings):
    """One section of the settings: read from the environment and ``.env``, frozen once built.

    A field's variable is its name upper-cased (the alias generator; errors
    name the variable); a written alias only where the variable is named
    otherwise (the prototype's ``KAFKA_*_TOPIC`` names).
    """

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", populate_by_name=True, frozen=True, alias_generator=str.upper
    )


class EngineSettings(_Section):
    """The model, how it runs, how it samples, and what a grade carries (consumer/engine/)."""

    # --- model and engine (the prototype's names) ---
    # Unset: the production fine-tune on a GPU host, the packaged Gemma 3 270M on
    # CPU. Short names of packaged models: `gemma3-270m`, `smollm2`.
    model_name: str | None = Field(default=None)
    # How an item becomes the prompt: the fine-tune's training format (BOS added by the prompt code), the model's chat
    # template, or auto (gemma_finetune for Gemma-family models).
    prompt_format: PromptFormat = Field(default=PromptFormat.AUTO)
    # Where the packaged small models are converted once (and kept).
    model_cache_dir: Path = Field(default=Path(".cache/models"))
    # Set: vLLM's share of the GPU as is, instead of GPU_MEMORY_BUDGET_GB (e.g. 0.90: most of the card,
    # past the seed's budget). On CPU vLLM reads it as a share of host memory; unset there: 0.30 (0.92 fails).
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    # The service's whole GPU footprint in GB (10^9 bytes), what nvidia-smi shows: vLLM's share is derived
    # from it and the card's size (read through NVML) after 0.5 GB for the engine's CUDA context. 21.5 keeps
    # a 2,000-text job under the seed's 22 GB (docs/gpu.md). Ignored on CPU and when GPU_MEMORY_UTILIZATION
    # is set.
    gpu_memory_budget_gb: float = Field(default=DEFAULT_BUDGET_GB, gt=CUDA_CONTEXT_GB)
    # "fp8" on Ada/Hopper GPUs: weights 10.2 GB instead of 18.5, which under the budget buys 6.6x the KV
    # cache (MAX_NUM_SEQS 112 instead of 16). It can move grades: re-validate (canary, `texteval agreement`).
    quantization: str | None = Field(default=None)
    # The model's Hugging Face revision (a commit id): the same weights and tokenizer on every host. Unset:
    # the hub's main branch at the first download (`texteval doctor --gpu` prints the commit to pin).
    model_revision: str | None = Field(default=None)
    # Context in tokens; a prompt that does not fit with MAX_TOKENS is an input_too_long result.
    max_model_len: int = Field(default=DEFAULT_MAX_MODEL_LEN, ge=128)
    # GPUs per engine (vLLM tensor parallelism).
    tensor_parallel_size: int = Field(default=1, ge=1)
    # vLLM's weight and activation type. Unset: bfloat16 on a GPU (the fine-tune's
    # own), float32 on CPU: there bf16 arithmetic moves the grade distribution by up
    # to 0.026 with what else is in the batch (float32: 2.5e-6), enough to turn
    # the stand-in's frequent near-ties into other grades (docs/models.md).
    dtype: str | None = Field(default=None)
    # vLLM prefix cache: the shared instruction is computed once (about 1.5x at full load).
    enable_prefix_caching: bool = Field(default=True)
    # vLLM KV-cache block size in tokens; unset: vLLM's default.
    block_size: int | None = Field(default=None, ge=1)
    # Sequences vLLM decodes at once. Unset on a GPU: 16 in bf16, 112 with QUANTIZATION=fp8, what the KV
    # cache left by the default budget on an L40 holds without preempting (docs/gpu.md; with another budget,
    # card or model, `texteval doctor` says what fits); 256 on CPU.
    max_num_seqs: int | None = Field(default=None, ge=1)
    # Unset: 3 (full vLLM compile) on GPU; 0 (eager) on CPU, where compiling
    # costs 2-4 minutes of start-up for a small gain.
    compilation_level: int | None = Field(default=None, ge=0, le=3)
    # CPU only: KV cache size in GiB (vLLM's VLLM_CPU_KVCACHE_SPACE).
    cpu_kvcache_space_gib: int = Field(default=2, ge=1)

    # --- sampling (the prototype's values plus a fixed seed) ---
    # Sampling temperature (the prototype's).
    temperature: float = Field(default=0.1, ge=0)
    # Nucleus sampling (the prototype's).
    top_p: float = Field(default=0.95, gt=0, le=1)
    # Unset: derived from the feedback bound (380 for 176 characters), so the
    # JSON always closes; a budget that is not used costs nothing. Set alone:
    # the feedback bound is derived from it instead.
    max_tokens: int = Field(default=max_tokens_for(DEFAULT_FEEDBACK_MAX_CHARS), ge=32)
    # Sampling seed: the same text gives the same grade; a retry uses the next seed.
    seed: int = Field(default=0)
    # Grammar bound on feedback, in characters (see JSON_OVERHEAD_TOKENS).
    feedback_max_chars: int | None = Field(default=None, ge=20)
    # Per item, retries included; past it the item is an engine_timeout error.
    # Generous: a 2000-text batch queues items behind each other on one GPU.
    engine_timeout_s: float = Field(default=900.0, gt=0)
    # Extra attempts (with the next seed) after an invalid or cut-off output.
    invalid_output_retries: int = Field(default=1, ge=0, le=3)
    # Contract 1.2: each ok result carries the model's distribution over the
    # six grades (nota_probabilities, confidence, needs_review), read from
    # vLLM's log-probabilities of the digit tokens; false leaves them out.
    grade_distribution: bool = Field(default=True)
    # needs_review = confidence below this. 0.5: the model finds the grade it
    # gave less likely than all the others together, a meaning that holds for
    # any model. The CPU stand-in on the 20 sample items: confidence 0.27-0.55
    # (median 0.44), 18 flagged, rightly: it is no grader (consumer/engine/confidence.py).
    review_confidence: float = Field(default=DEFAULT_REVIEW_CONFIDENCE, ge=0, le=1)
    # A known-answer check before ready (issue 22.5): JSONL lines
    # {"item": {...}, "nota": N} with the grades a validated deployment gave;
    # graded after the engine loads and before the consumer joins its group.
    # A miss keeps /health 503 with the reason and nothing is consumed.
    canary_file: Path | None = Field(default=None)
    # Allowed |nota - recorded nota| per canary item; every item must be within
    # it (an error outcome is always a miss). 0: sampling is at temperature 0.1
    # with a fixed seed, so a validated model regrades its canary exactly (an
    # item on an edge between grades is refused when recording: texteval
    # canary-record grades twice); a wrong model, tokenizer or template
    # misses by several points on some item. Raise to 1 only for a model whose
    # recorded grades were seen to move between runs.
    canary_tolerance: int = Field(default=0, ge=0, le=5)
    # Contract 1.3: near_tie when the two most probable grades are within this
    # of each other (probabilities). Two runs of the same text agree on the grade
    # except where batch-dependent arithmetic moves the top two past each other;
    # the margin is far above that noise (docs/models.md has the figures), so a
    # grade that could come out otherwise is always said to be close.
    tie_margin: float = Field(default=DEFAULT_TIE_MARGIN, ge=0, le=1)
    # Contract 1.3: review reasons read from the answer itself (suspected_injection,
    # repetition, keyword_stuffing, no_answer, copies_prompt, other_language,
    # gibberish; consumer/engine/screening.py). false: only the grade's own reasons.
    screen_answers: bool = Field(default=DEFAULT_SCREEN_ANSWERS)
    # Temperatures fitted on teachers' corrections by `texteval calibrate`, keyed by model
    # name and prompt format: confidence, needs_review and the published nota_probabilities
    # use the calibrated distribution (the grade never changes; the decision record keeps
    # the raw one). Unset, or no entry for the model loaded: the raw distribution (a warning).
    calibration_file: Path | None = Field(default=None)

    _feedback_chars: int = PrivateAttr(default=DEFAULT_FEEDBACK_MAX_CHARS)

    @model_validator(mode="after")
    def _output_closes(self) -> EngineSettings:
        max_tokens_given = "max_tokens" in self.model_fields_set
        if self.feedback_max_chars is not None:
            self._feedback_chars = self.feedback_max_chars
        elif max_tokens_given:
            self._feedback_chars = (self.max_tokens - JSON_OVERHEAD_TOKENS) // WORST_TOKENS_PER_FEEDBACK_CHAR
        if not max_tokens_given:
            # Derived, not given: the section is frozen for everyone else, so set it the one way pydantic allows.
            object.__setattr__(self, "max_tokens", max_tokens_for(self._feedback_chars))
        if self._feedback_chars < 1 or max_tokens_for(self._feedback_chars) > self.max_tokens:
            raise ValueError(
                f"FEEDBACK_MAX_CHARS={self._feedback_chars} cannot always close inside MAX_TOKENS={self.max_tokens}: "
                f"it needs MAX_TOKENS >= {max_tokens_for(max(self._feedback_chars, 1))} "
                f"({JSON_OVERHEAD_TOKENS} + {WORST_TOKENS_PER_FEEDBACK_CHAR} per character); "
                "leave MAX_TOKENS unset to derive it"
            )
        return self

    @property
    def feedback_chars(self) -> int:
        return self._feedback_chars

    def max_num_seqs_on(self, device: str) -> int:
        """MAX_NUM_SEQS, or its default for this device (``cuda``, ``cpu``)."""
        if self.max_num_seqs is not None:
            return self.max_num_seqs
        if device == "cpu":
            return CPU_DEFAULT_MAX_NUM_SEQS
        return GPU_MAX_NUM_SEQS_FP8 if (self.quantization or "").lower() == "fp8" else GPU_MAX_NUM_SEQS_BF16


class JobsSettings(_Section):
    """Jobs and progress: what is admitted, and how often progress is said."""

    # --- jobs and progress ---
    batch_size: int = Field(default=10, ge=1)  # results per progress event
    # Admission costs memory only (the scheduler decides what the engine
    # runs), so the caps are generous: a handful of 2000-text jobs and many
    # small ones are admitted together. Past any cap, partitions pause.
    max_concurrent_jobs: int = Field(default=64, ge=1)
    # Larger requests go to the DLT.
    max_items_per_job: int = Field(default=2000, ge=1)
    # Admitted items not yet graded before partitions pause.
    max_inflight_items: int = Field(default=20_000, ge=1)
    # Request bytes of the admitted jobs (a 2000 x 7,000-character job is ~16 MB).
    max_inflight_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    # Longest a result waits for its batch_complete event.
    progress_flush_ms: int = Field(default=250, ge=1)

    # --- shadow grading (docs/models.md, "Releasing a new model") ---
    # This process is a shadow: a candidate model graded beside the live consumers, in
    # its own KAFKA_GROUP_ID, on the same requests. Its results go to
    # KAFKA_SHADOW_RESULTS_TOPIC with the header texteval.shadow=1; it writes no progress
    # events, no decision records and no dead letters, and keeps its job state on
    # KAFKA_SHADOW_CHECKPOINTS_TOPIC (never the live consumers' own).
    shadow: bool = Field(default=False)
    # The share of items the shadow grades, chosen by a hash of job_id and id_alumno,
    # so every shadow (and every run of one) takes the same items.
    shadow_sample_rate: float = Field(default=1.0, ge=0, le=1)


class SchedulerSettings(_Section):
    """Which admitted item goes to the engine next (pipeline/scheduler.py, pipeline/policy.py)."""

    # --- scheduler (pipeline/scheduler.py, pipeline/policy.py) ---
    # How admitted jobs share the engine: fair (tenants by weight, then shortest remaining job first within an
    # ageing bound) or fifo (arrival order across all tenants).
    scheduling_policy: SchedulingPolicy = Field(default=SchedulingPolicy.FAIR)
    # Items in the engine at once. Unset: MAX_NUM_SEQS plus a quarter (at
    # least 8), so the engine always has the next item queued; 0: no bound
    # (every admitted item in flight).
    engine_queue_depth: int | None = Field(default=None, ge=0)
    # fair: the ageing bound inside a tenant. A job's last item goes to the engine within 1/share times the
    # tenant's dispatches FIFO would need (1.43x at 0.7); within that bound the shortest job goes first.
    scheduler_oldest_share: float = Field(default=0.7, gt=0, le=1)
    # fair: how tenants (a job id's first `/`-segment) share the engine while they have items waiting, as
    # `tenant=weight` pairs (`school-42=2,school-7=1`: school-42 gets twice school-7's share). Unlisted
    # tenants, and all tenant-less jobs together, weigh 1.
    scheduler_tenant_weights: str = Field(default="")
    # fair: share the engine between tenants first, then between a tenant's jobs; false: every job in one
    # pool (the policy before tenants, to compare with and to fall back to).
    scheduler_by_tenant: bool = Field(default=True)

    @property
    def tenant_weights(self) -> dict[str, float]:
        """SCHEDULER_TENANT_WEIGHTS parsed; a malformed value is refused when the settings are built."""
        weights: dict[str, float] = {}
        for entry in filter(None, (part.strip() for part in self.scheduler_tenant_weights.split(","))):
            name, sep, value = (part.strip() for part in entry.partition("="))
            try:
                weight = float(value)
            except ValueError:
                weight = float("nan")
            if not sep or not name or "/" in name or not 0 < weight < float("inf") or name in weights:
                expected = "tenant=weight (weight > 0, each tenant once)"
                raise ValueError(f"SCHEDULER_TENANT_WEIGHTS: expected {expected}, not {entry!r}")
            weights[name] = weight
        return weights

    @model_validator(mode="after")
    def _tenant_weights_parse(self) -> SchedulerSettings:
        _ = self.tenant_weights  # raises on a malformed value: refused at start-up, not at the first job
        return self


class KafkaSettings(_Section):
    """The broker, the topics and the consumer's commit and delivery timing.

    Variables are ``KAFKA_`` + the name; the consumer loop's own timings keep their shorter names.
    """

    model_config = SettingsConfigDict(alias_generator=lambda name: f"KAFKA_{name.upper()}")

    # --- Kafka ---
    # Comma-separated brokers.
    bootstrap_servers: str = Field(default="localhost:9092")
    # The consumers' group: they split the requests topic's partitions.
    group_id: str = Field(default="texteval")
    # In: evaluation requests (one job per message).
    requests_topic: str = Field(default="evaluation.requests")
    # Out: one result per text.
    results_topic: str = Field(default="evaluation.results")
    # Out: progress events per job (accepted, batch_complete, complete, cancelled).
    progress_topic: str = Field(default="evaluation.progress")
    # Out: rejected requests, whole, with the reason in headers.
    dlt_topic: str = Field(default="evaluation.requests.DLT")
    # 1.1: cancel commands, read by every consumer instance without a group.
    control_topic: str = Field(default="evaluation.control")
    # 1.1: job state (item-level checkpoints, finished jobs' fingerprints): a
    # compacted topic with as many partitions as the requests topic.
    checkpoints_topic: str = Field(default="evaluation.checkpoints")
    # 1.2: teachers' corrections (`texteval correct`, POST /jobs/{id}/corrections);
    # invalid ones go to `<this topic>.DLT` (corrections_dlt_topic).
    corrections_topic: str = Field(default="evaluation.corrections")
    # 1.3: decision records, one per released grade and per correction applied
    # (no texts, no names); kept DECISIONS_RETENTION_MS (deploy/kafka/create-topics.sh).
    decisions_topic: str = Field(default="evaluation.decisions")
    # Where a shadow's results go (same contract as KAFKA_RESULTS_TOPIC, header texteval.shadow=1);
    # read by `texteval release-check --candidate shadow`, never by the gateway.
    shadow_results_topic: str = Field(default="evaluation.results.shadow")
    # A shadow's job state (compacted, partitioned like the requests topic): apart from the
    # live consumers', whose finished jobs would otherwise look finished to the shadow too.
    shadow_checkpoints_topic: str = Field(default="evaluation.checkpoints.shadow")
    # How long a cancel command is honoured (how far back the control topic is read).
    cancel_ttl_s: float = Field(default=86400.0, gt=0, alias="CANCEL_TTL_S")
    # Static membership: a stable name per replica (a StatefulSet pod name);
    # a restart within the session timeout then keeps its partitions.
    group_instance_id: str | None = Field(default=None)
    # PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; passed to every client.
    security_protocol: str = Field(default="PLAINTEXT")
    # PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; required with SASL_*.
    sasl_mechanism: str | None = Field(default=None)
    # Required with SASL_*.
    sasl_username: str | None = Field(default=None)
    # Required with SASL_*; never printed.
    sasl_password: SecretStr | None = Field(default=None)
    # PEM of the CA that signed the brokers' certificates; unset: the system CAs.
    ssl_cafile: Path | None = Field(default=None)
    # Tansu answers a group join only after about half the session timeout,
    # so shorter sessions make the embedded broker usable; Apache Kafka
    # refuses sessions under group.min.session.timeout.ms (6 s by default).
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    # Group heartbeat (the embedded broker wants 500 with a 2000 session).
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    # Producer batching delay.
    linger_ms: int = Field(default=5, ge=0)
    # Our own output (results, progress, dead letters). Downstream readers
    # need this codec's library: every mainstream client has lz4, and it is
    # the cheapest on CPU (measured in docs/benchmarks.md, "Output compression").
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(default="lz4")
    # Requests written by a transactional producer that then aborted are
    # never graded. (The embedded broker refuses transactional producers, so
    # only the non-transactional path is tested here; see docs/delivery-and-faults.md.)
    isolation_level: Literal["read_committed", "read_uncommitted"] = Field(default="read_committed")
    # A full job (2000 items of up to 20,000 characters) can be tens of MB;
    # the broker's message.max.bytes must allow what upstream sends.
    max_message_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, ge=1024)
    # Create missing topics at start (development; production topics come from deploy/kafka/create-topics.sh).
    create_topics: bool = Field(default=False)
    # Partitions of topics created with KAFKA_CREATE_TOPICS.
    topic_partitions: int = Field(default=3, ge=1)
    # Job state and offsets are written this often (a crash regrades at most about this much).
    commit_interval_ms: int = Field(default=500, ge=10, alias="COMMIT_INTERVAL_MS")
    # On SIGTERM, how long in-flight jobs may finish before the rest is left to the next owner.
    shutdown_grace_s: float = Field(default=30.0, ge=0, alias="SHUTDOWN_GRACE_S")
    # Leaving the group and flushing the producer at shutdown, each at most this long.
    close_timeout_s: float = Field(default=10.0, gt=0)
    # Bounds the work done inside a rebalance (aborting jobs, the last sends
    # and commit); loading a partition's job state may take three times it.
    revoke_timeout_s: float = Field(default=10.0, gt=0, alias="REVOKE_TIMEOUT_S")
    # How often the broker is asked for its metadata (health, output topics present).
    check_interval_s: float = Field(default=2.0, gt=0)
    # A record whose output could not be sent is run again after this, doubling
    # while that record keeps failing, up to the max.
    delivery_retry_backoff_s: float = Field(default=1.0, ge=0, alias="DELIVERY_RETRY_BACKOFF_S")
    # The longest wait between two runs of a record whose output cannot be sent.
    delivery_retry_backoff_max_s: float = Field(default=60.0, ge=0, alias="DELIVERY_RETRY_BACKOFF_MAX_S")

    @property
    def corrections_dlt_topic(self) -> str:
        return f"{self.corrections_topic}.DLT"


class PrivacySettings(_Section):
    """What is kept, how long, and under which key (docs/privacy.md's data map)."""

    # --- privacy ---
    # Retention of the decisions topic (183 days), set by deploy/kafka/create-topics.sh and
    # KAFKA_CREATE_TOPICS; docs/privacy.md's data map names it.
    decisions_retention_ms: int = Field(default=DECISIONS_RETENTION_DAYS * 86_400_000, ge=3_600_000)
    # Key of the records' answer_hmac (HMAC-SHA-256 of each respuesta): a school
    # recomputes it on its copy to show which text was graded. Required unless
    # every broker is on loopback (development), where a fixed development key
    # is used and said at start; never printed.
    decisions_hmac_key: SecretStr = Field(default=SecretStr(""))
    # Write decision records (false only to measure what they cost: bench/b1).
    decision_records: bool = Field(default=True)
    # How long a finished job_id is remembered (an idempotency key); then its job-state record is deleted.
    job_id_retention_s: float = Field(default=7 * 86400.0, gt=0)


class HttpSettings(_Section):
    """The consumer's side HTTP server (/health, /metrics) and its logs."""

    # --- side HTTP server ---
    # Side HTTP server (/health, /metrics) address.
    host: str = Field(default="0.0.0.0")
    # Side HTTP server port.
    port: int = Field(default=8000, ge=0, le=65535)
    # texteval's own loggers (aiokafka stays at INFO or above: its DEBUG prints message values).
    log_level: str = Field(default="INFO")


class GatewaySettings(_Section):
    """The HTTP gateway (`texteval gateway`, a separate process); variables are ``GATEWAY_`` + the name."""

    model_config = SettingsConfigDict(alias_generator=lambda name: f"GATEWAY_{name.upper()}")

    # --- HTTP gateway (`texteval gateway`, a separate process) ---
    # The gateway's address (`texteval gateway --host` wins).
    host: str = Field(default="127.0.0.1")
    # The gateway's port (`--port` wins).
    port: int = Field(default=8080, ge=0, le=65535)
    # Comma-separated `tenant=key` entries (keys of 32+ characters), sent as
    # `Authorization: Bearer <key>`; a key sees its tenant's jobs only. No
    # keys at all: the gateway is open, and then only on a loopback host
    # unless GATEWAY_ALLOW_ANONYMOUS=true.
    api_keys: SecretStr = Field(default=SecretStr(""))
    # Serve a gateway without keys on a non-loopback host anyway.
    allow_anonymous: bool = Field(default=False)
    # Comma-separated origins allowed to call the API from a browser ("*" for any).
    cors_origins: str = Field(default="")
    # POST /evaluate bodies above it: 413, refused while reading.
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # How far back the progress topic is read at start, and how long a
    # finished job stays servable (the prototype's setting).
    job_ttl_seconds: float = Field(default=3600.0, gt=0, alias="JOB_TTL_SECONDS")
    # The memory bound: past either cap the oldest finished jobs of the school
    # holding the most are dropped first (then its oldest running ones), so one
    # school's jobs never push out another's; a dropped job is "not found".
    max_jobs: int = Field(default=10_000, ge=1)
    # Bytes of events the gateway keeps in memory (see GATEWAY_MAX_JOBS).
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    # SSE heartbeat comments this often.
    heartbeat_s: float = Field(default=15.0, gt=0)
    # Longest a progress fetch waits at the broker when nothing is new. Apache
    # Kafka answers as soon as a record arrives, so there it can be raised to
    # 500 (fewer idle fetches) at no latency cost; the embedded Tansu broker
    # holds every fetch this long, so it adds up to this much latency there
    # (B8: p99 15 ms at 5, 24 ms at 10, with 200 streams).
    fetch_max_wait_ms: int = Field(default=5, ge=1, le=500)
    # A stream whose client has taken no write for this long (and over at
    # least 4 checks, so a busy event loop stretches it) is closed: a client
    # that never reads must not hold memory or a task for ever.
    send_timeout_s: float = Field(default=30.0, gt=0)
    # Operators' keys (comma-separated): they see and act on every job.
    admin_keys: SecretStr = Field(default=SecretStr(""))
    # A file of `tenant=key` entries, one per line (a mounted Kubernetes Secret), added to GATEWAY_API_KEYS.
    api_keys_file: Path | None = Field(default=None)
    # A demo without default keys: when GATEWAY_API_KEYS_FILE does not exist, the gateway writes it (0600)
    # with one fresh key for this tenant.
    generate_key_for: str | None = Field(default=None)
    # Per tenant: jobs not finished; past it a POST gets 429 + Retry-After.
    tenant_max_open_jobs: int = Field(default=100, ge=1)
    # Per tenant: items of its unfinished jobs not yet graded (20 jobs of 2000 texts).
    tenant_max_waiting_items: int = Field(default=40_000, ge=1)
    # Open SSE streams on one gateway (429 past it).
    max_streams: int = Field(default=1000, ge=1)
    # Open SSE streams per school (all of a tenant's keys and stream tokens together; an operator's key on its own).
    max_streams_per_key: int = Field(default=100, ge=1)
    # Writes (POST, DELETE) per school (all its keys together; an operator's key
    # on its own): a token bucket of this many per second, bursts up to the burst.
    write_rate_per_s: float = Field(default=2.0, gt=0)
    # Writes a key may make at once before the rate applies.
    write_burst: int = Field(default=20, ge=1)
    # Requests with a missing or wrong key, per client address: past the burst
    # (refilled at the rate), its wrong keys get 429 instead of 401 until it
    # refills. A valid key is never refused for them.
    auth_failure_rate_per_s: float = Field(default=1.0, gt=0)
    # Requests with a wrong key an address may make before it is locked out.
    auth_failure_burst: int = Field(default=20, ge=1)
    # Proxies trusted to say who the client is (comma-separated addresses or
    # networks, "*" for any): X-Forwarded-For / X-Forwarded-Proto are read
    # only from these. Empty (the default): never; the client is the TCP peer.
    # Set it to the ingress's address when the gateway sits behind one.
    forwarded_allow_ips: str = Field(default="")
    # A request whose headers and body have not fully arrived this long after the
    # connection (or the previous request) is answered 408 and closed.
    request_read_timeout_s: float = Field(default=30.0, gt=0)
    # Bytes of request bodies being read at once, across all requests: past it a
    # POST gets 503 + Retry-After (ten 16 MB bodies must not exhaust the pod's memory).
    max_inflight_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # Entries in one POST /jobs/{id}/corrections (each is two Kafka records); one per item.
    max_corrections_per_request: int = Field(default=200, ge=1, le=10_000)
    # Lifetime of the job-scoped stream token POST /evaluate returns (for browsers' URLs instead of the key).
    stream_token_ttl_s: float = Field(default=900.0, gt=0)

    def gateway_keys(self) -> list[str]:
        """The `tenant=key` entries of GATEWAY_API_KEYS and GATEWAY_API_KEYS_FILE (checked by the gateway)."""
        entries = self.api_keys.get_secret_value().split(",")
        if self.api_keys_file is not None:
            entries += self.api_keys_file.read_text(encoding="utf-8").splitlines()
        return [k.strip() for k in entries if k.strip() and not k.strip().startswith("#")]

    def gateway_admin_key_list(self) -> list[str]:
        return [k.strip() for k in self.admin_keys.get_secret_value().split(",") if k.strip()]


_SECTIONS: dict[str, type[_Section]] = {
    "engine": EngineSettings, "jobs": JobsSettings, "scheduler": SchedulerSettings, "kafka": KafkaSettings,
    "privacy": PrivacySettings, "http": HttpSettings, "gateway": GatewaySettings,
}  # fmt: skip


@dataclass(frozen=True)
class SettingField:
    """One setting: the section holding it, its field, and the variable that sets it."""

    section: str
    name: str
    info: FieldInfo

    @property
    def env(self) -> str:
        return self.info.alias or self.name.upper()


def setting_fields() -> list[SettingField]:
    """Every setting, section by section, in declaration order (docs, child processes, checks)."""
    return [SettingField(key, name, info) for key, cls in _SECTIONS.items() for name, info in cls.model_fields.items()]


def _by_name() -> dict[str, SettingField]:
    """Each setting by its variable or its field name, lower-cased; a variable wins where a
    field name is also another section's (``port``: the side server's ``PORT``)."""
    fields = setting_fields()
    return {f.name.lower(): f for f in fields} | {f.env.lower(): f for f in fields}


class Settings(BaseModel):
    """Every section, read once by the entry point and passed down; each component takes the section it needs.

    ``Settings(BATCH_SIZE=5, model_name="x")`` sets single settings by variable
    or field name (tests, tools); each goes to its section, the rest is read
    from the environment. ``_env_file=None`` ignores ``.env``.
    """

    model_config = ConfigDict(frozen=True)

    engine: EngineSettings = Field(default_factory=EngineSettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)

    @model_validator(mode="before")
    @classmethod
    def _sections_from_flat(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        given = dict(data)
        env_file = given.pop("_env_file", ".env")
        # By variable name, so a refused value is reported under the name the operator sets.
        by_key = {key: (field.section, field.env) for key, field in _by_name().items()}
        flat: dict[str, dict[str, Any]] = {key: {} for key in _SECTIONS}
        for key in [k for k in given if k not in _SECTIONS]:
            if key.lower() not in by_key:
                continue  # like the environment: what is not a setting is not read (a whole os.environ may come)
            section, name = by_key[key.lower()]
            flat[section][name] = given.pop(key)
        for key, section_cls in _SECTIONS.items():
            if key not in given:
                given[key] = section_cls(_env_file=env_file, **flat[key])  # type: ignore[call-arg]
            elif flat[key]:
                raise ValueError(f"settings for {key!r} given both as a section and one by one")
        return given

    def with_(self, **changes: Any) -> Settings:
        """A copy with some settings changed (by field or variable name), validated like the original."""
        by_section: dict[str, dict[str, Any]] = {}
        names = _by_name()
        for key, value in changes.items():
            field = names[key.lower()]
            by_section.setdefault(field.section, {})[field.env] = value
        sections = {
            key: type(section).model_validate(
                section.model_dump(exclude_unset=True, by_alias=True) | by_section.get(key, {})
            )
            for key, section in self
        }
        return Settings.model_validate(sections)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Settings:
        """Refused with single settings in ``update``: pydantic would add them beside the sections,
        unread and unvalidated; ``with_`` puts each in its section and validates it."""
        unknown = set(update or ()) - set(_SECTIONS)
        if unknown:
            raise TypeError(
                f"Settings.model_copy(update={sorted(unknown)}): use Settings.with_(...) for single settings"
            )
        return super().model_copy(update=update, deep=deep)

    @classmethod
    def defaults(cls, **changes: Any) -> Settings:
        """The code's defaults whatever the environment says (docs, checks), with ``changes`` applied."""
        plain = cls.model_validate({key: section.model_construct() for key, section in _SECTIONS.items()})
        return plain.with_(**changes) if changes else plain

    def service_topics(self) -> list[str]:
        """Every topic the consumer and the gateway use (created at start with KAFKA_CREATE_TOPICS)."""
        k = self.kafka
        shadow = [k.shadow_results_topic, k.shadow_checkpoints_topic] if self.jobs.shadow else []
        return [
            k.requests_topic, k.results_topic, k.progress_topic, k.dlt_topic, k.control_topic,
            k.checkpoints_topic, k.corrections_topic, k.corrections_dlt_topic, k.decisions_topic, *shadow,
        ]  # fmt: skip

    @model_validator(mode="after")
    def _shadow_apart(self) -> Settings:
        # Sharing the live group would split the requests between live and shadow: each
        # item graded by one of them only, and half the live results missing.
        if self.jobs.shadow and self.kafka.group_id == "texteval":
            raise ValueError("SHADOW=true needs its own KAFKA_GROUP_ID (not the live consumers' 'texteval')")
        return self

    def as_shadow(self) -> Settings:
        """A shadow's settings (SHADOW=true): its results and job state on the shadow topics, no decision records."""
        return self.with_(
            results_topic=self.kafka.shadow_results_topic,
            checkpoints_topic=self.kafka.shadow_checkpoints_topic,
            decision_records=False,
        )

    def engine_depth_on(self, device: str) -> int | None:
        """The scheduler's bound on items in an engine on this device; None = no bound."""
        if self.scheduler.engine_queue_depth is None:
            seqs = self.engine.max_num_seqs_on(device)
            return seqs + max(8, seqs // 4)
        return self.scheduler.engine_queue_depth or None

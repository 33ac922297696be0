"""One settings object, read from the environment (and ``.env``).

The prototype's variable names are kept so existing ``.env`` files work.
Nothing here is read at import time: ``Settings()`` is built once by the
entry point and passed down.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The output budget, by construction (consumer/engine/output.py builds the
# grammar these numbers describe; tests/test_output.py checks they match it):
# - every token vLLM's grammar lets through is at least one byte of output, so
#   an output never has more tokens than UTF-8 bytes;
# - the feedback grammar allows no escapes and only characters of at most 2
#   UTF-8 bytes (U+0020..U+07FF: Latin with every Catalan letter, Greek,
#   Cyrillic; no `"`, `\`, control characters, emoji or typographic quotes);
# - the compact JSON around it, `{"nota":N,"feedback":""}`, is 24 bytes, and the
#   end-of-sequence token after it is one more token.
# So `JSON_OVERHEAD_TOKENS + WORST_TOKENS_PER_FEEDBACK_CHAR * chars` tokens
# always hold the whole object: it closes inside max_tokens.
JSON_OVERHEAD_TOKENS = 25
WORST_TOKENS_PER_FEEDBACK_CHAR = 2
DEFAULT_FEEDBACK_MAX_CHARS = 176  # what the prototype's 200 tokens were meant to hold


def max_tokens_for(feedback_chars: int) -> int:
    """The smallest max_tokens in which a feedback of ``feedback_chars`` always closes."""
    return JSON_OVERHEAD_TOKENS + WORST_TOKENS_PER_FEEDBACK_CHAR * feedback_chars


class PromptFormat(StrEnum):
    """How an item becomes the model's input."""

    AUTO = "auto"  # gemma_finetune for Gemma-family models, else chat_template
    GEMMA_FINETUNE = "gemma_finetune"  # byte-exact training format of the fine-tune
    CHAT_TEMPLATE = "chat_template"  # the model's own chat template


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    # --- model and engine (the prototype's names) ---
    # Unset: the production fine-tune on a GPU host, the packaged Gemma 3 270M on
    # CPU. Short names of packaged models: `gemma3-270m`, `smollm2`.
    model_name: str | None = Field(default=None, alias="MODEL_NAME")
    prompt_format: PromptFormat = Field(default=PromptFormat.AUTO, alias="PROMPT_FORMAT")
    model_cache_dir: Path = Field(default=Path(".cache/models"), alias="MODEL_CACHE_DIR")
    # Unset: 0.90 of the GPU; on CPU vLLM reads it as a share of host memory,
    # and 0.92 fails there, so the CPU default is lower.
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1, alias="GPU_MEMORY_UTILIZATION")
    # A budget in GiB instead of a fraction: the engine turns it into the
    # right gpu_memory_utilization for the card it finds (22 on an L40, which
    # CUDA reports as ~45 GiB -> 0.488). Wins over GPU_MEMORY_UTILIZATION; ignored on CPU.
    gpu_memory_budget_gib: float | None = Field(default=None, gt=0, alias="GPU_MEMORY_BUDGET_GIB")
    # "fp8" on Ada/Hopper GPUs: half the weight bytes per decode step.
    quantization: str | None = Field(default=None, alias="QUANTIZATION")
    max_model_len: int = Field(default=2048, ge=128, alias="MAX_MODEL_LEN")
    tensor_parallel_size: int = Field(default=1, ge=1, alias="TENSOR_PARALLEL_SIZE")
    dtype: str = Field(default="bfloat16", alias="DTYPE")
    enable_prefix_caching: bool = Field(default=True, alias="ENABLE_PREFIX_CACHING")
    block_size: int | None = Field(default=None, ge=1, alias="BLOCK_SIZE")
    max_num_seqs: int = Field(default=256, ge=1, alias="MAX_NUM_SEQS")
    # Unset: 3 (full vLLM compile) on GPU; 0 (eager) on CPU, where compiling
    # costs 2-4 minutes of start-up for a small gain.
    compilation_level: int | None = Field(default=None, ge=0, le=3, alias="COMPILATION_LEVEL")
    # CPU only: KV cache size in GiB (vLLM's VLLM_CPU_KVCACHE_SPACE).
    cpu_kvcache_space_gib: int = Field(default=2, ge=1, alias="CPU_KVCACHE_SPACE_GIB")

    # --- sampling (the prototype's values plus a fixed seed) ---
    temperature: float = Field(default=0.1, ge=0, alias="TEMPERATURE")
    top_p: float = Field(default=0.95, gt=0, le=1, alias="TOP_P")
    # Unset: derived from the feedback bound (377 for 176 characters), so the
    # JSON always closes; a budget that is not used costs nothing. Set alone:
    # the feedback bound is derived from it instead.
    max_tokens: int = Field(default=max_tokens_for(DEFAULT_FEEDBACK_MAX_CHARS), ge=32, alias="MAX_TOKENS")
    seed: int = Field(default=0, alias="SEED")
    # Grammar bound on feedback, in characters (see JSON_OVERHEAD_TOKENS).
    feedback_max_chars: int | None = Field(default=None, ge=20, alias="FEEDBACK_MAX_CHARS")
    # Per item, retries included; past it the item is an engine_timeout error.
    # Generous: a 2000-text batch queues items behind each other on one GPU.
    engine_timeout_s: float = Field(default=900.0, gt=0, alias="ENGINE_TIMEOUT_S")
    # Extra attempts (with the next seed) after an invalid or cut-off output.
    invalid_output_retries: int = Field(default=1, ge=0, le=3, alias="INVALID_OUTPUT_RETRIES")

    _feedback_chars: int = PrivateAttr(default=DEFAULT_FEEDBACK_MAX_CHARS)

    @model_validator(mode="after")
    def _output_closes(self) -> Settings:
        max_tokens_given = "max_tokens" in self.model_fields_set
        if self.feedback_max_chars is not None:
            self._feedback_chars = self.feedback_max_chars
        elif max_tokens_given:
            self._feedback_chars = (self.max_tokens - JSON_OVERHEAD_TOKENS) // WORST_TOKENS_PER_FEEDBACK_CHAR
        if not max_tokens_given:
            self.max_tokens = max_tokens_for(self._feedback_chars)
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

    # --- jobs and progress ---
    batch_size: int = Field(default=10, ge=1, alias="BATCH_SIZE")  # results per progress event
    max_concurrent_jobs: int = Field(default=8, ge=1, alias="MAX_CONCURRENT_JOBS")
    max_items_per_job: int = Field(default=2000, ge=1, alias="MAX_ITEMS_PER_JOB")
    max_inflight_items: int = Field(default=4096, ge=1, alias="MAX_INFLIGHT_ITEMS")
    progress_flush_ms: int = Field(default=250, ge=1, alias="PROGRESS_FLUSH_MS")

    # --- Kafka ---
    kafka_bootstrap_servers: str = Field(default="localhost:9092", alias="KAFKA_BOOTSTRAP_SERVERS")
    kafka_group_id: str = Field(default="texteval", alias="KAFKA_GROUP_ID")
    requests_topic: str = Field(default="evaluation.requests", alias="KAFKA_REQUESTS_TOPIC")
    results_topic: str = Field(default="evaluation.results", alias="KAFKA_RESULTS_TOPIC")
    progress_topic: str = Field(default="evaluation.progress", alias="KAFKA_PROGRESS_TOPIC")
    dlt_topic: str = Field(default="evaluation.requests.DLT", alias="KAFKA_DLT_TOPIC")
    kafka_security_protocol: str = Field(default="PLAINTEXT", alias="KAFKA_SECURITY_PROTOCOL")
    kafka_sasl_mechanism: str | None = Field(default=None, alias="KAFKA_SASL_MECHANISM")
    kafka_sasl_username: str | None = Field(default=None, alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password: SecretStr | None = Field(default=None, alias="KAFKA_SASL_PASSWORD")
    kafka_ssl_cafile: Path | None = Field(default=None, alias="KAFKA_SSL_CAFILE")
    # Tansu answers a group join only after about half the session timeout,
    # so shorter sessions make the embedded broker usable; Apache Kafka
    # refuses sessions under group.min.session.timeout.ms (6 s by default).
    kafka_session_timeout_ms: int = Field(default=10_000, ge=1000, alias="KAFKA_SESSION_TIMEOUT_MS")
    kafka_heartbeat_interval_ms: int = Field(default=3_000, ge=100, alias="KAFKA_HEARTBEAT_INTERVAL_MS")
    kafka_linger_ms: int = Field(default=5, ge=0, alias="KAFKA_LINGER_MS")
    # A full job (2000 items of up to 20,000 characters) can be tens of MB;
    # the broker's message.max.bytes must allow what upstream sends.
    kafka_max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, alias="KAFKA_MAX_MESSAGE_BYTES")
    kafka_create_topics: bool = Field(default=False, alias="KAFKA_CREATE_TOPICS")
    kafka_topic_partitions: int = Field(default=3, ge=1, alias="KAFKA_TOPIC_PARTITIONS")
    commit_interval_ms: int = Field(default=500, ge=10, alias="COMMIT_INTERVAL_MS")
    shutdown_grace_s: float = Field(default=30.0, ge=0, alias="SHUTDOWN_GRACE_S")
    # Leaving the group and flushing the producer at shutdown, each at most this long.
    kafka_close_timeout_s: float = Field(default=10.0, gt=0, alias="KAFKA_CLOSE_TIMEOUT_S")

    # --- side HTTP server ---
    host: str = Field(default="0.0.0.0", alias="HOST")
    port: int = Field(default=8000, ge=0, le=65535, alias="PORT")
    log_level: str = Field(default="INFO", alias="LOG_LEVEL")

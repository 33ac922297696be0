"""Prometheus metrics of one gateway process (own registry, as the consumer's).

Labels carry route templates, methods, status codes and partitions: never a
job id (unbounded) and never student text.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from consumer.gateway.corrections import Agreement
from consumer.gateway.jobs import EvictReason
from consumer.gateway.limits import Limit

# Every label's values are an enum of the module that emits them, created here at 0.

_DELIVERY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "texteval_gateway_requests", "HTTP requests, by method, route and status", ["method", "route", "status"],
            registry=r,
        )  # fmt: skip
        self.open_streams = Gauge("texteval_gateway_open_streams", "SSE streams open now", registry=r)
        self.event_delivery_latency_seconds = Histogram(
            "texteval_gateway_event_delivery_latency_seconds",
            "From a progress record's Kafka timestamp to its write to a live SSE stream",
            buckets=_DELIVERY_BUCKETS_S,
            registry=r,
        )
        self.events_delivered = Counter("texteval_gateway_events_delivered", "SSE events written", registry=r)
        self.tail_lag = Gauge(
            "texteval_gateway_tail_lag", "Progress records behind the partition end", ["partition"], registry=r
        )
        self.tail_caught_up = Gauge(
            "texteval_gateway_tail_caught_up", "1 once the progress topic was read up to its end at start", registry=r
        )
        self.kafka_up = Gauge("texteval_gateway_kafka_up", "1 while the progress tail is fetching", registry=r)
        self.invalid_events = Counter(
            "texteval_gateway_invalid_events", "Progress records that are not contract events (skipped)", registry=r
        )
        self.jobs_kept = Gauge("texteval_gateway_jobs_kept", "Jobs held in memory", registry=r)
        self.bytes_kept = Gauge("texteval_gateway_bytes_kept", "Bytes of events and results held", registry=r)
        self.jobs_evicted = Counter(
            "texteval_gateway_jobs_evicted", "Jobs dropped from memory, by reason", ["reason"], registry=r
        )
        for reason in EvictReason:  # exported at 0 from the start, so rates and alerts see them
            self.jobs_evicted.labels(reason)
        self.jobs_submitted = Counter("texteval_gateway_jobs_submitted", "Requests produced to Kafka", registry=r)
        self.cancels = Counter("texteval_gateway_cancels", "Cancel commands produced", registry=r)
        self.streams_stalled = Counter(
            "texteval_gateway_streams_stalled", "SSE streams dropped: the client took no write for the send timeout",
            registry=r,
        )  # fmt: skip
        self.limited = Counter(
            "texteval_gateway_limited", "Requests refused with 429, by the limit they hit", ["limit"], registry=r
        )
        for limit in Limit:
            self.limited.labels(limit)
        # Every accepted correction, by how its grade compares with the model's
        # for that item (`unknown`: the gateway holds no grade for it, e.g. an
        # error result or a job dropped from memory). Drift alert: group texteval-grades.
        self.corrections = Counter(
            "texteval_gateway_corrections",
            "Teachers' corrections accepted, by agreement with the model's grade",
            ["agreement"],
            registry=r,
        )
        for agreement in Agreement:
            self.corrections.labels(agreement)

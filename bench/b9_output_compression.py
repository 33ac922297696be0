"""Output compression (issue 10): bytes our producer puts on the wire and the
progress latency, for each KAFKA_COMPRESSION_TYPE, side by side in one run.

A broker of its own advertises a TCP proxy's address, so every byte the
consumer sends to the broker is counted by the proxy. The request is produced
before the consumer starts and the counters are reset, so what is counted is
the consumer's traffic: results, progress events, offset commits, fetches
and heartbeats (the last three are the same for every codec).

    python -m bench.b9_output_compression [--items 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import uuid

from consumer.engine.fake import FakeEngine
from consumer.metrics import Metrics
from consumer.testing.tcp_proxy import TcpProxy
from consumer.testing.topics import TopicNames, count_events, create_topics, items, job, make_settings, read_until
from consumer.tools.broker import EmbeddedBroker, free_port

CODECS = ("none", "lz4", "zstd", "snappy", "gzip")


def _quantile_upper_bound(metrics: Metrics, q: float) -> float:
    """The histogram bucket bound under which a share q of progress events fell (what Prometheus would see)."""
    samples = [
        (float(s.labels["le"]), s.value)
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "texteval_progress_event_latency_seconds_bucket"
    ]
    total = max(v for _, v in samples)
    for bound, count in sorted(samples):
        if count >= q * total:
            return bound
    return float("inf")


async def _one(bootstrap: str, codec: str, n_items: int, proxy: TcpProxy) -> tuple[int, float, float]:
    from consumer.pipeline.service import consumer_running

    topics = TopicNames.unique()
    await create_topics(bootstrap, topics)
    settings = make_settings(
        bootstrap, topics, {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500}, KAFKA_COMPRESSION_TYPE=codec
    )
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=32 * 1024 * 1024)
    await producer.start()
    job_id = f"b9-{uuid.uuid4().hex[:6]}"
    await producer.send_and_wait(topics.requests, key=job_id.encode(), value=job(job_id, items(n_items)))
    await producer.stop()
    metrics = Metrics()
    proxy.bytes_to_broker = 0
    async with consumer_running(settings, FakeEngine(delay_s=0.002, max_concurrency=64), metrics):
        await read_until(bootstrap, topics.progress, count_events("complete", 1), timeout_s=300)
        sent = proxy.bytes_to_broker
    hist_sum = metrics.registry.get_sample_value("texteval_progress_event_latency_seconds_sum") or 0.0
    hist_n = metrics.registry.get_sample_value("texteval_progress_event_latency_seconds_count") or 1.0
    return sent, hist_sum / hist_n * 1000, _quantile_upper_bound(metrics, 0.99) * 1000


async def main(n_items: int, rounds: int) -> None:
    proxy_port = free_port()
    with EmbeddedBroker(advertised_port=proxy_port) as broker:
        proxy = await TcpProxy("127.0.0.1", broker.port, port=proxy_port).start()
        bootstrap = f"127.0.0.1:{proxy_port}"
        runs: dict[str, list[tuple[int, float, float]]] = {c: [] for c in CODECS}
        try:
            for r in range(rounds):
                order = CODECS if r % 2 == 0 else tuple(reversed(CODECS))  # alternate the arms
                for codec in order:
                    runs[codec].append(await _one(bootstrap, codec, n_items, proxy))
        finally:
            await proxy.close()
    base = statistics.median(b for b, _, _ in runs["none"])
    print(f"| codec | bytes to broker (median of {rounds}) | vs none | progress latency mean | p99 bucket |")
    print("|---|---|---|---|---|")
    for codec in CODECS:
        sent = statistics.median(b for b, _, _ in runs[codec])
        mean_ms = statistics.median(m for _, m, _ in runs[codec])
        p99_ms = statistics.median(p for _, _, p in runs[codec])
        print(f"| {codec} | {sent / 1e6:.2f} MB | {sent / base:.2f}× | {mean_ms:.1f} ms | ≤ {p99_ms:.0f} ms |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.items, args.rounds))

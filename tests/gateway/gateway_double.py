"""A gateway's routes without a broker, for unit tests: the real app, job
store, keys, tokens and limits; the progress tail and the producer replaced
by doubles (the tail reports "caught up", the producer records what it was
given). End-to-end isolation runs against the real broker in
test_gateway_attacks.py."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from fastapi.testclient import TestClient
from pydantic import TypeAdapter

from consumer.contract import ProgressEvent
from consumer.gateway.app import create_app
from consumer.gateway.auth import keys_from
from consumer.gateway.jobs import AnyProgressEvent, JobStore
from consumer.gateway.metrics import GatewayMetrics
from consumer.gateway.service import Gateway
from consumer.settings import Settings

EVENT = TypeAdapter[AnyProgressEvent](ProgressEvent)
KEY_A = "tenant-a-key-" + "A" * 32
KEY_B = "tenant-b-key-" + "B" * 32
KEY_ADMIN = "operator-key-" + "Z" * 32
TWO_TENANTS = {"GATEWAY_API_KEYS": f"school-a={KEY_A},school-b={KEY_B}", "GATEWAY_ADMIN_KEYS": KEY_ADMIN}


class TailDouble:
    def __init__(self) -> None:
        self.caught_up = asyncio.Event()
        self.caught_up.set()
        self.running = True

    async def read_to_now(self, timeout_s: float = 2.0) -> bool:
        return True


@dataclass
class ProducerDouble:
    sent: list[tuple[str, bytes, bytes]] = field(default_factory=list)

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        self.sent.append((topic, key, value))

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        """aiokafka's send: the record taken, its acknowledgement a future (here: at once)."""
        self.sent.append((topic, key, value))
        acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acknowledged.set_result(None)
        return acknowledged


@dataclass
class Harness:
    gateway: Gateway
    client: TestClient
    producer: ProducerDouble
    offset: int = 0

    def feed(self, message: dict[str, Any]) -> None:
        """A progress event as the tail would apply it."""
        raw = json.dumps({"schema_version": 1, **message})
        self.offset += 1
        self.gateway.store.apply(EVENT.validate_json(raw), raw, offset=self.offset, timestamp_ms=10**12)

    def sent(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(value) for t, _, value in self.producer.sent if t == topic]


def harness(**overrides: Any) -> Harness:
    settings = Settings(_env_file=None, **overrides)
    store = JobStore(ttl_s=3600, max_jobs=10_000, max_bytes=10**8)
    producer = ProducerDouble()
    gateway = Gateway.build(settings, store, TailDouble(), producer, GatewayMetrics(), keys_from(settings))  # type: ignore[arg-type]
    # A loopback Host: an open gateway answers no other (DNS rebinding).
    return Harness(gateway, TestClient(create_app(settings, gateway=gateway), base_url="http://localhost"), producer)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def item(i: int = 0, text: str = "La fotosíntesi fa oxigen.") -> dict[str, str]:
    return {"id_alumno": f"A{i}", "curso": "3r ESO", "consigna": "Explica la fotosíntesi.", "respuesta": text}


def accepted(job_id: str, total: int) -> dict[str, Any]:
    return {"event": "accepted", "job_id": job_id, "data": {"total_items": total, "estimated_time_seconds": 1}}


def batch(job_id: str, results: list[dict[str, Any]], total: int) -> dict[str, Any]:
    progress = {"completed": len(results), "total": total, "percentage": 0.0, "elapsed_seconds": 1.0,
                "estimated_remaining_seconds": 1.0, "avg_time_per_item": 0.25}  # fmt: skip
    return {"event": "batch_complete", "job_id": job_id,
            "data": {"batch_number": 1, "results": results, "progress": progress}}  # fmt: skip


def ok_result(i: int, feedback: str = "Bé.", id_alumno: str | None = None) -> dict[str, Any]:
    return {"id_alumno": id_alumno or f"A{i}", "item_index": i, "status": "ok", "nota": 3, "feedback": feedback}

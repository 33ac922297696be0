"""The gateway's code stays where a FastAPI developer looks for it (issue 28, finding 10):
short functions, routes defined at module level in their routers (no closure-built
routes), dependencies that FastAPI can read from their annotations."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from aiokafka.errors import KafkaConnectionError
from fastapi.routing import APIRoute

from consumer.gateway.server import gateway_serving
from consumer.settings import Settings
from consumer.testing.topics import create_topics
from consumer.tools.broker import free_port
from tests.gateway.gateway_double import TWO_TENANTS, harness

GATEWAY = Path(__file__).resolve().parents[2] / "consumer" / "gateway"
MAX_FUNCTION_LINES = 60


def function_lengths() -> dict[str, int]:
    lengths = {}
    for path in sorted(GATEWAY.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                where = f"{path.relative_to(GATEWAY)}:{node.lineno} {node.name}"
                lengths[where] = (node.end_lineno or node.lineno) - node.lineno + 1
    return lengths


def test_no_function_in_the_gateway_is_longer_than_60_lines() -> None:
    lengths = function_lengths()
    assert len(lengths) > 100  # the walk found the package
    too_long = {where: n for where, n in lengths.items() if n > MAX_FUNCTION_LINES}
    assert not too_long, too_long


def test_every_route_is_a_module_level_function_of_a_router() -> None:
    app = harness(**TWO_TENANTS).client.app
    routes = [r for r in app.routes if isinstance(r, APIRoute)]  # type: ignore[attr-defined]
    assert {(r.path, m) for r in routes for m in r.methods} >= {
        ("/evaluate", "POST"), ("/stream/{job_id:path}", "GET"), ("/jobs", "GET"), ("/jobs/{job_id:path}", "GET"),
        ("/jobs/{job_id:path}", "DELETE"), ("/jobs/{job_id:path}/results", "GET"), ("/health", "GET"),
        ("/jobs/{job_id:path}/corrections", "POST"), ("/jobs/{job_id:path}/stream_token", "POST"), ("/", "GET"),
    }  # fmt: skip
    for route in routes:
        endpoint = route.endpoint
        assert "<locals>" not in endpoint.__qualname__, endpoint.__qualname__
        assert endpoint.__module__.startswith("consumer.gateway.routes."), endpoint.__module__


def test_a_route_takes_its_caller_from_a_dependency_never_from_the_query() -> None:
    """A dependency FastAPI could not resolve becomes a query parameter: none of these is one."""
    app = harness(**TWO_TENANTS).client.app
    for route in app.routes:  # type: ignore[attr-defined]
        if isinstance(route, APIRoute):
            query = {p.name for p in route.dependant.query_params}
            for dependant in route.dependant.dependencies:
                query |= {p.name for p in dependant.query_params}
            assert not query & {"caller", "gateway", "record", "request"}, (route.path, query)


async def test_the_lifespan_runs_the_gateway_and_closes_it_after_the_last_request(
    settings_for: Callable[..., Settings],
) -> None:
    settings = settings_for()
    await create_topics(settings.kafka.bootstrap_servers, settings.service_topics())
    async with gateway_serving(settings) as (gateway, base):
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/jobs")).status_code == 200
        assert gateway.tail.running and gateway.erasures is not None and gateway.erasures.running
    assert not gateway.tail.running and not gateway.erasures.running  # the lifespan's end closed them


async def test_a_start_that_fails_raises_its_own_error_and_serves_nothing() -> None:
    """uvicorn only logs a failed lifespan and exits; ``gateway_serving`` raises what failed."""
    port = free_port()
    settings = Settings(_env_file=None, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")  # type: ignore[call-arg]
    with pytest.raises(KafkaConnectionError):
        async with gateway_serving(settings, port=port):
            pytest.fail("served without Kafka")
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/health")

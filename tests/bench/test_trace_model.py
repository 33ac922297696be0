"""The trace model B7 uses to say what any order could do (virtual time: exact figures)."""

from __future__ import annotations

import pytest

from bench.trace_model import PURE_SHORTEST_SHARE, Rule, TraceEntry, alone_mean_s, alone_s, completion_times_s
from consumer.settings import SchedulingPolicy

# A 128-item job, then a 2-item job a moment later, on 64 slots of 1 s each.
TRACE = [(0.0, 128), (0.1, 2)]
ENGINE = {"concurrency": 64, "delay_s": 1.0}
ENGINE_100MS = {"concurrency": 64, "delay_s": 0.1}


def test_fifo_serves_the_big_job_first_and_the_small_one_waits() -> None:
    # Depth 64: the engine never queues; every slot freed at 1 s goes to the big job's second half.
    assert completion_times_s(TRACE, SchedulingPolicy.FIFO, depth=64, **ENGINE) == pytest.approx([2.0, 2.9])


def test_shortest_first_lets_the_small_job_through_at_the_next_free_slots() -> None:
    times = completion_times_s(TRACE, SchedulingPolicy.FAIR, depth=64, oldest_share=PURE_SHORTEST_SHARE, **ENGINE)
    # The 2-item job takes the first two slots freed at 1 s, done at 2 s: 1.9 s after it came;
    # the big job's last 2 items wait for the next round.
    assert times == pytest.approx([3.0, 1.9])


def test_the_engine_queue_is_first_come_first_served() -> None:
    # Depth 128: all of the big job sits in the engine when the small one comes; no policy can move it.
    for policy in SchedulingPolicy:
        times = completion_times_s(TRACE, policy, depth=128, oldest_share=PURE_SHORTEST_SHARE, **ENGINE)
        assert times == pytest.approx([2.0, 2.9])


def test_a_small_job_behind_a_longer_backlog_is_served_first_only_by_fair() -> None:
    trace = [(0.0, 640), (0.5, 10)]
    fifo = completion_times_s(trace, SchedulingPolicy.FIFO, depth=64, **ENGINE)
    fair = completion_times_s(trace, SchedulingPolicy.FAIR, depth=64, oldest_share=0.67, **ENGINE)
    assert fifo == pytest.approx([10.0, 10.5])
    assert fair[1] == pytest.approx(1.5)  # the next slots to free, at 1 s: 10 items of them
    assert fair[0] == pytest.approx(11.0)  # 650 items on 64 slots: 11 rounds, the last ending at 11 s


def test_alone_mean_counts_rounds_of_the_engine() -> None:
    assert alone_mean_s([1, 64, 65], **ENGINE) == pytest.approx((1 + 1 + 2) / 3)


def test_tenants_share_the_engine_and_one_pool_makes_the_class_wait_for_the_flood() -> None:
    """B11's trace: tenant A's 30 jobs of 200 at 0, tenant B's one job of 200 at 1 s; 64 × 100 ms, depth 80."""
    trace: list[TraceEntry] = [(0.0, 200, f"tenant-a/j{i}") for i in range(30)]
    trace.append((1.0, 200, "tenant-b/class"))
    engine = {"concurrency": 64, "delay_s": 0.1, "depth": 80}
    by_tenant = completion_times_s(trace, SchedulingPolicy.FAIR, **engine)
    one_pool = completion_times_s(trace, SchedulingPolicy.FAIR, by_tenant=False, **engine)
    issue12 = completion_times_s(trace, SchedulingPolicy.FAIR, rule=Rule.FIXED_SHARE, **engine)
    # One pool: B's items are the last of 6200, which end with the 97th round at 9.7 s.
    assert one_pool[-1] == pytest.approx(8.7) and issue12[-1] == pytest.approx(8.7)
    # By tenant: half the dispatches from 1 s; 200 items at 32 a round, behind the 80 already sent.
    assert by_tenant[-1] == pytest.approx(0.8)
    assert max(by_tenant[:-1]) == pytest.approx(9.7)  # the engine is never idle: A ends when all of it ends


def test_inside_a_tenant_the_class_goes_at_full_rate_while_the_fixed_split_gave_it_a_third() -> None:
    trace: list[TraceEntry] = [(0.0, 2000, "s/big1"), (0.0, 2000, "s/big2"), (1.0, 200, "s/class")]
    engine = {"concurrency": 64, "delay_s": 0.1, "depth": 80}
    fifo = completion_times_s(trace, SchedulingPolicy.FIFO, **engine)
    consumer = completion_times_s(trace, SchedulingPolicy.FAIR, oldest_share=0.7, **engine)
    fixed = completion_times_s(trace, SchedulingPolicy.FAIR, rule=Rule.FIXED_SHARE, **engine)
    assert alone_s(200, **ENGINE_100MS) == pytest.approx(0.4)
    assert consumer[2] == pytest.approx(0.5)  # behind the 80 items already in the engine, then 4 rounds
    assert fixed[2] == pytest.approx(1.1)  # a third of the dispatches
    assert fifo[2] == pytest.approx(5.6)
    assert consumer[0] / fifo[0] == pytest.approx(3.5 / 3.2)  # the big job pays the class's 200 items

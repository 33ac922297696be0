"""B11: one school's class behind another tenant's flood, fair by tenant vs one pool; and inside a tenant.

**Between tenants** (issue 20's case). Fake engine with a GPU-like batch
(64 at a time, 100 ms each: an ideal 640 items/s; MAX_NUM_SEQS 64, so the
scheduler's depth is derived as in production). Tenant A, a platform,
produces 30 jobs of 200 items at once (``tenant-a/...``); a second later
tenant B, a school, produces one job of 200 (``tenant-b/...``). Arms:

- ``by tenant``: the consumer's default (``SCHEDULING_POLICY=fair``);
- ``one pool``: ``SCHEDULER_BY_TENANT=false``, every job in one pool as
  before tenants. On this trace it is the policy of issue 12 too: the jobs
  are of equal size, so both rules serve A's older jobs first (the trace
  model, below, replays issue 12's rule to show it);
- ``alone``: B's job with the engine to itself.

Figures: B's completion time (produced -> its ``complete`` read) against
``alone``, and all 31 jobs' items over first produce -> last ``complete``
against the engine's ideal.

**Inside a tenant** (issue 20, item 5): one school produces two jobs of
2000 items, and a second later a class of 200. Arms ``fair`` and ``fifo``;
the class against ``alone`` (the same 200-item job), each big job against
its own ``fifo`` time.

``bench/trace_model.py`` replays both traces on a model of the same engine,
with the consumer's ``Picker`` and with issue 12's fixed split, for the
figures the consumer no longer runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.b6_small_behind_big import FakeGpu, TraceJob, run_trace
from bench.broker_io import KafkaTarget
from bench.common import BenchResult, Scale, median
from bench.trace_model import Rule, TraceEntry, alone_s, completion_times_s
from consumer.settings import SchedulingPolicy, Settings

ID = "B11"
WHAT = (
    "tenant A: 30 jobs × 200 items; tenant B: one job of 200 a second later (fake engine 64 × 100 ms),"
    " fair by tenant vs one pool; inside a tenant: 200 items 1 s behind 2 × 2000"
)
TARGET_B_STRETCH, TARGET_THROUGHPUT = 2.5, 0.95
TARGET_CLASS_STRETCH, TARGET_BIG_SLOWDOWN = 5.0, 1.5
TARGET = (
    f"B ≤ {TARGET_B_STRETCH}× alone; throughput ≥ {TARGET_THROUGHPUT} of ideal; inside a tenant: the class"
    f" ≤ {TARGET_CLASS_STRETCH:.0f}× alone, big jobs ≤ {TARGET_BIG_SLOWDOWN}× fifo"
)

BY_TENANT, ONE_POOL, ALONE, FAIR, FIFO = "by tenant", "one pool", "alone", "fair", "fifo"


@dataclass(frozen=True, slots=True)
class Shape:
    gpu: FakeGpu
    flood_jobs: int  # tenant A's jobs
    job_items: int  # items in each of A's jobs and in B's (and the class inside a tenant)
    big_items: int  # inside a tenant: the two big jobs
    late_s: float  # B (and the class) comes this long after the rest


def _shape(scale: Scale) -> Shape:
    if scale.name == "full":
        return Shape(FakeGpu(0.1, 64), 30, 200, 2000, 1.0)
    return Shape(FakeGpu(0.02, 16), 6, 20, 200, 0.05)


def tenants_trace(tag: str, shape: Shape) -> list[TraceJob]:
    """A's flood at 0, B's one job at ``late_s``: B's is last."""
    flood = [TraceJob(0.0, f"tenant-a/{tag}-j{i}", shape.job_items) for i in range(shape.flood_jobs)]
    return [*flood, TraceJob(shape.late_s, f"tenant-b/{tag}-class", shape.job_items)]


def within_trace(tag: str, shape: Shape) -> list[TraceJob]:
    """One tenant: two big jobs at 0, the class at ``late_s``: the class is last."""
    bigs = [TraceJob(0.0, f"school-9/{tag}-big{i}", shape.big_items) for i in range(2)]
    return [*bigs, TraceJob(shape.late_s, f"school-9/{tag}-class", shape.job_items)]


def _entries(jobs: list[TraceJob]) -> list[TraceEntry]:
    return [(job.at_s, job.items, job.job_id) for job in jobs]


def model_figures(shape: Shape) -> dict[str, float]:
    """The trace model's figures for both traces (virtual time: exact)."""
    gpu = shape.gpu
    share = Settings(_env_file=None).scheduler.scheduler_oldest_share  # type: ignore[call-arg]
    alone = alone_s(shape.job_items, concurrency=gpu.concurrency, delay_s=gpu.delay_s)
    tenants = _entries(tenants_trace("m", shape))
    within = _entries(within_trace("m", shape))

    def times(
        trace: list[TraceEntry],
        policy: SchedulingPolicy = SchedulingPolicy.FAIR,
        rule: Rule = Rule.CONSUMER,
        by_tenant: bool = True,
    ) -> list[float]:
        # Issue 12's rules ran at its default share, 0.67; the consumer's at today's.
        oldest_share = share if rule is Rule.CONSUMER else 0.67
        return completion_times_s(
            trace, policy, concurrency=gpu.concurrency, delay_s=gpu.delay_s, depth=gpu.depth,
            oldest_share=oldest_share, rule=rule, by_tenant=by_tenant,
        )  # fmt: skip

    by_tenant = times(tenants)
    pool = times(tenants, by_tenant=False)
    fixed = times(tenants, rule=Rule.FIXED_SHARE)
    w_fair = times(within)
    w_fixed = times(within, rule=Rule.FIXED_SHARE)
    w_las = times(within, rule=Rule.LEAST_SERVED)
    w_fifo = times(within, SchedulingPolicy.FIFO)
    return {
        "b_by_tenant": by_tenant[-1] / alone,
        "b_one_pool": pool[-1] / alone,
        "b_issue12": fixed[-1] / alone,
        "class_fair": w_fair[-1] / alone,
        "class_issue12": w_fixed[-1] / alone,
        "class_least_served": w_las[-1] / alone,
        "big_fair": max(w_fair[i] / w_fifo[i] for i in range(2)),
        "big_issue12": max(w_fixed[i] / w_fifo[i] for i in range(2)),
        "big_least_served": max(w_las[i] / w_fifo[i] for i in range(2)),
    }


async def run(kafka: KafkaTarget, scale: Scale) -> BenchResult:
    shape = _shape(scale)
    gpu = shape.gpu
    runs: dict[str, list[float]] = {
        name: []
        for name in ("b_alone", "b_tenant", "b_pool", "tp_tenant", "tp_pool", "class_fair", "class_fifo", "big_fair")
    }
    details: list[str] = []
    fair, fifo = SchedulingPolicy.FAIR, SchedulingPolicy.FIFO
    for rep in range(scale.reps):
        tag = f"b11-r{rep}"
        # Arms in a different order every repetition, so drift favours none.
        arms = [ALONE, BY_TENANT, ONE_POOL, FAIR, FIFO]
        arms = arms[rep % len(arms) :] + arms[: rep % len(arms)]
        bigs_fair: list[float] = []
        bigs_fifo: list[float] = []
        line: list[str] = []
        for arm in arms:
            if arm == ALONE:
                alone = [TraceJob(0.0, f"tenant-b/{tag}-alone", shape.job_items)]
                trace = await run_trace(kafka, fair, alone, gpu)
                runs["b_alone"].append(trace.latency_s[alone[0].job_id])
                line.append(f"alone {runs['b_alone'][-1]:.2f} s")
            elif arm in (BY_TENANT, ONE_POOL):
                jobs = tenants_trace(f"{tag}-{arm.replace(' ', '')}", shape)
                trace = await run_trace(kafka, fair, jobs, gpu, SCHEDULER_BY_TENANT=arm == BY_TENANT)
                key = "tenant" if arm == BY_TENANT else "pool"
                runs[f"b_{key}"].append(trace.latency_s[jobs[-1].job_id])
                runs[f"tp_{key}"].append(trace.items / trace.span_s / gpu.ideal_items_per_s)
                line.append(f"{arm}: B {runs[f'b_{key}'][-1]:.2f} s, all at {runs[f'tp_{key}'][-1]:.3f} of ideal")
            else:
                policy = fair if arm == FAIR else fifo
                jobs = within_trace(f"{tag}-{arm}", shape)
                trace = await run_trace(kafka, policy, jobs, gpu)
                runs[f"class_{arm}"].append(trace.latency_s[jobs[-1].job_id])
                (bigs_fair if arm == FAIR else bigs_fifo).extend(trace.latency_s[j.job_id] for j in jobs[:2])
                bigs = ", ".join(f"{trace.latency_s[j.job_id]:.1f}" for j in jobs[:2])
                line.append(f"inside a tenant {arm}: class {runs[f'class_{arm}'][-1]:.2f} s, big {bigs} s")
            print(f"  B11 rep {rep + 1}/{scale.reps}: {line[-1]}", flush=True)
        # In order of completion: the two big jobs are produced at once, so which one the consumer
        # admits first (and serves first, in both arms) depends on the partitions, not on the policy.
        pairs = zip(sorted(bigs_fair), sorted(bigs_fifo), strict=True)
        runs["big_fair"].append(max(fair_s / fifo_s for fair_s, fifo_s in pairs))
        details.append("; ".join(line))

    alone_s_ = median(runs["b_alone"])
    b_tenant, b_pool = median(runs["b_tenant"]), median(runs["b_pool"])
    tp_tenant, tp_pool = median(runs["tp_tenant"]), median(runs["tp_pool"])
    class_fair, class_fifo = median(runs["class_fair"]), median(runs["class_fifo"])
    big_fair = median(runs["big_fair"])
    b_stretch, class_stretch = b_tenant / alone_s_, class_fair / alone_s_
    model = model_figures(shape)
    return BenchResult(
        id=ID,
        what=WHAT
        if scale.name == "full"
        else f"{WHAT} (smoke: {shape.flood_jobs} × {shape.job_items}; 2 × {shape.big_items};"
        f" {gpu.concurrency} × {gpu.delay_s * 1000:.0f} ms)",
        result=f"B **{b_tenant:.2f} s = {b_stretch:.1f}× alone** ({alone_s_:.2f} s) by tenant vs {b_pool:.2f} s"
        f" ({b_pool / alone_s_:.1f}×) in one pool; all at **{tp_tenant:.3f}** of ideal (one pool {tp_pool:.3f});"
        f" inside a tenant: class **{class_stretch:.1f}× alone** ({class_fair:.2f} s; fifo {class_fifo:.2f} s),"
        f" slowest big job **{big_fair:.2f}×** fifo",
        target=TARGET,
        met=b_stretch <= TARGET_B_STRETCH
        and tp_tenant >= TARGET_THROUGHPUT
        and class_stretch <= TARGET_CLASS_STRETCH
        and big_fair <= TARGET_BIG_SLOWDOWN,
        figures={
            "b_alone_s": alone_s_,
            "b_by_tenant_s": b_tenant,
            "b_one_pool_s": b_pool,
            "b_stretch": b_stretch,
            "throughput_share": tp_tenant,
            "one_pool_throughput_share": tp_pool,
            "class_fair_s": class_fair,
            "class_fifo_s": class_fifo,
            "class_stretch": class_stretch,
            "big_slowdown": big_fair,
            **{f"model_{name}": value for name, value in model.items()},
        },
        details=details,
        notes=[
            f"Ideal = {gpu.concurrency} / {gpu.delay_s} s = {gpu.ideal_items_per_s:.0f} items/s; MAX_NUM_SEQS"
            f" {gpu.concurrency} (engine depth {gpu.depth}); stretch = time / B's job alone (measured);"
            " the slowest big job is the worst fair/fifo ratio of a repetition (the first big job to end against"
            " the first, the second against the second), median over repetitions.",
            "Model (`bench/trace_model.py`, same engine, x its time alone): B"
            f" {model['b_by_tenant']:.1f}× by tenant, {model['b_one_pool']:.1f}× in one pool,"
            f" {model['b_issue12']:.1f}× with issue 12's rule; the class inside a tenant {model['class_fair']:.1f}×"
            f" (big jobs {model['big_fair']:.2f}× fifo) vs issue 12's fixed split {model['class_issue12']:.1f}×"
            f" ({model['big_issue12']:.2f}×) and least-served below the oldest {model['class_least_served']:.1f}×"
            f" ({model['big_least_served']:.2f}×).",
        ],
    )

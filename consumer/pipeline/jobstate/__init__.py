"""Job state that outlives a process: item-level progress and job ids as idempotency keys.

Where it lives: a compacted topic (``KAFKA_CHECKPOINTS_TOPIC``, Kafka
Streams' changelog pattern), partitioned like the requests topic and keyed
by ``job_id``; one record per job (``record.JobState``), rewritten before
offsets are committed, on revoke, and when the job ends. The other anchor,
Confluent parallel-consumer's completed-offset bitmap in the offset commit's
metadata, was rejected: the embedded broker accepts that metadata and reads
it back empty (so it could not be tested here), the metadata is capped at
4 KB by default, and it cannot remember a job after its offset is committed,
which idempotent job ids need.

    record (the record, its wire form) -> plan (what a request gets, pure)
    -> store (the topic) -> ledger (the app's door: plan, track runs, save)
"""

from consumer.pipeline.jobstate.ledger import Lease, Ledger, Run
from consumer.pipeline.jobstate.plan import Action, Plan, plan
from consumer.pipeline.jobstate.record import JobState, Progress, UnknownSchemaVersion, fingerprint
from consumer.pipeline.jobstate.store import JobStateStore

__all__ = [
    "Action", "JobState", "JobStateStore", "Lease", "Ledger", "Plan", "Progress", "Run",
    "UnknownSchemaVersion", "fingerprint", "plan",
]  # fmt: skip

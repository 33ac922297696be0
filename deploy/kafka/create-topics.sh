#!/bin/sh
# One-shot topic creation for the compose stack (service `kafka-init`, in the
# apache/kafka image). Idempotent: existing topics are left as they are (to
# change one, `kafka-configs.sh --alter --entity-type topics ...`).
# Topic names come from the variables the consumer reads (.env.example, .env).
#
# Partitions: requests bound the number of consumers (one per GPU) that can
# share the load, so 12 leaves room to scale out; results and progress are
# keyed by job_id like requests. Retention, the stated time every record is
# kept (docs/privacy.md lists them): requests a week (replays after an
# incident), results two weeks (readers that fell behind), progress a day
# (live bars only), dead letters no longer than the requests they hold
# (KAFKA_DLT_RETENTION_MS, default the requests topic's), cancel commands a
# day (CANCEL_TTL_S), teachers' corrections as long as the results they
# correct, job state JOB_ID_RETENTION_S after a job ends, decision records
# (no text, no name) DECISIONS_RETENTION_MS (183 days: the EU AI Act's six
# months for a high-risk system's logs, Art. 19 and 26(6)).
#
# Retention that holds. Kafka deletes whole segments, and only once the
# newest record in one is older than retention.ms, at the broker's next
# check (log.retention.check.interval.ms, 5 minutes by default). A segment
# takes records for at most segment.ms after its first one (the default is
# 7 days: a "1-day" topic kept data for ~8), so a record written at t is in
# a segment whose newest record is older than t + segment.ms, and is gone by
#     t + retention.ms + segment.ms + check interval.
# segment.ms = retention.ms / 10 - check interval makes that at most 1.1 x
# the stated retention (tests/deploy/test_privacy.py runs this script and
# checks every topic). message.timestamp.type=LogAppendTime: retention
# counts from the broker's clock, not from a producer's timestamp (one set
# in the future would keep its record for ever). segment.bytes 256 MiB (the
# default is 1 GiB; at least max.message.bytes): disk is freed in smaller
# steps; the time bound does not depend on it. Deleted segments' files are
# removed file.delete.delay.ms (1 minute) later; nothing reads them meanwhile.
#
# Job state is compacted: a job's record goes when the consumer writes its
# tombstone (JOB_ID_RETENTION_S after the job ends, or on erasure), and the
# value it replaces is cleaned once the tombstone's segment is closed and
# the cleaner runs: segment.ms and max.compaction.lag.ms bound both, with
# the same rule. The tombstone (a job_id, no student data) stays
# delete.retention.ms (a day) so that a consumer reading the partition sees it.
# max.message.bytes: a job of 2000 long texts is tens of MB; the DLT keeps
# the rejected request whole.
set -eu

bootstrap="${KAFKA_BOOTSTRAP_SERVERS:-kafka:9092}"
max_bytes="${KAFKA_MAX_MESSAGE_BYTES:-16777216}"
replication="${REPLICATION_FACTOR:-1}"
kafka_topics="${KAFKA_TOPICS_SH:-/opt/kafka/bin/kafka-topics.sh}"
check_ms="${LOG_RETENTION_CHECK_INTERVAL_MS:-300000}"  # the broker's log.retention.check.interval.ms
day_ms=86400000
segment_bytes=$((max_bytes > 268435456 ? max_bytes : 268435456))

requests_ms=$((7 * day_ms))
results_ms=$((14 * day_ms))
progress_ms=$((1 * day_ms))
dlt_ms="${KAFKA_DLT_RETENTION_MS:-$requests_ms}"
control_ms=$((1 * day_ms))
corrections_ms=$results_ms
job_id_retention_s="${JOB_ID_RETENTION_S:-604800}"
job_state_ms=$((${job_id_retention_s%%.*} * 1000))  # a float setting: whole seconds
decisions_ms="${DECISIONS_RETENTION_MS:-15811200000}"  # 183 days
if [ "$dlt_ms" -gt "$requests_ms" ]; then
    echo "create-topics: KAFKA_DLT_RETENTION_MS=$dlt_ms keeps rejected requests longer than the requests topic ($requests_ms)" >&2
fi

segment_ms() {  # retention_ms -> the segment.ms that keeps deletion within 1.1 x retention
    segment=$(($1 / 10 - check_ms))
    if [ "$segment" -lt 60000 ]; then
        echo "create-topics: a retention of $1 ms is too short to bound within 10% (check interval $check_ms ms)" >&2
        exit 1
    fi
    echo "$segment"
}

# Refuse before creating anything: every retention must be boundable.
for retention in "$requests_ms" "$results_ms" "$progress_ms" "$dlt_ms" "$control_ms" "$corrections_ms" \
    "$job_state_ms" "$decisions_ms"; do
    segment_ms "$retention" >/dev/null
done

create() {  # name partitions retention_ms
    segment=$(segment_ms "$3")
    "$kafka_topics" --bootstrap-server "$bootstrap" --create --if-not-exists \
        --topic "$1" --partitions "$2" --replication-factor "$replication" \
        --config "retention.ms=$3" --config "segment.ms=$segment" --config "segment.bytes=$segment_bytes" \
        --config message.timestamp.type=LogAppendTime --config "max.message.bytes=$max_bytes"
}

create "${KAFKA_REQUESTS_TOPIC:-evaluation.requests}" 12 "$requests_ms"
create "${KAFKA_RESULTS_TOPIC:-evaluation.results}" 12 "$results_ms"
create "${KAFKA_PROGRESS_TOPIC:-evaluation.progress}" 12 "$progress_ms"
create "${KAFKA_DLT_TOPIC:-evaluation.requests.DLT}" 3 "$dlt_ms"
# 1.1: cancel commands, read whole by every consumer (a day is CANCEL_TTL_S).
create "${KAFKA_CONTROL_TOPIC:-evaluation.control}" 3 "$control_ms"
# 1.2: teachers' corrections (keyed by job_id like the results they correct),
# and the corrections that could not be read.
create "${KAFKA_CORRECTIONS_TOPIC:-evaluation.corrections}" 12 "$corrections_ms"
create "${KAFKA_CORRECTIONS_TOPIC:-evaluation.corrections}.DLT" 3 "$dlt_ms"
# 1.3: decision records, keyed by job_id (texteval explain reads the one
# partition a job maps to); kept for appeals, under the same 1.1 x rule.
create "${KAFKA_DECISIONS_TOPIC:-evaluation.decisions}" 12 "$decisions_ms"
# 1.3 (shadow grading, docs/models.md): a candidate model's results, as the
# live results (id_alumno, grade, feedback) and kept as long; read only by
# `texteval release-check`. Created here so that a shadow started later
# never writes to a topic made with the broker's defaults (no bound).
create "${KAFKA_SHADOW_RESULTS_TOPIC:-evaluation.results.shadow}" 12 "$results_ms"
# Job state: compacted, one record per job, and exactly as many partitions as
# the requests topic (partition p holds the jobs of requests partition p; the
# consumer refuses to start otherwise). A shadow keeps its own, by the same rule.
create_state() {  # name
    segment=$(segment_ms "$job_state_ms")
    "$kafka_topics" --bootstrap-server "$bootstrap" --create --if-not-exists \
        --topic "$1" --partitions 12 --replication-factor "$replication" \
        --config cleanup.policy=compact --config "segment.ms=$segment" --config "max.compaction.lag.ms=$segment" \
        --config "segment.bytes=$segment_bytes" --config "delete.retention.ms=$day_ms" \
        --config message.timestamp.type=LogAppendTime --config "max.message.bytes=$max_bytes"
}
create_state "${KAFKA_CHECKPOINTS_TOPIC:-evaluation.checkpoints}"
create_state "${KAFKA_SHADOW_CHECKPOINTS_TOPIC:-evaluation.checkpoints.shadow}"

"$kafka_topics" --bootstrap-server "$bootstrap" --list

#!/bin/sh
# One-shot topic creation for the compose stack (service `kafka-init`, in the
# apache/kafka image). Idempotent: existing topics are left as they are.
# Topic names come from the variables the consumer reads (.env.example, .env).
#
# Partitions: requests bound the number of consumers (one per GPU) that can
# share the load, so 12 leaves room to scale out; results and progress are
# keyed by job_id like requests. Retention: requests a week (replays after an
# incident), results two weeks (readers that fell behind), progress a day
# (live bars only), dead letters a month (someone must look at them).
# max.message.bytes: a job of 2000 long texts is tens of MB; the DLT keeps
# the rejected request whole.
set -eu

bootstrap="${KAFKA_BOOTSTRAP_SERVERS:-kafka:9092}"
max_bytes="${KAFKA_MAX_MESSAGE_BYTES:-16777216}"
replication="${REPLICATION_FACTOR:-1}"
day_ms=86400000

create() {  # name partitions retention_days
    /opt/kafka/bin/kafka-topics.sh --bootstrap-server "$bootstrap" --create --if-not-exists \
        --topic "$1" --partitions "$2" --replication-factor "$replication" \
        --config "retention.ms=$(($3 * day_ms))" --config "max.message.bytes=$max_bytes"
}

create "${KAFKA_REQUESTS_TOPIC:-evaluation.requests}" 12 7
create "${KAFKA_RESULTS_TOPIC:-evaluation.results}" 12 14
create "${KAFKA_PROGRESS_TOPIC:-evaluation.progress}" 12 1
create "${KAFKA_DLT_TOPIC:-evaluation.requests.DLT}" 3 30
# 1.1: cancel commands (read whole by every consumer; a day is CANCEL_TTL_S),
# and job state: compacted, one record per job, and exactly as many
# partitions as the requests topic (partition p holds the jobs of requests
# partition p; the consumer refuses to start otherwise).
create "${KAFKA_CONTROL_TOPIC:-evaluation.control}" 3 1
/opt/kafka/bin/kafka-topics.sh --bootstrap-server "$bootstrap" --create --if-not-exists \
    --topic "${KAFKA_CHECKPOINTS_TOPIC:-evaluation.checkpoints}" --partitions 12 --replication-factor "$replication" \
    --config cleanup.policy=compact --config "max.message.bytes=$max_bytes"

/opt/kafka/bin/kafka-topics.sh --bootstrap-server "$bootstrap" --list

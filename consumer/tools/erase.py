"""``texteval erase JOB_ID``: erase a job's data (contract 1.2, "Erasure").

Produces the erase command to the control topic and the job's ``erased``
decision record (contract 1.3) to the decisions topic, and prints what that
removes at once, what stays in the topics until retention removes it, and
that the job's decision records stay (no text, no name) while ``agreement``
and ``export-training`` skip the job (``consumer.erasure``: the same answer
as ``DELETE /jobs/{id}?erase=true``).

The command says on whose behalf it speaks, because the consumers and
gateways honour it only for a job of that tenant or from an operator: for a
job of a tenant (``school-42/...``) pass ``--tenant school-42`` or
``--admin``. Erasure cannot be undone, so the command line does not guess;
a ``--tenant`` that does not own the job is refused here rather than
produced as a command every reader would ignore.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING

from consumer.commands import control_producer
from consumer.erasure import erase_answer, erase_command, honoured, produce_erase
from consumer.tenants import tenant_of

if TYPE_CHECKING:
    from consumer.settings import Settings


async def erase_job(settings: Settings, job_id: str, *, tenant: str | None, admin: bool) -> int:
    from pydantic import ValidationError

    from consumer.kafka import check_connection, client_kwargs, ensure_topics

    try:
        command = erase_command(job_id, tenant=tenant, admin=admin)
    except ValidationError:
        print("erase: not a valid job_id or tenant (1-128 characters of A-Z a-z 0-9 . _ : / -)", file=sys.stderr)
        return 2
    if not honoured(command):
        owner = tenant_of(job_id)
        print(f"erase: {job_id} belongs to tenant {owner}: pass --tenant {owner} or --admin "
              "(a command for another tenant's job is ignored)", file=sys.stderr)  # fmt: skip
        return 2
    await check_connection(settings)  # KafkaSetupError: said by the command line, exit 2
    if settings.kafka.create_topics:
        topics = [settings.kafka.control_topic, settings.kafka.decisions_topic]
        await ensure_topics(
            settings.kafka.bootstrap_servers,
            dict.fromkeys(topics, settings.kafka.topic_partitions),
            **client_kwargs(settings),
        )
    async with control_producer(settings) as producer:
        await produce_erase(producer, settings, command)
    print(json.dumps(erase_answer(settings, job_id, time.time()), indent=2, ensure_ascii=False))
    return 0

"""Who owns a job (contract 1.2, "Tenants").

A job's tenant is the first ``/``-separated segment of its ``job_id``
(``school-42/term-1/batch-7`` belongs to ``school-42``); an id without ``/``
belongs to no tenant and only operators (admin keys) see it. The rule lives
here, at the ground layer, because the gateway (who may see a job), the
scheduler (whose share a job draws from) and the control reader (who may
cancel it) must all read it the same way.
"""

from __future__ import annotations

SEPARATOR = "/"


def tenant_of(job_id: str) -> str | None:
    """The tenant that owns ``job_id``, or None for a tenant-less id."""
    head, sep, _ = job_id.partition(SEPARATOR)
    return head if sep and head else None


def scoped_job_id(tenant: str, client_job_id: str) -> str:
    """The full id a tenant's job is written under: ``<tenant>/<client id>``."""
    return f"{tenant}{SEPARATOR}{client_job_id}"

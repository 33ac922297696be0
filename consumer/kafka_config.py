"""Connection settings shared by every aiokafka client (consumer, producer, admin)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from consumer.settings import Settings

_TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `AIOKafkaConsumer`, `AIOKafkaProducer` and
    `AIOKafkaAdminClient`: bootstrap servers, security protocol, SASL and TLS.

    SASL keys appear only when `KAFKA_SASL_MECHANISM` is set, so aiokafka's
    own defaults hold otherwise. With SSL or SASL_SSL the TLS context checks
    the broker's certificate against `KAFKA_SSL_CAFILE` (or the system CAs
    when unset) and its hostname.
    """
    protocol = settings.kafka_security_protocol.upper()
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": protocol,
        "ssl_context": None,
    }
    if protocol in _TLS_PROTOCOLS:
        from aiokafka.helpers import create_ssl_context  # aiokafka is heavy to import

        kwargs["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_sasl_mechanism:
        password = settings.kafka_sasl_password
        kwargs |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism.upper(),
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": password.get_secret_value() if password is not None else None,
        }
    return kwargs

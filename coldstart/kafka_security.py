"""Kafka client security from :class:`Settings`, in the shape each client library wants.

One place turns ``COLDSTART_KAFKA_SECURITY_PROTOCOL`` / ``_SASL_MECHANISM`` / ``_SASL_USERNAME`` /
``_SASL_PASSWORD`` / ``_SSL_CAFILE`` into keyword arguments, so every client (the Faust app, the aiokafka
readers and producers of worker and trainer, kafka-python's admin) connects the same way. Faust takes
the same values as credentials (``streams/app.py``).

>>> from coldstart.settings import Settings
>>> aiokafka_options(Settings())
{}
>>> s = Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-512",
...              kafka_sasl_username="coldstart", kafka_sasl_password="pw")
>>> sorted(kafka_python_options(s).items())
[('sasl_mechanism', 'SCRAM-SHA-512'), ('sasl_plain_password', 'pw'), ('sasl_plain_username', 'coldstart'), ('security_protocol', 'SASL_PLAINTEXT')]
>>> aiokafka_options(Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="GSSAPI"))
Traceback (most recent call last):
...
coldstart.errors.ConfigError: COLDSTART_KAFKA_SASL_MECHANISM='GSSAPI' is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
"""

from __future__ import annotations

import ssl
from typing import Any

from coldstart.errors import ConfigError
from coldstart.settings import Settings

PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SSL", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _checked(s: Settings) -> tuple[bool, bool]:
    """(uses SASL, uses TLS), or ConfigError naming the variable to fix."""
    if s.kafka_security_protocol not in PROTOCOLS:
        raise ConfigError(f"COLDSTART_KAFKA_SECURITY_PROTOCOL={s.kafka_security_protocol!r} is not one of "
                          f"{', '.join(PROTOCOLS)}")
    sasl = s.kafka_security_protocol.startswith("SASL_")
    if sasl and s.kafka_sasl_mechanism not in MECHANISMS:
        raise ConfigError(f"COLDSTART_KAFKA_SASL_MECHANISM={s.kafka_sasl_mechanism!r} is not one of "
                          f"{', '.join(MECHANISMS)}")
    if sasl and not (s.kafka_sasl_username and s.kafka_sasl_password):
        raise ConfigError(f"{s.kafka_security_protocol} needs COLDSTART_KAFKA_SASL_USERNAME and "
                          "COLDSTART_KAFKA_SASL_PASSWORD")
    return sasl, s.kafka_security_protocol.endswith("SSL")


def ssl_context(s: Settings) -> ssl.SSLContext:
    """Server-verifying TLS context (the configured CA bundle, else the system's)."""
    return ssl.create_default_context(cafile=s.kafka_ssl_cafile or None)


def aiokafka_options(s: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka and kafka-python clients alike (empty for PLAINTEXT)."""
    sasl, tls = _checked(s)
    if not (sasl or tls):
        return {}
    options: dict[str, Any] = {"security_protocol": s.kafka_security_protocol}
    if sasl:
        options.update(sasl_mechanism=s.kafka_sasl_mechanism, sasl_plain_username=s.kafka_sasl_username,
                       sasl_plain_password=s.kafka_sasl_password)
    if tls:
        options["ssl_context"] = ssl_context(s)
    return options


# kafka-python's clients (``KafkaAdminClient``, ``KafkaProducer``) take the very same keywords.
kafka_python_options = aiokafka_options

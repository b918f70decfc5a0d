"""Every error a user of coldstart can meet, as one tree.

    ColdstartError
    ├── ConfigError          a setting is missing or wrong: the message names the flag/variable
    ├── BadEvent             an input event is malformed; ``reason`` is a short stable code (DLQ label)
    ├── DatasetMissing       a replay/eval file or folder is absent or unreadable
    ├── KafkaUnavailable     no broker answers at the configured bootstrap servers
    ├── ModelNotReady        the encoder or item index is not loaded yet
    └── ArtifactRefused      a registry artifact failed verification (checksum, load, smoke encode)

Errors from dependencies are converted where they enter (``raise ... from exc``), so callers handle
these types only.
"""

from __future__ import annotations


class ColdstartError(Exception):
    """Root of every coldstart error."""


class ConfigError(ColdstartError):
    """A setting is missing or invalid."""


class BadEvent(ColdstartError):
    """An input event cannot be used. ``reason`` is a short code used as the DLQ metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class DatasetMissing(ColdstartError):
    """A dataset path does not exist or cannot be read."""


class KafkaUnavailable(ColdstartError):
    """No Kafka broker answered."""


class ModelNotReady(ColdstartError):
    """The model (encoder or item index) is not loaded yet."""


class ArtifactRefused(ColdstartError):
    """A model artifact failed verification and was not loaded."""

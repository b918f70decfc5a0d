"""coldstart: real-time cold-start recommendations from Kafka search and click streams.

Stages live one per place: ``streams`` (Faust app: ingest, validate, batch, tables, web),
``model`` (encoder, importance, profile math, retrieval, registry), ``trainer`` (buffer, fine-tuning,
gate, publish). This package holds what ties them together: settings, errors, CLI, replay.
"""

__version__ = "0.1.0"

"""coldstart: real-time cold-start recommendations from Kafka search and click streams.

Stages live one per place: ``coldstart.streams`` (Faust app: ingest, validate, batch, tables, web),
``coldstart.model`` (encoder, importance, profile math, retrieval, registry), ``coldstart.trainer``
(buffer, fine-tuning, gate, publish), ``coldstart.bench`` (benchmarks); their folders sit at the top of
the repository and install under this namespace. This package holds what ties them together: the wire
contract (``contract``), settings, errors, the CLI and demo, replay, evaluation and the local toolkit.
"""

__version__ = "0.1.0"

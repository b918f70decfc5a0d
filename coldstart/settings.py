"""One frozen settings object, read once from ``COLDSTART_*`` environment variables and CLI flags.

Flags win over variables, variables over defaults. Nothing else in the code reads the environment.

>>> s = Settings.from_env({"COLDSTART_PARTITIONS": "2"}, web_port=7000)
>>> (s.partitions, s.web_port)
(2, 7000)
>>> Settings.from_env({"COLDSTART_DEVICE": "gpu"})
Traceback (most recent call last):
...
coldstart.errors.ConfigError: COLDSTART_DEVICE='gpu' is not a device: use auto, cpu, cuda or cuda:N
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coldstart.errors import ConfigError

PREFIX = "COLDSTART_"
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@dataclasses.dataclass(frozen=True)
class Settings:
    # Kafka
    bootstrap_servers: str = "127.0.0.1:9092"
    app_id: str = "coldstart"
    partitions: int = 4  # every user-keyed topic has this many, so one worker owns a user
    replication_factor: int = 1
    # Faust worker
    data_dir: Path = Path("var/worker")
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    batch_size: int = 512  # events per stream.take_events batch (bounds in-flight work)
    batch_within_s: float = 0.05  # max wait to fill a batch: the latency floor
    session_timeout_s: float = 60.0
    # Model
    model_path: str = ""  # empty: the packaged all-MiniLM-L6-v2 weights
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    embedding_cache_size: int = 100_000  # (model version, text) -> vector entries
    # Profiles
    recent_events: int = 20  # per user, bounded
    seen_event_ids: int = 256  # per user, for idempotency under at-least-once redelivery
    # Bounded state (issue 8): a user with no event for this long (in stream time: the newest event time
    # this worker applied, so a replayed log expires by its own clock) loses their profile; 0 = never.
    user_ttl_s: float = 90 * 86400.0
    # The profile table's RocksDB memory for the whole worker, all partitions together (issue 8; see
    # streams/store.py): Faust's defaults are a 2 GiB block cache and 3 x 64 MiB memtables *per partition*
    # with index and filter blocks outside any cache, so a worker's RSS grew with its users.
    rocksdb_block_cache_mb: int = 64  # data, index and filter blocks
    rocksdb_write_buffer_mb: int = 32  # all memtables
    expiry_every_s: float = 600.0  # how often each worker scans its partitions for inactive users
    half_life_s: float = 3600.0  # recency weighting of a user's events
    # Items
    item_queries: int = 16  # learned texts kept per item (catalogs without titles)
    max_items: int = 1_000_000
    # Registry / trainer
    registry_uri: str = "var/registry"
    buffer_dir: Path = Path("var/buffer")
    # Local Kafka (coldstart kafka start)
    kafka_version: str = "4.0.0"
    kafka_port: int = 9092
    kafka_dir: Path = Path("var/kafka")
    # Data
    shared_data: Path = Path("../shared/data")
    # Reliability (issue 8): time plausibility, stall detection, the advertised URL of this worker.
    min_event_ts: float = 946_684_800.0  # events dated before this (2000-01-01) are clock bugs; 0 = history
    max_future_skew_s: float = 86_400.0  # events dated further ahead of the wall clock are refused
    stall_after_s: float = 60.0  # /health is 503 when no batch completed this long while lag grows
    advertised_url: str = ""  # the URL other workers proxy to; empty: http://web_host:web_port
    # Security (issue 12). Secrets stay out of repr(), so a logged Settings never shows them.
    # HMAC key shared by trainer and workers for model.versions; empty = the public dev key (warned).
    announce_secret: str = dataclasses.field(default="", repr=False)
    # When set, GET /users/... needs "Authorization: Bearer <token>" (health and metrics stay open).
    api_token: str = dataclasses.field(default="", repr=False)
    # Issue 11 (real time on one worker). Torch intra-op threads in the worker: with the broker beside
    # it on 2 shared cores, a second OpenMP thread waits on a descheduled peer and small per-batch ops
    # run 10-40x slower (profile recomputation 36 ms vs 0.9 ms; the encoder too). 0 = torch's default.
    torch_threads: int = 1
    # Importance estimators and bot control (issue 10)
    importance_estimator: str = "loss_logn"  # uniform|loss|loss_logn|loss_quantile|grad_norm (model/estimators.py)
    anomaly_guard: bool = True  # flag bot-like users' events to the DLQ before they are applied
    # Kafka client security, passed to every client (Faust, aiokafka, kafka-python; kafka_security.py).
    kafka_security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SASL_PLAINTEXT | SSL | SASL_SSL
    kafka_sasl_mechanism: str = "PLAIN"  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = dataclasses.field(default="", repr=False)
    kafka_ssl_cafile: str = ""  # CA bundle for SSL/SASL_SSL; empty = the system's trust store

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build settings from ``COLDSTART_<FIELD>`` variables, then ``overrides`` (None = unset)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(PREFIX + field.name.upper())
            if raw is not None and raw != "":
                values[field.name] = _coerce(field, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown settings: {sorted(unknown)}")
        for field in dataclasses.fields(cls):
            if field.name in values and not isinstance(values[field.name], str):
                values[field.name] = _coerce(field, str(values[field.name]))
        return cls(**values)

    def __post_init__(self) -> None:
        # Checked where it is read, so a typo fails at start-up with the variable's name, not deep in torch.
        if not DEVICE.fullmatch(self.device):
            raise ConfigError(f"{PREFIX}DEVICE={self.device!r} is not a device: use auto, cpu, cuda or cuda:N")
        for name in ("partitions", "batch_size", "recent_events", "seen_event_ids", "max_items",
                     "rocksdb_block_cache_mb", "rocksdb_write_buffer_mb"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{PREFIX}{name.upper()} must be at least 1, got {getattr(self, name)}")
        if self.user_ttl_s < 0 or self.expiry_every_s <= 0:
            raise ConfigError(f"{PREFIX}USER_TTL_S must be >= 0 (0 = never) and {PREFIX}EXPIRY_EVERY_S > 0")
        from coldstart.model.estimators import check_estimator  # the model layer owns the names

        check_estimator(self.importance_estimator, PREFIX + "IMPORTANCE_ESTIMATOR")

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    @property
    def kafka_broker(self) -> str:
        """The ``kafka://`` URL faust wants."""
        return ",".join(f"kafka://{hp.strip()}" for hp in self.bootstrap_servers.split(",") if hp.strip())


def _coerce(field: dataclasses.Field, raw: str) -> Any:
    kind = field.type if isinstance(field.type, str) else field.type.__name__
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if kind == "Path":
            return Path(raw)
        return raw
    except ValueError as exc:
        raise ConfigError(f"{PREFIX}{field.name.upper()}={raw!r} is not a valid {kind}") from exc

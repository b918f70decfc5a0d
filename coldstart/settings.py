"""One frozen settings object, read once from ``COLDSTART_*`` environment variables and CLI flags.

Flags win over variables, variables over defaults. Nothing else in the code reads the environment
(tests/test_packaging.py checks; the one exception is the fault tests' ``COLDSTART_CRASH_AT`` crash
point in :mod:`coldstart.failpoints`, a test hook rather than a setting).

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
class TrainerSettings:
    """The trainer's section, ``COLDSTART_TRAINER_<FIELD>`` (``coldstart trainer`` flags win)."""

    round_every_s: float = 600.0  # a round at least this often when new samples arrived
    round_min_samples: int = 2_000  # ... or as soon as this many new samples arrived
    min_train_samples: int = 64  # no round below this many buffered samples
    steps: int = 200
    batch_size: int = 32
    lr: float = 2e-5
    # weighted_loss with the rank_lfdr weights measured best (coldstart bench importance, both logs, 5 seeds,
    # 3 noise injections): under "importance" sampling the 1/(N p) correction undoes what a weight says.
    sampling: str = "weighted_loss"  # importance | weighted_loss | uniform (trainer/rounds.py)
    # Extra rows for cold items (< 3 clicks): pseudo-queries from their titles and/or contexts borrowed
    # from their nearest clicked items (model/augment.py). Off: in coldstart bench augment (both logs, 5 seeds)
    # no arm reached 1.10x Recall@10 on cold-item clicks (at most 1.02x on Amazon, 0.98-0.99x on Best Buy).
    augment: str = "off"  # off | pseudo | neighbours | both
    # The forward passes' arithmetic: auto (bfloat16 autocast on CUDA, float32 on a CPU) | float32 |
    # bfloat16 (on a CPU with AVX512-BF16 or AMX: 1.5-1.7x the samples/s, same holdout Recall@10;
    # trainer/rounds.py)
    precision: str = "auto"
    time_budget_s: float = 300.0
    holdout_fraction: float = 0.1
    max_holdout: int = 2_000
    tolerance: float = 0.005  # absolute recall@10 / ndcg@10 a candidate may lose and still ship ...
    # ... plus this many standard errors of the paired per-row difference on the same holdout
    # (trainer/gate.py): on a 86-row holdout one click is 0.012, more than the tolerance; 0 = tolerance alone.
    gate_z: float = 1.0
    buffer_max_bytes: int = 1 << 30
    buffer_max_age_s: float = 7 * 86_400.0
    keep_versions: int = 5
    poll_max_records: int = 5_000
    poll_timeout_s: float = 1.0
    seed: int = 0

    PREFIX = PREFIX + "TRAINER_"

    def __post_init__(self) -> None:
        from coldstart.trainer.rounds import PRECISIONS, SAMPLING_MODES  # the trainer owns the names

        if self.sampling not in SAMPLING_MODES:
            raise ConfigError(f"{self.PREFIX}SAMPLING={self.sampling!r} is not one of {', '.join(SAMPLING_MODES)} "
                              "(coldstart trainer --sampling)")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{self.PREFIX}PRECISION={self.precision!r} is not one of {', '.join(PRECISIONS)} "
                              "(coldstart trainer --precision)")
        from coldstart.model.augment import check_mode

        check_mode(self.augment, self.PREFIX + "AUGMENT")
        for name in ("round_min_samples", "min_train_samples", "steps", "batch_size", "max_holdout",
                     "keep_versions", "poll_max_records"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.PREFIX}{name.upper()} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.gate_z <= 5.0:
            raise ConfigError(f"{self.PREFIX}GATE_Z must be between 0 and 5 standard errors, got {self.gate_z}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ConfigError(f"{self.PREFIX}HOLDOUT_FRACTION must be between 0 and 1, got {self.holdout_fraction}")


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    """The evaluation's section, ``COLDSTART_EVAL_<FIELD>`` (``coldstart eval run`` flags win)."""

    k: int = 10  # list length scored (Recall@K, NDCG@K)
    n_boot: int = 1000  # bootstrap resamples for the intervals
    device: str = "cpu"  # of the in-process zero-shot baselines
    seed: int = 7  # of the site simulator, when it is the dataset
    # ``coldstart eval run --trainer`` (issue 9): a real trainer round every this many new training samples,
    # each of this many optimiser steps (0 = the trainer section's COLDSTART_TRAINER_STEPS, 200). CPU-sized
    # defaults: 30 steps of 32 samples take ~15 s on two busy cores; the rest of the round (learning rate,
    # batch, sampling, holdout and the gate's tolerance) is the trainer section's, as in production.
    trainer_round_samples: int = 1000
    trainer_steps: int = 30

    PREFIX = PREFIX + "EVAL_"

    def __post_init__(self) -> None:
        if self.k < 1 or self.n_boot < 1:
            raise ConfigError(f"{self.PREFIX}K and {self.PREFIX}N_BOOT must be at least 1, got {self.k}, {self.n_boot}")
        if self.trainer_round_samples < 1 or self.trainer_steps < 0:
            raise ConfigError(f"{self.PREFIX}TRAINER_ROUND_SAMPLES must be at least 1 and {self.PREFIX}TRAINER_STEPS "
                              f"at least 0, got {self.trainer_round_samples}, {self.trainer_steps}")
        if not DEVICE.fullmatch(self.device):
            raise ConfigError(f"{self.PREFIX}DEVICE={self.device!r} is not a device: use auto, cpu, cuda or cuda:N")

    def trainer_config(self, trainer: TrainerSettings) -> TrainerSettings:
        """The trainer section as ``--trainer`` runs it: a round every ``trainer_round_samples`` new samples
        (never on a timer, so a replay's rounds do not depend on the machine's speed), ``trainer_steps``.

        >>> EvaluationSettings(trainer_round_samples=50, trainer_steps=0).trainer_config(TrainerSettings()).steps
        200
        """
        return dataclasses.replace(trainer, round_min_samples=self.trainer_round_samples, round_every_s=1e12,
                                   steps=self.trainer_steps or trainer.steps)


SECTIONS = {"trainer": TrainerSettings, "evaluation": EvaluationSettings}  # nested sections of Settings, each with its own variable prefix
_NOT_READ = {*SECTIONS, "given"}  # fields of Settings that no variable sets


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
    batch_size: int = 512  # events per batch at most (bounds in-flight work)
    batch_within_s: float = 0.05  # the longest an event waits for company, counted from its arrival
    malloc_arenas: int = 2  # glibc malloc arenas in a worker (coldstart/memory.py); 0 = glibc's default
    # Freeze the objects alive once the worker is built out of the garbage collector's scans (coldstart/
    # memory.py freeze_startup_objects: a full collection walked them all, 0.2-0.4 s with the GIL held).
    gc_freeze: bool = True
    session_timeout_s: float = 60.0
    # Model
    model_path: str = ""  # empty: the packaged all-MiniLM-L6-v2 weights
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    embedding_cache_size: int = 100_000  # (model version, text) -> vector entries
    # The serving encoder's arithmetic: float32 | bfloat16 (opt-in, measured in model/encoder.py
    # and the README's performance section; the trainer's is COLDSTART_TRAINER_PRECISION).
    encoder_precision: str = "float32"
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
    ranker_save_every_s: float = 30.0  # the learned ranker's checkpoint in data_dir (a restart keeps it)
    # coldstart serve (streams/replica.py): the worker's ranker checkpoint the replica follows; empty:
    # data_dir/ranker.safetensors (run the replica with the worker's COLDSTART_DATA_DIR, or point here).
    serve_ranker_path: str = ""
    gauges_every_s: float = 5.0  # consumer lag (one ListOffsets call), ranker weights, RocksDB memory, GC pauses
    half_life_s: float = 3600.0  # recency weighting of a user's events
    # The learned ranker's steps (issues 9 and 11). One step reads every signal of every catalogue item
    # (~0.4 ms per click here, the largest stage of a batch); its 19 weights settle long before the stream
    # ends, so after the first RANKER_DENSE_STEPS steps only one click in RANKER_LEARN_EVERY teaches it,
    # picked by a hash of the event id (the same clicks in the live worker and in the evaluation). Every
    # click still joins the stream statistics. Measured in the README's performance section.
    ranker_learn_every: int = 4
    ranker_dense_steps: int = 1000
    # Load shedding, opt-in (issue 11): past the dense steps a batch takes at most this many ranker steps,
    # spread evenly over its teaching clicks; the rest are skipped (counted in ranker_steps_shed_total)
    # and still join the statistics. Under a backlog the batches fill to BATCH_SIZE events, and with 8 a
    # worker replayed Best Buy 12-17% faster but, applying a log in full batches, Recall@10 fell 0.555 ->
    # 0.525 on Best Buy (0.551 with 32): a shop that would rather catch up sooner than rank as well
    # meanwhile sets it. 0: no cap (the default).
    ranker_max_steps: int = 0
    # Learning rate of the ranker's per-item offsets (model/ranker.py, measured there); 0 turns them off.
    ranker_bias_lr: float = 0.3
    # Learning rate of the ranker's diagonal metric over the text vectors (model/ranker.py); 0 turns it
    # off. On by default since it measured ahead or level on every whole log (Amazon, Best Buy's two
    # tasks, shuffled titles) and through the live broker; figures in the README's quality section.
    ranker_metric_lr: float = 0.5
    # Items
    item_queries: int = 16  # learned texts kept per item (catalogs without titles)
    # Issue 11: from this many items with vectors, a request scores the candidates of a coarse index
    # (model/coarse.py: the items near the user's query vectors, every item a statistic names, the best
    # by popularity, newness and learned offset) instead of the whole catalogue; 0 = always the whole.
    # Below it nothing changes. Measured in the README's performance section.
    ann_min_items: int = 200_000
    ann_probe: int = 8  # groups probed per query vector (of ~sqrt(items), at most 1,024)
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
    # A click's weight = the probability that it is not a random item (model/importance.py rank_lfdr): the
    # only estimator that weighted injected noise below genuine clicks on both logs.
    importance_estimator: str = "rank_lfdr"  # uniform|loss|loss_logn|loss_quantile|grad_norm|rank_lfdr (model/estimators.py)
    anomaly_guard: bool = True  # flag bot-like users' events to the DLQ before they are applied
    # Issue 11: where the coarse index serves (ANN_MIN_ITEMS), a batch's importance is scored against the
    # items near each event's context and this many items drawn uniformly from the rest, each standing for
    # those it samples (streams/processor.py), not against every item (1.0 s a batch of 32 at 100k items,
    # 28 s a batch of 256 at 1M). Below the threshold every item is scored, as before.
    importance_sample: int = 4_096
    # Kafka client security, passed to every client (Faust, aiokafka, kafka-python; kafka_security.py).
    kafka_security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SASL_PLAINTEXT | SSL | SASL_SSL
    kafka_sasl_mechanism: str = "PLAIN"  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = dataclasses.field(default="", repr=False)
    kafka_ssl_cafile: str = ""  # CA bundle for SSL/SASL_SSL; empty = the system's trust store
    # Sections
    trainer: TrainerSettings = dataclasses.field(default_factory=TrainerSettings)
    evaluation: EvaluationSettings = dataclasses.field(default_factory=EvaluationSettings)
    # The top-level fields a variable or a flag set (from_env fills it): e.g. the demo starts its own
    # broker unless the bootstrap servers were given. Not a setting: never compared or handed on.
    given: frozenset[str] = dataclasses.field(default=frozenset(), compare=False, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build settings from ``COLDSTART_<FIELD>`` (and ``COLDSTART_<SECTION>_<FIELD>``) variables, then
        ``overrides`` (None = unset; a section takes a dict of its fields or the section itself)."""
        environ = os.environ if environ is None else environ
        values = _read(cls, PREFIX, environ, {k: v for k, v in overrides.items() if k not in SECTIONS})
        given = frozenset(values)
        for name, section in SECTIONS.items():
            override = overrides.get(name)
            if isinstance(override, section):
                values[name] = override
            else:
                values[name] = section(**_read(section, section.PREFIX, environ, override or {}))
        return cls(**values, given=given)

    def to_env(self) -> dict[str, str]:
        """Every setting as the ``COLDSTART_*`` variables that ``from_env`` reads back: how a parent hands
        its settings to a child process (secrets included: the child needs them; never log this dict).

        >>> env = Settings(partitions=2, trainer=TrainerSettings(steps=7)).to_env()
        >>> env["COLDSTART_PARTITIONS"], env["COLDSTART_TRAINER_STEPS"]
        ('2', '7')
        >>> Settings.from_env(env) == Settings(partitions=2, trainer=TrainerSettings(steps=7))
        True
        >>> sorted(Settings.from_env({"COLDSTART_PARTITIONS": "2"}, web_port=7000, device=None).given)
        ['partitions', 'web_port']
        """
        out: dict[str, str] = {}
        for obj, prefix in [(self, PREFIX)] + [(getattr(self, n), SECTIONS[n].PREFIX) for n in SECTIONS]:
            for field in dataclasses.fields(obj):
                if field.name not in _NOT_READ:
                    value = getattr(obj, field.name)
                    out[prefix + field.name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
        return out

    def __post_init__(self) -> None:
        # Checked where it is read, so a typo fails at start-up with the variable's name, not deep in torch.
        if not DEVICE.fullmatch(self.device):
            raise ConfigError(f"{PREFIX}DEVICE={self.device!r} is not a device: use auto, cpu, cuda or cuda:N")
        from coldstart.model.precisions import PRECISIONS  # the model layer owns the names

        if self.encoder_precision not in PRECISIONS:
            raise ConfigError(f"{PREFIX}ENCODER_PRECISION={self.encoder_precision!r} is not one of "
                              f"{', '.join(PRECISIONS)}")
        for name in ("partitions", "batch_size", "recent_events", "seen_event_ids", "max_items", "ranker_learn_every",
                     "rocksdb_block_cache_mb", "rocksdb_write_buffer_mb"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{PREFIX}{name.upper()} must be at least 1, got {getattr(self, name)}")
        if self.malloc_arenas < 0:
            raise ConfigError(f"{PREFIX}MALLOC_ARENAS must be >= 0 (0 = the C library's default), got {self.malloc_arenas}")
        if not 0.0 <= self.ranker_metric_lr <= 10.0:
            raise ConfigError(f"{PREFIX}RANKER_METRIC_LR must be in [0, 10], got {self.ranker_metric_lr}")
        if not 0.0 <= self.ranker_bias_lr <= 10.0:
            raise ConfigError(f"{PREFIX}RANKER_BIAS_LR must be in [0, 10], got {self.ranker_bias_lr}")
        if self.ann_min_items < 0 or self.ann_probe < 1:
            raise ConfigError(f"{PREFIX}ANN_MIN_ITEMS must be >= 0 (0 = never) and {PREFIX}ANN_PROBE >= 1, "
                              f"got {self.ann_min_items} and {self.ann_probe}")
        if self.importance_sample < 1:
            raise ConfigError(f"{PREFIX}IMPORTANCE_SAMPLE must be >= 1, got {self.importance_sample}")
        if self.ranker_dense_steps < 0:
            raise ConfigError(f"{PREFIX}RANKER_DENSE_STEPS must be >= 0, got {self.ranker_dense_steps}")
        if self.ranker_max_steps < 0:
            raise ConfigError(f"{PREFIX}RANKER_MAX_STEPS must be >= 0 (0 = no cap), got {self.ranker_max_steps}")
        if self.ranker_save_every_s <= 0:
            raise ConfigError(f"{PREFIX}RANKER_SAVE_EVERY_S must be > 0, got {self.ranker_save_every_s}")
        if self.gauges_every_s <= 0:
            raise ConfigError(f"{PREFIX}GAUGES_EVERY_S must be > 0, got {self.gauges_every_s}")
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


def _read(cls: type, prefix: str, environ: Mapping[str, str], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``cls`` set by ``<prefix><FIELD>`` variables, then by ``overrides``, coerced."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in _NOT_READ}
    values: dict[str, Any] = {}
    for name, field in fields.items():
        raw = environ.get(prefix + name.upper())
        if raw is not None and raw != "":
            values[name] = _coerce(field, raw, prefix)
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"unknown settings: {sorted(unknown)}")
    for name in values:
        if not isinstance(values[name], str):
            values[name] = _coerce(fields[name], str(values[name]), prefix)
    return values


def _coerce(field: dataclasses.Field, raw: str, prefix: str = PREFIX) -> Any:
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
        raise ConfigError(f"{prefix}{field.name.upper()}={raw!r} is not a valid {kind}") from exc

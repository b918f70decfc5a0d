"""The trainer's durable, bounded sample buffer: Parquet segments on local disk, written with pyarrow.

Contract with Kafka (offsets are committed only after durability): the service consumes a batch,
:meth:`SampleBuffer.add`\\ s it, calls :meth:`SampleBuffer.flush`, and commits the offsets only after
``flush`` has returned. ``add`` alone is not durable: a crash before ``flush`` loses the pending samples,
and Kafka redelivers them because their offsets were never committed.

Segment schema (:data:`coldstart.contract.SAMPLE_SCHEMA`, one row per :class:`coldstart.contract.TrainingSample`)::

    sample_id      string   the click's event id; the buffer holds each id at most once
    user_id        string
    context        string   the query (or recent history) before the click
    item_id        string
    item_text      string   the clicked item's text
    weight         float32  importance weight from the worker (model/importance.py)
    loss           float32  the scoring model's loss on the sample
    prior_events   int32
    model_version  string   the model version that scored the sample
    ts             float64  event time, epoch seconds
    received_ts    float64  when the trainer took the sample in (wall clock), epoch seconds

Files: ``seg-<n>.parquet`` with a monotone ``n``; a segment is written as ``seg-<n>.parquet.tmp``,
fsynced, then renamed, so a reader never sees half a segment. A ``*.tmp`` left by a crash is deleted
on open and its samples are not counted (their offsets were never committed, Kafka redelivers them).

Eviction (after every flush): whole segments, oldest first, are dropped while the buffer's total bytes
exceed ``max_bytes``, and any segment whose newest ``received_ts`` is older than ``max_age_s`` is
dropped. Age uses ``received_ts`` rather than the event ``ts`` because replays of historical logs carry
event times years in the past; the newest segment is never dropped for size, so the buffer always holds
the latest flush. The id set used for de-duplication covers the samples currently held.

Retraction (data governance, issue 10): :meth:`SampleBuffer.retract` takes samples back out, e.g. the
clicks of a user the workers flagged as a bot after those clicks had been scored (the ``FlaggedBack``
records of events.audit). The segments holding them are rewritten without them (same atomic write),
pending ones are dropped, and the ids are kept in ``retracted.jsonl`` (one ``[received_ts, id]`` per
line, fsynced) so that a retracted sample arriving later (the two topics are not ordered, or Kafka
redelivers it) is refused by :meth:`add`. Those ids expire with ``max_age_s``, as the samples do.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from coldstart.contract import SAMPLE_SCHEMA
from coldstart.model.registry import fsync_path

SCHEMA = SAMPLE_SCHEMA  # defined once, in the wire contract
FIELDS = tuple(SCHEMA.names)
_SEGMENT = re.compile(r"^seg-(\d+)\.parquet$")
RETRACTED = "retracted.jsonl"


@dataclass
class _Segment:
    path: Path
    seq: int
    n: int
    nbytes: int
    newest_received_ts: float
    oldest_received_ts: float
    oldest_ts: float
    ids: list[str] = field(repr=False, default_factory=list)


class SampleBuffer:
    """Durable training-sample buffer, bounded by bytes and by age (see the module docstring)."""

    def __init__(self, root: Path | str, max_bytes: int, max_age_s: float) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.max_age_s = float(max_age_s)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._pending: list[dict[str, Any]] = []
        self._pending_ids: set[str] = set()
        self._segments: list[_Segment] = []
        self._ids: set[str] = set()
        self._retracted: dict[str, float] = {}  # sample id -> when it was retracted (wall clock)
        self._open()

    # ------------------------------------------------------------------------------------ writes
    def add(self, samples: Iterable[Any], received_ts: float | None = None) -> int:
        """Queue samples (TrainingSample records or mappings) for the next flush; not durable yet.

        Samples whose ``sample_id`` is already held (flushed or pending) or was retracted are dropped.
        Returns how many were queued.
        """
        now = time.time() if received_ts is None else received_ts
        added = 0
        with self._lock:
            for sample in samples:
                row = _as_row(sample, now)
                sid = row["sample_id"]
                if sid in self._ids or sid in self._pending_ids or sid in self._retracted:
                    continue
                self._pending.append(row)
                self._pending_ids.add(sid)
                added += 1
        return added

    def flush(self, now: float | None = None) -> Path | None:
        """Write the pending samples as one segment (atomic, fsynced) and evict; the segment's path.

        Only after this returns may the Kafka offsets covering the flushed samples be committed.
        Returns None when nothing was pending.
        """
        with self._lock:
            if not self._pending:
                self.evict(now)
                return None
            table = pa.Table.from_pylist(self._pending, schema=SCHEMA)
            seq = (self._segments[-1].seq + 1) if self._segments else 1
            path = self.root / f"seg-{seq:08d}.parquet"
            _write_atomically(path, table)
            fsync_path(self.root)
            self._segments.append(_describe(path, seq, table))
            self._ids.update(self._pending_ids)
            self._pending = []
            self._pending_ids = set()
            self.evict(now)
            return path

    def retract(self, sample_ids: Iterable[str], now: float | None = None) -> int:
        """Take ``sample_ids`` out of the buffer for good (durable on return) and refuse them from now on;
        returns how many held or pending samples were removed."""
        now = time.time() if now is None else now
        with self._lock:
            ids = {sid for sid in sample_ids if sid not in self._retracted}
            if not ids:
                return 0
            with open(self.root / RETRACTED, "a", encoding="utf-8") as fh:
                fh.writelines(json.dumps([now, sid]) + "\n" for sid in sorted(ids))
                fh.flush()
                os.fsync(fh.fileno())
            self._retracted.update(dict.fromkeys(ids, now))
            removed = len(self._pending_ids & ids)
            if removed:
                self._pending = [row for row in self._pending if row["sample_id"] not in ids]
                self._pending_ids -= ids
            held = ids & self._ids  # usually few or none: most segments are not read at all
            kept: list[_Segment] = []
            for seg in self._segments:
                hit = held.intersection(seg.ids) if held else None
                if not hit:
                    kept.append(seg)
                    continue
                table = pq.read_table(seg.path, schema=SCHEMA)
                table = table.filter(pc.invert(pc.is_in(table.column("sample_id"), pa.array(sorted(hit)))))
                removed += len(hit)
                self._ids -= hit
                if table.num_rows:
                    _write_atomically(seg.path, table)
                    kept.append(_describe(seg.path, seg.seq, table))
                else:
                    seg.path.unlink(missing_ok=True)
            fsync_path(self.root)
            self._segments = kept
            return removed

    def evict(self, now: float | None = None) -> list[Path]:
        """Apply the eviction policy; returns the segments removed."""
        now = time.time() if now is None else now
        removed = []
        with self._lock:
            total = sum(s.nbytes for s in self._segments)
            keep: list[_Segment] = []
            for i, seg in enumerate(self._segments):
                newest = i == len(self._segments) - 1
                too_big = total > self.max_bytes and not newest
                too_old = now - seg.newest_received_ts > self.max_age_s
                if too_big or too_old:
                    total -= seg.nbytes
                    self._ids.difference_update(seg.ids)
                    seg.path.unlink(missing_ok=True)
                    removed.append(seg.path)
                else:
                    keep.append(seg)
            self._segments = keep
            expired = [sid for sid, ts in self._retracted.items() if now - ts > self.max_age_s]
            if expired:
                for sid in expired:
                    del self._retracted[sid]
                self._write_retracted()
        return removed

    # ------------------------------------------------------------------------------------ reads
    def read(self, recent_first: bool = False) -> pa.Table:
        """Every flushed sample, in arrival order, or sorted by event ``ts`` descending."""
        with self._lock:  # read under the lock: a retraction or eviction may rewrite or remove a segment
            tables = [pq.read_table(s.path, schema=SCHEMA) for s in self._segments]
        table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
        if recent_first and table.num_rows:
            table = table.take(pc.sort_indices(table, [("ts", "descending")]))
        return table

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return sum(s.nbytes for s in self._segments)

    @property
    def n_samples(self) -> int:
        with self._lock:
            return sum(s.n for s in self._segments)

    @property
    def n_pending(self) -> int:
        return len(self._pending)

    @property
    def n_segments(self) -> int:
        return len(self._segments)

    @property
    def oldest_ts(self) -> float | None:
        """The oldest event time held (None when empty)."""
        with self._lock:
            return min((s.oldest_ts for s in self._segments), default=None)

    @property
    def oldest_received_ts(self) -> float | None:
        """When the oldest held sample arrived (None when empty): the buffer's age is now minus this."""
        with self._lock:
            return min((s.oldest_received_ts for s in self._segments), default=None)

    @property
    def n_retracted(self) -> int:
        """Retracted ids remembered (refused if they arrive again), until they expire."""
        return len(self._retracted)

    def was_retracted(self, sample_id: str) -> bool:
        return sample_id in self._retracted

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self._ids

    def __len__(self) -> int:
        return self.n_samples

    # ------------------------------------------------------------------------------------ internals
    def _open(self) -> None:
        for tmp in self.root.glob("*.tmp"):
            tmp.unlink(missing_ok=True)  # a crash mid-write: never committed, Kafka redelivers
        found = []
        for path in self.root.iterdir():
            m = _SEGMENT.match(path.name)
            if m:
                found.append((int(m.group(1)), path))
        for seq, path in sorted(found):
            table = pq.read_table(path, columns=["sample_id", "ts", "received_ts"])
            seg = _describe(path, seq, table)
            self._segments.append(seg)
            self._ids.update(seg.ids)
        retracted = self.root / RETRACTED
        if retracted.exists():
            text = retracted.read_text(encoding="utf-8")
            for line in text.splitlines():
                try:
                    ts, sid = json.loads(line)
                except ValueError:
                    continue  # a line torn by a crash mid-append: its retraction was never acknowledged
                self._retracted[sid] = float(ts)
            if text and not text.endswith("\n"):
                self._write_retracted()  # else the next append would join the torn line and be lost

    def _write_retracted(self) -> None:
        path = self.root / RETRACTED
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps([ts, sid]) + "\n" for sid, ts in self._retracted.items())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_path(self.root)


def _write_atomically(path: Path, table: pa.Table) -> None:
    """``table`` as the Parquet file ``path``: written beside it, fsynced, then renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _describe(path: Path, seq: int, table: pa.Table) -> _Segment:
    ids = table.column("sample_id").to_pylist()
    received = table.column("received_ts")
    return _Segment(
        path=path, seq=seq, n=table.num_rows, nbytes=path.stat().st_size,
        newest_received_ts=pc.max(received).as_py(), oldest_received_ts=pc.min(received).as_py(),
        oldest_ts=pc.min(table.column("ts")).as_py(), ids=ids,
    )


def sample_id_of(sample: Any) -> str:
    """The ``sample_id`` of a TrainingSample or of a mapping."""
    return sample["sample_id"] if isinstance(sample, Mapping) else sample.sample_id


def _as_row(sample: Any, received_ts: float) -> dict[str, Any]:
    if isinstance(sample, Mapping):
        get = sample.get
    else:
        def get(name: str, default: Any = None) -> Any:
            return getattr(sample, name, default)
    row = {name: get(name) for name in FIELDS}
    missing = [n for n in FIELDS if row[n] is None and n != "received_ts"]
    if missing:
        raise ValueError(f"training sample {row.get('sample_id')!r} lacks {missing}")
    if row["received_ts"] is None:
        row["received_ts"] = received_ts
    return row

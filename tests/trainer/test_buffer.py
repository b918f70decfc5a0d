"""SampleBuffer on real Parquet files: durability, de-duplication, eviction, crash leftovers."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from coldstart.contract import TrainingSample
from coldstart.trainer.buffer import SCHEMA, SampleBuffer

NOW = 1_700_000_000.0


def make_sample(i: int, ts: float = NOW, **overrides) -> dict:
    sample = {"sample_id": f"e{i}", "user_id": f"u{i % 3}", "context": f"query {i}", "item_id": f"sku{i % 5}",
              "item_text": f"item {i % 5}", "weight": 0.5 + i / 10, "loss": 1.0 + i, "prior_events": i % 4,
              "model_version": "base-abc", "ts": ts + i}
    sample.update(overrides)
    return sample


def open_buffer(root: Path, max_bytes: int = 1 << 30, max_age_s: float = 1e12) -> SampleBuffer:
    return SampleBuffer(root, max_bytes=max_bytes, max_age_s=max_age_s)


def test_round_trip_keeps_every_field_and_the_schema(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path)
    record = TrainingSample(**make_sample(0))
    assert buf.add([record, make_sample(1), make_sample(2)], received_ts=NOW) == 3
    path = buf.flush()
    assert path is not None and path.exists() and path.suffix == ".parquet"
    table = buf.read()
    assert table.schema == SCHEMA
    rows = table.to_pylist()
    assert [r["sample_id"] for r in rows] == ["e0", "e1", "e2"]
    assert rows[1] == {**make_sample(1), "weight": pytest.approx(0.6), "received_ts": NOW}
    assert buf.n_samples == 3 and buf.size_bytes == path.stat().st_size
    assert buf.oldest_ts == NOW and buf.oldest_received_ts == NOW
    assert buf.read(recent_first=True).column("sample_id").to_pylist() == ["e2", "e1", "e0"]
    assert buf.flush() is None  # nothing pending: no empty segment


def test_duplicates_are_dropped_within_a_batch_after_flush_and_after_reopen(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path)
    assert buf.add([make_sample(1), make_sample(1), make_sample(2)]) == 2
    buf.flush()
    assert buf.add([make_sample(2), make_sample(3)]) == 1
    buf.flush()
    reopened = open_buffer(tmp_path)
    assert reopened.n_samples == 3
    assert reopened.add([make_sample(1), make_sample(3)]) == 0
    assert reopened.flush() is None
    assert sorted(reopened.read().column("sample_id").to_pylist()) == ["e1", "e2", "e3"]


def test_samples_are_durable_only_after_flush(tmp_path: Path) -> None:
    # The service commits offsets only after flush returns; before that a crash must lose the samples.
    buf = open_buffer(tmp_path)
    buf.add([make_sample(1)])
    assert open_buffer(tmp_path).n_samples == 0
    buf.flush()
    assert open_buffer(tmp_path).read().column("sample_id").to_pylist() == ["e1"]


def test_a_leftover_tmp_segment_is_deleted_on_open_and_not_counted(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path)
    buf.add([make_sample(1)])
    buf.flush()
    # A crash mid-write leaves a complete-looking but never renamed segment behind.
    crashed = tmp_path / "seg-00000002.parquet.tmp"
    pq.write_table(pa.Table.from_pylist([{**make_sample(2), "received_ts": NOW}], schema=SCHEMA), crashed)
    reopened = open_buffer(tmp_path)
    assert not crashed.exists()
    assert reopened.n_samples == 1 and "e2" not in reopened
    assert reopened.add([make_sample(2)]) == 1  # redelivered by Kafka: accepted


def test_eviction_by_bytes_drops_whole_oldest_segments(tmp_path: Path) -> None:
    probe = open_buffer(tmp_path / "probe")
    probe.add([make_sample(i) for i in range(10)])
    seg_bytes = probe.flush().stat().st_size
    buf = open_buffer(tmp_path / "buf", max_bytes=int(seg_bytes * 2.5))
    for start in (0, 10, 20, 30):
        buf.add([make_sample(i) for i in range(start, start + 10)])
        buf.flush()
    assert buf.n_segments == 2 and buf.size_bytes <= buf.max_bytes
    ids = buf.read().column("sample_id").to_pylist()
    assert ids == [f"e{i}" for i in range(20, 40)]
    assert len(list((tmp_path / "buf").glob("*.parquet"))) == 2
    # Evicted ids are forgotten (the id set is bounded by the buffer).
    assert "e0" not in buf and "e25" in buf


def test_the_newest_segment_survives_even_when_larger_than_max_bytes(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path, max_bytes=10)
    buf.add([make_sample(i) for i in range(5)])
    buf.flush()
    assert buf.n_samples == 5


def test_eviction_by_age_uses_received_time(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path, max_age_s=3600)
    buf.add([make_sample(1, ts=1.0e9)], received_ts=NOW - 7200)  # received two hours ago
    buf.flush(now=NOW - 7200)
    buf.add([make_sample(2, ts=1.0e9)], received_ts=NOW - 60)  # old event time, received just now
    buf.flush(now=NOW)
    assert buf.read().column("sample_id").to_pylist() == ["e2"]
    assert buf.oldest_received_ts == NOW - 60
    assert buf.evict(now=NOW + 7200) and buf.n_samples == 0


def test_a_sample_missing_a_field_is_refused(tmp_path: Path) -> None:
    bad = make_sample(1)
    del bad["item_text"]
    with pytest.raises(ValueError, match="item_text"):
        open_buffer(tmp_path).add([bad])


def test_retract_rewrites_segments_drops_pending_and_refuses_later_arrivals(tmp_path: Path) -> None:
    # A bot's clicks scored before it was flagged (events.audit) leave the training data for good.
    buf = open_buffer(tmp_path)
    buf.add([make_sample(i) for i in range(4)], received_ts=NOW)
    buf.flush(now=NOW)
    buf.add([make_sample(i) for i in range(4, 6)], received_ts=NOW)
    buf.flush(now=NOW)
    buf.add([make_sample(6), make_sample(7)], received_ts=NOW)  # pending, not flushed
    assert buf.retract(["e1", "e4", "e5", "e6", "e99"], now=NOW) == 4  # e99: not here (yet)
    assert buf.n_segments == 1  # seg 2 held only e4 and e5: removed, not left empty
    buf.flush(now=NOW)
    assert sorted(buf.read().column("sample_id").to_pylist()) == ["e0", "e2", "e3", "e7"]
    assert buf.add([make_sample(1), make_sample(99), make_sample(8)], received_ts=NOW) == 1  # only e8
    assert buf.retract(["e1"], now=NOW) == 0  # already retracted: nothing to do, nothing appended twice

    again = open_buffer(tmp_path)  # durable: a restarted trainer still refuses them
    assert sorted(again.read().column("sample_id").to_pylist()) == ["e0", "e2", "e3", "e7"]
    assert again.n_samples == 4 and "e1" not in again
    assert again.add([make_sample(4), make_sample(99)], received_ts=NOW) == 0
    assert again.n_retracted == 5


def test_retracted_ids_expire_with_the_buffer_age_and_a_torn_line_loses_nothing_after_it(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path, max_age_s=100.0)
    buf.retract(["old"], now=NOW)
    buf.retract(["new"], now=NOW + 150.0)
    buf.add([make_sample(1)], received_ts=NOW + 160.0)
    buf.flush(now=NOW + 160.0)  # eviction: "old" was retracted 160 s ago, longer than max_age_s
    assert (buf.was_retracted("old"), buf.was_retracted("new")) == (False, True)
    # A crash mid-append leaves a torn last line; the next retraction must not be glued to it.
    with open(tmp_path / "retracted.jsonl", "a") as fh:
        fh.write('[1700000170.0, "to')
    reopened = open_buffer(tmp_path, max_age_s=100.0)
    reopened.retract(["after"], now=NOW + 170.0)
    assert {s for s in ("new", "after", "to") if open_buffer(tmp_path, max_age_s=100.0).was_retracted(s)} == {"new", "after"}

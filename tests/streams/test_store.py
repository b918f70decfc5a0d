"""The profile table's RocksDB budget (issue 8): every partition's database shares one block cache and one
memtable budget, so RocksDB's memory does not grow with partitions or users. Real RocksDB files."""

from __future__ import annotations

import os

import rocksdict

from coldstart.streams.store import SharedBudgetOptions, table_options

MiB = 2**20


def _fill(paths, options: SharedBudgetOptions, users: int, value_bytes: int = 1500) -> float:
    """Writes ``users`` values to each database, then flushes and closes them; the memtables' peak."""
    dbs = [rocksdict.Rdict(str(p), options=options.as_options()) for p in paths]
    peak = 0
    for db in dbs:
        for k in range(users):
            db[f"user-{k:06d}".encode()] = os.urandom(value_bytes)
            if k % 500 == 0:
                peak = max(peak, options.memory()["memtables"])
    for db in dbs:
        db.flush()
        db.close()
    return peak


def test_partitions_share_one_cache_and_one_memtable_budget(tmp_path):
    options = SharedBudgetOptions(**table_options(block_cache_mb=1, write_buffer_mb=4, partitions=4))
    paths = [tmp_path / f"profiles-{p}.db" for p in range(4)]
    peak = _fill(paths, options, users=20_000)  # 4 x 30 MB written: far past both budgets
    # The memtable budget holds for the four databases together, all the time (RocksDB flushes early).
    assert peak <= 1.25 * 4 * MiB

    # Reopened (index and filter blocks now come from SST files) and read across all partitions: the
    # data, index and filter blocks of all four live in the one cache, within its capacity.
    dbs = [rocksdict.Rdict(str(p), options=options.as_options()) for p in paths]
    for db in dbs:
        for k in range(0, 20_000, 7):
            assert len(db[f"user-{k:06d}".encode()]) == 1500
    used = options.memory()["block_cache"]
    assert 0 < used <= 1.05 * MiB
    for db in dbs:
        db.close()


def test_faust_resolves_the_store_url_to_the_bounded_store():
    from faust import stores

    from coldstart.streams.store import BoundedRocksDBStore, register

    assert stores.by_url(register()) is BoundedRocksDBStore

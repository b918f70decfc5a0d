"""The profile table's RocksDB store, with one memory budget for the whole worker (issue 8).

Faust opens one RocksDB database per table partition and gives each its own options: a 2 GiB block cache
and 3 x 64 MiB memtables *per partition* by default, index and filter blocks held outside any cache (they
grow with the data). A worker under a flood of new users grew to several GiB. This store keeps Faust's
store (changelog, recovery, offsets) and changes only how each partition's database is opened:

- one LRU block cache shared by every partition, with index and filter blocks charged to it (so the
  cache is the bound on everything RocksDB reads into memory, however many users there are);
- one write-buffer manager shared by every partition: the memtables of all partitions together stay
  under its budget (RocksDB flushes early when they reach it).

So RocksDB's memory is ``cache + memtables`` for the worker, whatever the partitions or the data size.
Faust resolves a store URL's scheme through its ``STORES`` registry; ``register()`` adds
``coldstart-rocksdb://`` there. (Not a ``faust.stores`` entry point: entry points are read from install
metadata, which a stale ``coldstart.egg-info`` in the working directory shadows.)
"""

from __future__ import annotations

from typing import Any

import rocksdict
from faust import stores as faust_stores
from faust.stores import rocksdb as faust_rocksdb

SCHEME = "coldstart-rocksdb://"


class SharedBudgetOptions(faust_rocksdb.RocksDBOptions):
    """Faust's RocksDB options, with the block cache and the memtable budget shared by every partition.

    ``block_cache_size`` and ``memtable_budget`` are budgets for the whole table; ``write_buffer_size`` is
    one memtable's size, a share of the budget (the write-buffer manager flushes only the database being
    written to, so every other partition keeps its memtable: they must be small enough to add up).
    """

    def __init__(self, *, memtable_budget: int, **options: Any) -> None:
        super().__init__(**options, use_rocksdict=True)
        self.memtable_budget = memtable_budget
        self.cache = rocksdict.Cache(self.block_cache_size)
        self.write_buffers = rocksdict.WriteBufferManager(memtable_budget, False)

    def as_options(self) -> rocksdict.Options:
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_max_open_files(self.max_open_files)
        options.set_write_buffer_size(self.write_buffer_size)
        options.set_max_write_buffer_number(self.max_write_buffer_number)
        options.set_write_buffer_manager(self.write_buffers)
        options.set_target_file_size_base(self.target_file_size_base)
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(self.bloom_filter_size, block_based=True)
        table.set_block_cache(self.cache)
        # Without these, every SST file's index and filter stay in memory outside the cache: memory that
        # grows with the number of users. Pinned for level 0 so recent files are not re-read per lookup.
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table)
        return options

    def memory(self) -> dict[str, int]:
        """Bytes RocksDB holds now: the shared cache (blocks, index, filters) and the memtables."""
        return {"block_cache": self.cache.get_usage(), "memtables": self.write_buffers.get_usage()}


class BoundedRocksDBStore(faust_rocksdb.Store):
    """Faust's RocksDB store whose partitions share one memory budget (see the module docstring)."""

    rocksdb_options: SharedBudgetOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.use_rocksdict:
            raise RuntimeError("coldstart's RocksDB store needs rocksdict (pip install rocksdict)")
        self.rocksdb_options = SharedBudgetOptions(**self.options)


def register() -> str:
    """Make ``coldstart-rocksdb://`` a Faust store URL; returns the URL for ``faust.App(store=...)``."""
    faust_stores.STORES.aliases[SCHEME.removesuffix("://")] = f"{__name__}:BoundedRocksDBStore"
    return SCHEME


def table_options(block_cache_mb: int, write_buffer_mb: int, partitions: int) -> dict[str, int]:
    """The table options ``SharedBudgetOptions`` reads, in bytes: the two budgets for the whole table, and
    a memtable size that lets a worker owning every partition stay within the memtable budget.

    >>> table_options(64, 32, partitions=4)
    {'block_cache_size': 67108864, 'memtable_budget': 33554432, 'write_buffer_size': 4194304, 'max_write_buffer_number': 2}
    """
    budget = write_buffer_mb * 2**20
    # Two memtables per partition (one filling, one flushing) of budget / (2 x partitions) each.
    return {"block_cache_size": block_cache_mb * 2**20, "memtable_budget": budget,
            "write_buffer_size": max(budget // (2 * partitions), 2**20), "max_write_buffer_number": 2}


__all__ = ["SCHEME", "BoundedRocksDBStore", "SharedBudgetOptions", "register", "table_options"]

"""The worker's malloc arena limit (coldstart/memory.py), checked in a real process with glibc's own
per-arena report."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = r"""
import ctypes, sys, threading
from coldstart.memory import limit_malloc_arenas

n = int(sys.argv[1])
assert limit_malloc_arenas(n) == (n > 0)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
start = threading.Barrier(8)

def allocate():  # ctypes lets go of the GIL: eight threads in malloc at once, as a worker's are
    start.wait()
    for p in [libc.malloc(512) for _ in range(5000)]:
        libc.free(p)

threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc.malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


def arenas_after_eight_threads(limit: int) -> int:
    done = subprocess.run([sys.executable, "-c", PROGRAM, str(limit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return sum(1 for line in done.stderr.splitlines() if line.startswith("Arena "))


def test_two_arenas_however_many_threads_allocate():
    assert arenas_after_eight_threads(2) <= 2
    # The control: glibc's default gives each of the eight threads an arena of its own.
    assert arenas_after_eight_threads(0) > 2


def test_the_setting_says_what_it_takes():
    import pytest

    from coldstart.errors import ConfigError
    from coldstart.settings import Settings

    assert Settings.from_env({"COLDSTART_MALLOC_ARENAS": "0"}).malloc_arenas == 0
    with pytest.raises(ConfigError, match="COLDSTART_MALLOC_ARENAS must be >= 0"):
        Settings.from_env({"COLDSTART_MALLOC_ARENAS": "-1"})


FREEZE = r"""
import gc, json, sys, time, weakref
import torch, transformers  # a worker's libraries: hundreds of thousands of tracked objects
from coldstart.memory import freeze_startup_objects

def full_collection_s():
    t = time.perf_counter(); gc.collect(); return time.perf_counter() - t

tracked = len(gc.get_objects())
before = min(full_collection_s() for _ in range(3))
frozen = freeze_startup_objects()
after = min(full_collection_s() for _ in range(3))

class Node:
    pass

a, b = Node(), Node()  # a reference cycle made after the freeze: still the collector's to free
a.other, b.other = b, a
gone = weakref.ref(a)
del a, b
gc.collect()
print(json.dumps({"tracked": tracked, "frozen": frozen, "before": before, "after": after,
                  "cycle_freed": gone() is None}))
"""


def test_freezing_the_startup_objects_takes_them_out_of_every_collection():
    """What a worker does once it is built (coldstart/memory.py): the libraries' objects leave the
    collector's scans, so a full collection no longer walks them with the GIL held, and what is made
    afterwards is collected as before."""
    import json

    done = subprocess.run([sys.executable, "-c", FREEZE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["tracked"] > 100_000 and out["frozen"] >= out["tracked"] * 0.9
    assert out["after"] < out["before"] / 5, out  # ~0 ms vs tens to hundreds of ms
    assert out["cycle_freed"]


def test_the_freeze_is_a_setting():
    from coldstart.settings import Settings

    assert Settings().gc_freeze is True
    assert Settings.from_env({"COLDSTART_GC_FREEZE": "false"}).gc_freeze is False

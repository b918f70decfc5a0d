"""Process-wide memory settings for the worker: malloc arenas, and the objects the garbage collector scans.

glibc gives each thread that contends for ``malloc`` its own arena, up to 8 per core, and an arena
returns little to the OS once fragmented. A worker allocates from its event loop, its batch thread,
Faust's consumer thread and torch's threads, so its RSS grew with arenas it barely used: on the first
20,000 Best Buy events and three paced phases, RSS at the end was 1,194 / 1,135 / 1,198 MiB with the
default and 1,120 / 1,124 / 1,137 MiB with two arenas (interleaved runs; latency no worse).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's malloc.h


def limit_malloc_arenas(n: int) -> bool:
    """At most ``n`` malloc arenas in this process from now on (0: leave glibc's default). Call it before
    the process starts its threads: an arena that exists stays. False where the C library has no
    ``mallopt`` (musl, macOS), which is logged and otherwise harmless.

    >>> limit_malloc_arenas(0)
    False
    """
    if n <= 0:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("no mallopt in this C library: malloc arenas left at its default")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return mallopt(M_ARENA_MAX, n) == 1


def freeze_startup_objects() -> int:
    """Collect once, then move every object alive now into the garbage collector's permanent generation
    (``gc.freeze``), which no collection scans again; returns how many. Call it once the worker is built.

    Why: a worker starts with ~450,000 tracked objects that live as long as it does (the functions,
    classes and tuples of torch, transformers, Faust and aiokafka, the model's modules), and every
    full collection walked all of them while holding the GIL: 208 ms with the model loaded alone, a
    403 ms pause of the whole worker in a 15 s phase at 500 events/s (``coldstart bench serve``). Objects
    made later are collected as before; frozen ones are still freed by reference counting, so what
    stays for good is only a reference cycle among objects alive at the freeze.

    >>> before = gc.get_freeze_count(); freeze_startup_objects() >= before; gc.unfreeze()
    True
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()

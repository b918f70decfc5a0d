"""Issue 11: a worker run at ``--loglevel warning`` must not log at DEBUG underneath. Faust's terminal
spinner sets the root logger to DEBUG at warning and above, so aiokafka and Faust built a record for
every debug call of the fetch and produce paths (4% of a worker's samples at 500 events/s)."""

from __future__ import annotations

import logging

import faust

from coldstart.cli import faust_worker


def test_a_worker_at_warning_keeps_debug_records_off():
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    try:
        worker = faust_worker(faust.App("cs-logging-test", broker="memory://"), "warning")
        worker._setup_logging()  # what execute_from_commandline does first
        assert root.level == logging.WARNING
        assert not logging.getLogger("aiokafka.consumer.fetcher").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(saved_level)
        root.handlers[:] = saved_handlers

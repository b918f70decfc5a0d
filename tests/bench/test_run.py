"""Where ``coldstart bench`` writes its figures."""

from __future__ import annotations

import json

from coldstart.bench.run import run_benchmarks
from coldstart.settings import Settings


def test_a_folder_for_out_gets_the_figures_in_bench_json(tmp_path) -> None:
    # Before: a folder was only found out by the final write, after minutes of measuring, and the
    # figures were lost with the traceback.
    run_benchmarks(Settings(), "no-benchmark", tmp_path)
    figures = json.loads((tmp_path / "bench.json").read_text())
    assert figures["machine"]["cpus"] >= 1


def test_a_file_for_out_is_written_as_given(tmp_path) -> None:
    out = tmp_path / "figures" / "stream.json"
    run_benchmarks(Settings(), "no-benchmark", out)
    assert "machine" in json.loads(out.read_text())


def test_cpu_seconds_counts_a_busy_process_and_the_machine() -> None:
    # The paced benchmarks print cores busy per process: a worker near 1.0 is held by its GIL, a
    # machine near its core count is saturated whatever the worker does.
    import os
    import time

    from coldstart.bench.latency import cpu_seconds

    before = cpu_seconds([os.getpid()])
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    after = cpu_seconds([os.getpid()])
    assert after["workers"] - before["workers"] >= 0.2
    assert after["this_process"] - before["this_process"] >= 0.2
    assert after["machine"] - before["machine"] >= 0.2

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

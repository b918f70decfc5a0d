"""The in-process mode against the live worker on the same small log, and the runner failing fast
(with the reason) when the worker dead-letters what it replays."""

from __future__ import annotations

import asyncio
import time

import pytest

from coldstart.errors import ColdstartError
from coldstart.evaluation.inprocess import InProcessPipeline
from coldstart.evaluation.prequential import LocalStack, load_events, run_task, run_task_in_process, task_stream
from coldstart.replay.events import ReplayEvent
from coldstart.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.model, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(kafka_bootstrap, tmp_path_factory):
    with LocalStack(kafka_bootstrap, partitions=2, workdir=tmp_path_factory.mktemp("stack")) as s:
        yield s


def test_a_log_the_worker_rejects_fails_fast_with_the_reason(stack, kafka_bootstrap):
    bad = []
    for i in range(40):
        ts = 1_700_000_000.0 + i
        value = {"event_id": f"b{i}", "user_id": f"u{i % 3}", "ts": "not a time"}
        if i % 2:
            value["item_id"] = f"i{i % 5}"
        else:
            value["query"] = "halo"
        bad.append(ReplayEvent("click" if i % 2 else "search", value["user_id"], value, ts))
    started = time.monotonic()
    with pytest.raises(ColdstartError, match="dead-lettered .* replayed events"):
        asyncio.run(run_task(bad, "search_click", [], bootstrap=kafka_bootstrap, worker_url=stack.url,
                             namespace="dlq~"))
    assert time.monotonic() - started < 60  # not 15 s per click

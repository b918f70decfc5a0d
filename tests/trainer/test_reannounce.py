"""A trainer killed after moving CURRENT but before announcing (issue 8): on start it announces
CURRENT, so model.versions, the registry and the workers agree again; a trainer whose announcement
went out announces nothing more."""

from __future__ import annotations

import asyncio

import pytest

from coldstart.settings import Settings, TrainerSettings
from coldstart.trainer.service import Trainer, latest_announcement
from tests.streams.conftest import unique
from tests.trainer.test_service import make_samples

pytestmark = [pytest.mark.kafka, pytest.mark.model]


def test_restarted_trainer_announces_a_current_that_was_never_announced(kafka_bootstrap, tmp_path):
    from coldstart.streams.topics import ensure_topics

    settings = Settings(bootstrap_servers=kafka_bootstrap, partitions=2, app_id=unique("cs-ra"), device="cpu",
                        buffer_dir=tmp_path / "buffer", registry_uri=str(tmp_path / "registry"))
    ensure_topics(settings)
    cfg = TrainerSettings(round_min_samples=24, min_train_samples=16, steps=2, batch_size=8,
                        holdout_fraction=0.25, tolerance=1.0)
    crashed = Trainer(settings, cfg)
    crashed.ingest(make_samples(24))
    report = crashed.run_round()  # publishes v0001 and moves CURRENT; the "crash": no announcement
    assert report.version == "v0001" and crashed.registry.current() == "v0001"
    assert asyncio.run(latest_announcement(settings, timeout_s=2)) is None

    async def restart() -> str | None:
        trainer = Trainer(settings, cfg)
        await trainer.start()  # re-announces on start
        await trainer.stop()
        return (await latest_announcement(settings)).version

    assert asyncio.run(restart()) == "v0001"

    async def restart_again() -> str | None:
        trainer = Trainer(settings, cfg)
        await trainer.start()
        try:
            return await trainer.reannounce_current()
        finally:
            await trainer.stop()

    assert asyncio.run(restart_again()) is None  # the topic agrees now: nothing more to announce

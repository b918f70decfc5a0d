"""The trainer's round logic without Kafka: ingest -> round -> gate -> registry, and its metrics.

The Kafka loop itself (poll_once / step / announce) is exercised against the real broker elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from coldstart.settings import Settings, TrainerSettings
from coldstart.errors import BadEvent
from coldstart.model.encoder import TextEncoder
from coldstart.contract import TrainingSample
from coldstart.trainer.service import Trainer, TrainerMetrics, list_versions

pytestmark = pytest.mark.model

NOW = 1_700_000_000.0


def make_samples(n: int, start: int = 0) -> list[dict]:
    things = ["kettle", "router", "stapler", "headset", "monitor", "drill", "tent", "blender"]
    return [{"sample_id": f"e{i}", "user_id": f"u{i % 5}", "context": f"cheap {things[i % 8]} {i % 3}",
             "item_id": f"sku{i % 8}", "item_text": f"{things[i % 8]} deluxe", "weight": 0.5 + (i % 4) / 4,
             "loss": 2.0, "prior_events": i % 3, "model_version": "base", "ts": NOW + i}
            for i in range(start, start + n)]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(device="cpu")


@pytest.fixture
def make_trainer(tmp_path: Path, encoder: TextEncoder):
    def _make(**config) -> tuple[Trainer, CollectorRegistry]:
        settings = Settings.from_env({}, buffer_dir=tmp_path / "buffer", registry_uri=str(tmp_path / "registry"),
                                     device="cpu")
        cfg = TrainerSettings(**{"round_every_s": 3600, "round_min_samples": 24, "min_train_samples": 16,
                               "steps": 2, "batch_size": 8, "lr": 1e-5, "holdout_fraction": 0.25,
                               **config})
        registry = CollectorRegistry()
        return Trainer(settings, cfg, metrics=TrainerMetrics.create(registry), encoder=encoder), registry

    return _make


def test_a_round_that_passes_the_gate_publishes_a_verified_version(make_trainer) -> None:
    trainer, prom = make_trainer(tolerance=1.0)
    assert trainer.ingest(make_samples(16)) == 16
    assert not trainer.round_due()  # 16 new samples < round_min_samples
    assert trainer.ingest(make_samples(16, start=8)) == 8  # 8 were duplicates
    assert prom.get_sample_value("coldstart_trainer_samples_in_total", {"result": "duplicate"}) == 8
    assert trainer.round_due()
    report = trainer.run_round()
    assert report.outcome == "published" and report.version == "v0001", report.reason
    assert report.n_train == 18 and report.n_holdout == 6 and report.result.steps == 2
    assert trainer.registry.current() == "v0001" and trainer.encoder.version == "v0001"
    manifest = trainer.registry.manifest("v0001")
    assert manifest["parent"].startswith("base-") and manifest["data_window"] == [NOW, NOW + 17]
    assert manifest["metrics"]["n_train"] == 18 and manifest["n_items"] == 8
    assert prom.get_sample_value("coldstart_trainer_gate_decisions_total", {"outcome": "published"}) == 1
    assert prom.get_sample_value("coldstart_trainer_steps_total") == 2
    assert prom.get_sample_value("coldstart_trainer_buffer_samples") == 24
    assert prom.get_sample_value("coldstart_trainer_model_version_info", {"version": "v0001"}) == 1
    assert not trainer.round_due()  # no new samples since
    [entry] = list_versions(trainer.settings)
    assert entry["version"] == "v0001" and entry["current"] and entry["uri"].endswith("versions/v0001")


def test_the_trainer_precision_setting_reaches_the_round_and_its_manifest(make_trainer, monkeypatch) -> None:
    import coldstart.trainer.service as service

    asked = []
    real = service.fine_tune

    def recording(*args, **kwargs):
        asked.append(kwargs["precision"])
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "fine_tune", recording)
    trainer, _ = make_trainer(tolerance=1.0, precision="bfloat16")
    trainer.ingest(make_samples(24))
    report = trainer.run_round()
    assert asked == ["bfloat16"] and report.outcome == "published", report.reason
    assert trainer.registry.manifest(report.version)["metrics"]["precision"] == "bfloat16"


def test_a_round_refused_by_the_gate_publishes_nothing(make_trainer) -> None:
    trainer, prom = make_trainer(tolerance=-1.0)  # the candidate would have to beat serving by 1.0
    trainer.ingest(make_samples(24))
    report = trainer.run_round()
    assert report.outcome == "refused" and report.version is None
    assert "worse than serving" in report.reason
    assert trainer.registry.list_versions() == [] and trainer.encoder.version.startswith("base-")
    assert prom.get_sample_value("coldstart_trainer_gate_decisions_total", {"outcome": "refused"}) == 1
    assert prom.get_sample_value("coldstart_trainer_rounds_total", {"outcome": "refused"}) == 1


def test_too_few_samples_skip_the_round(make_trainer) -> None:
    trainer, prom = make_trainer()
    trainer.ingest(make_samples(4))
    assert not trainer.round_due()
    assert trainer.run_round().outcome == "skipped"
    assert prom.get_sample_value("coldstart_trainer_rounds_total", {"outcome": "skipped"}) == 1


def test_samples_are_decoded_from_the_workers_records() -> None:
    record = TrainingSample(**{k: v for k, v in make_samples(1)[0].items()})
    assert TrainingSample.loads(record.dumps()).sample_id == "e0"
    for bad in (b"not json", json.dumps({"sample_id": "x"}).encode(), None):  # not JSON, fields missing, empty
        with pytest.raises(BadEvent):
            TrainingSample.loads(bad)

"""COLDSTART_TRAINER_AUGMENT: validated, and a round with it on trains on the rows it adds (real buffer
on disk, real MiniLM weights, two CPU steps)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import coldstart.trainer.service as service
from coldstart.errors import ConfigError
from coldstart.model.encoder import TextEncoder
from coldstart.settings import Settings, TrainerSettings

NOW = 1_700_000_000.0
THINGS = ["kettle", "router", "stapler", "headset", "monitor", "drill"]


def make_samples() -> list[dict]:
    """Six warm items clicked four times each, then two items clicked once (cold), all before the
    newest quarter that the gate holds out."""
    rows = [{"item_id": f"sku{i % 6}", "item_text": f"Acme {THINGS[i % 6]} deluxe", "context": f"cheap {THINGS[i % 6]}"}
            for i in range(24)]
    rows[2:2] = [{"item_id": "lamp", "item_text": "Lumina Adjustable LED Desk Lamp, Black", "context": "desk light"},
                 {"item_id": "tent", "item_text": "Outdoor Pro Two-Person Camping Tent", "context": "tent"}]
    return [{**r, "sample_id": f"e{k}", "user_id": f"u{k % 5}", "weight": 1.0 + (k % 3) / 4, "loss": 2.0,
             "prior_events": 1, "model_version": "base", "ts": NOW + k} for k, r in enumerate(rows)]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(device="cpu")


def test_the_setting_is_validated() -> None:
    assert TrainerSettings().augment == "off"
    assert Settings.from_env({"COLDSTART_TRAINER_AUGMENT": "both"}).trainer.augment == "both"
    with pytest.raises(ConfigError, match="COLDSTART_TRAINER_AUGMENT='on'.*off, pseudo, neighbours, both"):
        Settings.from_env({"COLDSTART_TRAINER_AUGMENT": "on"})


@pytest.mark.model
@pytest.mark.parametrize("mode", ["both"])
def test_a_round_with_augmentation_trains_on_the_added_rows(tmp_path: Path, encoder: TextEncoder,
                                                            monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    trained_on = []
    real_fine_tune = service.fine_tune

    def spy(encoder, samples, **kw):  # the real round, remembering its table
        trained_on.append(samples)
        return real_fine_tune(encoder, samples, **kw)

    monkeypatch.setattr(service, "fine_tune", spy)
    settings = Settings.from_env({}, buffer_dir=tmp_path / "buffer", registry_uri=str(tmp_path / "registry"),
                                 device="cpu")
    cfg = TrainerSettings(round_every_s=3600, round_min_samples=8, min_train_samples=8, steps=2, batch_size=8,
                          lr=1e-5, holdout_fraction=0.25, tolerance=1.0, augment=mode)
    trainer = service.Trainer(settings, cfg, metrics=service.TrainerMetrics.create(CollectorRegistry()),
                              encoder=encoder)
    assert trainer.ingest(make_samples()) == 26
    report = trainer.run_round()
    assert report.outcome == "published", report.reason
    [table] = trained_on
    ids = table.column("sample_id").to_pylist()
    added = [k for k, s in enumerate(ids) if s.startswith("aug:")]
    assert added and report.n_train == len(ids) and report.result.steps == 2
    assert {table.column("item_id")[k].as_py() for k in added} <= {"lamp", "tent"}
    real_weights = [w for k, w in enumerate(table.column("weight").to_pylist()) if k not in added]
    assert max(table.column("weight")[k].as_py() for k in added) < min(real_weights)
    assert trainer.buffer.n_samples == 26  # the buffer holds only real samples
    assert trainer.registry.manifest(report.version)["metrics"]["augment"] == mode

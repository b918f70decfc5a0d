"""The model registry on real files with the real MiniLM weights: publish, verify, refuse, keep, crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from coldstart.errors import ArtifactRefused
from coldstart.model.encoder import TextEncoder
from coldstart.model.registry import CURRENT, MANIFEST, MODEL_FILE, Registry

pytestmark = pytest.mark.model

ITEM_TEXTS = {"sku1": "xbox 360 console", "sku2": "office stapler", "sku3": "hdmi cable 6ft"}


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(device="cpu")


@pytest.fixture
def publish(encoder: TextEncoder):
    """A factory: publish the encoder's weights (with its item vectors) into a registry."""

    def _publish(registry: Registry, **overrides) -> str:
        kwargs = dict(base_dir=encoder.path, item_ids=list(ITEM_TEXTS),
                      item_vectors=encoder.encode(list(ITEM_TEXTS.values())), parent=registry.current(),
                      base_model=encoder.version, data_window=(1.0, 2.0), metrics={"recall@10": 0.5})
        kwargs.update(overrides)
        return registry.publish(encoder.module.state_dict(), **kwargs)

    return _publish


def test_publish_then_load_verifies_and_round_trips_the_encoder(tmp_path: Path, encoder, publish) -> None:
    registry = Registry(tmp_path / "reg")
    assert registry.current() is None and registry.list_versions() == []
    version = publish(registry)
    assert version == "v0001" and registry.current() == "v0001"
    loaded = registry.load()
    assert loaded.version == "v0001" and loaded.item_ids == list(ITEM_TEXTS)
    manifest = loaded.manifest
    assert manifest["version"] == "v0001" and manifest["parent"] is None
    assert manifest["base_model"] == encoder.version and manifest["data_window"] == [1.0, 2.0]
    assert manifest["metrics"] == {"recall@10": 0.5} and manifest["created_ts"] > 0
    assert {MODEL_FILE, "items.safetensors", "items.json", "config.json", "tokenizer.json"} <= set(manifest["files"])
    # No pickles anywhere in an artifact.
    assert not [p for p in loaded.path.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".pickle"}]
    reloaded = TextEncoder(loaded.path, device="cpu", version=loaded.version)
    assert reloaded.version == "v0001"
    texts = list(ITEM_TEXTS.values())
    torch.testing.assert_close(reloaded.encode(texts), encoder.encode(texts))
    torch.testing.assert_close(loaded.item_vectors, encoder.encode(texts))
    assert publish(registry) == "v0002" and registry.manifest("v0002")["parent"] == "v0001"


def test_a_flipped_byte_in_the_weights_is_refused(tmp_path: Path, publish) -> None:
    registry = Registry(f"file://{tmp_path / 'reg'}")  # URIs and plain paths alike
    version = publish(registry)
    weights = tmp_path / "reg" / "versions" / version / MODEL_FILE
    with open(weights, "r+b") as fh:
        fh.seek(weights.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ArtifactRefused, match=r"sha256 of model\.safetensors"):
        registry.load(version)


def test_a_missing_file_or_manifest_is_refused(tmp_path: Path, publish) -> None:
    registry = Registry(tmp_path)
    version = publish(registry)
    folder = tmp_path / "versions" / version
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ArtifactRefused, match="tokenizer.json is missing"):
        registry.load(version)
    (folder / MANIFEST).unlink()
    with pytest.raises(ArtifactRefused, match="no manifest.json"):
        registry.load(version)
    with pytest.raises(ArtifactRefused, match="not a version id"):
        registry.load("../etc")


def test_keeps_the_last_k_versions_and_never_the_current_one(tmp_path: Path, publish) -> None:
    registry = Registry(tmp_path, keep=2)
    first = publish(registry)
    publish(registry)
    registry.set_current(first)  # rolled back to the oldest
    publish(registry, make_current=False)
    assert registry.list_versions() == ["v0001", "v0003"]
    assert registry.current() == "v0001"
    publish(registry)
    assert registry.list_versions() == ["v0003", "v0004"]


def test_a_crash_before_the_pointer_swap_leaves_current_at_a_complete_version(
        tmp_path: Path, publish, monkeypatch) -> None:
    registry = Registry(tmp_path)
    publish(registry)
    real_rename = Registry._rename

    def crash_on_pointer(self, src: str, dst: str) -> None:
        if dst.endswith("/" + CURRENT):
            raise OSError("simulated crash while swapping CURRENT")
        real_rename(self, src, dst)

    monkeypatch.setattr(Registry, "_rename", crash_on_pointer)
    with pytest.raises(OSError, match="simulated crash"):
        publish(registry)
    monkeypatch.undo()
    assert registry.current() == "v0001"
    assert registry.load().version == "v0001"
    assert (tmp_path / CURRENT).read_text() == "v0001\n"
    assert not list(tmp_path.glob("CURRENT.tmp-*"))
    # The next version id is still fresh.
    assert publish(registry) == "v0003"


def test_a_crash_before_the_folder_rename_leaves_no_version(tmp_path: Path, publish, monkeypatch) -> None:
    registry = Registry(tmp_path)
    publish(registry)

    def crash(self, src: str, dst: str) -> None:
        raise OSError("simulated crash before the version folder is in place")

    monkeypatch.setattr(Registry, "_rename", crash)
    with pytest.raises(OSError):
        publish(registry)
    monkeypatch.undo()
    assert registry.list_versions() == ["v0001"] and registry.current() == "v0001"
    assert len(list((tmp_path / "versions").glob("v0002.tmp-*"))) == 1  # ignored, pruned when stale
    assert publish(registry) == "v0003"


def test_set_current_rolls_back_and_refuses_unknown_or_corrupt_versions(tmp_path: Path, publish) -> None:
    registry = Registry(tmp_path)
    publish(registry)
    publish(registry)
    registry.set_current("v0001")
    assert registry.current() == "v0001"
    with pytest.raises(ArtifactRefused, match="no version 'v0042'"):
        registry.set_current("v0042")
    manifest = tmp_path / "versions" / "v0002" / MANIFEST
    body = json.loads(manifest.read_text())
    body["files"]["items.json"] = "0" * 64
    manifest.write_text(json.dumps(body))
    with pytest.raises(ArtifactRefused, match="items.json"):
        registry.set_current("v0002")
    assert registry.current() == "v0001"


def test_item_ids_and_vectors_must_agree(tmp_path: Path, publish) -> None:
    with pytest.raises(ValueError, match="item ids"):
        publish(Registry(tmp_path), item_ids=["only-one"])

"""Cold-item augmentation (model/augment.py): what is made, for which items, with which weights."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from coldstart.contract import SAMPLE_SCHEMA
from coldstart.errors import ConfigError
from coldstart.model.augment import (AUGMENT_MODES, AugmentConfig, augment_samples, augment_table, check_mode,
                                     neighbour_samples, pseudo_queries)


def catalog_factory(n_warm: int = 4, clicks_each: int = 5):
    """(contexts, item ids, weights, catalog, item vectors): ``n_warm`` items clicked ``clicks_each``
    times, one item clicked once ("lamp"), one never clicked ("tent", a near twin of warm item w0)."""
    catalog = {f"w{k}": f"Brand{k} Widget Model {k}" for k in range(n_warm)}
    catalog["lamp"] = "Lumina Adjustable LED Desk Lamp, Black"
    catalog["tent"] = "Outdoor Pro Two-Person Camping Tent (Green)"
    contexts, items, weights = [], [], []
    for k in range(n_warm):
        for j in range(clicks_each):
            contexts.append(f"query {k} {j}")
            items.append(f"w{k}")
            weights.append(1.0 + 0.1 * j)
    contexts.append("desk light")
    items.append("lamp")
    weights.append(1.0)
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(len(catalog), 8, generator=g)
    vectors[list(catalog).index("tent")] = vectors[0] + 0.01  # tent's nearest neighbour is w0
    return contexts, items, weights, catalog, vectors


def test_a_never_clicked_item_gets_pseudo_queries_from_its_own_title() -> None:
    contexts, items, weights, catalog, vectors = catalog_factory()
    rows = augment_samples(contexts, items, weights, catalog, "pseudo", item_vectors=vectors)
    tent = [r.context for r in rows if r.item_id == "tent"]
    assert tent == pseudo_queries(catalog["tent"]) == ["two-person camping tent", "outdoor tent"]
    # words of its own title only, the bracketed colour dropped, the whole title itself not repeated
    assert "green" not in " ".join(tent) and catalog["tent"].lower() not in tent


def test_nothing_is_made_for_warm_items_and_augmented_weights_are_below_real_ones() -> None:
    contexts, items, weights, catalog, vectors = catalog_factory()
    for mode in ("pseudo", "neighbours", "both"):
        rows = augment_samples(contexts, items, weights, catalog, mode, item_vectors=vectors)
        assert rows, mode
        assert {r.item_id for r in rows} <= {"lamp", "tent"}, mode  # w0..w3 have 5 clicks each
        assert max(r.weight for r in rows) < min(weights), mode
        assert len(rows) <= AugmentConfig().max_share * len(items)
    assert augment_samples(contexts, items, weights, catalog, "off", item_vectors=vectors) == []


def test_neighbours_borrow_the_contexts_of_the_nearest_clicked_item() -> None:
    contexts, items, weights, catalog, vectors = catalog_factory()
    rows = augment_samples(contexts, items, weights, catalog, "neighbours", item_vectors=vectors,
                           config=AugmentConfig(neighbours=1))
    [tent] = [r for r in rows if r.item_id == "tent"]
    assert tent.context == "query 0 4" and tent.kind == "neighbour"  # w0's most recent context
    assert tent.weight == pytest.approx(0.5 * 1.2, rel=0.01)  # factor x median real weight x cosine ~1
    # an item is never its own neighbour
    assert neighbour_samples([0], torch.eye(2), {0: ["self"], 1: ["other"]}, k=1) == [[]]


def test_the_budget_goes_to_the_least_clicked_items_first_and_both_kinds_share_it() -> None:
    contexts, items, weights, catalog, vectors = catalog_factory()
    one = augment_samples(contexts, items, weights, catalog, "both", item_vectors=vectors,
                          config=AugmentConfig(max_share=1 / len(items)))
    assert [r.item_id for r in one] == ["tent"]  # never clicked beats clicked once
    two = augment_samples(contexts, items, weights, catalog, "both", item_vectors=vectors,
                          config=AugmentConfig(max_share=4 / len(items)))
    assert sorted(r.kind for r in two) == ["neighbour", "neighbour", "pseudo", "pseudo"]


def test_click_counts_given_override_the_samples() -> None:
    contexts, items, weights, catalog, vectors = catalog_factory()
    counts = {i: 10 for i in catalog}
    assert augment_samples(contexts, items, weights, catalog, "both", item_vectors=vectors,
                           click_counts=counts) == []


def test_augment_table_adds_rows_in_the_sample_schema() -> None:
    contexts, items, weights, catalog, vectors = catalog_factory()
    table = pa.Table.from_pylist(
        [{"sample_id": f"e{k}", "user_id": "u", "context": c, "item_id": i, "item_text": catalog[i], "weight": w,
          "loss": 1.0, "prior_events": 1, "model_version": "base-x", "ts": 100.0 + k, "received_ts": 100.0 + k}
         for k, (c, i, w) in enumerate(zip(contexts, items, weights))], schema=SAMPLE_SCHEMA)
    rows = augment_table(table, "pseudo")
    assert rows.schema == SAMPLE_SCHEMA and rows.num_rows > 0
    assert set(rows.column("item_id").to_pylist()) == {"lamp"}  # "tent" is in no sample: unknown here
    assert all(s.startswith("aug:pseudo:lamp:") for s in rows.column("sample_id").to_pylist())
    assert rows.column("ts").to_pylist() == [table.column("ts")[-1].as_py()] * rows.num_rows
    with pytest.raises(ValueError, match="encoder"):
        augment_table(table, "neighbours")
    assert augment_table(table, "off").num_rows == 0


def test_an_unknown_mode_is_a_config_error_naming_the_variable() -> None:
    assert [check_mode(m) for m in AUGMENT_MODES] == list(AUGMENT_MODES)
    with pytest.raises(ConfigError, match="COLDSTART_TRAINER_AUGMENT='yes'"):
        check_mode("yes")

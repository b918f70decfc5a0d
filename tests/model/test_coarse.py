"""The coarse index (issue 11: a request at a million items): what it must never leave out of the
candidates, that it finds near neighbours on clustered vectors, and its upkeep in the item index."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import pytest

from coldstart.model.coarse import CoarseIndex, lists_for, nearest_centroid, sample_outside, spherical_kmeans
from coldstart.model.items import ItemIndex


def clustered(n: int, topics: int, dim: int = 32, noise: float = 0.1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(topics, dim, generator=g), dim=1)
    return F.normalize(centres[torch.randint(topics, (n,), generator=g)] + noise * torch.randn(n, dim, generator=g), dim=1)


def test_probing_a_few_groups_finds_most_exact_neighbours_on_clustered_vectors() -> None:
    vecs = clustered(4_000, topics=40)
    coarse = CoarseIndex.train(vecs, capacity=4_000)
    assert coarse.assign_next(vecs, 4_000, budget=4_000) == 4_000 and coarse.lists == lists_for(4_000) == 64
    queries = vecs[:50]
    exact = (queries @ vecs.T).topk(10, dim=1).indices
    found = []
    for q, top in zip(queries, exact):
        rows = set(coarse.candidates(q[None], 4_000, n_probe=4).tolist())
        found.append(sum(int(r) in rows for r in top) / 10)
    recall = sum(found) / len(found)
    scanned = coarse.candidates(queries[:1], 4_000, n_probe=4).numel() / 4_000
    assert recall >= 0.9 and scanned < 0.2, (recall, scanned)


def test_unassigned_rows_are_always_candidates_and_a_changed_row_moves() -> None:
    vecs = clustered(600, topics=8)
    coarse = CoarseIndex.train(vecs[:400], capacity=400)
    coarse.assign_next(vecs, 300, budget=300)  # rows 300.. not assigned yet; 400.. past the tensor
    far = -vecs[0][None]  # a query nowhere near most groups
    rows = set(coarse.candidates(far, 600, n_probe=1).tolist())
    assert set(range(300, 600)) <= rows and len(rows) < 600
    # Row 5 gets the vector of row 0's opposite: it leaves its group for the one nearest its new vector.
    coarse.assign_rows([5], far)
    assert int(coarse.group[5]) == int(nearest_centroid(coarse.centroids, far)[0])
    assert 5 in set(coarse.candidates(far, 600, n_probe=1).tolist())


def test_kmeans_gives_every_centroid_members() -> None:
    vecs = clustered(2_000, topics=16)
    centroids = spherical_kmeans(vecs, 16)
    counts = torch.bincount(nearest_centroid(centroids, vecs), minlength=16)
    assert bool((counts > 0).all()) and torch.allclose(centroids.norm(dim=1), torch.ones(16), atol=1e-5)


def index_with(n: int, seed: int = 0) -> ItemIndex:
    idx = ItemIndex(32, torch.device("cpu"))
    add_items(idx, 0, n, seed)
    return idx


def add_items(idx: ItemIndex, start: int, stop: int, seed: int) -> None:
    for i in range(start, stop):
        idx.upsert(f"i{i}", f"title {i}")
    idx._dirty.clear()  # vectors below stand in for the encoder's
    idx.vectors[start:stop] = clustered(stop - start, topics=8, seed=seed)
    idx.valid[start:stop] = True


def test_the_item_index_trains_assigns_in_bounded_steps_and_retrains_when_the_catalogue_doubles() -> None:
    idx = index_with(1_000)
    assert idx.maintain_coarse(0) == 0 and idx.maintain_coarse(2_000) == 0 and idx.coarse is None  # off / below
    steps = []
    while (done := idx.maintain_coarse(500, budget=300)):
        steps.append(done)
    assert steps == [300, 300, 300, 100] and idx.coarse is not None and idx.coarse.trained_on == 1_000
    first = idx.coarse
    add_items(idx, 1_000, 1_500, seed=1)  # 1.5x: the same index keeps serving, the new rows are candidates
    assert idx.maintain_coarse(500) == 0 and idx.coarse is first
    assert set(range(1_000, 1_500)) <= set(first.candidates(idx.vectors[:1], 1_500, n_probe=1).tolist())
    add_items(idx, 1_500, 2_000, seed=2)  # doubled: a new one is trained; the old serves until it is complete
    assert idx.maintain_coarse(500, budget=1_500) == 1_500 and idx.coarse is first
    assert idx.maintain_coarse(500, budget=1_500) == 500 and idx.coarse is not first
    assert idx.coarse.trained_on == 2_000 and idx.coarse.complete(2_000)
    # A new version's index (another vector space) starts without one.
    assert idx.copy_metadata().coarse is None


def test_the_inverted_lists_give_the_same_candidates_as_every_rows_group() -> None:
    """The lists a request reads (rows sorted by group) hold what a scan of every row's group finds, and
    rows moved or added after they were built are candidates until the next build."""
    vecs = clustered(3_000, topics=20)
    coarse = CoarseIndex.train(vecs[:2_000], capacity=2_000)
    coarse.assign_next(vecs, 2_000, budget=2_000)
    queries = vecs[:5]
    scanned = set(coarse.candidates(queries, 2_000, n_probe=3).tolist())
    coarse.rebuild_lists(2_000)
    assert set(coarse.candidates(queries, 2_000, n_probe=3).tolist()) == scanned
    coarse.assign_rows([7, 8], -vecs[:2])  # moved: in their new groups (or wherever) they stay candidates
    coarse.assign_rows(list(range(2_000, 2_100)), vecs[2_000:2_100])  # added after the build
    rows = set(coarse.candidates(queries, 2_500, n_probe=3).tolist())
    assert {7, 8} | set(range(2_000, 2_500)) <= rows and scanned <= rows
    assert not coarse.lists_stale(2_500) and coarse.lists_stale(10_000)
    coarse.rebuild_lists(2_100)
    after = coarse.candidates(queries, 2_100, n_probe=3)
    assert set(after.tolist()) == set(coarse.scan(coarse.probe(queries, 3), 2_100).tolist())
    assert after.numel() == len(set(after.tolist()))  # each row once when nothing moved since the build


def test_rows_drawn_outside_the_candidates_are_uniform_over_the_catalogue() -> None:
    """A sampled softmax (the ranker's step) and a batch's importance at scale weight each drawn row by
    how many it stands for, which is only right if every outside row is as likely to be drawn: more
    distinct draws than wanted were once cut to the lowest rows (``unique`` sorts)."""
    rows = torch.arange(0, 10_000, 10)  # candidates spread over the catalogue
    _, log_w, drawn = sample_outside(rows, 10_000, 500, seed=3)
    union, _, _ = sample_outside(rows, 10_000, 500, seed=3)
    picked = union[drawn].float()
    assert int(drawn.sum()) == 500 and not bool(torch.isin(union[drawn], rows).any())
    assert 4_500 < float(picked.mean()) < 5_500 and float(picked.max()) > 9_000  # the whole range, not its start
    assert float(log_w[drawn].exp().sum()) == pytest.approx(10_000 - rows.numel())


def test_a_large_k_means_runs_a_bounded_step_a_call_and_ends_where_one_call_would(monkeypatch) -> None:
    """At 1M items the k-means took 1.6 s in one call on the writer thread: every batch behind it waited.
    Above a small size it runs a step a call (the seeding, then each Lloyd pass in row chunks) and
    reaches the same centroids; assignment follows in its budgets as before."""
    import coldstart.model.items as items_module

    monkeypatch.setattr(items_module, "SMALL_KMEANS", 0)  # 512 sample rows x 32 groups: stepped here
    idx = index_with(1_000)
    calls = []
    while (done := idx.maintain_coarse(500, budget=300)):
        calls.append(done)
    assert calls == [1] * 6 + [300, 300, 300, 100], calls  # seeding + 5 passes, the 6th ends in the assigning call
    at_once = CoarseIndex.train(idx.vectors[:1_000][idx.valid[:1_000]], capacity=idx.vectors.shape[0])
    assert torch.allclose(idx.coarse.centroids, at_once.centroids, atol=1e-5)

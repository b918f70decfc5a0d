"""A coarse (IVF) index over the item vectors, so that a request at a million items reads a few percent
of the item matrix instead of all of it (issue 11).

At 1M items one fp32 read of the 1.5 GB matrix is ~200 ms on a CPU core, the whole of a request's
budget several times over. Items are grouped around ``k`` centroids (spherical k-means on a sample);
a request asks each of its query vectors (profile, newest events, last event, query, ...) for the
items of its ``n_probe`` nearest groups, and the ranker scores those candidates (with every item the
stream statistics name, and the best by popularity, newness and learned offset) exactly as it scores
the whole catalogue below the threshold (``COLDSTART_ANN_MIN_ITEMS``). The text similarity of an item
outside the probed groups is what is approximated, nothing else.

Rows are assigned to a group when they get a vector (``assign_rows``, cheap: ``k`` dot products) or in
bounded chunks after a (re)training (``assign_next``); a row not assigned yet is always a candidate, so
the candidates are never missing an item for want of an assignment, only more numerous for a while.

>>> g = torch.Generator().manual_seed(0)
>>> centres = F.normalize(torch.randn(4, 8, generator=g), dim=1)
>>> vecs = F.normalize(centres.repeat(25, 1) + 0.05 * torch.randn(100, 8, generator=g), dim=1)
>>> coarse = CoarseIndex.train(vecs, k=4, capacity=100)
>>> coarse.assign_next(vecs, 100, budget=100), coarse.complete(100)
(100, True)
>>> rows = coarse.candidates(vecs[:1], 100, n_probe=1)  # the group of row 0: every 4th row
>>> sorted(rows.tolist())[:5], rows.numel()
([0, 4, 8, 12, 16], 25)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["CoarseIndex", "KMeansSteps", "gather_rows", "lists_for", "nearest_centroid", "sample_outside", "spherical_kmeans"]

# Training sample: this many vectors per centroid (faiss warns below 39, but a coarse quantiser only has to
# split the catalogue into groups of similar items; 40 per centroid took 4.9 s at 1,024 groups on one core).
SAMPLE_PER_LIST = 16
ASSIGN_CHUNK = 16_384  # rows per matrix product when assigning (bounds the [chunk, k] scratch)


def lists_for(n_items: int) -> int:
    """The number of groups for ``n_items``: about the square root (faiss's rule of thumb), a power of
    two between 16 and 1024.

    >>> lists_for(1_000), lists_for(200_000), lists_for(1_000_000)
    (32, 512, 1024)
    """
    return int(min(1024, max(16, 2 ** round(math.log2(max(math.sqrt(max(n_items, 1)), 1.0))))))


def spherical_kmeans(x: torch.Tensor, k: int, iters: int = 6, seed: int = 0) -> torch.Tensor:
    """``k`` unit centroids of the unit rows of ``x`` (Lloyd's iterations on cosine); an empty group takes
    the row its centroid explains worst, so every centroid ends up with members. All at once: the
    writer thread runs :class:`KMeansSteps` instead, a bounded step a batch.

    >>> x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> c = spherical_kmeans(F.normalize(x, dim=1), 2)
    >>> sorted(nearest_centroid(c, F.normalize(x, dim=1)).tolist()) == [0, 0, 1, 1]
    True
    """
    steps = KMeansSteps(x, k, iters=iters, seed=seed)
    while steps.centroids is None:
        steps.step()
    return steps.centroids


class KMeansSteps:
    """:func:`spherical_kmeans` cut into bounded steps, the same centroids at the end: the k-means++
    seeding ``SEED_STEP`` centroids at a time, then each Lloyd iteration ``ROWS_STEP`` rows at a time
    (the sums of a pass accumulate across steps). At 1,024 groups over 16k rows the whole took 1.6 s in
    one call, which stopped the writer thread, and every batch behind it, for that long.

    >>> x = F.normalize(torch.randn(40, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    >>> steps = KMeansSteps(x, 3, iters=2, rows_step=16)
    >>> n = 0
    >>> while steps.centroids is None:
    ...     n += steps.step()
    >>> n, torch.allclose(steps.centroids, spherical_kmeans(x, 3, iters=2))  # 1 seeding + 2 x 3 row steps
    (7, True)
    """

    SEED_STEP = 128
    ROWS_STEP = 4_096

    def __init__(self, x: torch.Tensor, k: int, iters: int = 6, seed: int = 0, rows_step: int = ROWS_STEP) -> None:
        self.g = torch.Generator().manual_seed(seed)
        self.x = x.float()
        self.k = min(k, self.x.shape[0])
        self.iters, self.rows_step = iters, rows_step
        self.centroids: torch.Tensor | None = None  # set when done
        self._seeding = _kmeans_pp(self.x, self.k, self.g)  # a generator: SEED_STEP centroids a step
        self._current: torch.Tensor | None = None
        self._iter = self._pos = 0

    def step(self) -> int:
        """One bounded step; returns 1 (0 once done)."""
        if self.centroids is not None:
            return 0
        if self._current is None:
            self._current = next(self._seeding)  # None until the seeding is complete
            if self._current is not None and self.iters == 0:
                self.centroids = self._current
            return 1
        if self._pos == 0:
            self._sums = torch.zeros_like(self._current)
            self._best = torch.empty(self.x.shape[0], device=self.x.device)
            self._counts = torch.zeros(self.k, dtype=torch.long, device=self.x.device)
        rows = self.x[self._pos:self._pos + self.rows_step]
        best, group = (rows @ self._current.T).max(dim=1)
        self._sums.index_add_(0, group, rows)
        self._counts += torch.bincount(group, minlength=self.k)
        self._best[self._pos:self._pos + rows.shape[0]] = best
        self._pos += rows.shape[0]
        if self._pos >= self.x.shape[0]:  # a pass complete: the new centroids
            empty = (self._counts == 0).nonzero().flatten()
            if empty.numel():
                worst = torch.topk(-self._best, min(empty.numel(), self.x.shape[0])).indices
                self._sums[empty[: worst.numel()]] = self.x[worst]
            self._current = F.normalize(self._sums, dim=1)
            self._pos, self._iter = 0, self._iter + 1
            if self._iter == self.iters:
                self.centroids = self._current
        return 1


def _kmeans_pp(x: torch.Tensor, k: int, g: torch.Generator):
    """k-means++ seeding, as a generator: None after each ``KMeansSteps.SEED_STEP`` centroids, then the
    centroids. Each next centroid is drawn with probability proportional to its squared distance from
    the nearest one chosen (random seeds put two centroids in one cluster and leave another without,
    which Lloyd's iterations rarely undo)."""
    # Seeded from a subsample of 4 rows per centroid: the draw is sequential (k steps over the rows),
    # 3.4 s for 1,024 centroids over 16k rows here, 0.4 s this way; Lloyd's iterations use every row.
    x = x[torch.randperm(x.shape[0], generator=g)[: 4 * k].to(x.device)]
    first = int(torch.randint(x.shape[0], (1,), generator=g))
    chosen = [first]
    dist = (2.0 - 2.0 * (x @ x[first])).clamp_min(0.0)  # squared distance of unit vectors
    u = torch.rand(k, generator=g, dtype=torch.float64)
    for step in range(1, k):
        if step % KMeansSteps.SEED_STEP == 0:
            yield None
        cum = dist.double().cumsum(0)
        total = float(cum[-1])
        nxt = int(torch.searchsorted(cum, u[step] * total).clamp_max(x.shape[0] - 1)) if total > 0 else step
        chosen.append(nxt)
        dist = torch.minimum(dist, (2.0 - 2.0 * (x @ x[nxt])).clamp_min(0.0))
    yield x[chosen].clone()


def nearest_centroid(centroids: torch.Tensor, vecs: torch.Tensor) -> torch.Tensor:
    """The group (index of the most similar centroid) of each row of ``vecs``, in chunks."""
    out = torch.empty(vecs.shape[0], dtype=torch.long, device=vecs.device)
    c = centroids.to(vecs.device, vecs.dtype)
    for start in range(0, vecs.shape[0], ASSIGN_CHUNK):
        out[start:start + ASSIGN_CHUNK] = (vecs[start:start + ASSIGN_CHUNK] @ c.T).argmax(dim=1)
    return out


def gather_rows(matrix: torch.Tensor, rows: torch.Tensor, scratch: dict) -> torch.Tensor:
    """``matrix[rows]`` written into a buffer kept in ``scratch`` and reused by the next call (a view of
    it: valid until then). A fresh 60 MB result per request cost more in page faults than the copy
    itself: 58 ms for 40k rows of 384 floats here, 15 ms into a reused buffer.

    >>> m, scratch = torch.arange(12.0).reshape(4, 3), {}
    >>> gather_rows(m, torch.tensor([3, 1]), scratch).tolist()
    [[9.0, 10.0, 11.0], [3.0, 4.0, 5.0]]
    """
    buf = scratch.get("buf")
    shape = (rows.numel(), *matrix.shape[1:])
    if buf is None or buf.shape[0] < shape[0] or buf.shape[1:] != shape[1:] or buf.dtype != matrix.dtype \
            or buf.device != matrix.device:
        buf = torch.empty((max(shape[0], 2 * (buf.shape[0] if buf is not None else 0)), *shape[1:]),
                          dtype=matrix.dtype, device=matrix.device)
        scratch["buf"] = buf
    return torch.index_select(matrix, 0, rows, out=buf[: shape[0]])


class CoarseTraining:
    """A coarse index being trained a bounded step at a time (:meth:`CoarseIndex.training`)."""

    def __init__(self, steps: KMeansSteps, capacity: int, trained_on: int) -> None:
        self.steps, self.capacity, self.trained_on = steps, capacity, trained_on
        self.index: CoarseIndex | None = None  # set by the last step

    def step(self) -> int:
        """One step of the k-means; returns 1, 0 once the index is built."""
        if self.index is not None:
            return 0
        self.steps.step()
        if self.steps.centroids is not None:
            self.index = CoarseIndex(self.steps.centroids, self.capacity, self.trained_on)
        return 1


class CoarseIndex:
    """Centroids and each row's group (-1: not assigned yet, always a candidate)."""

    def __init__(self, centroids: torch.Tensor, capacity: int, trained_on: int) -> None:
        self.centroids = centroids
        self.group = torch.full((capacity,), -1, dtype=torch.long, device=centroids.device)
        self.trained_on = trained_on  # valid items when trained: retrained when the catalogue doubles
        self.cursor = 0  # rows below it were assigned at least once (later changes: assign_rows)
        # Inverted lists (rows sorted by group, and where each group starts), built by rebuild_lists:
        # a request reads its groups' slices instead of every row's group. Rows assigned after the
        # build are marked in ``moved`` and are candidates whatever their group, until the next build.
        self.lists_rows: torch.Tensor | None = None
        self.lists_start: torch.Tensor | None = None
        self.lists_n = 0  # rows the lists cover; rows past it are candidates too
        self.moved = torch.zeros(capacity, dtype=torch.bool, device=centroids.device)
        self.moved_count = 0

    @classmethod
    def train(cls, vecs: torch.Tensor, *, k: int | None = None, capacity: int, seed: int = 0) -> "CoarseIndex":
        """Centroids from a sample of ``vecs`` (the valid item vectors), at once; no row assigned yet."""
        training = cls.training(vecs, k=k, capacity=capacity, seed=seed)
        while training.step():
            pass
        return training.index

    @classmethod
    def training(cls, vecs: torch.Tensor, *, k: int | None = None, capacity: int, seed: int = 0,
                 rows: torch.Tensor | None = None) -> "CoarseTraining":
        """The same training in bounded steps (:class:`CoarseTraining`). ``rows``: the rows of ``vecs`` to
        sample from (the valid ones), so that only the sample is read, not a copy of every valid row."""
        n = vecs.shape[0] if rows is None else rows.numel()
        k = k or lists_for(n)
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(n, generator=g)[: min(n, SAMPLE_PER_LIST * k)].to(vecs.device)
        sample = vecs[pick if rows is None else rows[pick]]
        return CoarseTraining(KMeansSteps(sample, k, seed=seed), capacity, n)

    @property
    def lists(self) -> int:
        return self.centroids.shape[0]

    def complete(self, n: int) -> bool:
        return self.cursor >= n

    def grow(self, capacity: int) -> None:
        if capacity > self.group.shape[0]:
            group = torch.full((capacity,), -1, dtype=torch.long, device=self.group.device)
            group[: self.group.shape[0]] = self.group
            moved = torch.zeros(capacity, dtype=torch.bool, device=self.group.device)
            moved[: self.moved.shape[0]] = self.moved
            self.group, self.moved = group, moved

    def assign_rows(self, rows: list[int] | torch.Tensor, vecs: torch.Tensor) -> None:
        """Rows whose vectors are ``vecs`` now (a refresh): each to its nearest group."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.group.device)
        if rows.numel():
            self.grow(int(rows.max()) + 1)
            self.group[rows] = nearest_centroid(self.centroids, vecs)
            if self.lists_rows is not None:
                self.moved[rows] = True
                self.moved_count += rows.numel()

    def rebuild_lists(self, n: int) -> None:
        """Sort rows ``< n`` by group into the inverted lists (one argsort: ~0.1 s at 1M rows; the writer
        calls it when a fifth as many rows moved, see :meth:`lists_stale`)."""
        group = self.group[:n]
        order = torch.argsort(group + 1, stable=True)  # group -1 (unassigned) first
        counts = torch.bincount(group + 1, minlength=self.lists + 1)
        start = torch.zeros(self.lists + 2, dtype=torch.long, device=group.device)
        start[1:] = counts.cumsum(0)
        moved = torch.zeros_like(self.moved)
        self.lists_rows, self.lists_start, self.lists_n, self.moved, self.moved_count = order, start, n, moved, 0

    def lists_stale(self, n: int) -> bool:
        """Whether the inverted lists are missing or behind by many rows (new or moved)."""
        if self.lists_rows is None:
            return True
        return self.moved_count + (n - self.lists_n) > max(4_096, self.lists_n // 5)

    def assign_next(self, vectors: torch.Tensor, n: int, budget: int) -> int:
        """Assign up to ``budget`` rows from the cursor on (``vectors``: the index's matrix); returns how many."""
        end = min(n, self.cursor + budget)
        if end <= self.cursor:
            return 0
        self.grow(end)
        self.group[self.cursor:end] = nearest_centroid(self.centroids, vectors[self.cursor:end])
        done, self.cursor = end - self.cursor, end
        return done

    def candidates(self, queries: torch.Tensor, n: int, n_probe: int) -> torch.Tensor:
        """Rows ``< n`` in the ``n_probe`` groups nearest to any row of ``queries``, and every row not
        assigned yet (some rows may come twice). From the inverted lists when they cover the rows,
        else by a pass over every row's group (8 bytes a row, not a 1.5 kB vector)."""
        probe = self.probe(queries, n_probe)
        rows_by_list, start, covered = self.lists_rows, self.lists_start, self.lists_n  # one consistent read
        if rows_by_list is None or covered > n:
            return self.scan(probe, n)
        bounds = start.tolist()
        # slot 0 holds the rows unassigned at the build; group g's rows are slot g + 1
        slots = [0] + [g + 1 for g in probe.tolist()]
        parts = [rows_by_list[bounds[slot]:bounds[slot + 1]] for slot in slots]
        parts.append(self.moved[:covered].nonzero().flatten())  # moved since: candidates wherever they are
        parts.append(torch.arange(covered, n, device=rows_by_list.device))
        return torch.cat(parts)

    def probe(self, queries: torch.Tensor, n_probe: int) -> torch.Tensor:
        """The distinct groups among the ``n_probe`` nearest to each query, ascending."""
        sim = queries.to(self.centroids.dtype) @ self.centroids.T  # [m, k]
        return torch.unique(torch.topk(sim, min(n_probe, self.lists), dim=1).indices)

    def scan(self, groups: torch.Tensor, n: int) -> torch.Tensor:
        """Rows ``< n`` whose group is one of ``groups`` or that have none, by one pass over the groups."""
        wanted = torch.zeros(self.lists + 1, dtype=torch.bool, device=self.group.device)
        wanted[groups] = True
        wanted[-1] = True  # group -1 (unassigned) indexes the last slot
        group = self.group[:n]  # read once: the writer may replace the tensor meanwhile
        rows = wanted[group].nonzero().flatten()
        if group.shape[0] < n:  # rows added since the last assignment grew the tensor: unassigned
            rows = torch.cat([rows, torch.arange(group.shape[0], n, device=rows.device)])
        return rows


def sample_outside(rows: torch.Tensor, n: int, sample: int, seed: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``rows`` (ascending) with up to ``sample`` rows ``< n`` drawn uniformly from outside them: the
    union (ascending), the log of how many rows each stands for (0 for ``rows``, log(outside / drawn)
    for a drawn one) and which were drawn. A step's softmax over the candidates alone took its negatives
    from the items most like the user's texts and learned another ranker (Amazon, in process: -0.016
    Recall@10; the same ranking with steps over every item: -0.0004); with the outside in it through an
    importance-weighted sample (sampled softmax) each step estimates the full one.

    >>> rows, logw, drawn = sample_outside(torch.tensor([0, 1]), 10, 4, seed=0)
    >>> rows.numel(), int(drawn.sum()), round(float(logw[drawn][0].exp()), 2) == round(8 / int(drawn.sum()), 2)
    (6, 4, True)
    """
    outside = n - rows.numel()
    if outside <= 0 or sample <= 0:
        return rows, torch.zeros(rows.numel(), device=rows.device), torch.zeros(rows.numel(), dtype=torch.bool,
                                                                                device=rows.device)
    g = torch.Generator().manual_seed(seed)
    draw = torch.randint(n, (2 * sample,), generator=g).to(rows.device)
    pos = torch.searchsorted(rows, draw).clamp_max(rows.numel() - 1)
    draw = torch.unique(draw[rows[pos] != draw])  # without replacement, outside the candidates
    if draw.numel() > sample:  # a uniform subset: unique() sorts, so its first ``sample`` were the lowest rows
        draw = draw[torch.randperm(draw.numel(), generator=g)[:sample].to(draw.device)]
    if draw.numel() == 0:
        return sample_outside(rows, n, 0, seed)
    union, order = torch.sort(torch.cat([rows, draw]))
    drawn = order >= rows.numel()
    logw = torch.zeros(union.numel(), device=rows.device)
    logw[drawn] = math.log(outside / draw.numel())
    return union, logw, drawn

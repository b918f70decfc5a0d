"""Augmented training samples for cold items (items with fewer than ``COLD_CLICKS`` clicks).

A contrastive round only ever pulls a context towards items that were clicked, so an item with no
or one click is a negative in every batch it appears in and never a positive. Two ways to give it
positives, both added with a *lower* weight than real clicks (they are guesses, not observations):

* generation-based (``pseudo``): pseudo-queries made from the item's own title (and category when
  the catalog has one): a shortened title, a key phrase, brand + type (:func:`pseudo_queries`);
  plain string heuristics for English product titles, nothing learned from a particular log;
* retrieval-based (``neighbours``): the contexts that led to clicks on the item's nearest clicked
  neighbours (cosine of item vectors), weighted by that cosine (:func:`neighbour_samples`).

:func:`augment_samples` makes both for the cold items of a catalog, within a budget (a share of the
real samples, the least-clicked items first), so that at equal optimiser steps the real clicks keep
most of the draws. :func:`augment_table` does the same on a trainer's sample table.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from coldstart.errors import ConfigError

AUGMENT_MODES = ("off", "pseudo", "neighbours", "both")
COLD_CLICKS = 3  # an item with fewer clicks than this is cold


@dataclass(frozen=True)
class AugmentConfig:
    """One configuration for every log (chosen before measuring, never tuned per dataset)."""

    cold_clicks: int = COLD_CLICKS
    weight_factor: float = 0.5  # an augmented row's weight = this x the median real weight (x cosine)
    max_share: float = 0.25  # at most this many augmented rows per real sample
    pseudo_per_item: int = 3
    neighbours: int = 3  # nearest clicked items per cold item
    contexts_per_neighbour: int = 1  # its most recent contexts


@dataclass(frozen=True)
class AugmentedSample:
    context: str
    item_id: str
    weight: float
    kind: str  # "pseudo" | "neighbour"


def check_mode(mode: str, variable: str = "COLDSTART_TRAINER_AUGMENT") -> str:
    """``mode`` if it is an augmentation mode, else a ConfigError naming the variable.

    >>> check_mode("both")
    'both'
    >>> check_mode("all")
    Traceback (most recent call last):
    ...
    coldstart.errors.ConfigError: COLDSTART_TRAINER_AUGMENT='all' is not an augmentation mode; use one of off, pseudo, neighbours, both
    """
    if mode not in AUGMENT_MODES:
        raise ConfigError(f"{variable}={mode!r} is not an augmentation mode; use one of {', '.join(AUGMENT_MODES)}")
    return mode


# ----------------------------------------------------------------------------------- generation
_BRACKETS = re.compile(r"\([^)]*\)|\[[^\]]*\]|\{[^}]*\}")
_SEGMENTS = re.compile(r"\s[-\u2013\u2014|:/]\s|[,;|]")
_STOP = frozenset("a an and or the of for with in on to by from at as w/ x & + - new".split())


def _words(text: str) -> list[str]:
    return [w.strip(".,;:!?\"'") for w in text.split()]


def _is_content(word: str) -> bool:
    return word.lower() not in _STOP and any(ch.isalpha() for ch in word) and not any(ch.isdigit() for ch in word)


def pseudo_queries(title: str, category: str | None = None, *, max_queries: int = 3,
                   short_words: int = 5, phrase_words: int = 3) -> list[str]:
    """Query-like texts for an item from its own title: shortened title, key phrase, brand + type.

    The head segment (before the first comma, dash or bar; bracketed model numbers dropped) names the
    product; its first ``short_words`` words are the shortened title, its last ``phrase_words`` content
    words (no digits, no stop words) the key phrase (English noun phrases end in their head noun), and
    the title's first word with that head noun (or with the category) the brand + type.

    >>> pseudo_queries("AmazonBasics 6-Sheet Cross-Cut Paper and Credit Card Shredder")
    ['amazonbasics 6-sheet cross-cut paper', 'credit card shredder', 'amazonbasics shredder']
    >>> pseudo_queries("HP 74 Black & 75 Tri-color Original Ink Cartridges, 2 Cartridges (CB335WN, CB337WN)")
    ['hp 74 black & 75', 'original ink cartridges', 'hp cartridges']
    >>> pseudo_queries("Blue Electric Kettle")  # the whole title is not a pseudo-query
    ['blue kettle']
    >>> pseudo_queries("Stapler", category="Office Supplies")
    ['stapler', 'stapler office supplies']
    >>> pseudo_queries("")
    []
    """
    text = " ".join(_BRACKETS.sub(" ", title or "").split())
    segments = [s.strip() for s in _SEGMENTS.split(text) if s.strip()]
    if not segments:
        return []
    head = [w for w in _words(segments[0]) if w]
    out: list[str] = []
    short = head[:short_words]
    while short and short[-1].lower() in _STOP:
        short.pop()
    out.append(" ".join(short))
    content = [w for w in head if _is_content(w)]
    out.append(" ".join(content[-phrase_words:]))
    brand = head[0] if head and _is_content(head[0]) else ""
    kind = category or (content[-1] if content else "")
    if brand and kind and brand.lower() != kind.lower():
        out.append(f"{brand} {kind}")
    full = " ".join(head).lower()
    seen: set[str] = set()
    queries = []
    for q in (" ".join(x.lower().split()) for x in out):
        if q and q not in seen and (q != full or len(segments) > 1 or category):
            seen.add(q)
            queries.append(q)
    return queries[:max_queries]


# ------------------------------------------------------------------------------------ retrieval
def neighbour_samples(cold: Sequence[int], item_vectors: torch.Tensor, contexts_by_item: Mapping[int, Sequence[str]],
                      *, k: int = 3, per_neighbour: int = 1) -> list[list[tuple[str, int, float]]]:
    """Per cold item row (in ``cold`` order): ``(context, neighbour row, cosine)`` borrowed from its
    ``k`` nearest items (cosine of ``item_vectors`` rows) among those with contexts, itself excluded;
    each neighbour gives its last ``per_neighbour`` contexts. Neighbours with a cosine <= 0 give none.

    >>> v = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> neighbour_samples([0], v, {1: ["red tent"], 2: ["blue kettle"]}, k=1)
    [[('red tent', 1, 0.9939)]]
    """
    donors = sorted(r for r, ctx in contexts_by_item.items() if ctx)
    if not cold or not donors:
        return [[] for _ in cold]
    unit = F.normalize(item_vectors.float(), dim=1)
    sims = unit[list(cold)] @ unit[donors].T  # [cold, donors]
    donor_pos = {r: j for j, r in enumerate(donors)}
    for i, r in enumerate(cold):  # an item is never its own neighbour
        if r in donor_pos:
            sims[i, donor_pos[r]] = -math.inf
    top = sims.topk(min(k, len(donors)), dim=1)
    out = []
    for vals, idx in zip(top.values.tolist(), top.indices.tolist()):
        rows = []
        for s, j in zip(vals, idx):
            if s > 0:
                rows += [(c, donors[j], round(s, 4)) for c in list(contexts_by_item[donors[j]])[-per_neighbour:]]
        out.append(rows)
    return out


# ------------------------------------------------------------------------------------- together
def augment_samples(contexts: Sequence[str], item_ids: Sequence[str], weights: Sequence[float],
                    catalog: Mapping[str, str], mode: str, *, item_vectors: torch.Tensor | None = None,
                    click_counts: Mapping[str, int] | None = None, categories: Mapping[str, str] | None = None,
                    config: AugmentConfig = AugmentConfig()) -> list[AugmentedSample]:
    """Augmented samples for the cold items of ``catalog`` (item id -> text), given the real samples
    (``contexts[i]`` led to ``item_ids[i]`` with ``weights[i]``).

    ``click_counts`` default to the real samples' items; ``item_vectors`` (rows in ``catalog`` order)
    are needed for ``neighbours``. At most ``max_share`` x the real samples are made, one row per
    item per turn, the least-clicked items first, so every cold item gets its first row before any
    gets a second. Weights: ``weight_factor`` x the real samples' median weight, times the cosine for
    a neighbour's context. Warm items get nothing.

    >>> cat = {"a": "Red Camping Tent", "b": "Blue Electric Kettle", "c": "Green Camping Tent"}
    >>> rows = augment_samples(["tent"] * 8, ["a"] * 8, [1.0] * 8, cat, "pseudo")  # "a" is warm
    >>> [(r.context, r.item_id, r.weight) for r in rows]
    [('blue kettle', 'b', 0.5), ('green tent', 'c', 0.5)]
    """
    check_mode(mode, "mode")
    if mode == "off" or not catalog:
        return []
    counts = Counter(item_ids) if click_counts is None else Counter(click_counts)
    ids = list(catalog)
    row_of = {i: r for r, i in enumerate(ids)}
    cold = sorted((r for r, i in enumerate(ids) if counts[i] < config.cold_clicks), key=lambda r: (counts[ids[r]], r))
    if not cold:
        return []
    real = sorted(float(w) for w in weights if math.isfinite(float(w)))
    base = config.weight_factor * (real[len(real) // 2] if real else 1.0)
    by_kind: list[list[list[AugmentedSample]]] = []  # kind -> cold item -> its rows
    if mode in ("pseudo", "both"):
        by_kind.append([[AugmentedSample(q, ids[r], base, "pseudo")
                         for q in pseudo_queries(catalog[ids[r]], (categories or {}).get(ids[r]))[:config.pseudo_per_item]]
                        for r in cold])
    if mode in ("neighbours", "both"):
        if item_vectors is None:
            raise ValueError("neighbour augmentation needs the catalog's item vectors")
        by_item: dict[int, list[str]] = defaultdict(list)
        for c, i in zip(contexts, item_ids):
            if c and i in row_of:
                by_item[row_of[i]].append(c)
        borrowed = neighbour_samples(cold, item_vectors, by_item, k=config.neighbours,
                                     per_neighbour=config.contexts_per_neighbour)
        by_kind.append([[AugmentedSample(c, ids[r], base * s, "neighbour") for c, _, s in rows]
                        for r, rows in zip(cold, borrowed)])
    budget = int(config.max_share * len(item_ids)) if item_ids else config.pseudo_per_item * len(cold)
    # Each kind its own turns (every cold item's first row before any second), kinds alternating, so
    # that with both on each gets half of the budget.
    return _interleave([_interleave(per_item) for per_item in by_kind])[:budget]


def _interleave(lists: Sequence[Sequence[AugmentedSample]]) -> list[AugmentedSample]:
    """First elements of every list, then second elements, ... (order kept within each turn)."""
    out = []
    for turn in range(max((len(x) for x in lists), default=0)):
        out += [x[turn] for x in lists if turn < len(x)]
    return out


def augment_table(samples, mode: str, encode: Callable[[list[str]], torch.Tensor] | None = None, *,
                  config: AugmentConfig = AugmentConfig()):
    """Rows to add to a trainer's sample table (same schema): :func:`augment_samples` over the items
    the table knows (their latest text), with ``encode`` (texts -> vectors) for the neighbours.

    Items that were never clicked are not in a sample table, so here ``cold`` means 1..cold_clicks-1
    clicks; an augmented row's ``sample_id`` starts with ``aug:`` and its ``loss`` is NaN (unscored).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if mode == "off" or samples.num_rows == 0:
        return samples.schema.empty_table()
    ordered = samples.take(pc.sort_indices(samples, [("ts", "ascending")]))
    contexts = ordered.column("context").to_pylist()
    items = ordered.column("item_id").to_pylist()
    catalog = dict(zip(items, ordered.column("item_text").to_pylist()))
    vectors = None
    if mode in ("neighbours", "both"):
        if encode is None:
            raise ValueError("neighbour augmentation needs an encoder for the item texts")
        vectors = encode(list(catalog.values()))
    rows = augment_samples(contexts, items, ordered.column("weight").to_pylist(), catalog, mode,
                           item_vectors=vectors, config=config)
    ts = float(pc.max(ordered.column("ts")).as_py())
    version = ordered.column("model_version")[-1].as_py() if "model_version" in ordered.column_names else ""
    data = [{"sample_id": f"aug:{r.kind}:{r.item_id}:{k}", "user_id": "", "context": r.context,
             "item_id": r.item_id, "item_text": catalog[r.item_id], "weight": r.weight, "loss": math.nan,
             "prior_events": 0, "model_version": version, "ts": ts, "received_ts": ts}
            for k, r in enumerate(rows)]
    return pa.Table.from_pylist([{n: d.get(n) for n in samples.schema.names} for d in data], schema=samples.schema)

"""coldstart's model: encoder, importance, profile math, retrieval, item index, registry, hot-swap.

Plain functions and small classes over torch tensors; nothing here knows about Kafka or Faust
(tests/test_packaging.py checks). The same code runs on the GPU and the CPU. Submodules are imported
explicitly (``from coldstart.model.profile import profile_vectors``) so that the pure math does not pay
for importing transformers.

- :mod:`coldstart.model.encoder`    TextEncoder (MiniLM, offline) and the (version, text) EmbeddingCache
- :mod:`coldstart.model.importance` bounded importance weight of a training sample (a number with a meaning)
- :mod:`coldstart.model.estimators` the importance estimators' names, torch-free (settings validate them)
- :mod:`coldstart.model.profile`    recency weights, profile weights, batched profile vectors, popularity blend
- :mod:`coldstart.model.retrieval`  popularity scores, blended scoring, top-k with exclusions, untitled items
- :mod:`coldstart.model.items`      the item index of one version: ids, texts, vectors, decayed popularity
- :mod:`coldstart.model.stats`      stream statistics about items learned from clicks
- :mod:`coldstart.model.ranker`     the linear softmax ranker over per-candidate signals
- :mod:`coldstart.model.anomaly`    bot-like users flagged from bounded per-user counters
- :mod:`coldstart.model.serving`    the unit that is swapped: one version's encoder and item vectors
- :mod:`coldstart.model.registry`   versioned, checksummed artifacts behind one atomically replaced pointer
"""

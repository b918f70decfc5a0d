"""coldstart's model: encoder, importance, profile math, retrieval, item index, registry, hot-swap.

Plain functions and small classes over torch tensors; nothing here knows about Kafka or Faust. The
same code runs on the GPU and the CPU. Submodules are imported explicitly (``from model.profile import
profile_vectors``) so that the pure math does not pay for importing transformers.

- :mod:`coldstart.model.encoder`    TextEncoder (MiniLM, offline) and the (version, text) EmbeddingCache
- :mod:`coldstart.model.importance` bounded importance weight of a training sample (a number with a meaning)
- :mod:`coldstart.model.profile`    recency weights, batched profile vectors, popularity blend, explanations
- :mod:`coldstart.model.retrieval`  popularity scores, blended scoring, top-k with exclusions, untitled items
"""

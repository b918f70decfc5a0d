"""coldstart.streams: the Faust worker, in the order data flows.

Topic names and every record that crosses a topic (event parsers, training sample, dead letter, model
announcement) are in :mod:`coldstart.contract`, shared with the trainer, replay, evaluation and benchmarks.

- :mod:`coldstart.streams.topics`      topic specs, created explicitly before anything produces
- :mod:`coldstart.streams.state`       a user's stored profile state (bounded, idempotent by event id, versioned format)
- :mod:`coldstart.streams.store`       the profile table's RocksDB store: one memory budget for all partitions
- :mod:`coldstart.streams.processor`   the batch step (no Kafka): encode, score, update profiles, samples
- :mod:`coldstart.streams.recommender` the read path: a user's recommendations and their explanations
- :mod:`coldstart.streams.catalog`     every worker's view of the whole catalog
- :mod:`coldstart.streams.swap`        hot-swap of model versions between batches
- :mod:`coldstart.streams.metrics`     every worker metric in one typed container
- :mod:`coldstart.streams.app`         the Faust app: agents, table, web views
"""

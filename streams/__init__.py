"""coldstart.streams: the Faust worker, in the order data flows.

- :mod:`coldstart.streams.topics`     topic names and specs, created explicitly
- :mod:`coldstart.streams.records`    parsing of incoming events, records on outgoing topics
- :mod:`coldstart.streams.state`      a user's stored profile state (bounded, idempotent by event id)
- :mod:`coldstart.streams.processor`  the batch step (no Kafka): encode, score, update, recommend
- :mod:`coldstart.streams.catalog`    every worker's view of the whole catalog
- :mod:`coldstart.streams.swap`       hot-swap of model versions between batches
- :mod:`coldstart.streams.metrics`    every worker metric in one typed container
- :mod:`coldstart.streams.app`        the Faust app: agents, table, web views
"""

"""``coldstart bench ...``: benchmarks, each printing its figure beside a baseline measured in the same run.

    run.py          the encode, batch and stream benchmarks and the dispatcher
    stack.py        reading real workers' metrics (counters, histogram quantiles, memory)
    events.py       the benchmarks' events (the Best Buy log, renamed copies for new-user peaks)
    latency.py      event -> profile and request latency under a steady load
    load.py         an open-loop HTTP load generator (latency from the scheduled time)
    serve.py        recommendation requests while ingesting vs idle
    overload.py     three times a worker's capacity, then the drain
    catalog.py      item index, scoring and top-k at 100k and 1M items
    importance.py   importance versus uniform sampling at equal fine-tuning steps
    estimators.py   importance estimators side by side

Brokers and workers come from the local toolkit (``coldstart.local``).
"""

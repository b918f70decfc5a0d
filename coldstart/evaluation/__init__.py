"""Prequential cold-start evaluation of the live pipeline against online baselines.

The data flows: a dataset (``coldstart.replay``) is replayed in time order through Kafka; before each
click the runner asks the worker's recommendations API for the user's top-K and lets every in-process
baseline rank too; then the click is replayed and learned. Results become a report folder.

    metrics.py      Recall@K, NDCG@K, MRR, coverage, bootstrap CIs, prior-event groups (the trainer's
                    gate uses the same functions)
    records.py      the recorded rankings (one row per request and method) and their JSONL file
    baselines.py    popularity, item-kNN, transitions, query memory, zero-shot profile (+ popularity)
    prequential.py  the runner, over a stack from the local toolkit (``coldstart.local``)
    inprocess.py    the same protocol with the batch step in this process (``--in-process``)
    report.py       report.md, PNG plots, results.json
    cli.py          ``coldstart eval``
"""

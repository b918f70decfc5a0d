"""Prequential cold-start evaluation of the live pipeline against online baselines.

The data flows: a dataset (``coldstart.replay``) is replayed in time order through Kafka; before each
click the runner asks the worker's recommendations API for the user's top-K and lets every in-process
baseline rank too; then the click is replayed and learned. Results become a report folder.

    metrics.py      Recall@K, NDCG@K, MRR, coverage, bootstrap CIs, prior-event groups
    baselines.py    popularity, item-kNN, transitions, query memory, zero-shot profile (+ popularity)
    prequential.py  the runner (and a local broker + worker launcher for the CLI)
    report.py       report.md, PNG plots, results.json
    cli.py          ``coldstart eval``
"""

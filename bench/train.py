"""``coldstart bench train``: the trainer's throughput in each precision, on this machine's device
(issue 10, item 4), beside float32 in the same run, with the holdout Recall@10 each one reaches.

Both real logs, the importance benchmark's split and samples (``bench/importance.py``: the last 4,000
training clicks with a context, 1,000 test clicks of users with 1-5 prior events), ``weighted_loss``
sampling, batch 32, lr 5e-5, the same seed for every precision, so the two runs see the same batches
in the same order and differ only by the forward passes' arithmetic. Each precision is run twice,
interleaved; samples/s is the better of the two (a shared machine slows one now and then).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from coldstart.settings import Settings

__all__ = ["bench_train"]


def bench_train(settings: Settings, *, steps: int = 60, batch_size: int = 32, lr: float = 5e-5,
                datasets: Sequence[str] = ("bestbuy", "amazon"), precisions: Sequence[str] = ("float32", "bfloat16"),
                max_length: int = 32, max_train: int = 4000, max_test: int = 1000, log: Any = print) -> dict:
    import torch

    from coldstart.bench.importance import holdout_table, load_clicks, prepare, score_samples
    from coldstart.model.encoder import EmbeddingCache, TextEncoder
    from coldstart.trainer.gate import evaluate
    from coldstart.trainer.rounds import fine_tune

    encoder = TextEncoder(settings.model_path or None, device=settings.device, max_length=max_length)
    cache = EmbeddingCache(200_000)
    out: dict[str, Any] = {"protocol": {"steps": steps, "batch_size": batch_size, "lr": lr, "device": str(encoder.device),
                                        "threads": torch.get_num_threads(), "max_length": max_length}}
    rows: list[tuple] = []
    for name in datasets:
        clicks, titles = load_clicks(settings, name)
        prep = prepare(name, clicks, titles, max_train=max_train, max_test=max_test)
        samples, base_items = score_samples(encoder, cache, prep)
        hold = holdout_table(prep)
        base = evaluate(encoder, None, hold, prep.catalog, max_length=max_length, item_vectors=base_items)
        per: dict[str, Any] = {}
        for precision in list(precisions) * 2:
            t0 = time.perf_counter()
            r = fine_tune(encoder, samples, steps=steps, batch_size=batch_size, lr=lr, sampling="weighted_loss",
                          time_budget_s=1e9, seed=0, precision=precision)
            m = evaluate(r.module, encoder.tokenizer, hold, prep.catalog, max_length=max_length)
            got = per.setdefault(precision, {"samples_per_s": 0.0, **m, "last_loss": r.last_loss})
            got["samples_per_s"] = max(got["samples_per_s"], r.samples_per_s)
            log(f"[{name}] {precision}: {r.samples_per_s:.1f} samples/s, recall@10 {m['recall@10']:.4f}, "
                f"{time.perf_counter() - t0:.0f} s")
        out[name] = {"base": base, **per}
        ref = per[precisions[0]]
        for precision in precisions[1:]:
            p = per[precision]
            rows.append((f"{name}: trainer samples/s, {precision} ({encoder.device.type})", f"{p['samples_per_s']:.1f}",
                         f"{ref['samples_per_s']:.1f} {precisions[0]}", f"{p['samples_per_s'] / ref['samples_per_s']:.2f}",
                         "-"))
            rows.append((f"{name}: holdout Recall@10 after {steps} steps, {precision}", f"{p['recall@10']:.4f}",
                         f"{ref['recall@10']:.4f} {precisions[0]}; base {base['recall@10']:.4f}",
                         f"{p['recall@10'] / ref['recall@10']:.3f}" if ref["recall@10"] else "-", "within 1%"))
    out["rows"] = rows
    return out

"""One fine-tuning round: contrastive training of a copy of the encoder on the buffered samples.

Objective: one-sided InfoNCE from context to item text with in-batch negatives, over cosine similarity
divided by a temperature of 0.05. One-sided because serving only ever ranks items for a context; in-batch
columns holding the same ``item_id`` as the row's positive are masked out (a popular item clicked twice
in a batch is not a negative of itself).

Sampling (``sampling=``), following Katharopoulos & Fleuret 2018 ("Not all samples are created equal"):

* ``"importance"``: draw a batch with replacement, ``p_i ∝ weight_i``, and multiply each sample's loss by
  ``1 / (N p_i)`` normalised to mean 1 over the batch, so the gradient stays an (approximately) unbiased
  estimate of the uniform one while the batch holds the informative samples;
* ``"weighted_loss"``: uniform draws without replacement, loss weighted by ``weight`` (normalised to
  mean 1 over the batch): a biased, reweighted objective;
* ``"uniform"``: uniform draws, plain mean loss (the baseline).

The serving encoder is never touched: the round trains ``copy.deepcopy(encoder.module)`` and returns it.
"""

from __future__ import annotations

import typing

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
import torch
import torch.nn.functional as F

from coldstart.model.encoder import TextEncoder, mean_pool

Sampling = Literal["importance", "weighted_loss", "uniform"]
SAMPLING_MODES: tuple[str, ...] = typing.get_args(Sampling)
# The forward passes' arithmetic. auto: bfloat16 autocast on CUDA, float32 on a CPU. On a CPU with native
# bfloat16 (AVX512-BF16 / AMX) bfloat16 trained 1.5-1.7x the samples/s of float32 with the same holdout
# Recall@10 on both real logs (README, learning section): opt-in there, as the serving encoder's is.
Precision = Literal["auto", "float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
TEMPERATURE = 0.05


@dataclass
class RoundResult:
    module: torch.nn.Module = field(repr=False)
    losses: list[float]
    steps: int
    samples_per_s: float
    seconds: float
    stopped_by_time: bool = False

    @property
    def first_loss(self) -> float:
        return self.losses[0] if self.losses else math.nan

    @property
    def last_loss(self) -> float:
        return self.losses[-1] if self.losses else math.nan


def draw_batch(weights: torch.Tensor, batch_size: int, sampling: Sampling,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(row indices, per-sample loss multipliers with mean 1) for one mini-batch.

    >>> g = torch.Generator().manual_seed(0)
    >>> idx, mult = draw_batch(torch.tensor([1.0, 1.0, 2.0]), 4, "importance", g)
    >>> float(mult.mean())
    1.0
    """
    n = weights.numel()
    w = weights.double().clamp_min(0.0)
    if sampling == "importance":
        if not torch.isfinite(w).all() or w.sum() <= 0:
            w = torch.ones_like(w)
        p = w / w.sum()
        idx = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        return idx, importance_correction(p[idx], n)
    if batch_size <= n:
        idx = torch.randperm(n, generator=generator)[:batch_size]
    else:
        idx = torch.randint(n, (batch_size,), generator=generator)
    if sampling == "weighted_loss":
        wb = w[idx]
        mult = wb / wb.mean() if wb.sum() > 0 else torch.ones_like(wb)
        return idx, mult.float()
    if sampling == "uniform":
        return idx, torch.ones(batch_size)
    raise ValueError(f"sampling must be importance, weighted_loss or uniform, got {sampling!r}")


def importance_correction(p: torch.Tensor, n: int) -> torch.Tensor:
    """``1 / (N p_i)`` normalised to mean 1 over the batch (the unbiasing weights).

    >>> importance_correction(torch.tensor([0.5, 0.25, 0.25]), 3)
    tensor([0.6000, 1.2000, 1.2000])
    """
    raw = 1.0 / (n * p.double())
    return (raw / raw.mean()).float()


def info_nce(queries: torch.Tensor, items: torch.Tensor, item_ids: Sequence[str],
             multipliers: torch.Tensor | None = None, temperature: float = TEMPERATURE) -> torch.Tensor:
    """Mean (weighted) one-sided InfoNCE of unit ``queries`` [b,d] against unit ``items`` [b,d]."""
    logits = queries @ items.T / temperature
    b = logits.shape[0]
    codes = {}
    ids = torch.tensor([codes.setdefault(i, len(codes)) for i in item_ids], device=logits.device)
    same = ids[:, None] == ids[None, :]
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    per_sample = F.cross_entropy(logits, torch.arange(b, device=logits.device), reduction="none")
    if multipliers is None:
        return per_sample.mean()
    return (per_sample * multipliers.to(per_sample.device, per_sample.dtype)).mean()


def encode_texts(model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int = 64,
                 batch_size: int = 256) -> torch.Tensor:
    """Unit vectors of ``texts`` from a TextEncoder or a bare (copied) transformers module."""
    if isinstance(model, TextEncoder):
        return model.encode(list(texts), batch_size=batch_size)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = _tokenize(tokenizer, texts[start:start + batch_size], max_length, device)
            out.append(mean_pool(model(**batch).last_hidden_state, batch["attention_mask"]).float())
    model.train(was_training)
    if not out:
        return torch.empty(0, model.config.hidden_size, device=device)
    return torch.cat(out)


def fine_tune(encoder: TextEncoder, samples: pa.Table, *, steps: int, batch_size: int, lr: float,
              sampling: Sampling = "importance", time_budget_s: float = 300.0, seed: int = 0,
              weight_decay: float = 0.01, max_grad_norm: float = 1.0,
              freeze_word_embeddings: bool = True, precision: Precision = "auto") -> RoundResult:
    """Train a copy of ``encoder.module`` for up to ``steps`` steps or ``time_budget_s`` seconds.

    The word-embedding table is frozen by default: its gradient is dense over the whole vocabulary
    (half of MiniLM's parameters) while a round touches a few hundred tokens, so training it costs
    most of the optimiser time and only lets rare tokens drift.

    ``precision`` bfloat16 (``auto``: on CUDA only) runs the forward passes under bf16 autocast; the
    weights, the optimiser state and the loss stay float32, and bf16 needs no loss scaling (its
    exponent range is float32's).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if samples.num_rows < 2:
        raise ValueError(f"a round needs at least 2 samples, got {samples.num_rows}")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    module = copy.deepcopy(encoder.module).to(encoder.device)
    module.train()
    if freeze_word_embeddings:
        module.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay,
                                  foreach=encoder.device.type == "cuda")
    contexts = samples.column("context").to_pylist()
    texts = samples.column("item_text").to_pylist()
    item_ids = samples.column("item_id").to_pylist()
    weights = torch.tensor(samples.column("weight").to_pylist(), dtype=torch.float64)
    batch_size = min(batch_size, samples.num_rows) if sampling != "importance" else batch_size
    use_amp = encoder.device.type == "cuda" if precision == "auto" else precision == "bfloat16"
    autocast = torch.autocast(encoder.device.type, dtype=torch.bfloat16, enabled=use_amp)
    losses: list[float] = []
    stopped = False
    for _ in range(steps):
        if time.perf_counter() - t0 >= time_budget_s:
            stopped = True
            break
        idx, mult = draw_batch(weights, batch_size, sampling, generator)
        rows = idx.tolist()
        q_batch = _tokenize(encoder.tokenizer, [contexts[i] for i in rows], encoder.max_length, encoder.device)
        i_batch = _tokenize(encoder.tokenizer, [texts[i] for i in rows], encoder.max_length, encoder.device)
        with autocast:
            q = mean_pool(module(**q_batch).last_hidden_state, q_batch["attention_mask"])
            v = mean_pool(module(**i_batch).last_hidden_state, i_batch["attention_mask"])
        loss = info_nce(q.float(), v.float(), [item_ids[i] for i in rows], mult)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        losses.append(float(loss.detach()))
    module.eval()
    module.requires_grad_(True)  # a plain module again (frozen only for this round's optimiser)
    seconds = time.perf_counter() - t0
    n_steps = len(losses)
    return RoundResult(module=module, losses=losses, steps=n_steps,
                       samples_per_s=n_steps * batch_size / seconds if seconds > 0 else 0.0,
                       seconds=seconds, stopped_by_time=stopped)


def _tokenize(tokenizer: Any, texts: Sequence[str], max_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}

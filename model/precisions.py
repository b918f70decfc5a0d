"""The serving encoder's precisions, torch-free so that settings can check them; why these two and what
they measured is in :mod:`coldstart.model.encoder`."""

from __future__ import annotations

__all__ = ["PRECISIONS"]

PRECISIONS = ("float32", "bfloat16")

"""The recommendations API's answer, one implementation for both processes that serve it: the worker
(which owns the user's partition and proxies other users' requests to their owner) and the serving
replica (``coldstart serve``, :mod:`coldstart.streams.replica`, which reads every user's profile from
the table's changelog). Each process wraps the ``(status, body)`` in its own web framework's response.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping

from coldstart.settings import Settings
from coldstart.streams.metrics import Metrics
from coldstart.streams.recommender import Recommender
from coldstart.streams.state import ProfileState

UNAUTHORIZED = {"error": "this API needs the header 'Authorization: Bearer <token>' with the "
                         "token set in COLDSTART_API_TOKEN"}
UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="coldstart"'}


def authorized(settings: Settings, headers: Mapping[str, str]) -> bool:
    """True when no API token is configured, or the request carries it as a bearer token."""
    token = settings.api_token
    if not token:
        return True
    scheme, _, given = headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def recommendations_answer(recommender: Recommender, metrics: Metrics, user_id: str, raw_state: bytes | None,
                           query: Mapping[str, str], started: float | None = None) -> tuple[int, dict]:
    """``GET /users/{user_id}/recommendations?k=&exclude_clicked=`` for a user whose stored profile is
    ``raw_state`` (``ProfileState.dumps()``; None: no events yet, popularity). ``started``: when the
    request arrived (``time.perf_counter()``), for the latency histogram."""
    started = time.perf_counter() if started is None else started
    try:
        k = int(query.get("k", "10"))
    except ValueError:
        k = -1
    if not 1 <= k <= 1000:
        metrics.recommendations.labels("bad_request").inc()
        return 400, {"error": "k must be an integer between 1 and 1000"}
    exclude = query.get("exclude_clicked", "true").lower() not in {"0", "false", "no"}
    state = ProfileState.loads(raw_state) if raw_state is not None else None
    recs = recommender.recommend(state, k=k, exclude_clicked=exclude)
    outcome = "personal" if state is not None else "popular"
    metrics.recommendations.labels(outcome).inc()
    metrics.recommendation_seconds.observe(time.perf_counter() - started)
    return 200, {
        "user_id": user_id,
        "model_version": recommender.model.version,
        "n_events": state.n_events if state else 0,
        "strategy": outcome,
        "items": [
            {"item_id": r.item_id, "score": round(r.score, 5), "text": r.text, "because": r.because}
            for r in recs
        ],
    }
